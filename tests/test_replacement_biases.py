"""A replica computes its hot expert's function: biased experts (gpt_oss) get the biases copied too."""

import torch

from romer.calibrate.replacement import copy_expert
from romer.models.view import moe_layers
from tests.tiny_models import tiny


def test_copy_expert_copies_weights_and_biases_and_undo_restores_them():
    model = tiny("gpt_oss")
    experts = moe_layers(model)[0].experts
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in experts.bias_parameters_by_name().values():
            p.copy_(torch.randn(p.shape, generator=generator))
    before = {k: v.clone() for k, v in experts.tensors(1).items()}
    assert {"gate_bias", "up_bias", "down_bias"} <= set(before)
    assert not torch.equal(before["down_bias"], experts.tensors(0)["down_bias"])
    undo = copy_expert(experts, source=0, target=1)
    for key, value in experts.tensors(0).items():
        assert torch.equal(experts.tensors(1)[key], value), key
    with torch.no_grad():
        for view, original in undo:
            view.copy_(original)
    for key, value in before.items():
        assert torch.equal(experts.tensors(1)[key], value), key
