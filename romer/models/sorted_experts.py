"""A faster experts forward for fused MoE experts on the CPU: token rows sorted by expert once, gathered with
``index_select``, the routing weight applied to the narrow intermediate activations, and the rows summed back
with ``index_add_``.

transformers' ``grouped_mm`` implementation gathers the selected rows with advanced indexing, multiplies the
routing weights into the ``[tokens·k, hidden]`` down-projection output, un-permutes that output with a second
gather and sums it per token: three passes over the widest tensor of the layer. Here the weight multiplies the
``[tokens·k, intermediate]`` activations instead (the down projection is linear, so ``W_d (g·h) = g·(W_d h)``;
only valid without a down-projection bias or a post-expert norm, else the weight is applied after it as
transformers does) and the per-token sum is one ``index_add_`` into the output. Results agree with
``grouped_mm`` to float rounding (about 1e-7 relative in float32: the k contributions are summed in another
order). ``benchmarks/forward_throughput.py`` measures the forward with both.

It is registered in transformers' experts interface under ``NAME`` (the library's extension point for experts
kernels) and chosen per model by ``use_sorted_experts``; off the CPU it defers to ``grouped_mm``. A chip with an
IO model (``romer.noise.io``) passes its own ``project``: every expert matmul then goes through the chip's DAC, tiles
and ADC, on any device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from collections.abc import Callable

from torch import nn
from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS, grouped_mm_experts_forward

NAME = "romer_sorted"


def _grouped_linear(rows: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor, transposed: bool) -> torch.Tensor:
    """Rows sorted by expert through each expert's matrix: weight ``[E, out, in]`` (``[E, in, out]`` transposed)."""
    return F.grouped_mm(rows.to(weight.dtype), weight if transposed else weight.transpose(-2, -1), offs=offsets)


# (projection "gate_up" | "down", rows sorted by expert, the [E, …] weight, offsets, expert of each row) → outputs
Project = Callable[[str, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def sorted_experts_forward(self: nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                           top_k_weights: torch.Tensor, project: Project | None = None) -> torch.Tensor:
    """The experts' output ``[tokens, hidden]`` for ``top_k_index`` / ``top_k_weights`` ``[tokens, k]``.

    ``project`` computes each projection of the sorted rows (default: ``F.grouped_mm`` on the CPU; without one,
    other devices defer to transformers' ``grouped_mm``)."""
    own_periphery = project is not None  # the chip's ADC output is weighted digitally, after the down projection
    if project is None:
        if hidden_states.device.type != "cpu" or getattr(self, "_is_expert_parallel", False):
            return grouped_mm_experts_forward(self, hidden_states, top_k_index, top_k_weights)

        def project(which, rows, weight, offsets, expert_of_row):
            return _grouped_linear(rows, weight, offsets, self.is_transposed)
    k = top_k_index.shape[-1]
    experts = top_k_index.reshape(-1)
    order = torch.argsort(experts, stable=True)
    token = order // k
    expert_sorted = experts.index_select(0, order)
    offsets = torch.cumsum(torch.bincount(experts, minlength=self.num_experts), 0, dtype=torch.int32)
    weight = top_k_weights.reshape(-1).index_select(0, order).unsqueeze(-1)
    rows = hidden_states.index_select(0, token)

    up_weight = self.gate_up_proj if self.has_gate else self.up_proj
    up = project("gate_up", rows, up_weight, offsets, expert_sorted)
    if self.has_bias:
        up = up + (self.gate_up_proj_bias if self.has_gate else self.up_proj_bias).index_select(0, expert_sorted)
    inner = self._apply_gate(up) if self.has_gate else self.act_fn(up)

    post_norm = getattr(self, "has_post_expert_norm", False)  # transformers ≥ 5.18; 5.17's experts lack it
    weight_first = not self.has_bias and not post_norm and not own_periphery
    if weight_first:
        inner = inner * weight.to(inner.dtype)
    out = project("down", inner, self.down_proj, offsets, expert_sorted)
    if self.has_bias:
        out = out + self.down_proj_bias.index_select(0, expert_sorted)
    if post_norm:
        out = self.post_expert_norm(out)
    if not weight_first:
        out = out * weight.to(out.dtype)
    final = torch.zeros(hidden_states.shape, dtype=out.dtype, device=hidden_states.device)
    final.index_add_(0, token, out)
    return final.to(hidden_states.dtype)


def use_sorted_experts(model: nn.Module) -> bool:
    """Switch ``model``'s fused experts to ``sorted_experts_forward`` where its experts use transformers' experts
    interface; returns whether it did (models without fused experts keep their own forward)."""
    if NAME not in ALL_EXPERTS_FUNCTIONS:
        ALL_EXPERTS_FUNCTIONS[NAME] = sorted_experts_forward
    fused = any(hasattr(m, "has_gate") and hasattr(m, "is_transposed") for m in model.modules())
    if not fused or not hasattr(model, "set_experts_implementation"):
        return False
    model.set_experts_implementation(NAME)
    return True
