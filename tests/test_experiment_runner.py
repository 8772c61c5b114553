"""The experiment runner and results store: resumable after SIGKILL, no trial lost or repeated, Ray = local.

Evaluators here are fakes: deterministic numbers from a hash of (model, preset, t, placement, seed, method), so
the runner's bookkeeping is tested without models.
"""

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import re
import textwrap
import threading
from pathlib import Path

import pytest

from romer.errors import UserError
from romer.experiment.config_file import load_config
from romer.experiment.runner import pending, resolve_evaluator, run_experiment
from romer.store import ResultsStore, git_revision

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["models=[olmoe-tiny, qwenmoe-tiny]", "chip.chips=3", "methods=[clean, noisy, romer, maxnn-12.5%]",
         "name=small"]
KIND_FACTOR = {"clean": 1.0, "noisy": 1.6, "oracle": 1.2, "replace": 1.45, "recalibrate": 1.3, "romer": 1.25,
               "maxnn": 1.35, "balance": 1.4}


def _unit(*parts) -> float:
    """A number in [0, 1) from a hash of ``parts`` (deterministic across processes)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64


def fake_result(group, method: dict) -> dict:
    chip = group.chip
    base = 20 + 10 * _unit(group.model)
    chip_noise = 0.0 if method["kind"] == "clean" else 0.1 * _unit(group.model, chip["seed"], chip["t_inference"])
    ppl = base * (KIND_FACTOR[method["kind"]] + chip_noise + 0.02 * _unit(method["name"], chip["seed"]))
    cv = 0.2 + 0.3 * _unit("cv", group.model, chip["seed"], method["name"])
    return {"method": method["name"], "ppl": ppl, "word_ppl": 1.3 * ppl, "bits_per_byte": 1.0 + ppl / 100,
            "tokens": 1000, "cv": cv, "cv_before": 0.5, "digital_share": 0.125 if method["kind"] == "maxnn" else 0.0,
            "plan": {"kind": method["kind"]} if method["kind"] not in ("clean", "noisy") else None, "seconds": 0.0,
            "frequency": [[0.1 + 0.2 * _unit(layer, e, method["name"]) for e in range(4)] for layer in range(2)]}


def fake_evaluator(group, names):
    for method in group.methods:
        if method["name"] in names:
            yield fake_result(group, method)


class Recording:
    """Fake evaluator that remembers which (group, method) it was asked for."""

    def __init__(self):
        self.asked = []

    def __call__(self, group, names):
        self.asked += [(group.model, group.chip["seed"], n) for n in sorted(names)]
        yield from fake_evaluator(group, names)


def test_run_stores_every_trial_once_and_rerun_skips(tmp_path):
    config = load_config("default", SMALL)
    store_path = tmp_path / "results.sqlite"
    first = Recording()
    summary = run_experiment(config, store_path, evaluator=first, progress=False)
    assert (summary.total, summary.skipped, summary.computed) == (24, 0, 24)
    assert len(first.asked) == 24 == len(set(first.asked))
    again = Recording()
    summary = run_experiment(config, store_path, evaluator=again, progress=False)
    assert (summary.skipped, summary.computed, again.asked) == (24, 0, [])
    with ResultsStore(store_path) as store:
        rows = store.rows(config.config_hash, with_plans=True)
        assert len(rows) == 24 and store.config(config.config_hash)["config"]["name"] == "small"
    row = next(r for r in rows if r["method"] == "romer" and r["chip_seed"] == 1)
    assert row["model"] == "olmoe-tiny" and row["preset"] == "pcm×10" and row["placement"] == "moe"
    assert row["t_inference"] == 86400.0 and row["preset"] == "pcm×10" and row["preset_config"]["name"] == "pcm"
    assert row["method_kind"] == "romer" and row["plan"] == {"kind": "romer"}
    assert row["ppl"] == row["metrics"]["ppl"] and row["versions"]["romer"] and row["git"] == git_revision()
    assert row["method_config"]["calibration"]["sequences"] == 32


def test_store_is_wal_and_a_duplicate_trial_keeps_the_first(tmp_path):
    config = load_config("default", SMALL)
    group = config.groups()[0]
    with ResultsStore(tmp_path / "s.sqlite") as store:
        store.save_config(config.config_hash, config.name, config.model_dump(mode="json"))
        first = fake_result(group, group.methods[0])
        assert store.add(group, first, {"git": "abc", "versions": {}})
        assert not store.add(group, {**first, "ppl": 1.0}, {"git": "abc", "versions": {}})
        assert store.rows()[0]["ppl"] == first["ppl"]
    with sqlite3.connect(tmp_path / "s.sqlite") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_an_incomplete_evaluator_is_an_error_and_keeps_what_it_stored(tmp_path):
    config = load_config("default", SMALL)

    def lazy(group, names):
        yield fake_result(group, group.methods[0])  # only the first method

    with pytest.raises(RuntimeError, match="no result for"):
        run_experiment(config, tmp_path / "s.sqlite", evaluator=lazy, progress=False)
    with ResultsStore(tmp_path / "s.sqlite") as store:
        assert store.count() == 1


def test_pending_lists_only_missing_methods():
    config = load_config("default", SMALL)
    groups = config.groups()
    done = set(groups[0].trial_keys().values()) | {groups[1].trial_key("noisy")}
    work = pending(config, done)
    assert len(work) == len(groups) - 1 and work[0][1] == {"clean", "romer", "maxnn-12.5%"}


LAZY = textwrap.dedent("""
    import sys
    from romer.experiment.runner import resolve_evaluator
    before = "romer.experiment.evaluate" in sys.modules
    evaluate = resolve_evaluator(None)
    from romer.experiment import evaluate as module
    print(before, "romer.experiment.evaluate" in sys.modules, type(evaluate) is module.Evaluator)
""")


def test_default_evaluator_resolves_lazily():
    """Importing the runner does not import the evaluator (nor torch models); resolving None imports it then and
    returns a fresh ``Evaluator`` object."""
    out = subprocess.run([sys.executable, "-c", LAZY], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "True", "True"]


class GatedEvaluator:
    """The fake evaluator, but before its result number ``after + 1`` (counted in this process) it blocks reading
    one line from stdin: a parent that never writes gets a child parked in the middle of a trial after exactly
    ``after`` stored trials, with no race. Used as ``--evaluator tests.test_experiment_runner:GatedEvaluator``;
    ``ROMER_TEST_GATE`` sets ``after`` (unset: never blocks)."""

    def __init__(self, after: int | None = None):
        gate = os.environ.get("ROMER_TEST_GATE")
        self.after = after if after is not None else (int(gate) if gate else None)
        self.count = 0

    def __call__(self, group, names):
        for result in fake_evaluator(group, names):
            if self.after is not None and self.count == self.after:
                sys.stdin.readline()
            self.count += 1
            yield result


KILLED_RUN = textwrap.dedent("""
    import sys
    from romer.experiment.config_file import load_config
    from romer.experiment.runner import run_experiment
    from tests.test_experiment_runner import SMALL, GatedEvaluator
    run_experiment(load_config("default", SMALL), sys.argv[1], evaluator=GatedEvaluator(int(sys.argv[2])))
""")
SAFETY_S = 180  # a watchdog only: the tests wait for lines the child prints, never for time to pass


def spawn(args: list[str], **env) -> subprocess.Popen:
    """A child with stdin and stdout pipes (stdout not a terminal: one progress line per stored trial)."""
    return subprocess.Popen(args, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200", **env},
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_line(process: subprocess.Popen, pattern: str) -> list[str]:
    """Read the child's stdout line by line until a line matches ``pattern`` (regex); the lines read so far.
    A watchdog kills the child after SAFETY_S s, so a hung child fails the test instead of hanging it."""
    watchdog = threading.Timer(SAFETY_S, process.kill)
    watchdog.start()
    lines = []
    try:
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            if re.search(pattern, line):
                return lines
    finally:
        watchdog.cancel()
    process.wait()
    raise AssertionError(f"child ended (status {process.returncode}) before printing {pattern!r}: "
                         f"{lines[-5:]} {process.stderr.read()[-2000:]}")


def stored(store_path) -> dict:
    with ResultsStore(store_path) as store:
        return {r["trial_key"]: (r["ppl"], r["created_at"]) for r in store.rows()}


def check_resume(store_path, before: dict) -> None:
    """A rerun computes exactly the trials that are missing and leaves the stored ones untouched."""
    config = load_config("default", SMALL)
    rest = Recording()
    summary = run_experiment(config, store_path, evaluator=rest, progress=False)
    assert summary.skipped == len(before) and summary.computed == 24 - len(before) == len(rest.asked)
    after = stored(store_path)
    assert len(after) == 24 and all(after[k] == v for k, v in before.items())
    assert set(after) == {g.trial_key(m) for g in config.groups() for m in g.method_names}
    assert not {(g.model, g.chip["seed"], m) for g in config.groups() for m in g.method_names
                if g.trial_key(m) in before} & set(rest.asked), "a stored trial was computed again"


def test_resume_after_sigkill_loses_and_repeats_nothing(tmp_path):
    store_path = tmp_path / "results.sqlite"
    process = spawn([sys.executable, "-c", KILLED_RUN, str(store_path), "5"])
    lines = wait_for_line(process, r"^small: 5/24 trials")
    assert process.poll() is None  # parked inside trial 6: it waits on stdin, which we never write
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert [l.split(" (")[0] for l in lines[-5:]] == [f"small: {k}/24 trials" for k in range(1, 6)]
    before = stored(store_path)
    assert len(before) == 5  # every trial reported as stored is in the store, and no other
    with sqlite3.connect(store_path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    check_resume(store_path, before)


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_sigint_during_romer_run_stores_what_was_done_and_resumes(tmp_path, sig, code):
    """Ctrl-C (or SIGTERM, as timeout, docker stop and Slurm send it) in the middle of trial 8: `interrupted: 7 of
    24 …`, exit 130 (143), the interrupted run's row recorded; the same command again finishes."""
    out = tmp_path / "run"
    args = [sys.executable, "-m", "romer.cli.main", "run", *[x for s in SMALL for x in ("--set", s)],
            "--out", str(out), "--evaluator", "tests.test_experiment_runner:GatedEvaluator"]
    process = spawn(args, ROMER_TEST_GATE="7")
    wait_for_line(process, r"^small: 7/24 trials")
    process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=SAFETY_S)
    assert process.returncode == code, stderr[-2000:]
    with ResultsStore(out / "results.sqlite") as opened:
        assert [run["computed"] for run in opened.runs()] == [7]
    assert f"interrupted: 7 of 24 trials are stored in {out / 'results.sqlite'}" in " ".join(stdout.split())
    assert "Traceback" not in stderr
    before = stored(out / "results.sqlite")
    assert len(before) == 7 and not (out / "report.html").exists()
    again = subprocess.run(args, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"},
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=SAFETY_S)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "17 trials computed, 7 already stored" in again.stdout
    after = stored(out / "results.sqlite")
    assert len(after) == 24 and all(after[k] == v for k, v in before.items())
    assert (out / "report.html").exists()


def test_ray_backend_matches_local(tmp_path, ray_cluster):
    config = load_config("default", SMALL + ["chip.chips=2"])
    run_experiment(config, tmp_path / "local.sqlite", evaluator=fake_evaluator, progress=False)
    summary = run_experiment(config, tmp_path / "ray.sqlite", evaluator=fake_evaluator, backend="ray", workers=2,
                             progress=False)
    assert summary.computed == 16

    def numbers(path):
        with ResultsStore(path) as store:
            return sorted((r["trial_key"], r["ppl"], r["metrics"]["cv"]) for r in store.rows())

    assert numbers(tmp_path / "ray.sqlite") == numbers(tmp_path / "local.sqlite")


def test_a_run_records_its_wall_time_and_stage_totals(tmp_path):
    config = load_config("default", SMALL)

    def timed(group, names):
        for result in fake_evaluator(group, names):
            yield {**result, "stages": {"program": 0.5, "evaluate": 1.0}}

    store_path = tmp_path / "results.sqlite"
    summary = run_experiment(config, store_path, evaluator=timed, progress=False)
    run_experiment(config, store_path, evaluator=timed, progress=False)  # nothing left: no run recorded
    with ResultsStore(store_path) as store:
        (run,) = store.runs(config.config_hash)
        rows = store.rows(config.config_hash)
    assert (run["backend"], run["workers"], run["computed"], run["skipped"]) == ("local", 1, 24, 0)
    assert run["stages"] == {"program": 12.0, "evaluate": 24.0}
    assert 0 < run["seconds"] <= summary.seconds
    assert all(row["metrics"]["stages"] == {"program": 0.5, "evaluate": 1.0} for row in rows)


def nan_once_evaluator(group, names):
    """The fake evaluator, but romer's PPL on chip 1 is NaN unless ROMER_TEST_FINITE is set."""
    for result in fake_evaluator(group, names):
        if result["method"] == "romer" and group.chip["seed"] == 1 and not os.environ.get("ROMER_TEST_FINITE"):
            result = {**result, "ppl": float("nan")}
        yield result


def test_a_non_finite_result_is_never_stored_and_a_rerun_retries_it(tmp_path, monkeypatch):
    config = load_config("default", SMALL)
    store = tmp_path / "s.sqlite"
    with pytest.raises(UserError, match=r"2 trial\(s\) gave non-finite numbers and were not stored \(first: "
                                        r"olmoe-tiny · pcm×10 · chip 1 · romer: ppl nan\)"):
        run_experiment(config, store, evaluator=nan_once_evaluator, progress=False)
    assert len(stored(store)) == 22  # every other trial is kept
    monkeypatch.setenv("ROMER_TEST_FINITE", "1")
    summary = run_experiment(config, store, evaluator=nan_once_evaluator, progress=False)
    assert (summary.computed, summary.skipped) == (2, 22) and len(stored(store)) == 24
