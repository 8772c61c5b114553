"""Methods as registered classes: MethodConfig, the calibrator and the evaluator read what a kind declares, so a
new kind made of existing parts is one class — shown here by registering one for the test only."""

import pytest
import torch

from romer.calibrate import Calibrator
from romer.calibrate.config import MethodConfig
from romer.methods import PART_ORDER, REGISTRY, Method, plan_kinds, register
from romer.noise.chip import Chip
from tests.tiny_models import VOCAB, tiny


def test_every_kind_gets_its_declared_parts_and_no_other():
    for kind, cls in REGISTRY.items():
        config = MethodConfig(name=kind, kind=kind)
        filled = {part for part in PART_ORDER if getattr(config, part) is not None}
        assert filled == set(cls.parts), kind
        assert config.needs_fit == (cls.scores == "plan")
        foreign = next((p for p in PART_ORDER if p not in cls.parts + cls.optional_parts), None)
        if foreign:
            with pytest.raises(ValueError, match=f"takes no '{foreign}' options"):
                MethodConfig(name=kind, kind=kind, **{foreign: {}})


def test_declarations_the_evaluator_reads():
    assert {k: REGISTRY[k].scores for k in ("clean", "noisy", "oracle", "romer")} == {
        "clean": "clean", "noisy": "chip", "oracle": "oracle", "romer": "plan"}
    assert set(plan_kinds()) == {"replace", "recalibrate", "romer", "maxnn", "balance", "copies"}
    assert not MethodConfig(name="c", kind="copies").observes and MethodConfig(name="r", kind="romer").observes
    # an optional part is taken when given, never filled in
    assert MethodConfig(name="p", kind="recalibrate").copies is None
    assert MethodConfig(name="p", kind="recalibrate", copies={"count": 4}).copies.count == 4


def test_unknown_kind_and_bad_registrations_are_refused():
    with pytest.raises(ValueError, match="unknown method kind 'bogus'; choose one of clean, noisy"):
        MethodConfig(name="x", kind="bogus")

    class Twice(Method):
        kind = "romer"
    with pytest.raises(ValueError, match="registered twice"):
        register(Twice)

    class Strange(Method):
        kind, parts = "strange", ("prune",)
    with pytest.raises(ValueError, match="unknown parts"):
        register(Strange)


def test_a_new_kind_made_of_existing_parts_is_one_class(monkeypatch):
    """Replacement with bias balancing, a kind romer does not ship: registered, configured and fitted without
    touching MethodConfig or the calibrator."""
    monkeypatch.setattr("romer.methods.REGISTRY", dict(REGISTRY))

    class ReplaceBalance(Method):
        kind, parts = "replace+balance", ("replace", "balance")

    register(ReplaceBalance)
    config = MethodConfig(name="rb", kind="replace+balance", calibration={"batch_size": 3})
    assert config.replace is not None and config.balance is not None and config.needs_fit
    model = tiny("olmoe")
    ids = torch.randint(1, VOCAB, (6, 24), generator=torch.Generator().manual_seed(0))
    plan = Calibrator(config).fit(model, ids, Chip.from_options("gaussian", eta=0.3, placement="moe", seed=3))
    assert plan.replacement and all(fix.selection_bias is not None for fix in plan.router)
