"""MaxNN baseline (IBM, arXiv 2603.02633): keep the experts with the largest maximum neuron weight norm digital."""

from __future__ import annotations

import torch

from romer.models.view import MoELayer


def max_neuron_norm(layer: MoELayer) -> torch.Tensor:
    """[E] per expert: max over its intermediate neurons j of ‖(Wg[j,:], Wu[j,:], Wd[:,j])‖₂ (clean weights)."""
    norms = []
    for e in range(layer.num_experts):
        w = layer.experts.weights(e)
        per_neuron = w["gate"].float().pow(2).sum(1) + w["up"].float().pow(2).sum(1) + w["down"].float().pow(2).sum(0)
        norms.append(per_neuron.sqrt().max())
    return torch.stack(norms)


def digital_experts(layer: MoELayer, share: float) -> list[int]:
    """The round(share·E) experts with the largest max neuron norm (ties: lower index), sorted."""
    count = round(share * layer.num_experts)
    if count == 0:
        return []
    order = torch.argsort(-max_neuron_norm(layer).double(), stable=True)
    return sorted(order[:count].tolist())
