"""One MoE layer as romer sees it: router, routing rule, routed experts and shared experts (found by
``romer.models.detect``; every module and tensor here is the model's own, nothing is copied)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from romer.models.experts import RoutedExperts
from romer.models.rules import RoutingRule


@dataclass(frozen=True)
class MoELayer:
    """One decoder layer's MoE block: router, routed experts, shared experts and routing rule.

    ``router_output`` names the slots of what the router's forward returns: ``("logits", "weights", "indices")``
    for transformers 5 routers, ``("indices", "weights", "other")`` for the remote-code DeepSeek MoEGate.
    ``name`` is the block's path in the model (``model.layers.3.mlp``).
    """

    index: int
    block: nn.Module
    router: nn.Module
    router_weight: torch.Tensor
    router_bias: torch.Tensor | None
    score_correction_bias: torch.Tensor | None
    num_experts: int
    top_k: int
    rule: RoutingRule
    experts: RoutedExperts
    shared_experts: tuple[nn.Module, ...]
    shared_expert_gate: nn.Module | None
    router_output: tuple[str, ...] = ("logits", "weights", "indices")
    name: str = ""

    @property
    def scoring(self) -> str:
        return self.rule.scoring

    @property
    def norm_topk_prob(self) -> bool:
        return self.rule.norm_topk_prob

    @property
    def routed_scaling_factor(self) -> float:
        return self.rule.routed_scaling_factor

    def topk_indices(self, router_output: tuple) -> torch.Tensor:
        """The selected experts ``[tokens, top_k]`` from what ``self.router``'s forward returned (a hook's output)."""
        indices = router_output[self.router_output.index("indices")]
        return indices.reshape(-1, indices.shape[-1])
