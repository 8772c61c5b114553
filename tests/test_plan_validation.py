"""A plan whose numbers cannot be right for the model is refused in one line before anything changes: NaN or ∞
corrections, vectors of the wrong length, expert indices out of range, unknown enum values and layers."""

import copy
import math

import pytest
import torch

from romer.calibrate import Calibrator, MethodConfig, Plan, apply
from romer.errors import UserError
from romer.noise.chip import Chip
from tests.tiny_models import VOCAB, tiny

CHIP = Chip.from_options("gaussian", eta=0.3, placement="moe", seed=3)


@pytest.fixture(scope="module")
def fitted():
    model = tiny("olmoe")
    ids = torch.randint(1, VOCAB, (6, 24), generator=torch.Generator().manual_seed(0))
    config = MethodConfig(name="romer", kind="romer", calibration={"batch_size": 3})
    return model, Calibrator(config).fit(model, ids, CHIP).to_dict()


def broken(plan: dict, change) -> Plan:
    data = copy.deepcopy(plan)
    change(data)
    return Plan.from_dict(data)


@pytest.mark.parametrize("change, message", [
    (lambda d: d["router"][0]["scale"].__setitem__(0, math.nan), "scale holds a value that is not a finite number"),
    (lambda d: d["router"][0]["offset"].__setitem__(1, math.inf), "offset holds a value that is not a finite"),
    (lambda d: d["router"][0]["scale"].pop(), "scale has 7 values, the layer has 8 experts"),
    (lambda d: d["router"][0].__setitem__("apply_to", "selection+gate"), r"apply_to 'selection\+gate' is not one of"),
    (lambda d: d["router"][0].__setitem__("layer", 9), "layer 9 is not a MoE layer"),
    (lambda d: d["replacement"][0]["pairs"][0].__setitem__(1, 8), "expert index 8 is not in 0 … 7"),
    (lambda d: d["replacement"][0].__setitem__("variant", "replicas"), "unknown variant 'replicas'"),
    (lambda d: d["router"][0].__setitem__("masked", [-1]), "expert index -1 is not in 0 … 7"),
])
def test_a_broken_plan_is_refused_before_anything_changes(fitted, change, message):
    model, plan = fitted
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UserError, match=message):
        with apply(model, CHIP, broken(plan, change)):
            pass
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_the_fitted_plan_itself_passes(fitted):
    model, plan = fitted
    with apply(model, CHIP, Plan.from_dict(plan)):
        pass
