"""Record what every MoE router decides, on real tokens only, with bounded memory.

``record_routing(model)`` hooks every router of ``model`` (see ``romer.models.view.moe_layers``) and, per MoE
layer, accumulates over the real (non-padding) tokens of every forward call:

* ``counts[e]``: tokens whose top-k (the model's own selection, ``router output`` indices) contains expert e;
* ``mass[e]``: Σ over tokens of the gate weight the model gives expert e (the router's returned weights, so
  renormalisation and ``routed_scaling_factor`` are included), accumulated exactly in int64 fixed point
  (2⁻³² resolution) so that the sum does not depend on the order or batching of the tokens;
* router-logit percentiles per expert, streamed by a ``LogitSketch`` (fixed-size histogram on a power-of-two
  grid, see there);
* optionally (``keep_topk=True``) every token's top-k experts, sorted by gate weight (column 0 is the top-1),
  as uint8 / int16 rows concatenated in token order, for clean-vs-noisy agreement. These grow with the number
  of tokens; everything else is fixed-size.

Padding is masked with the ``attention_mask`` the model is called with (a forward pre-hook on the model reads
it, from kwargs or positionally); without a mask every token counts. Hooks are removed on exit, also on error.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from romer.models.view import MoELayer, moe_layers
from romer.routing.usage import ExpertUsage

PERCENTILES: tuple[float, ...] = (1.0, 5.0, 50.0, 95.0, 99.0)
DEFAULT_BINS = 1024
MASS_SCALE = 2.0**32  # fixed-point unit of the routed mass accumulator
_J_FLOOR = -60  # finest grid 2⁻⁶⁰; grids are never finer than max|x|·2⁻⁵⁰ (int64-safe bin numbers)


class LogitSketch:
    """Streaming per-column quantiles of a ``[tokens, columns]`` stream in O(columns · bins) memory.

    Each column keeps ``bins`` counters on an absolute power-of-two grid: counter i of column c holds the values
    x with ``floor(x / 2**j[c]) == k0[c] + i``. The level ``j[c]`` is the smallest one at which all values seen
    so far span at most ``bins`` cells (and not finer than ``max|x|·2⁻⁵⁰``); when new values do not fit, the
    level rises and old cells merge exactly (cell k at level j lies in cell ``k >> s`` at level j + s). Because
    that level and the window start depend only on the running min and max, the final histogram is exactly the
    histogram of all values on the final grid — the same whatever the order or batching of the values.

    A cell is narrower than ``2·range/(bins − 1)``. A quantile is read as torch.quantile defines it (linear
    interpolation between the two order statistics around rank q·(n − 1)), each order statistic estimated inside
    its cell as if the cell's values were spread evenly, the minimum and maximum exact; so the error stays below
    one cell: < 0.2 % of the column's range with 1024 bins. Non-finite values are not binned; they are counted in
    ``nonfinite``.
    """

    def __init__(self, columns: int, bins: int = DEFAULT_BINS):
        if bins < 8:
            raise ValueError(f"a logit sketch needs at least 8 bins, got {bins}")
        self.columns, self.bins = columns, bins
        self.hist = torch.zeros(columns, bins, dtype=torch.int64)
        self.level = torch.full((columns,), _J_FLOOR, dtype=torch.int64)
        self.start = torch.zeros(columns, dtype=torch.int64)
        self.min = torch.full((columns,), math.inf, dtype=torch.float64)
        self.max = torch.full((columns,), -math.inf, dtype=torch.float64)
        self.count = torch.zeros(columns, dtype=torch.int64)
        self.nonfinite = torch.zeros(columns, dtype=torch.int64)

    # --- update ----------------------------------------------------------------------------------------

    @torch.no_grad()
    def update(self, values: torch.Tensor) -> None:
        """Add ``values [tokens, columns]`` (any float dtype, any device)."""
        x = values.detach().reshape(-1, self.columns).to("cpu")
        if x.dtype not in (torch.float32, torch.float64):
            x = x.float()  # bf16 / fp16 → fp32 is exact
        if x.shape[0] == 0:
            return
        lo, hi = x.amin(0), x.amax(0)
        weight = None  # every value counts once
        if not bool(torch.isfinite(lo).all() and torch.isfinite(hi).all()):
            finite = torch.isfinite(x)
            self.nonfinite += (~finite).sum(0)
            lo = torch.where(finite, x, math.inf).amin(0)
            hi = torch.where(finite, x, -math.inf).amax(0)
            x = torch.where(finite, x, 0.0)
            weight = finite.to(torch.int64).reshape(-1)
        n = x.shape[0] if weight is None else weight.view(-1, self.columns).sum(0)
        new_min = torch.minimum(self.min, lo.double())
        new_max = torch.maximum(self.max, hi.double())
        seen = torch.isfinite(new_min)  # columns with at least one finite value
        level = torch.where(seen, torch.maximum(self._fit_level(new_min, new_max), self.level), self.level)
        start = torch.where(seen, self._cell(new_min, level), self.start)
        if bool(((level != self.level) | (start != self.start)).any()):
            self._regrid(level, start)
        self.min, self.max = new_min, new_max

        # floor(x·2^-level) is exact in x's own float dtype (power-of-two scaling, |result| < 2^50 by the level floor)
        scale = torch.ldexp(torch.ones(1, self.columns, dtype=x.dtype), -level[None, :].to(x.dtype))
        cells = torch.floor(x * scale).to(torch.int64) - start[None, :]
        cells.clamp_(0, self.bins - 1)  # a no-op but for non-finite entries (weight 0) and float underflow
        cells += torch.arange(self.columns, dtype=torch.int64)[None, :] * self.bins
        if weight is None:
            weight = torch.ones(1, dtype=torch.int64).expand(cells.numel())
        self.hist.view(-1).index_add_(0, cells.reshape(-1), weight)
        self.count += n

    def _cell(self, x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """floor(x / 2**level) as int64 (exact: scaling by a power of two is exact in float64)."""
        return torch.floor(torch.ldexp(x, -level.to(torch.float64))).to(torch.int64)

    def _fit_level(self, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        """Per column, the smallest level ≥ the current one (and ≥ the magnitude floor) whose cells cover
        [lo, hi] in at most ``bins`` cells. A function of (lo, hi) only, non-decreasing as the range grows."""
        lo_f = torch.where(torch.isfinite(lo), lo, 0.0)
        hi_f = torch.where(torch.isfinite(hi), hi, 0.0)
        magnitude = torch.maximum(lo_f.abs(), hi_f.abs())
        floor_mag = torch.where(magnitude > 0, torch.ceil(torch.log2(magnitude.clamp_min(1e-300))) - 50,
                                torch.full_like(magnitude, _J_FLOOR)).to(torch.int64)
        width = (hi_f - lo_f).clamp_min(0)
        guess = torch.where(width > 0, torch.floor(torch.log2(width.clamp_min(1e-300) / self.bins)) - 1,
                            torch.full_like(width, _J_FLOOR)).to(torch.int64)
        level = torch.maximum(torch.maximum(guess, floor_mag), torch.full_like(guess, _J_FLOOR))
        for _ in range(80):  # the guess is at most a couple of levels low
            too_wide = self._cell(hi_f, level) - self._cell(lo_f, level) + 1 > self.bins
            if not bool(too_wide.any()):
                return level
            level = level + too_wide.to(torch.int64)
        raise AssertionError("logit sketch: no grid level fits the range")  # pragma: no cover

    def _regrid(self, level: torch.Tensor, start: torch.Tensor) -> None:
        """Move the counters onto grid (level, start): cells merge exactly when the level rises."""
        shift = level - self.level
        if bool((shift < 0).any()):
            raise AssertionError("logit sketch levels never fall")  # pragma: no cover
        old = self.start[:, None] + torch.arange(self.bins, dtype=torch.int64)[None, :]
        new = torch.bitwise_right_shift(old, shift.clamp_max(62)[:, None]) - start[:, None]  # arithmetic: floor
        occupied = self.hist > 0
        if bool(((new < 0) | (new >= self.bins))[occupied].any()):
            raise AssertionError("logit sketch: occupied cell outside the new window")  # pragma: no cover
        offset = torch.arange(self.columns, dtype=torch.int64)[:, None] * self.bins
        flat = (new.clamp(0, self.bins - 1) + offset).reshape(-1)
        hist = torch.zeros(self.columns * self.bins, dtype=torch.int64)
        hist.index_add_(0, flat, self.hist.reshape(-1))
        self.hist = hist.view(self.columns, self.bins)
        self.level, self.start = level, start

    # --- read ------------------------------------------------------------------------------------------

    def quantiles(self, percentiles: Sequence[float] = PERCENTILES) -> torch.Tensor:
        """``[columns, len(percentiles)]`` float64 estimates of torch.quantile(values, p/100, dim=0) (linear
        interpolation between order statistics); NaN for a column without values. Every column at once."""
        q = torch.tensor([float(p) / 100 for p in percentiles], dtype=torch.float64)
        if bool(((q < 0) | (q > 1)).any()):
            raise ValueError(f"percentiles must lie in 0 … 100, got {list(percentiles)}")
        cum = self.hist.cumsum(1)
        rank = q[None, :] * (self.count[:, None] - 1).double()  # 0-based fractional order statistic, as torch.quantile
        below, above = torch.floor(rank).to(torch.int64), torch.ceil(rank).to(torch.int64)
        frac = rank - below.double()
        out = (1 - frac) * self._order_statistics(cum, below) + frac * self._order_statistics(cum, above)
        return torch.where((self.count > 0)[:, None], out, math.nan)

    def _order_statistics(self, cum: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """Estimates ``[columns, k]`` of the r-th smallest values (0-based) of each column: the r-th lies in the
        first cell whose cumulative count exceeds r; the cell's m values are taken as spread evenly, at
        (i + 0.5)/m of its width. The smallest and largest are exact."""
        cell = torch.searchsorted(cum, r, right=True).clamp_max(self.bins - 1)
        before = torch.where(cell > 0, cum.gather(1, (cell - 1).clamp_min(0)), torch.zeros_like(cell))
        inside = self.hist.gather(1, cell).double().clamp_min(1)
        width = torch.ldexp(torch.ones(self.columns, dtype=torch.float64), self.level.to(torch.float64))[:, None]
        value = ((self.start[:, None] + cell).double() + ((r - before).double() + 0.5) / inside) * width
        lo, hi = self.min[:, None], self.max[:, None]  # the extremes are known exactly
        value = torch.where(r <= 0, lo, torch.where(r >= self.count[:, None] - 1, hi, value))
        return torch.minimum(torch.maximum(value, lo), hi)

    def state_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.hist, self.level, self.start, self.min, self.max,
                                                          self.count, self.nonfinite))


def _topk_dtype(num_experts: int) -> torch.dtype:
    if num_experts <= 256:
        return torch.uint8
    if num_experts <= 32768:
        return torch.int16
    return torch.int32


@dataclass
class LayerRouting:
    """What one MoE layer's router decided over the recorded real tokens."""

    layer: int  # decoder layer index
    num_experts: int
    top_k: int
    scoring: str
    counts: torch.Tensor  # [E] int64: tokens whose top-k contains e
    mass_fixed: torch.Tensor  # [E] int64: Σ gate weight in units of 2⁻³²
    logits: LogitSketch  # router-logit distribution per expert
    tokens: int = 0
    topk_chunks: list[torch.Tensor] | None = None  # kept top-k rows, per forward call

    @property
    def mass(self) -> torch.Tensor:
        """[E] float64: Σ over tokens of the gate weight the model gives expert e (0 when not selected)."""
        return self.mass_fixed.double() / MASS_SCALE

    @property
    def frequency(self) -> torch.Tensor:
        """[E] float64 f_e = counts / tokens (Σ_e f_e = top_k)."""
        return self.counts.double() / max(self.tokens, 1)

    @property
    def topk(self) -> torch.Tensor | None:
        """[tokens, top_k] experts per real token in token order, sorted by gate weight (column 0 = top-1);
        None unless recorded with keep_topk=True."""
        if self.topk_chunks is None:
            return None
        if len(self.topk_chunks) != 1:  # concatenate once, keep the result
            empty = torch.empty(0, self.top_k, dtype=_topk_dtype(self.num_experts))
            self.topk_chunks = [torch.cat(self.topk_chunks) if self.topk_chunks else empty]
        return self.topk_chunks[0]

    def percentiles(self, percentiles: Sequence[float] = PERCENTILES) -> torch.Tensor:
        """[E, len(percentiles)] router-logit percentiles per expert (float64)."""
        return self.logits.quantiles(percentiles)


@dataclass
class RoutingRecord:
    """Per-MoE-layer routing record of one model over the tokens it saw inside ``record_routing``."""

    layers: list[LayerRouting]
    keep_topk: bool = False
    forward_calls: int = 0
    meta: dict = field(default_factory=dict)

    @property
    def tokens(self) -> int:
        """Real tokens seen (the same in every layer)."""
        return self.layers[0].tokens if self.layers else 0

    @property
    def layer_indices(self) -> list[int]:
        return [layer.layer for layer in self.layers]

    def __iter__(self) -> Iterator[LayerRouting]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def usage(self) -> ExpertUsage:
        """The counts as a ``romer.routing.ExpertUsage`` (needs the same expert count in every layer)."""
        sizes = {layer.num_experts for layer in self.layers}
        if len(sizes) != 1:
            raise ValueError(f"layers have different expert counts {sorted(sizes)}")
        return ExpertUsage(layer_indices=self.layer_indices, top_k=[layer.top_k for layer in self.layers],
                           counts=torch.stack([layer.counts for layer in self.layers]), tokens=self.tokens)

    def state_bytes(self) -> int:
        """Bytes of the fixed-size state (top-k rows excluded)."""
        return sum(layer.logits.state_bytes() + 16 * layer.num_experts for layer in self.layers)


# --- hooks -----------------------------------------------------------------------------------------------


def router_logits(layer: MoELayer, args: tuple, output: tuple) -> torch.Tensor:
    """``[tokens, E]`` router logits from a router forward hook: the returned logits when the router returns
    them (transformers 5 routers), else ``hidden @ weight.T (+ bias)`` recomputed from its input."""
    if "logits" in layer.router_output:
        logits = output[layer.router_output.index("logits")]
    else:
        hidden = args[0].reshape(-1, layer.router_weight.shape[1])
        logits = F.linear(hidden.to(layer.router_weight.dtype), layer.router_weight, layer.router_bias)
    return logits.reshape(-1, layer.num_experts)


def router_weights(layer: MoELayer, output: tuple) -> torch.Tensor:
    """``[tokens, top_k]`` gate weights the block will apply, from a router forward hook's output."""
    weights = output[layer.router_output.index("weights")]
    return weights.reshape(-1, weights.shape[-1])


def sort_by_weight(indices: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Each row's experts by gate weight, largest first; equal weights by expert index (deterministic)."""
    by_index, order = indices.sort(dim=1, stable=True)
    w = weights.gather(1, order)
    _, by_weight = w.float().sort(dim=1, descending=True, stable=True)
    return by_index.gather(1, by_weight)


class _MaskState:
    """The real-token mask of the forward call in progress, set by a pre-hook on the model."""

    def __init__(self):
        self.mask: torch.Tensor | None = None  # [batch, seq] bool, or None: every token is real
        self.calls = 0

    def read(self, module, args, kwargs) -> None:
        mask = kwargs.get("attention_mask")
        if mask is None and len(args) > 1 and isinstance(args[1], torch.Tensor):
            mask = args[1]  # forward(input_ids, attention_mask, ...)
        if mask is not None and mask.dim() != 2:
            raise ValueError(f"record_routing needs a 2-D [batch, seq] attention_mask, got shape {tuple(mask.shape)}")
        self.mask = None if mask is None else mask.bool()
        self.calls += 1

    def clear(self, *_) -> None:
        self.mask = None

    def real(self, tokens: int, device: torch.device) -> torch.Tensor | None:
        """Flat [tokens] bool mask of the real tokens among the router's ``tokens`` rows (batch-major)."""
        if self.mask is None:
            return None
        batch, seq = self.mask.shape
        if tokens == batch * seq:
            return self.mask.reshape(-1).to(device)
        if tokens % batch == 0 and tokens // batch <= seq:  # cached decoding: the mask covers past + current
            return self.mask[:, seq - tokens // batch:].reshape(-1).to(device)
        raise ValueError(f"router saw {tokens} tokens but the attention_mask is {batch}×{seq}")


def _make_layer(layer: MoELayer, keep_topk: bool, bins: int) -> LayerRouting:
    return LayerRouting(layer=layer.index, num_experts=layer.num_experts, top_k=layer.top_k, scoring=layer.scoring,
                        counts=torch.zeros(layer.num_experts, dtype=torch.int64),
                        mass_fixed=torch.zeros(layer.num_experts, dtype=torch.int64),
                        logits=LogitSketch(layer.num_experts, bins), topk_chunks=[] if keep_topk else None)


def _recorder(layer: MoELayer, rec: LayerRouting, state: _MaskState):
    @torch.no_grad()
    def hook(module, args, output):
        indices = layer.topk_indices(output)
        weights = router_weights(layer, output)
        logits = router_logits(layer, args, output)
        real = state.real(indices.shape[0], indices.device)
        if real is not None:
            indices, weights, logits = indices[real], weights[real], logits[real]
        idx = indices.to("cpu", torch.int64)
        w = weights.detach().to("cpu", torch.float64)
        rec.counts += torch.bincount(idx.reshape(-1), minlength=rec.num_experts)
        fixed = torch.round(w * MASS_SCALE).to(torch.int64)
        rec.mass_fixed.index_add_(0, idx.reshape(-1), fixed.reshape(-1))
        rec.logits.update(logits)
        rec.tokens += idx.shape[0]
        if rec.topk_chunks is not None:
            rec.topk_chunks.append(sort_by_weight(idx, w).to(_topk_dtype(rec.num_experts)))
    return hook


@contextmanager
def record_routing(model: nn.Module, keep_topk: bool = False, bins: int = DEFAULT_BINS) -> Iterator[RoutingRecord]:
    """Record every MoE router's decisions on real tokens while the block runs; yields a ``RoutingRecord``.

    keep_topk: also keep each token's top-k (sorted by gate weight) for agreement between two records of the
    same tokens — memory grows by tokens × top_k bytes per layer. bins: histogram cells per expert for the
    logit percentiles (accuracy ≈ 2/bins of the logit range). Hooks are removed on exit, also on error.
    """
    layers = moe_layers(model)
    record = RoutingRecord(layers=[_make_layer(layer, keep_topk, bins) for layer in layers], keep_topk=keep_topk)
    state = _MaskState()
    handles = []
    try:
        handles.append(model.register_forward_pre_hook(state.read, with_kwargs=True))
        handles.append(model.register_forward_hook(state.clear))
        handles += [layer.router.register_forward_hook(_recorder(layer, rec, state))
                    for layer, rec in zip(layers, record.layers)]
        yield record
    finally:
        for handle in handles:
            handle.remove()
        record.forward_calls = state.calls
