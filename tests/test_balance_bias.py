"""Bias balancing ranks again only the tokens whose top-k may have changed: it must give exactly the bias of the
plain loop that ranks every token at every step (written out here as the reference)."""

import math

import pytest
import torch

from romer.calibrate.config import BalanceConfig
from romer.calibrate.recalibration import fit_balance_bias


def every_token_every_step(logits, top_k, config, masked=()):
    z = logits.float()
    num_experts = z.shape[1]
    selectable = torch.ones(num_experts, dtype=torch.bool)
    selectable[list(masked)] = False
    bias = torch.zeros(num_experts)
    step = config.step * float(z.std())
    for _ in range(config.iterations):
        choice = (z + bias).masked_fill(~selectable, -math.inf)
        load = torch.bincount(torch.topk(choice, top_k, dim=-1).indices.reshape(-1), minlength=num_experts).float()
        bias += step * torch.sign(load[selectable].mean() - load) * selectable
    return bias.tolist()


@pytest.mark.parametrize("tokens, experts, top_k, masked, step", [
    (1500, 64, 8, (), 0.01), (1500, 64, 6, (3, 7), 0.01), (800, 16, 2, (), 0.05), (800, 8, 7, (0,), 0.02),
])
def test_balance_bias_equals_ranking_every_token_every_step(tokens, experts, top_k, masked, step):
    generator = torch.Generator().manual_seed(tokens + experts + top_k)
    z = torch.randn(tokens, experts, generator=generator) * 2 + torch.randn(experts, generator=generator)
    config = BalanceConfig(iterations=120, step=step)
    assert fit_balance_bias(z, top_k, config, list(masked)) == every_token_every_step(z, top_k, config, masked)


def test_balance_bias_handles_ties_like_the_plain_loop():
    """Logits on a coarse grid tie often: tied tokens have no slack and are ranked at every step."""
    generator = torch.Generator().manual_seed(3)
    z = torch.randint(-3, 4, (600, 16), generator=generator).float()
    config = BalanceConfig(iterations=60, step=0.05)
    assert fit_balance_bias(z, 4, config) == every_token_every_step(z, 4, config)
