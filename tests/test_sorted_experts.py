"""romer's sorted experts forward against transformers' own per-expert loop ("eager") and by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from romer.models.sorted_experts import NAME, use_sorted_experts
from tests.tiny_models import CONFIGS, tiny


def _logits(model, ids, implementation):
    model.set_experts_implementation(implementation)
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("family", list(CONFIGS))
def test_same_logits_as_the_eager_loop(family):
    model = tiny(family)
    ids = torch.randint(0, 64, (3, 20), generator=torch.Generator().manual_seed(1))
    reference = _logits(model, ids, "eager")
    assert use_sorted_experts(model)
    assert model.config._experts_implementation == NAME
    sorted_logits = _logits(model, ids, NAME)
    scale = reference.abs().max()
    assert (sorted_logits - reference).abs().max() <= 1e-5 * scale


def test_one_token_one_expert_by_hand():
    """k = 1, weight g on expert e: the output is g · W_d (silu(W_g x) ⊙ W_u x), written out here from the
    fused layout (rows [:I] of gate_up_proj are the gate, [I:] the up projection)."""
    model = tiny("olmoe")
    use_sorted_experts(model)
    experts = model.model.layers[0].mlp.experts
    x = torch.randn(2, experts.gate_up_proj.shape[-1], generator=torch.Generator().manual_seed(2))
    index = torch.tensor([[5], [0]])
    weights = torch.tensor([[0.25], [2.0]])
    with torch.no_grad():
        out = experts(x, index, weights)
        intermediate = experts.down_proj.shape[-1]
        for row, (e, g) in enumerate(zip(index[:, 0].tolist(), weights[:, 0].tolist())):
            gate, up = experts.gate_up_proj[e][:intermediate], experts.gate_up_proj[e][intermediate:]
            expected = g * (experts.down_proj[e] @ (F.silu(gate @ x[row]) * (up @ x[row])))
            torch.testing.assert_close(out[row], expected, rtol=1e-5, atol=1e-6)


def test_unused_experts_and_repeated_rows():
    """Experts that receive no row, and a token sent twice to the same expert (replica slots do this), sum as
    the eager loop sums them."""
    model = tiny("qwen3_moe")
    experts = model.model.layers[0].mlp.experts
    x = torch.randn(4, experts.gate_up_proj.shape[-1], generator=torch.Generator().manual_seed(3))
    index = torch.tensor([[7, 7], [7, 0], [0, 7], [7, 7]])
    weights = torch.rand(4, 2, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        model.set_experts_implementation("eager")
        reference = experts(x, index, weights)
        use_sorted_experts(model)
        torch.testing.assert_close(experts(x, index, weights), reference, rtol=1e-5, atol=1e-6)


def test_a_model_without_fused_experts_is_left_alone():
    from torch import nn

    assert not use_sorted_experts(nn.Sequential(nn.Linear(3, 3)))
