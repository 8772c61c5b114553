"""Routing rules of MoE routers: which experts a token goes to, and with which gate weights, from router logits.

A rule maps logits z [tokens, E] to (gate weights [tokens, k], expert indices [tokens, k]). Three orders exist:

* ``score_topk`` (most families): scores s = softmax(z) or sigmoid(z); the choice c = s (+ a score-correction
  bias b_e for selection only, deepseek_v3 / glm4_moe / dots1 / ernie4_5_moe); optionally group-limited
  (deepseek: E experts in ``n_group`` groups, a group scored by its best expert (``"max"``, deepseek_v2
  ``group_limited_greedy``) or the sum of its two best (``"top2"``, deepseek_v3); only the ``topk_group`` best
  groups stay selectable, the others filled with ``masked_fill``); top-k of c; weights w = s at the chosen
  experts, renormalised to sum 1 when ``norm_topk_prob`` (w / (Σw + 1e-20)), times ``routed_scaling_factor``.
* ``topk_softmax`` (gpt_oss, granitemoe): top-k of z, then softmax over the k chosen logits.
* ``sparsemixer`` (phimoe, Phi-3.5-MoE; in eval mode, where it is deterministic): the k experts are chosen one
  after the other, each the largest logit among those not chosen yet (so the choice is the top-k of z, in
  order). Chosen expert i with logit m = z_i gets the gate weight of a softmax restricted to its near rivals: the
  experts j not chosen before it with (m − z_j) / max(|z_j|, m) ≤ 2ε (ε = the router's ``router_jitter_noise``,
  0.01 in Phi-3.5-MoE); w_i = exp(z_i) / Σ_{rivals j} exp(z_j). The weights are not renormalised (a token whose
  first choice has no rival gets weight 1 for it, its second may get 1 too). Training-mode sparsemixer samples
  (Gumbel) and jitters the input; romer never trains a router, so only the eval rule exists here.

``select`` takes the logits for the choice and for the gates separately, so that digital corrections
(``romer.calibrate.routing_rule``) can bias the choice only; with both equal it is the router's own rule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

SCORINGS = ("softmax", "sigmoid")
ORDERS = ("score_topk", "topk_softmax", "sparsemixer")
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
    jitter_eps: float = 0.0  # sparsemixer only: ε of the near-rival test (the router's ``router_jitter_noise``)

    def __post_init__(self):
        if self.scoring not in SCORINGS or self.order not in ORDERS or self.group_score not in GROUP_SCORES:
            raise ValueError(f"bad routing rule {self}")
        if self.order == "topk_softmax" and (self.scoring != "softmax" or self.n_group > 1):
            raise ValueError("top-k-then-softmax routing has softmax scoring and no groups")
        if self.order == "sparsemixer" and (self.scoring != "softmax" or self.n_group > 1 or self.norm_topk_prob
                                            or not self.jitter_eps >= 0):
            raise ValueError("sparsemixer routing has softmax scoring, no groups, no renormalisation and ε ≥ 0")

    @property
    def group_limited(self) -> bool:
        return self.n_group > 1

    def describe(self) -> str:
        """A short human-readable name, e.g. ``sigmoid top-k, 8 groups keep 4 (top2), renormalised, ×2.5``."""
        if self.order == "topk_softmax":
            parts = ["top-k of logits, softmax over k"]
        elif self.order == "sparsemixer":
            parts = [f"sparsemixer top-k, softmax over rivals within 2ε = {2 * self.jitter_eps:g}"]
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
    before groups are scored; under sparsemixer they are no expert's near rival either).
    """
    masked = list(masked)
    if rule.order == "sparsemixer":
        if correction_bias is not None:
            raise ValueError("sparsemixer routing has no score-correction bias")
        weights, indices = _sparsemixer(rule.jitter_eps, top_k, z_choice, z_choice if z_gate is None else z_gate,
                                        masked)
        return weights * rule.routed_scaling_factor, indices
    z_choice = z_choice.float()
    z_gate = z_choice if z_gate is None else z_gate.float()
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


def _sparsemixer(eps: float, top_k: int, z_choice: torch.Tensor, z_gate: torch.Tensor, masked: Sequence[int]
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode sparsemixer (module docstring): expert j of the k is the largest ``z_choice`` among the experts
    not chosen before it and not ``masked``; its weight is the softmax of ``z_gate`` over its near rivals among
    those same experts (masked slots are no rivals: they are out of the router). The near-rival test runs in the
    gate logits' own dtype (as the family's router computes it), the softmax in float32."""
    open_slots = torch.ones(z_choice.shape, dtype=torch.bool, device=z_choice.device)
    open_slots[:, masked] = False
    weights, indices = [], []
    for _ in range(top_k):
        pick = z_choice.masked_fill(~open_slots, -math.inf).argmax(dim=-1, keepdim=True)
        own = z_gate.gather(1, pick)
        far = (own - z_gate) / z_gate.abs().clamp(min=own) > 2 * eps
        rivals = z_gate.float().masked_fill(far | ~open_slots, -math.inf)
        weights.append(torch.softmax(rivals, dim=-1).gather(1, pick))
        indices.append(pick)
        open_slots = open_slots.scatter(1, pick, False)
    return torch.cat(weights, dim=1), torch.cat(indices, dim=1)


def candidate_rules(scorings: Sequence[str], norms: Sequence[bool], groups: Sequence[tuple[int, int, str, float]],
                    scale: float, topk_softmax: bool, sparsemixer_eps: float | None = None) -> list[RoutingRule]:
    """Every rule built from the given options, in the given order of preference (``groups`` holds
    ``(n_group, topk_group, group_score, masked_fill)`` tuples; (1, 1, "max", -inf) means no groups); a
    sparsemixer rule last when ``sparsemixer_eps`` is given."""
    rules = [RoutingRule(scoring=s, norm_topk_prob=n, routed_scaling_factor=scale, n_group=g, topk_group=tg,
                         group_score=gs, masked_fill=fill)
             for s in scorings for (g, tg, gs, fill) in groups for n in norms]
    if topk_softmax:
        rules.append(RoutingRule(order="topk_softmax", routed_scaling_factor=scale))
    if sparsemixer_eps is not None:
        rules.append(RoutingRule(order="sparsemixer", routed_scaling_factor=scale, jitter_eps=sparsemixer_eps))
    return rules
