"""Routing rules of MoE routers: which experts a token goes to, and with which gate weights, from router logits.

A rule maps logits z [tokens, E] to (gate weights [tokens, k], expert indices [tokens, k]). Two orders exist:

* ``score_topk`` (most families): scores s = softmax(z) or sigmoid(z); the choice c = s (+ a score-correction
  bias b_e for selection only, deepseek_v3 / glm4_moe / dots1 / ernie4_5_moe); optionally group-limited
  (deepseek: E experts in ``n_group`` groups, a group scored by its best expert (``"max"``, deepseek_v2
  ``group_limited_greedy``) or the sum of its two best (``"top2"``, deepseek_v3); only the ``topk_group`` best
  groups stay selectable, the others filled with ``masked_fill``); top-k of c; weights w = s at the chosen
  experts, renormalised to sum 1 when ``norm_topk_prob`` (w / (Σw + 1e-20)), times ``routed_scaling_factor``.
* ``topk_softmax`` (gpt_oss, granitemoe): top-k of z, then softmax over the k chosen logits.

``select`` takes the logits for the choice and for the gates separately, so that digital corrections
(``romer.calibrate.routing_rule``) can bias the choice only; with both equal it is the router's own rule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

SCORINGS = ("softmax", "sigmoid")
ORDERS = ("score_topk", "topk_softmax")
GROUP_SCORES = ("max", "top2")


@dataclass(frozen=True)
class RoutingRule:
    """One router's selection rule (see the module docstring); frozen, comparable, printable."""

    scoring: str = "softmax"
    order: str = "score_topk"
    norm_topk_prob: bool = False
    routed_scaling_factor: float = 1.0
    n_group: int = 1
    topk_group: int = 1
    group_score: str = "max"
    masked_fill: float = -math.inf

    def __post_init__(self):
        if self.scoring not in SCORINGS or self.order not in ORDERS or self.group_score not in GROUP_SCORES:
            raise ValueError(f"bad routing rule {self}")
        if self.order == "topk_softmax" and (self.scoring != "softmax" or self.n_group > 1):
            raise ValueError("top-k-then-softmax routing has softmax scoring and no groups")

    @property
    def group_limited(self) -> bool:
        return self.n_group > 1

    def describe(self) -> str:
        """A short human-readable name, e.g. ``sigmoid top-k, 8 groups keep 4 (top2), renormalised, ×2.5``."""
        if self.order == "topk_softmax":
            parts = ["top-k of logits, softmax over k"]
        else:
            parts = [f"{self.scoring} top-k"]
            if self.group_limited:
                parts.append(f"{self.n_group} groups keep {self.topk_group} ({self.group_score})")
            if self.norm_topk_prob:
                parts.append("renormalised")
        if self.routed_scaling_factor != 1.0:
            parts.append(f"×{self.routed_scaling_factor:g}")
        return ", ".join(parts)


def _scores(rule: RoutingRule, z: torch.Tensor) -> torch.Tensor:
    return torch.softmax(z, dim=-1) if rule.scoring == "softmax" else torch.sigmoid(z)


def _group_limit(rule: RoutingRule, choice: torch.Tensor) -> torch.Tensor:
    """``choice`` with the experts outside each token's ``topk_group`` best groups set to ``masked_fill``."""
    tokens, experts = choice.shape
    if experts % rule.n_group:
        raise ValueError(f"{experts} experts do not split into {rule.n_group} groups")
    grouped = choice.view(tokens, rule.n_group, experts // rule.n_group)
    if rule.group_score == "max":
        group_scores = grouped.max(dim=-1).values
    else:
        group_scores = grouped.topk(2, dim=-1)[0].sum(dim=-1)
    keep = torch.topk(group_scores, k=rule.topk_group, dim=-1, sorted=False)[1]
    mask = torch.zeros_like(group_scores).scatter_(1, keep, 1).bool()
    mask = mask.unsqueeze(-1).expand_as(grouped).reshape(tokens, experts)
    return choice.masked_fill(~mask, rule.masked_fill)


def select(rule: RoutingRule, top_k: int, z_choice: torch.Tensor, z_gate: torch.Tensor | None = None,
           correction_bias: torch.Tensor | None = None, masked: Sequence[int] = ()
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """(gate weights [T, k] float32, expert indices [T, k] int64) of ``rule`` on logits [T, E].

    ``z_choice`` decides the selection, ``z_gate`` (default: the same) the gate weights; ``correction_bias`` [E]
    is added to the scores for the choice only; ``masked`` experts can never be chosen (they are excluded
    before groups are scored).
    """
    z_choice = z_choice.float()
    z_gate = z_choice if z_gate is None else z_gate.float()
    masked = list(masked)
    if rule.order == "topk_softmax":
        choice = z_choice
        if masked:
            choice = choice.clone()
            choice[:, masked] = -math.inf
        indices = torch.topk(choice, top_k, dim=-1).indices
        weights = torch.softmax(z_gate.gather(1, indices), dim=-1)
        return weights * rule.routed_scaling_factor, indices
    choice = _scores(rule, z_choice)
    scores = choice if z_gate is z_choice else _scores(rule, z_gate)
    if correction_bias is not None:
        choice = choice + correction_bias.reshape(-1).float()
    if masked:
        choice = choice.clone()
        choice[:, masked] = -math.inf
    if rule.group_limited:
        choice = _group_limit(rule, choice)
    indices = torch.topk(choice, top_k, dim=-1).indices
    weights = scores.gather(1, indices)
    if rule.norm_topk_prob:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    return weights * rule.routed_scaling_factor, indices


def candidate_rules(scorings: Sequence[str], norms: Sequence[bool], groups: Sequence[tuple[int, int, str, float]],
                    scale: float, topk_softmax: bool) -> list[RoutingRule]:
    """Every rule built from the given options, in the given order of preference (``groups`` holds
    ``(n_group, topk_group, group_score, masked_fill)`` tuples; (1, 1, "max", -inf) means no groups)."""
    rules = [RoutingRule(scoring=s, norm_topk_prob=n, routed_scaling_factor=scale, n_group=g, topk_group=tg,
                         group_score=gs, masked_fill=fill)
             for s in scorings for (g, tg, gs, fill) in groups for n in norms]
    if topk_softmax:
        rules.append(RoutingRule(order="topk_softmax", routed_scaling_factor=scale))
    return rules
