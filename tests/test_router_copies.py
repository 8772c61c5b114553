"""K router copies (method kind ``copies``): K independently programmed arrays of each analog router, averaged.

Independent draws averaged: the router weights' error variance is σ²/K (a statistical test on the gaussian chip,
whose error is additive and unclamped), the copies are reproducible and distinct, restore is bit-exact, the cost
is (K − 1) × the routers' share of the analog weights (counted by hand), and `romer run` scores the method.
"""

import json

import pytest
import torch

from romer.calibrate import Calibrator, MethodConfig, Plan, apply, plan_cost
from romer.models.view import moe_layers
from romer.noise.chip import Chip, program, program_copy
from tests.tiny_models import tiny

CHIP = Chip.from_options("gaussian", eta=0.1, placement="moe", seed=5)


def router_errors(model, chip, copies: int) -> torch.Tensor:
    """The routers' weight error (chip − clean), all layers flattened, with ``copies`` arrays averaged."""
    clean = [layer.router_weight.detach().clone() for layer in moe_layers(model)]
    with apply(model, chip, Plan(method={}, chip=chip.to_dict(), model={}, router_copies=copies)):
        return torch.cat([(layer.router_weight.detach() - c).flatten() for layer, c in zip(moe_layers(model), clean)])


def test_averaging_k_copies_divides_the_error_variance_by_k():
    from romer.models import load_model

    model, _ = load_model("olmoe-tiny")  # 4 routers × 64 × 256 weights
    one = router_errors(model, CHIP, 1).double()
    four = router_errors(model, CHIP, 4).double()
    n = one.numel()
    assert n >= 60_000
    ratio = float(one.var() / four.var())
    # var of a sample variance ratio of n normal draws: ≈ 2·(2/n) relative, so 5 σ ≈ 10·√(1/n)
    assert ratio == pytest.approx(4.0, rel=10 / n ** 0.5)
    # the model's own array is copy 0: its error is part of the average, so the two are correlated (ρ = 1/√K)
    rho = float(torch.corrcoef(torch.stack([one, four]))[0, 1])
    assert rho == pytest.approx(0.5, abs=5 / n ** 0.5)


def test_copies_are_reproducible_distinct_and_restore_is_exact():
    model = tiny("olmoe")
    router = moe_layers(model)[0].router_weight
    before = router.detach().clone()
    name = next(n for n, p in model.named_parameters() if p is router)
    a, b = program_copy(before, CHIP, name, 1), program_copy(before, CHIP, name, 1)
    c = program_copy(before, CHIP, name, 2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    with program(model, CHIP):
        assert not torch.equal(router.detach(), a)  # copy 1 is not the array programmed into the model
    with pytest.raises(ValueError, match="copy numbers start at 1"):
        program_copy(before, CHIP, name, 0)
    with apply(model, CHIP, Plan(method={}, chip=CHIP.to_dict(), model={}, router_copies=3)):
        assert not torch.equal(router.detach(), before)
    assert torch.equal(router.detach(), before)


def test_cost_is_the_extra_router_arrays():
    model = tiny("olmoe")
    layers = moe_layers(model)
    routers = sum(layer.router_weight.numel() for layer in layers)
    analog = routers + sum(p.numel() for layer in layers for p in layer.experts.parameters_by_name().values())
    cost = plan_cost(model, CHIP, Plan(method={}, chip=CHIP.to_dict(), model={}, router_copies=4))
    assert cost.digital_share == 0.0
    assert cost.extra_analog_share == pytest.approx(3 * routers / analog, rel=1e-12)
    digital_router = Chip.from_options("gaussian", eta=0.1, placement="experts", seed=5)
    assert plan_cost(model, digital_router, Plan(method={}, chip={}, model={}, router_copies=4)).extra_analog_share == 0


def test_the_method_needs_no_calibration_text_and_its_plan_round_trips():
    method = MethodConfig(name="4 router copies", kind="copies", copies={"count": 4})
    assert method.needs_fit and not method.observes
    plan = Calibrator(method).fit(tiny("olmoe"), None, CHIP)
    assert plan.router_copies == 4 and not plan.router and not plan.replacement
    again = Plan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again.router_copies == 4
    assert "router_copies" not in Plan.none(CHIP).to_dict()  # plans without copies keep their old form
    with pytest.raises(ValueError):
        MethodConfig(name="one copy", kind="copies", copies={"count": 1})
    with pytest.raises(ValueError, match="takes no 'copies'"):
        MethodConfig(name="x", kind="balance", copies={"count": 2})
    assert MethodConfig(name="p1", kind="recalibrate").copies is None  # optional there, never filled in


@pytest.fixture(scope="module")
def run():
    """One `romer run` group on a loud gaussian chip: copies alone, P1 alone and P1 on copies, same chip."""
    from romer.experiment.config_file import load_config
    from romer.experiment.evaluate import Evaluator

    config = load_config("default", ["models=[olmoe-tiny]", "chip.chips=1", "eval.max_tokens=256",
                                     "chip.presets=[{preset: gaussian, overrides: {eta: 0.3}}]",
                                     "methods=[clean, noisy, {name: 4 router copies, kind: copies, copies: {count: 4}},"
                                     " recalibration, {name: P1 + 4 copies, kind: recalibrate, copies: {count: 4}}]",
                                     "calibration.sequences=2"])
    (group,) = config.groups()
    evaluator = Evaluator()
    rows = {row["method"]: row for row in evaluator(group)}
    return rows, evaluator, group


def by_hand(run, plan: Plan) -> float:
    """PPL of the run's evaluation text with ``plan`` applied by hand on the run's chip."""
    from romer.eval.perplexity import perplexity
    from romer.experiment.evaluate import DEFAULT_EVAL

    _, evaluator, group = run
    model, tokenizer = evaluator.model("olmoe-tiny")
    spec = {**DEFAULT_EVAL, **(group.eval or {})}
    with torch.no_grad(), apply(model, Chip.from_dict(group.chip), plan):
        return perplexity(model, tokenizer, evaluator.eval_text("olmoe-tiny", spec), window=spec["window"],
                          batch_size=spec["batch_size"]).ppl


def test_romer_run_scores_router_copies_on_their_own_programmed_state(run):
    """The evaluator's row equals applying the plan by hand and scoring the same text; its cost is the routers'."""
    rows, evaluator, _ = run
    model, _ = evaluator.model("olmoe-tiny")
    copies = rows["4 router copies"]
    assert copies["ppl"] != rows["noisy"]["ppl"]
    layers = moe_layers(model)
    routers = sum(layer.router_weight.numel() for layer in layers)
    analog = routers + sum(p.numel() for layer in layers for p in layer.experts.parameters_by_name().values())
    assert copies["extra_analog_share"] == pytest.approx(3 * routers / analog, rel=1e-12)
    assert copies["ppl"] == pytest.approx(by_hand(run, Plan.from_dict(copies["plan"])), rel=1e-6)
    assert rows["recalibration"]["extra_analog_share"] == 0.0  # the base state is untouched by the copies


def test_p1_on_router_copies_is_fitted_on_the_averaged_routers(run):
    """The evaluator fits P1 on the observation of the copied state; the plan equals a standalone fit (which
    programs that state itself), differs from P1 fitted on the plain chip, and scores as the plan applied by hand."""
    rows, evaluator, group = run
    model, tokenizer = evaluator.model("olmoe-tiny")
    both = Plan.from_dict(rows["P1 + 4 copies"]["plan"])
    assert both.router_copies == 4 and both.router
    method = MethodConfig.model_validate(next(m for m in group.methods if m["name"] == "P1 + 4 copies"))
    calibrator = Calibrator(method)
    alone = calibrator.fit(model, calibrator.windows(tokenizer), Chip.from_dict(group.chip))
    assert [f.to_dict() for f in alone.router] == [f.to_dict() for f in both.router]
    plain = Plan.from_dict(rows["recalibration"]["plan"])
    assert [f.to_dict() for f in plain.router] != [f.to_dict() for f in both.router]
    assert rows["P1 + 4 copies"]["ppl"] == pytest.approx(by_hand(run, both), rel=1e-6)
    with pytest.raises(ValueError, match="router copies"):
        MethodConfig(name="x", kind="recalibrate", recalibrate={"mode": "lstsq"}, copies={"count": 2})
