"""The routing rule of a calibrated MoE layer: digital corrections applied after the (analog) router.

A ``RouterFix`` per layer holds everything a plan changes about routing; ``install`` puts one forward hook on
each fixed router that recomputes the top-k selection and the gate weights from the router's logits z [tokens, E]:

* per-token normalisation (P3): z ← z · token_scale / Q_p(|z|) (Q_p over the experts of that token);
* per-expert affine (P1): z' = scale_e · z + offset_e; a selection bias (P2, bias balancing) adds to z' for the
  choice only;
* masked slots (replaced cold experts, variants replica and redirect) can never be chosen;
* split pairs (variant split): every second token routed to a hot expert goes to its replica instead.

Selection follows the layer's own rule (``romer.models.rules``: softmax or sigmoid scores, score-correction
bias, group-limited top-k (deepseek), top-k-then-softmax (gpt_oss), eval-mode sparsemixer (phimoe), optional
renormalisation, routed scaling factor); masked slots are excluded before groups are scored (sparsemixer: they
are no one's near rival either). The gate weights come from z' ("selection+gates") or from the router's own z
("selection"). The hook returns the corrected logits in the router's logits slot, so a routing recorder
installed after it sees what the calibrated model routes on. Layers without a fix keep their router untouched.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from romer.models.rules import select
from romer.models.view import MoELayer, UnsupportedModelError
from romer.routing.recorder import router_logits


APPLY_TO = ("selection", "selection+gates")  # the corrected logits choose the experts, or also give the gates


@dataclass
class RouterFix:
    """Digital routing corrections for one MoE layer (all lists have length E where given)."""

    layer: int
    scale: list[float] | None = None
    offset: list[float] | None = None
    selection_bias: list[float] | None = None
    token_p: float | None = None  # P3 percentile of |z| per token (0 … 100)
    token_scale: float | None = None  # P3 reference scale S_r
    apply_to: str = "selection+gates"
    masked: list[int] = field(default_factory=list)
    split: list[tuple[int, int]] = field(default_factory=list)  # (hot, replica slot)

    @property
    def is_identity(self) -> bool:
        return (self.scale is None and self.offset is None and self.selection_bias is None and self.token_p is None
                and not self.masked and not self.split)

    def to_dict(self) -> dict:
        return {"layer": self.layer, "scale": self.scale, "offset": self.offset,
                "selection_bias": self.selection_bias, "token_p": self.token_p, "token_scale": self.token_scale,
                "apply_to": self.apply_to, "masked": list(self.masked), "split": [list(p) for p in self.split]}

    @classmethod
    def from_dict(cls, data: dict) -> "RouterFix":
        return cls(layer=data["layer"], scale=data.get("scale"), offset=data.get("offset"),
                   selection_bias=data.get("selection_bias"), token_p=data.get("token_p"),
                   token_scale=data.get("token_scale"), apply_to=data.get("apply_to", "selection+gates"),
                   masked=list(data.get("masked", [])), split=[tuple(p) for p in data.get("split", [])])


def _tensor(values: list[float] | None, like: torch.Tensor) -> torch.Tensor | None:
    return None if values is None else torch.tensor(values, dtype=torch.float64).to(like.device, like.dtype)


def corrected_logits(z: torch.Tensor, fix: RouterFix) -> torch.Tensor:
    """z' of the fix: per-token normalisation, then the per-expert affine (no bias, no masks)."""
    if fix.token_p is not None:
        q = torch.quantile(z.abs(), fix.token_p / 100, dim=-1, keepdim=True)
        z = z * (fix.token_scale / q.clamp_min(1e-12))
    if fix.scale is not None:
        z = z * _tensor(fix.scale, z)
    if fix.offset is not None:
        z = z + _tensor(fix.offset, z)
    return z


def route(layer: MoELayer, z: torch.Tensor, fix: RouterFix, weight_dtype: torch.dtype
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(z', gate weights [T, k], expert indices [T, k]) of ``layer``'s routing rule under ``fix``."""
    z = z.float()
    z_fixed = corrected_logits(z, fix)
    z_choice = z_fixed if fix.selection_bias is None else z_fixed + _tensor(fix.selection_bias, z_fixed)
    z_gate = z_fixed if fix.apply_to == "selection+gates" else z
    weights, indices = select(layer.rule, layer.top_k, z_choice, z_gate, layer.score_correction_bias, fix.masked)
    if fix.split:
        odd = (torch.arange(indices.shape[0], device=indices.device) % 2 == 1)[:, None]
        for hot, replica in fix.split:
            indices = torch.where(odd & (indices == hot), torch.full_like(indices, replica), indices)
    return z_fixed, weights.to(weight_dtype), indices


def _hook(layer: MoELayer, fix: RouterFix):
    names = layer.router_output

    @torch.no_grad()
    def hook(module, args, output):
        z = router_logits(layer, args, output)
        old_weights = output[names.index("weights")]
        z_fixed, weights, indices = route(layer, z, fix, old_weights.dtype)
        old_indices = output[names.index("indices")]
        out = list(output)
        out[names.index("weights")] = weights.reshape(old_weights.shape[:-1] + (weights.shape[-1],))
        out[names.index("indices")] = indices.to(old_indices.dtype).reshape(old_indices.shape)
        if "logits" in names:
            logits = output[names.index("logits")]
            out[names.index("logits")] = z_fixed.to(logits.dtype).reshape(logits.shape)
        return tuple(out)
    return hook


def install(layers: list[MoELayer], fixes: list[RouterFix]) -> list:
    """Hook the routers of the layers that have a non-identity fix; returns the handles (call ``.remove()``)."""
    by_index = {layer.index: layer for layer in layers}
    handles = []
    try:
        for fix in fixes:
            if fix.is_identity:
                continue
            if fix.layer not in by_index:
                raise UnsupportedModelError(f"the plan fixes MoE layer {fix.layer}, the model has "
                                            f"{sorted(by_index)}")
            layer = by_index[fix.layer]
            handles.append(layer.router.register_forward_hook(_hook(layer, fix)))
    except BaseException:
        for h in handles:
            h.remove()
        raise
    return handles
