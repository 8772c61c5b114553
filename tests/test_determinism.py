"""Determinism with the real default evaluator: the same config and seeds give byte-identical results JSON and
identical stored trials (timings aside) across two runs and across the local and Ray backends.

A tiny config: the zoo olmoe-tiny, one Gaussian chip (cheap to program; the device presets' seeded draws are
checked bit for bit in tests/test_properties.py), clean / noisy / romer, 1024 evaluation tokens, 2 calibration
windows. Bit-reproducibility holds on one machine and torch version (CPU, the project's pinned torch).
"""

import json

import pytest

from romer.experiment.config_file import load_config
from romer.experiment.runner import run_experiment
from romer.store import ResultsStore
from romer.report.tables import to_json
from romer.report.write import build_report

TINY = ["name=determinism", "models=[olmoe-tiny]", "chip.chips=1", "methods=[clean, noisy, romer]",
        "eval.max_tokens=1024", "eval.window=256", "calibration.sequences=2", "calibration.window=256",
        "chip.presets=[{preset: gaussian, overrides: {eta: 0.05}}]"]  # PCM's seeded draws: tests/test_properties.py
# Wall-clock facts of a run, not results; and the git revision, which moves when someone commits between the
# runs (it is stored, and compared in the store tests, but two runs of one checkout share it).
TIMING = {"seconds", "seconds_mean", "created_at", "stages", "git"}


def strip(value):
    """``value`` without the TIMING keys, at any depth."""
    if isinstance(value, dict):
        return {k: strip(v) for k, v in value.items() if k not in TIMING}
    if isinstance(value, list):
        return [strip(v) for v in value]
    return value


def results_json(store_path) -> str:
    """The results JSON that `romer run --json` writes, timing keys taken out (same formatting)."""
    report = build_report(store_path, plots=False)
    text = to_json(report.rows, report.config, report.config_hash, report.git, report.versions)
    return json.dumps(strip(json.loads(text)), indent=2, sort_keys=True, ensure_ascii=False)


def trials(store_path) -> list[dict]:
    with ResultsStore(store_path) as store:
        return json.loads(json.dumps(strip(store.rows(with_plans=True)), sort_keys=True))


@pytest.fixture(scope="module")
def local_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("determinism")
    config = load_config("default", TINY)
    for name in ("a", "b"):
        summary = run_experiment(config, root / f"{name}.sqlite", progress=False)
        assert summary.computed == 3
    return root, config


def test_two_local_runs_give_byte_identical_results(local_runs):
    root, _ = local_runs
    a, b = trials(root / "a.sqlite"), trials(root / "b.sqlite")
    assert [r["method"] for r in a] == ["clean", "noisy", "romer"]
    assert a == b
    assert results_json(root / "a.sqlite") == results_json(root / "b.sqlite")
    by_method = {r["method"]: r for r in a}
    assert by_method["romer"]["plan"]["replacement"]  # a real plan, fitted twice to the same bits
    assert by_method["clean"]["ppl"] < by_method["noisy"]["ppl"]


def test_ray_backend_gives_the_local_results(local_runs, ray_cluster):
    root, config = local_runs
    summary = run_experiment(config, root / "ray.sqlite", backend="ray", workers=1, progress=False)
    assert summary.computed == 3
    assert trials(root / "ray.sqlite") == trials(root / "a.sqlite")
    assert results_json(root / "ray.sqlite") == results_json(root / "a.sqlite")
