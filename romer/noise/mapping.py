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

MAPPING_GROUPS = ("expert", "channel", "tile", "tensor")


def check_group(group: str, tile_rows: int = 512) -> None:
    """Refuse an unknown mapping group or a non-positive tile height (UserError)."""
    if group not in MAPPING_GROUPS:
        raise UserError(f"unknown mapping group {group!r}; choose one of {', '.join(MAPPING_GROUPS)}")
    if group == "tile" and (not isinstance(tile_rows, int) or tile_rows < 1):
        raise UserError(f"tile_rows must be a positive integer (got {tile_rows!r})")


def group_abs_max(w: Tensor, group: str, tile_rows: int = 512) -> Tensor:
    """max|w| over each mapping group (float32, zero for an all-zero group), broadcastable to ``w``.

    Shapes: "expert" → [..., 1, 1]; "channel" and "tile" → [..., out, 1]; "tensor" → [1, …, 1]. Computed matrix
    by matrix, so a fused [E, out, in] tensor never needs a second full-size buffer.
    """
    check_group(group, tile_rows)
    if w.ndim == 0:
        raise UserError("cannot map a 0-d tensor onto a crossbar; expected a vector or a matrix")
    if w.ndim == 1:
        return group_abs_max(w.unsqueeze(0), group, tile_rows).squeeze(0)
    lead, out = w.shape[:-2], w.shape[-2]
    mats = w.detach().reshape(-1, *w.shape[-2:])
    row_max = torch.stack([m.abs().amax(dim=-1) for m in mats]).float().reshape(*lead, out)  # [..., out]
    if group == "tensor":
        return row_max.amax().reshape((1,) * w.ndim)
    if group == "expert":
        return row_max.amax(dim=-1).reshape(*lead, 1, 1)
    if group == "channel":
        return row_max.unsqueeze(-1)
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


# Elements per piece of work: on the CPU a few hundred kB of float32 per buffer (fastest measured: 2^18 beat
# 2^15 and 2^20 on the project's machine); on a GPU, whole matrices.
CPU_CHUNK = 1 << 18
CUDA_CHUNK = 1 << 24

# (rows [r, in] float32 — a copy, free to overwrite — their scales s [r or 1, 1], whether α's reference is
#  needed) → (W_ref rows or None, W_now rows), float32
RowReader = Callable[[Tensor, Tensor, bool], tuple[Tensor | None, Tensor]]


def program_rows(weight: Tensor, read_rows: RowReader, *, group: str, tile_rows: int = 512,
                 probe: Tensor | None = None, out: Tensor | None = None, chunk: int | None = None) -> Tensor:
    """Read-back weight of ``weight``, matrix by matrix (see :func:`matrices`), a few rows at a time.

    ``read_rows`` maps rows of one matrix and their mapping scales s = max|w|_group (0 for an all-zero group)
    to their read-back values. With a ``probe`` x [in, k], each matrix is multiplied by the global drift
    compensation α = mean|W_ref·x| / mean|W_now·x| (1 when W_now·x is all zero). A matrix whose weights are
    all zero reads back 0 and draws nothing. Arithmetic is float32; each matrix is cast back once into ``out``
    (default: a new tensor of ``weight``'s shape and dtype; ``out=weight`` programs in place: a matrix is
    written only after it has been read). Working memory: one matrix in float32 plus one chunk.
    """
    scales = matrix_scales(group_abs_max(weight, group, tile_rows), weight)
    out = torch.empty(weight.shape, dtype=weight.dtype, device=weight.device) if out is None else out
    src = weight.detach().reshape(1, 1, -1) if weight.ndim == 1 else weight.detach().reshape(-1, *weight.shape[-2:])
    dst = out.view(1, 1, -1) if weight.ndim == 1 else out.view(-1, *weight.shape[-2:])
    rows, cols = src.shape[-2:]
    chunk = chunk or (CPU_CHUNK if weight.device.type == "cpu" else CUDA_CHUNK)
    step = max(1, chunk // cols)
    for i in range(src.shape[0]):
        scale = scales[i]
        if not bool((scale > 0).any()):
            dst[i].zero_()
            continue
        now_buf = torch.empty((rows, cols), dtype=torch.float32, device=weight.device)
        sums = torch.zeros(2, dtype=torch.float32, device=weight.device)
        for r0 in range(0, rows, step):
            block = src[i, r0:r0 + step].to(torch.float32, copy=True)
            ref, now = read_rows(block, scale if scale.shape[0] == 1 else scale[r0:r0 + step], probe is not None)
            now_buf[r0:r0 + step] = now
            if probe is not None:
                sums[0] += (ref @ probe).abs_().sum()
                sums[1] += (now @ probe).abs_().sum()
        if probe is not None:
            ref_sum, now_sum = sums.tolist()
            if now_sum > 0:
                now_buf.mul_(ref_sum / now_sum)
        dst[i].copy_(now_buf)
    return out


def read_pairs(devices: Callable[[Tensor], tuple[Tensor, Tensor]],
               zero_devices: Callable[[int, torch.device], tuple[Tensor, Tensor]]) -> RowReader:
    """A :data:`RowReader` for differential pairs: each weight's sign device is programmed to ĝ = |w|/s and goes
    through ``devices(ĝ) → (ĝ_ref, ĝ_now)``; its other device (target 0) through ``zero_devices(n, device)``;
    w = sign(w)·(ĝ_sign − ĝ_other)·s, i.e. (ĝ⁺ − ĝ⁻)·s (a zero weight counts as positive)."""

    def read(block: Tensor, scale: Tensor, need_ref: bool) -> tuple[Tensor | None, Tensor]:
        signed_scale = torch.copysign(scale, block)
        target = block.abs_().div_(torch.where(scale > 0, scale, torch.ones_like(scale))).view(-1)
        sign_ref, sign_now = devices(target)
        other_ref, other_now = zero_devices(target.numel(), target.device)
        now = sign_now.sub_(other_now).view(signed_scale.shape).mul_(signed_scale)
        ref = sign_ref.sub_(other_ref).view(signed_scale.shape).mul_(signed_scale) if need_ref else None
        return ref, now

    return read


def through_devices(weight: Tensor, devices: Callable[[Tensor], tuple[Tensor, Tensor]], *, group: str,
                    tile_rows: int = 512, probe: Tensor | None = None,
                    zero_devices: Callable[[int, torch.device], tuple[Tensor, Tensor]] | None = None,
                    out: Tensor | None = None, chunk: int | None = None) -> Tensor:
    """Read-back weight after mapping ``weight`` onto differential pairs and through physical devices.

    ``devices(g_target) → (ĝ_ref, ĝ_now)`` (ĝ_ref: the programmed state before drift and read noise; ĝ_now: what
    is read at inference); ``zero_devices(n, device)`` the same for n devices programmed to 0 (default:
    ``devices`` on zeros). See :func:`read_pairs` and :func:`program_rows` (compensation, chunks, ``out``).
    """
    if zero_devices is None:
        def zero_devices(n: int, device: torch.device) -> tuple[Tensor, Tensor]:
            return devices(torch.zeros(n, device=device))
    return program_rows(weight, read_pairs(devices, zero_devices), group=group, tile_rows=tile_rows, probe=probe,
                        out=out, chunk=chunk)
