"""Run an experiment: every trial not yet in the results store, grouped by (model, chip), locally or on Ray.

The evaluator is any callable ``(TrialGroup, set of method names) → iterator of result dicts`` (one per method,
``{"method", "ppl", "word_ppl", "bits_per_byte", "tokens", "cv", "cv_before", "digital_share", "plan",
"seconds", …}``), yielded as soon as each is done; each result is stored in its own transaction at once, so an
interrupted run loses at most the trial in progress and a rerun skips the stored ones. Concurrent runs on one
store split the trials: a process computes only trials it has leased in the store (``romer.store.lease``),
skips those another live process holds, and at the end waits for them (or takes them over once their owner has
ended or its lease expired); the ``runs`` table counts what each process computed. The default evaluator is
a fresh ``romer.experiment.evaluate.Evaluator``; a ``"module:name"`` string (the CLI's hidden ``--evaluator``, for
tests) names one to import.

Ray backend: ``ray.init(address)`` (a local cluster of ``workers`` CPUs without dashboard when no address is
given), one actor per worker holding its own evaluator (models loaded once per actor), one streaming task per
TrialGroup; the driver leases each group before submitting it and writes every result to the store as it arrives
(``ray.wait`` loop). Each actor asks for one CPU and, where the cluster declares GPUs and the config's
``eval.device`` is not ``cpu``, for ``run.gpus_per_worker`` GPUs (default 1; Ray then shows the actor only its own
GPUs, so ``cuda`` / ``auto`` inside it is that GPU); the actors are capped at the GPUs' count divided by that
share, so none waits forever.
"""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path


from romer.errors import UserError
from romer.experiment.config import ExperimentConfig, TrialGroup
from romer.store import ResultsStore, provenance
from romer.store.lease import WAIT, Heartbeat, LeaseTimes, TrialClaims
from romer.progress import Progress

Evaluator = Callable[[TrialGroup, set], Iterator[dict]]


@dataclass
class RunSummary:
    """What a run did: trials in the config, already stored before, computed by this process, stored meanwhile by
    another process on the same store; wall time in s."""

    config_hash: str
    store: Path
    total: int
    skipped: int
    computed: int
    seconds: float
    elsewhere: int = 0


def resolve_evaluator(evaluator: Evaluator | str | None = None) -> Evaluator:
    """The evaluator object: a callable as is, None a fresh :class:`romer.experiment.evaluate.Evaluator`, and
    ``"module:name"`` imported (a class is instantiated once, so it can cache models)."""
    if evaluator is None:
        from romer.experiment.evaluate import Evaluator as Default

        return Default()
    if callable(evaluator):
        return evaluator
    module_name, sep, attr = evaluator.partition(":")
    if not sep:
        raise UserError(f"evaluator {evaluator!r}: expected 'module:name'")
    target = getattr(importlib.import_module(module_name), attr, None)
    if target is None:
        raise UserError(f"evaluator {evaluator!r}: {module_name} has no {attr!r}")
    return target() if isinstance(target, type) else target


def non_finite(result: dict) -> str | None:
    """What in a result is NaN or ±∞ (its PPL, word PPL, bits per byte or a zero-shot score), or None."""
    import math

    values = {k: result.get(k) for k in ("ppl", "word_ppl", "bits_per_byte")}
    for task, scores in (result.get("tasks") or {}).items():
        values.update({f"{task} {m}": scores.get(m) for m in ("acc", "acc_norm")})
    bad = [f"{k} {v}" for k, v in values.items() if isinstance(v, float) and not math.isfinite(v)]
    return ", ".join(bad) or None


def pending(config: ExperimentConfig, done: set[str]) -> list[tuple[TrialGroup, set[str]]]:
    """(group, method names not yet stored) for every group with work left, in the config's order."""
    out = []
    for group in config.groups():
        missing = {name for name, key in group.trial_keys().items() if key not in done}
        if missing:
            out.append((group, missing))
    return out


def run_experiment(config: ExperimentConfig, store_path: str | Path, evaluator: Evaluator | str | None = None,
                   backend: str = "local", address: str | None = None, workers: int | None = None,
                   progress: bool = True, lease_times: LeaseTimes | None = None) -> RunSummary:
    """Compute and store every trial of ``config`` that ``store_path`` does not hold yet; returns a summary.

    backend "local" runs the groups one after another in this process; "ray" spreads them over Ray workers
    (``workers`` CPUs of a local cluster, default ``config.run.workers``, or the cluster at ``address``).
    ``lease_times``: lease length, renewal and polling periods (default :class:`LeaseTimes`).
    """
    if backend not in ("local", "ray"):
        raise UserError(f"unknown backend {backend!r}; choose local or ray")
    workers = workers or config.run.workers
    start = time.perf_counter()
    started_at = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
    stages: dict[str, float] = {}
    with ResultsStore(store_path) as store:
        store.save_config(config.config_hash, config.name, config.model_dump(mode="json"))
        work = pending(config, store.done_keys(config.config_hash))
        todo = sum(len(missing) for _, missing in work)
        total = config.trial_count()
        if progress and total > todo:
            print(f"{config.name}: {total - todo} of {total} trials already stored in {store_path}", flush=True)
        bar = Progress(config.name, todo, unit="trials", enabled=progress)
        prov = provenance()

        failed: list[str] = []  # trials whose numbers are not finite: never stored, so a rerun retries them
        stored: list[str] = []  # trials this process stored (an interrupted run records what it did)

        def record(group: TrialGroup, result: dict) -> None:
            if not isinstance(result, dict) or "method" not in result:
                raise RuntimeError(f"the evaluator yielded {type(result).__name__} {result!r:.80}, not a result dict "
                                   "with a 'method' key")
            bad = non_finite(result)
            if bad:
                failed.append(f"{group.model} · {group.preset} · chip {group.chip['seed']} · {result['method']}: "
                              f"{bad}")
                bar.advance(label=f"{result['method']}: not finite, not stored")
                return
            if not store.add(group, result, prov):  # another process stored it first (it took an expired lease)
                bar.advance(label=f"{result['method']}: already stored by another process")
                return
            stored.append(result["method"])
            for stage, seconds in (result.get("stages") or {}).items():
                stages[stage] = stages.get(stage, 0.0) + seconds
            chip = group.chip
            bar.advance(label=f"{group.model} · {group.preset} · t = {chip['t_inference']:g} s · chip {chip['seed']}"
                              f" · {result['method']}")

        def record_run() -> float:
            seconds = time.perf_counter() - start
            if stored:
                store.add_run(config.config_hash, started_at, seconds, backend, workers if backend == "ray" else 1,
                              len(stored), total - todo, stages)
            return seconds

        def stored_elsewhere(group: TrialGroup, name: str) -> None:
            bar.advance(label=f"{group.model} · chip {group.chip['seed']} · {name}: stored by another process")

        def waiting(count: int, owners: list[str]) -> None:
            if progress:
                print(f"{config.name}: waiting for {count} trial(s) that another process is computing "
                      f"({', '.join(owners) or 'owner unknown'})", flush=True)

        times = lease_times or LeaseTimes()
        claims = TrialClaims(store, work, times=times, on_stored_elsewhere=stored_elsewhere, on_wait=waiting)
        try:
            with bar, Heartbeat(store_path, claims.owner, times):
                if work:
                    if backend == "local":
                        _run_local(claims, resolve_evaluator(evaluator), record)
                    else:
                        _run_ray(claims, evaluator, record, address, workers, len(work), config)
        except KeyboardInterrupt:  # Ctrl-C, SIGTERM, SIGHUP: the trials stored so far and this run's row stay
            record_run()
            raise
        seconds = record_run()
        if failed:
            raise UserError(f"{len(failed)} trial(s) gave non-finite numbers and were not stored (first: {failed[0]}); "
                            "the chip breaks the model numerically — change the noise settings; a rerun retries "
                            "only these")
    return RunSummary(config.config_hash, Path(store_path), total, total - todo, len(stored), seconds,
                      claims.stored_elsewhere)


def _check_complete(group: TrialGroup, missing: set[str], seen: set[str]) -> None:
    left = missing - seen
    if left:
        raise RuntimeError(f"the evaluator returned no result for {', '.join(sorted(left))} on {group.model}, "
                           f"chip seed {group.chip['seed']}")


def _run_local(claims: TrialClaims, evaluate: Evaluator, record) -> None:
    while (item := claims.take()) is not None:
        if item is WAIT:
            claims.wait()
            continue
        group, missing = item
        try:
            seen = set()
            for result in evaluate(group, set(missing)):
                record(group, result)
                seen.add(result["method"])
            _check_complete(group, missing, seen)
        finally:
            claims.done(group, missing)


# --- Ray ------------------------------------------------------------------------------------------------------

class _Worker:
    """A Ray actor: its own evaluator (and so its own loaded models), one streaming task per TrialGroup."""

    def __init__(self, spec):
        self.evaluate = resolve_evaluator(spec)

    def run(self, group: TrialGroup, missing: set[str]) -> Iterable[dict]:
        yield from self.evaluate(group, missing)


def _ray_init(address: str | None, workers: int):
    """Import Ray and start (or join) a cluster without dashboard, usage reporting or worker log forwarding;
    returns (ray module, whether this call started it)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
    except ImportError:
        raise UserError("the ray backend needs Ray: pip install 'romer[ray]'") from None
    if ray.is_initialized():
        return ray, False
    options = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
    if address is None:
        options["num_cpus"] = workers
    ray.init(address=address, **options)
    return ray, True


def gpus_per_worker(config: ExperimentConfig, cluster_gpus: float) -> float:
    """GPUs each Ray actor asks for: none on a cluster without GPUs or for ``eval.device: cpu``, else
    ``run.gpus_per_worker`` (1 when unset; a fraction shares a GPU between actors)."""
    if cluster_gpus <= 0 or config.eval.device == "cpu":
        return 0.0
    wanted = config.run.gpus_per_worker
    return 1.0 if wanted is None else float(wanted)


def actor_count(workers: int, groups: int, gpus_each: float, cluster_gpus: float) -> int:
    """Actors to start: ``workers``, no more than the groups, and no more than the GPUs hold (an actor that
    cannot get its GPU share would never start, and its trials would wait forever)."""
    count = min(workers, groups)
    if gpus_each > 0:
        count = min(count, int(cluster_gpus / gpus_each + 1e-9))
    return max(count, 1)


def _run_ray(claims: TrialClaims, evaluator, record, address: str | None, workers: int, groups: int,
             config: ExperimentConfig) -> None:
    """Each idle actor gets the next group this process has leased; while the rest is held by other processes,
    the driver keeps recording its own results and looks again every ``poll_s`` seconds."""
    ray, started = _ray_init(address, workers)
    try:
        cluster_gpus = float(ray.cluster_resources().get("GPU", 0))
        gpus_each = gpus_per_worker(config, cluster_gpus)
        if gpus_each > cluster_gpus:
            raise UserError(f"run.gpus_per_worker {gpus_each:g} is more than the cluster's {cluster_gpus:g} GPUs")
        actor_class = ray.remote(num_cpus=1, num_gpus=gpus_each)(_Worker)
        idle = [actor_class.remote(evaluator) for _ in range(actor_count(workers, groups, gpus_each, cluster_gpus))]
        running = {}  # generator → (actor, group, missing, seen)
        more = True  # claims.take() may still hand out work
        while True:
            blocked = False
            while idle and more:
                item = claims.take()
                if item is None:
                    more = False
                elif item is WAIT:
                    blocked = True
                    break
                else:
                    actor = idle.pop()
                    running[actor.run.remote(*item)] = (actor, *item, set())
            if not running:
                if not more:
                    break
                claims.wait()
                continue
            ready, _ = ray.wait(list(running), num_returns=1, timeout=claims.times.poll_s if blocked else None)
            if not ready:
                continue
            generator = ready[0]
            actor, group, missing, seen = running[generator]
            try:
                ref = next(generator)
            except StopIteration:
                del running[generator]
                claims.done(group, missing)
                _check_complete(group, missing, seen)
                idle.append(actor)
                continue
            result = ray.get(ref)
            record(group, result)
            seen.add(result["method"])
    finally:
        if started:
            ray.shutdown()
