"""Weight ↔ conductance on a differential pair, with a choice of mapping group.

Each weight w sits on two devices: ĝ⁺ = max(w, 0)/s and ĝ⁻ = max(−w, 0)/s, with s = max|w| over the weight's
mapping group, so ĝ± ∈ [0, 1] (units of g_max); the read-back weight is (ĝ⁺ − ĝ⁻)·s.

Mapping groups (weights are [..., out, in], rows are dim −2, as nn.Linear stores them):

- ``"expert"``: one scale per 2-D matrix — per leading index of a fused [E, out, in] tensor (each expert has
  its own), the whole matrix for a 2-D weight. The default: one expert's outlier does not set the others'.
- ``"channel"``: one scale per output row w[..., i, :].
- ``"tile"``: one scale per block of ``tile_rows`` consecutive rows (the last block may be shorter).
- ``"tensor"``: one scale for the whole tensor.

A 1-D tensor is treated as a single row. Scales are float32 and broadcast against the weight.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch import Tensor

from romer.errors import UserError
from romer.noise.functional import drift_compensation_factor

MAPPING_GROUPS = ("expert", "channel", "tile", "tensor")


def check_group(group: str, tile_rows: int = 512) -> None:
    """Refuse an unknown mapping group or a non-positive tile height (UserError)."""
    if group not in MAPPING_GROUPS:
        raise UserError(f"unknown mapping group {group!r}; choose one of {', '.join(MAPPING_GROUPS)}")
    if group == "tile" and (not isinstance(tile_rows, int) or tile_rows < 1):
        raise UserError(f"tile_rows must be a positive integer (got {tile_rows!r})")


def group_abs_max(w: Tensor, group: str, tile_rows: int = 512) -> Tensor:
    """max|w| over each mapping group (float32, zero for an all-zero group), broadcastable to ``w``.

    Shapes: "expert" → [..., 1, 1]; "channel" and "tile" → [..., out, 1]; "tensor" → [1, …, 1].
    """
    check_group(group, tile_rows)
    if w.ndim == 0:
        raise UserError("cannot map a 0-d tensor onto a crossbar; expected a vector or a matrix")
    if w.ndim == 1:
        return group_abs_max(w.unsqueeze(0), group, tile_rows).squeeze(0)
    if group == "tensor":
        return w.detach().abs().amax().float().reshape((1,) * w.ndim)
    if group == "expert":
        return w.detach().abs().amax(dim=(-2, -1), keepdim=True).float()
    row_max = w.detach().abs().amax(dim=-1).float()  # [..., out]
    if group == "channel":
        return row_max.unsqueeze(-1)
    out = row_max.shape[-1]
    n_tiles = -(-out // tile_rows)
    padded = torch.nn.functional.pad(row_max, (0, n_tiles * tile_rows - out))
    tile_max = padded.reshape(*row_max.shape[:-1], n_tiles, tile_rows).amax(dim=-1)
    return tile_max.repeat_interleave(tile_rows, dim=-1)[..., :out].unsqueeze(-1)


def weight_scale(w: Tensor, group: str, tile_rows: int = 512) -> Tensor:
    """Mapping scale s = max|w| over each group (float32, broadcastable to ``w``); 1 for an all-zero group."""
    m = group_abs_max(w, group, tile_rows)
    return torch.where(m > 0, m, torch.ones_like(m))


def to_conductance(w: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
    """Target conductances (ĝ⁺, ĝ⁻) = (max(w, 0)/s, max(−w, 0)/s) in units of g_max, float32, in [0, 1]."""
    w32 = w.float()
    return w32.clamp_min(0.0) / scale, (-w32).clamp_min(0.0) / scale


def from_conductance(g_pos: Tensor, g_neg: Tensor, scale: Tensor) -> Tensor:
    """Read-back weight (ĝ⁺ − ĝ⁻)·s (float32)."""
    return (g_pos - g_neg) * scale


def matrices(w: Tensor) -> Iterator[tuple[int, Tensor]]:
    """(index, 2-D matrix) for each matrix of ``w`` over its flattened leading dims; a vector is one 1×n matrix.

    Read-only use: for a non-contiguous ``w`` the matrices may be copies.
    """
    flat = w.reshape(1, 1, -1) if w.ndim == 1 else w.reshape(-1, *w.shape[-2:])
    for i in range(flat.shape[0]):
        yield i, flat[i]


def matrix_scales(scale: Tensor, w: Tensor) -> Tensor:
    """``scale`` (from :func:`group_abs_max` / :func:`weight_scale` of ``w``) as a stack aligned with
    :func:`matrices`: [n_matrices, 1 or out, 1], so ``stack[i]`` broadcasts against matrix i."""
    if w.ndim == 1:
        return scale.reshape(1, 1, -1)
    lead = w.shape[:-2]
    full = scale.expand(*lead, *scale.shape[-2:]) if lead else scale
    return full.reshape(-1, *scale.shape[-2:])


def through_devices(weight: Tensor, devices: Callable[[Tensor], tuple[Tensor, Tensor]], *, group: str,
                    tile_rows: int = 512, probe: Tensor | None = None) -> Tensor:
    """Read-back weight after mapping ``weight`` onto differential pairs and through physical devices.

    Matrix by matrix (see :func:`matrices`): ĝ⁺ then ĝ⁻ go through ``devices(g_target) → (ĝ_ref, ĝ_now)``
    (ĝ_ref: the programmed state before drift and read noise; ĝ_now: what is read at inference), and
    w_now = (ĝ⁺_now − ĝ⁻_now)·s. With a ``probe`` x [in, k], each matrix is multiplied by the global drift
    compensation α = mean|W_ref·x| / mean|W_now·x|. A group whose weights are all zero reads back 0.
    Returns a new tensor of ``weight``'s shape and dtype.
    """
    g_max = group_abs_max(weight, group, tile_rows)
    scales = matrix_scales(torch.where(g_max > 0, g_max, torch.ones_like(g_max)), weight)
    live = matrix_scales(g_max, weight) > 0
    out = torch.empty(weight.shape, dtype=weight.dtype, device=weight.device)
    out_mats = out.view(1, 1, -1) if weight.ndim == 1 else out.view(-1, *weight.shape[-2:])
    for i, w in matrices(weight):
        g_pos, g_neg = to_conductance(w, scales[i])
        pos_ref, pos_now = devices(g_pos)
        neg_ref, neg_now = devices(g_neg)
        w_now = from_conductance(pos_now, neg_now, scales[i])
        if probe is not None:
            w_now = w_now * drift_compensation_factor(from_conductance(pos_ref, neg_ref, scales[i]), w_now, probe)
        out_mats[i].copy_(torch.where(live[i], w_now, torch.zeros_like(w_now)))
    return out
