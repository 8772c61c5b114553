"""The Python API (romer.api, exposed lazily by ``import romer``): its docstring examples run, programming and
plans restore the model bit for bit, a chip raises PPL, plans round-trip through JSON, calibrated folders reload
to the same numbers, and ``import romer`` loads no torch."""

import doctest
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import romer
import romer.api

ROOT = Path(__file__).resolve().parents[1]
FAST = dict(split="test", max_tokens=256, window=128)  # 2 windows: fast, and the chip's damage is clear


@pytest.mark.parametrize("module", [romer, romer.api], ids=["romer", "romer.api"])
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, raise_on_error=False, verbose=False)
    assert result.attempted > 0
    assert result.failed == 0


def test_import_romer_loads_no_torch():
    code = ("import romer, sys; assert 'torch' not in sys.modules and 'transformers' not in sys.modules; "
            "assert 'calibrate' in dir(romer) and 'EvalSpec' in romer.__all__")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT)})


def test_public_names_resolve():
    for name in romer.__all__:
        assert getattr(romer, name) is not None, name
    assert romer.Chip is romer.noise.chip.Chip and romer.Plan is romer.calibrate.plan.Plan
    assert callable(romer.calibrate) and romer.calibrate.Calibrator  # the package, callable as api.calibrate
    with pytest.raises(AttributeError):
        romer.no_such_name


@pytest.fixture(scope="module")
def lm():
    return romer.load("olmoe-tiny")


@pytest.fixture(scope="module")
def chip():
    return romer.default_chip(seed=5)


@pytest.fixture(scope="module")
def spec():
    return romer.EvalSpec(**FAST)


@pytest.fixture(scope="module")
def scores(lm, chip, spec):
    """clean and noisy PPL of the module's model and chip on the module's spec."""
    model, tokenizer = lm
    return {"clean": romer.evaluate(model, tokenizer, spec).ppl,
            "noisy": romer.evaluate(model, tokenizer, spec, chip=chip).ppl}


@pytest.fixture(scope="module")
def plan(lm, chip):
    model, tokenizer = lm
    return romer.calibrate(model, tokenizer, chip, "recalibrate", sequences=4, window=128)


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_bit_identical(model, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    changed = [k for k in before if not torch.equal(after[k], before[k])]
    assert not changed, changed[:5]


def test_program_restores_bit_exactly(lm, chip):
    model, _ = lm
    before = snapshot(model)
    with romer.program(model, chip) as programmed:
        assert programmed.names
        assert not all(torch.equal(model.get_parameter(n), before[n]) for n in programmed.names)
    assert_bit_identical(model, before)


def test_chip_raises_perplexity(scores):
    assert scores["noisy"] > scores["clean"]


def test_evaluate_spec_forms_agree(lm, spec, scores):
    model, tokenizer = lm
    result = romer.evaluate(model, tokenizer, **FAST)
    assert result.ppl == scores["clean"] and result.spec == spec
    assert romer.evaluate(model, tokenizer, dict(FAST, window=512), window=128).ppl == scores["clean"]
    assert "PPL" in str(result) and result.to_dict()["perplexity"]["tokens"] == 256


def test_recalibrate_plan_round_trips_json(plan, tmp_path):
    assert plan.method["kind"] == "recalibrate" and plan.router
    data = json.loads(json.dumps(plan.to_dict()))
    assert romer.Plan.from_dict(data).to_dict() == plan.to_dict()
    plan.save(tmp_path / "plan.json")
    assert romer.Plan.load(tmp_path / "plan.json").to_dict() == plan.to_dict()


def test_apply_changes_perplexity_and_restores(lm, chip, spec, plan, scores):
    model, tokenizer = lm
    before = snapshot(model)
    with romer.apply(model, chip, plan):
        calibrated = romer.evaluate(model, tokenizer, spec).ppl
    assert_bit_identical(model, before)
    assert calibrated != scores["noisy"] and calibrated != scores["clean"]
    assert romer.evaluate(model, tokenizer, spec).ppl == scores["clean"]  # the routing hooks are gone too


def test_calibrated_saved_reloaded_scores_the_same(lm, chip, spec, plan, tmp_path):
    """(ROMER itself: examples/calibrate_save_reload.py, run by tests/test_examples.py.)"""
    model, tokenizer = lm
    applied = romer.evaluate(model, tokenizer, spec, chip=chip, plan=plan).ppl
    folder = romer.save_calibrated(model, tokenizer, chip, plan, tmp_path / "calibrated")
    reloaded, _ = romer.load(folder)
    assert romer.evaluate(reloaded, tokenizer, spec).ppl == pytest.approx(applied, rel=1e-5)


def test_routing_stats_compare_chip_with_clean(lm, chip, spec):
    model, tokenizer = lm
    clean = romer.routing_stats(model, tokenizer, spec)
    assert clean.layers[0].kl is None and len(clean.layers) == 4
    on_chip = romer.routing_stats(model, tokenizer, spec, chip=chip)
    assert on_chip.overall["kl"] > 0 and 0 < on_chip.overall["jaccard"] < 1


def test_bad_methods_are_refused(lm, chip):
    model, tokenizer = lm
    with pytest.raises(romer.errors.UserError, match="unknown method"):
        romer.calibrate(model, tokenizer, chip, "magic")
    with pytest.raises(romer.errors.UserError, match="makes no plan"):
        romer.calibrate(model, tokenizer, chip, {"kind": "oracle"})
    with pytest.raises(romer.errors.UserError, match="needs the chip"):
        romer.evaluate(model, tokenizer, max_tokens=16, plan=romer.Plan.none())
    noisy = romer.calibrate(model, tokenizer, chip, "noisy")
    assert noisy.method["kind"] == "noisy" and not noisy.changes_routing


def test_calibrate_takes_a_method_config_and_merges_calibration_settings(lm, chip):
    model, tokenizer = lm
    config = romer.MethodConfig(name="three routers", kind="copies", copies={"count": 3})
    plan = romer.calibrate(model, tokenizer, chip, config, sequences=2)  # copies: hardware only, nothing observed
    assert plan.router_copies == 3 and plan.method["name"] == "three routers"
    assert plan.method["calibration"]["sequences"] == 2 and plan.method["calibration"]["window"] == 512
    plan = romer.calibrate(model, tokenizer, chip, {"kind": "copies", "calibration": {"window": 64}}, sequences=2)
    assert plan.method["name"] == "copies" and plan.router_copies == 2
    assert plan.method["calibration"]["window"] == 64 and plan.method["calibration"]["sequences"] == 2


def test_evaluate_scores_tasks_when_asked(lm):
    pytest.importorskip("lm_eval")
    model, tokenizer = lm
    result = romer.evaluate(model, tokenizer, ppl="none", tasks=["romer_cloze"], task_limit=4)
    assert result.ppl is None and result.tasks["romer_cloze"].samples == 4
    assert str(result).startswith("romer_cloze ") and result.to_dict()["tasks"]["romer_cloze"]["samples"] == 4
