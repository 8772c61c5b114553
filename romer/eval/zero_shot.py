"""Zero-shot accuracy of an in-memory model through lm-evaluation-harness (``romer[eval]``, lm-eval 0.4.13).

The model object is evaluated as it is: already programmed onto a chip, with whatever routing hooks the caller
has in place, through ``HFLM(pretrained=model, tokenizer=tokenizer)``; nothing is saved or copied. Tasks romer
ships (:func:`romer.eval.task_data.shipped_tasks`) read local files (see ``TASK_FILES``); any other name is an
lm-eval task run as lm-eval runs it. Everything runs inside :func:`romer.data.offline.offline`, so no Hugging Face
library reaches the network; the environment is restored afterwards. Zero-shot (``num_fewshot=0``), and
lm-eval's global seeding is switched off (romer keeps no global RNG state).

Metrics are lm-eval's: ``acc`` (share of items whose highest-loglikelihood choice is the gold one; for a cloze,
share of items whose target the model reproduces greedily), ``acc_norm`` (loglikelihood divided by the choice's
length in characters), each with lm-eval's stderr (sample std / √n).
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import sys
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from romer.data.offline import offline, require
from romer.errors import UserError
from romer.eval.task_data import shipped_tasks, task_config

ACCURACY_METRICS = ("acc", "acc_norm")


@dataclass(frozen=True)
class TaskScore:
    """One task's lm-eval metrics on one model: ``metrics[name]`` and ``stderr[name]`` (NaN where lm-eval has none)."""

    task: str
    samples: int
    metrics: dict[str, float]
    stderr: dict[str, float]

    @property
    def acc(self) -> float:
        return self.metrics["acc"]

    @property
    def acc_norm(self) -> float | None:
        return self.metrics.get("acc_norm")

    def to_dict(self) -> dict:
        return asdict(self)

    def row(self) -> dict:
        """The flat form results rows store: ``{acc, acc_norm, acc_stderr, acc_norm_stderr, samples}``."""
        return {**self.metrics, **{f"{k}_stderr": v for k, v in self.stderr.items()}, "samples": self.samples}


@dataclass(frozen=True)
class MetricSummary:
    """One metric over chips: mean, sample standard deviation (n − 1; 0 for a single chip) and the values."""

    mean: float
    std: float
    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Sequence[float]) -> "MetricSummary":
        if not values:
            raise UserError("no chips to summarise")
        values = tuple(float(v) for v in values)
        return cls(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0, values)

    def to_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std, "values": list(self.values)}


@dataclass(frozen=True)
class ZeroShotSummary:
    """Per-chip scores (``per_chip[i][task]``) and, per task and accuracy metric, their mean ± std over chips."""

    per_chip: tuple[dict[str, TaskScore], ...]
    summary: dict[str, dict[str, MetricSummary]]

    def to_dict(self) -> dict:
        return {"per_chip": [{t: s.to_dict() for t, s in chip.items()} for chip in self.per_chip],
                "summary": {t: {m: s.to_dict() for m, s in ms.items()} for t, ms in self.summary.items()}}


def _parse_results(results: Mapping, samples: Mapping[str, int], tasks: Sequence[str]) -> dict[str, TaskScore]:
    """lm-eval's ``results`` block (keys "acc,none", "acc_stderr,none", …) → one TaskScore per requested task."""
    scores = {}
    for task in tasks:
        block = results[task]
        metrics, stderr = {}, {}
        for key, value in block.items():
            if "," not in key or key.split(",")[0].endswith("_stderr"):
                continue
            metric = key.split(",")[0]
            metrics[metric] = float(value)
            err = block.get(key.replace(metric + ",", metric + "_stderr,", 1))
            stderr[metric] = float(err) if isinstance(err, (int, float)) else math.nan
        scores[task] = TaskScore(task, int(samples.get(task, 0)), metrics, stderr)
    return scores


def _task_specs(tasks: Sequence[str], data_paths: Mapping[str, str | Path] | None) -> tuple[list, bool]:
    """lm-eval task specs: a config dict for each task romer ships, the name for any other; True if any is other."""
    if not tasks:
        raise UserError("name at least one zero-shot task")
    data_paths = dict(data_paths or {})
    unknown = sorted(set(data_paths) - set(tasks))
    if unknown:
        raise UserError(f"data path given for task(s) not asked for: {', '.join(unknown)}")
    shipped = set(shipped_tasks())
    specs = [task_config(t, data_paths.get(t)) if t in shipped else t for t in tasks]
    return specs, any(isinstance(s, str) for s in specs)


@contextlib.contextmanager
def _quiet(logger: str):
    """Only errors from ``logger`` (and its children) inside the block; its level restored afterwards."""
    log = logging.getLogger(logger)
    before = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(before)


@contextlib.contextmanager
def _shown_on_error(captured: io.StringIO):
    try:
        yield
    except BaseException:
        sys.stderr.write(captured.getvalue()[-4000:])
        raise


def evaluate_tasks(
    model,
    tokenizer,
    tasks: Sequence[str],
    data_paths: Mapping[str, str | Path] | None = None,
    batch_size: int = 16,
    max_length: int | None = None,
    limit: int | None = None,
) -> dict[str, TaskScore]:
    """lm-eval metrics of the in-memory ``model`` on ``tasks``, zero-shot and offline: ``{task: TaskScore}``.

    ``data_paths`` maps a shipped task to its local file (required for arc_easy, arc_challenge, piqa,
    lambada_openai; the bundled romer_cloze / romer_nextsent need none). ``max_length``: the longest input in
    tokens (default: lm-eval's, from the model config). ``limit``: only the first ``limit`` items of each task.
    """
    lm_eval = require("lm_eval", "zero-shot evaluation")
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager, get_task_dict

    specs, needs_lm_eval_tasks = _task_specs(tasks, data_paths)
    with offline():
        manager = TaskManager(include_defaults=needs_lm_eval_tasks)
        try:
            task_dict = get_task_dict(specs, manager)
        except UserError:
            raise
        except Exception as exc:  # an unknown task name, or a Hub dataset that is not in the local cache
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UserError(f"lm-eval could not load task(s) {', '.join(tasks)} offline: {first_line}") from None
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)
        # lm-eval prints notes to stdout and draws tqdm bars on stderr (tqdm reads TQDM_DISABLE at import only):
        # romer's own output and progress lines stay readable; the captured text is shown if lm-eval fails
        chatter = io.StringIO()
        with _shown_on_error(chatter), contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter), \
                _quiet("lm_eval"), _in_this_process():
            out = lm_eval.simple_evaluate(
                model=lm, tasks=list(task_dict.values()), num_fewshot=0, limit=limit, bootstrap_iters=1000,
                log_samples=False, task_manager=manager, verbosity="ERROR",
                random_seed=None, numpy_random_seed=None, torch_random_seed=None,
            )
    samples = {t: n.get("effective", n.get("original", 0)) if isinstance(n, dict) else n
               for t, n in out.get("n-samples", {}).items()}
    return _parse_results(out["results"], samples, list(task_dict))


@contextlib.contextmanager
def _in_this_process():
    """lm-eval starts other processes three ways per evaluation, and romer needs none of them: `git describe` for a
    commit stamp (its "fatal: not a git repository" goes straight to the terminal outside a repository), torch's
    ``collect_env`` for an environment report (about 4 s), and a ``multiprocessing.Pool`` of forked workers for
    bootstrap standard errors (perplexity-type metrics). A fork of this multi-threaded process was seen to hang in
    the child, stalling `romer run` until the child was killed. For this call only: the commit is read from .git
    as lm-eval's own fallback does, the environment report is skipped, and the bootstrap runs in this process
    (lm-eval's ``DISABLE_MULTIPROC``: the same seeded resamples, one after another)."""
    import importlib
    import os
    from unittest import mock

    evaluator = importlib.import_module("lm_eval.evaluator")  # simple_evaluate's module (lm_eval loads it lazily)
    patches = [mock.patch.dict(os.environ, {"DISABLE_MULTIPROC": "1"})]
    if hasattr(evaluator, "get_git_commit_hash"):
        from lm_eval.loggers.utils import get_commit_from_path

        patches.append(mock.patch.object(evaluator, "get_git_commit_hash", lambda: get_commit_from_path(os.getcwd())))
    if hasattr(evaluator, "add_env_info"):
        patches.append(mock.patch.object(evaluator, "add_env_info", lambda storage: None))
    with contextlib.ExitStack() as stack:
        for patch in patches:
            stack.enter_context(patch)
        yield


def summarize(per_chip: Sequence[Mapping[str, TaskScore]],
              metrics: Sequence[str] = ACCURACY_METRICS) -> dict[str, dict[str, MetricSummary]]:
    """Mean ± std over chips of each task's ``metrics`` (those a task reports; a cloze has no acc_norm)."""
    if not per_chip:
        raise UserError("no chips to summarise")
    summary = {}
    for task in per_chip[0]:
        summary[task] = {m: MetricSummary.of([chip[task].metrics[m] for chip in per_chip])
                         for m in metrics if m in per_chip[0][task].metrics}
    return summary


def evaluate_chips(models: Iterable, tokenizer, tasks: Sequence[str], **options) -> ZeroShotSummary:
    """:func:`evaluate_tasks` on each model ``models`` yields (one per chip), and mean ± std of acc / acc_norm.

    ``models`` is typically a generator that programs the model, yields it, and restores it when resumed::

        def programmed():
            for chip in chips:
                with program(model, chip):
                    yield model

    so the caller controls programming (and calibration); each yielded model is evaluated before the next is
    asked for. ``options`` go to :func:`evaluate_tasks`.
    """
    per_chip = tuple(evaluate_tasks(model, tokenizer, tasks, **options) for model in models)
    if not per_chip:
        raise UserError("no chips: the model iterable yielded nothing")
    return ZeroShotSummary(per_chip, summarize(per_chip))
