"""A streaming routing monitor for a calibrated chip in service: P1 refitted from the tokens the model serves.

``RoutingMonitor(model, reference, config, fixes)`` puts one forward hook on every MoE router. On each forward it

1. streams the router's own (noisy, uncorrected) logits into fixed-size per-expert sketches
   (``romer.routing.recorder.LogitSketch``: a histogram of ``bins`` cells per expert on a power-of-two grid that
   merges cells exactly as the range grows; every percentile is within one cell, < 2·range/(bins − 1), of
   ``torch.quantile``'s) — one sketch per layer since the start (or since the last refit, ``reset_after_refit``)
   and one for the current window;
2. routes with the current P1 correction (``romer.calibrate.routing_rule``), exactly as an installed plan would;
3. counts which experts the corrected routing chose, for the window's load CV and cold experts.

No token ids or text are kept: the state is O(layers · experts · bins) whatever the stream's length.

``end_window()`` closes a window: per layer its load CV, cold experts and logit drift (median over experts of the
relative change of the (lo, hi) spread, and of the median's shift in units of the spread, against the sketch the
current correction was fitted on), logged as a ``WindowLog``; then it refits P1 (``recalibration.fit_quantile``)
from the long sketches when ``refit_every`` tokens have passed since the last fit, or the drift passed
``drift_threshold``. A refit changes the routing of the *next* forward only: a window is always scored before
any refit that uses it (the serving loop, ``romer.calibrate.serving``, scores, then calls ``end_window``).
"""

from __future__ import annotations

import copy
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from romer.calibrate import recalibration as recal
from romer.calibrate.config import RecalibrateConfig
from romer.calibrate.routing_rule import RouterFix, _hook
from romer.errors import UserError
from romer.models.view import moe_layers
from romer.routing.recorder import LogitSketch, router_logits
from romer.routing.stats import coefficient_of_variation


@dataclass(frozen=True)
class MonitorConfig:
    """How the monitor sketches and when it refits.

    percentiles: P1's (lo, hi); bins: histogram cells per expert (error < 2·range/(bins − 1) per percentile);
    refit_every: refit after this many served tokens since the last fit (0: never on a schedule);
    drift_threshold: also refit when a layer's logit drift passes this (None: never on drift); min_tokens: no refit
    from fewer sketched tokens; cold: an expert is cold in a window when its share of routed slots is below
    ``cold`` · k/E; reset_after_refit: the long sketches restart after each refit (tracks a chip that drifts)."""

    percentiles: tuple[float, float] = (1.0, 99.0)
    bins: int = 512
    refit_every: int = 0
    drift_threshold: float | None = None
    min_tokens: int = 256
    cold: float = 0.1
    reset_after_refit: bool = False

    def __post_init__(self):
        RecalibrateConfig(percentiles=self.percentiles)  # same check as P1's: 0 ≤ lo < 50 < hi ≤ 100
        if self.bins < 8:
            raise UserError(f"monitor bins must be at least 8, got {self.bins}")
        if self.refit_every < 0 or self.min_tokens < 1:
            raise UserError(f"refit_every must be ≥ 0 and min_tokens ≥ 1, got {self.refit_every}, {self.min_tokens}")
        if self.drift_threshold is not None and not self.drift_threshold > 0:
            raise UserError(f"drift_threshold must be > 0, got {self.drift_threshold}")

    @property
    def levels(self) -> tuple[float, float, float]:
        return (self.percentiles[0], 50.0, self.percentiles[1])


@dataclass
class Percentiles:
    """Fixed per-expert percentiles ``values [E, 3]`` at ``levels`` (lo, 50, hi), read as a ``LayerRouting``
    reads its sketch (what ``recalibration.fit_quantile`` asks of its inputs)."""

    levels: tuple[float, ...]
    values: torch.Tensor

    def percentiles(self, levels: Sequence[float]) -> torch.Tensor:
        if tuple(float(p) for p in levels) != tuple(self.levels):
            raise ValueError(f"percentiles {tuple(levels)} were not kept; these were: {self.levels}")
        return self.values


@dataclass
class LayerWindow:
    """One layer over one window: load CV and cold experts of the served (corrected) routing, and logit drift."""

    layer: int
    cv: float
    cold: int
    spread_drift: float  # median_e |spread_e / spread_fit,e − 1|
    median_shift: float  # median_e |Q50_e − Q50_fit,e| / median_e spread_fit,e

    def to_dict(self) -> dict:
        return {"layer": self.layer, "cv": self.cv, "cold": self.cold, "spread_drift": self.spread_drift,
                "median_shift": self.median_shift}


@dataclass
class WindowLog:
    """One closed window: its index, tokens, the tokens served so far, per-layer figures and whether (and why)
    a refit followed it."""

    window: int
    tokens: int
    served: int
    layers: list[LayerWindow]
    refit: str | None = None  # "schedule", "drift" or None
    extra: dict = field(default_factory=dict)  # what the serving loop adds (e.g. the window's NLL)

    @property
    def drift(self) -> float:
        return max((max(l.spread_drift, l.median_shift) for l in self.layers), default=0.0)

    def to_dict(self) -> dict:
        return {"window": self.window, "tokens": self.tokens, "served": self.served, "refit": self.refit,
                "drift": self.drift, "layers": [l.to_dict() for l in self.layers], **self.extra}


def reference_percentiles(record, levels: Sequence[float]) -> dict[int, Percentiles]:
    """The clean reference P1 maps onto: per MoE layer, the clean model's per-expert logit percentiles at
    ``levels`` from a ``RoutingRecord`` of it (e.g. ``Calibrator``'s clean observation's ``record``)."""
    levels = tuple(float(p) for p in levels)
    return {layer.layer: Percentiles(levels, layer.percentiles(levels)) for layer in record}


class _LayerState:
    def __init__(self, num_experts: int, bins: int):
        self.num_experts, self.bins = num_experts, bins
        self.long = LogitSketch(num_experts, bins)
        self.window = LogitSketch(num_experts, bins)
        self.counts = torch.zeros(num_experts, dtype=torch.int64)
        self.fitted_on: torch.Tensor | None = None  # [E, 3] noisy percentiles the current correction used

    def reset_window(self) -> None:
        self.window = LogitSketch(self.num_experts, self.bins)
        self.counts.zero_()


class RoutingMonitor:
    """Streams a served model's router logits into sketches, routes with the current P1 correction and refits it
    (module docstring). ``reference``: the clean percentiles per MoE layer (``reference_percentiles``);
    ``fixes``: the starting corrections (a plan's ``router``; none: the chip as programmed). Use as a context
    (hooks removed on exit) or call ``close()``. ``on_refit`` (optional) is called with the window index whose
    tokens a refit used last — for tests and logs."""

    def __init__(self, model: nn.Module, reference: dict[int, Percentiles], config: MonitorConfig = MonitorConfig(),
                 fixes: Sequence[RouterFix] = (), on_refit=None):
        self.config, self.on_refit = config, on_refit
        self.layers = moe_layers(model)
        missing = [l.index for l in self.layers if l.index not in reference]
        if missing:
            raise UserError(f"the monitor's reference has no percentiles for MoE layer(s) {missing}")
        self.reference = reference
        given = {f.layer: copy.deepcopy(f) for f in fixes}
        self.fixes = {l.index: given.get(l.index, RouterFix(l.index)) for l in self.layers}
        self.state = {l.index: _LayerState(l.num_experts, config.bins) for l in self.layers}
        self.log: list[WindowLog] = []
        self.served = 0
        self.since_fit = 0
        self.refits = 0
        self._window_tokens = 0
        self._handles = [l.router.register_forward_hook(self._hook(l)) for l in self.layers]

    # --- hooks ------------------------------------------------------------------------------------------

    def _hook(self, layer):
        state = self.state[layer.index]

        @torch.no_grad()
        def hook(module, args, output):
            z = router_logits(layer, args, output).detach()
            state.long.update(z)
            state.window.update(z)
            fix = self.fixes[layer.index]
            if not fix.is_identity:
                output = _hook(layer, fix)(module, args, output)
            indices = layer.topk_indices(output).reshape(z.shape[0], -1).to("cpu", torch.int64)
            state.counts += torch.bincount(indices.reshape(-1), minlength=state.num_experts)
            if layer is self.layers[0]:
                self._window_tokens += z.shape[0]
            return output
        return hook

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> "RoutingMonitor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- windows ----------------------------------------------------------------------------------------

    def _layer_window(self, layer) -> LayerWindow:
        state = self.state[layer.index]
        total = int(state.counts.sum())
        share = state.counts.double() / max(total, 1)
        cold = int((share < self.config.cold / layer.num_experts).sum())  # share of slots; k/E of tokens
        now = state.window.quantiles(self.config.levels)
        base = state.fitted_on
        if base is None:
            base = state.long.quantiles(self.config.levels)
        spread_now, spread_base = now[:, 2] - now[:, 0], base[:, 2] - base[:, 0]
        ok = torch.isfinite(spread_now) & torch.isfinite(spread_base) & (spread_base > 0)
        if not bool(ok.any()):
            return LayerWindow(layer.index, coefficient_of_variation(share), cold, 0.0, 0.0)
        spread_drift = float((spread_now[ok] / spread_base[ok] - 1).abs().median())
        scale = float(spread_base[ok].median())
        shift = float((now[ok, 1] - base[ok, 1]).abs().median()) / scale
        return LayerWindow(layer.index, coefficient_of_variation(share), cold, spread_drift, shift)

    def end_window(self, **extra) -> WindowLog:
        """Close the window served since the last call: log it, then refit if the schedule or the drift says so
        (the refit routes the next forward, never this window's)."""
        tokens = self._window_tokens
        self.served += tokens
        self.since_fit += tokens
        entry = WindowLog(len(self.log), tokens, self.served, [self._layer_window(l) for l in self.layers],
                          extra=dict(extra))
        c = self.config
        reason = None
        if c.refit_every and self.since_fit >= c.refit_every:
            reason = "schedule"
        elif c.drift_threshold is not None and entry.drift > c.drift_threshold:
            reason = "drift"
        if reason is not None and self.sketched_tokens() >= c.min_tokens:
            self.refit()
            entry.refit = reason
        self.log.append(entry)
        for state in self.state.values():
            state.reset_window()
        self._window_tokens = 0
        return entry

    def sketched_tokens(self) -> int:
        """Tokens in the long sketches (what a refit now would be fitted on)."""
        return int(self.state[self.layers[0].index].long.count.max()) if self.layers else 0

    def fit_fixes(self, percentiles: tuple[float, float] | None = None,
                  reference: dict[int, Percentiles] | None = None) -> list[RouterFix]:
        """P1 corrections from the long sketches against the clean reference (at ``percentiles``, default the
        config's; ``reference`` at those levels), without installing them."""
        config = RecalibrateConfig(percentiles=percentiles or self.config.percentiles)
        levels = (config.percentiles[0], 50.0, config.percentiles[1])
        reference = reference or self.reference
        return [recal.fit_quantile(Percentiles(levels, self.state[l.index].long.quantiles(levels)),
                                   reference[l.index], config, copy.deepcopy(self.fixes[l.index]))
                for l in self.layers]

    def refit(self) -> None:
        """P1 from the long sketches against the clean reference, every layer at once; routes the next forward."""
        for layer, fix in zip(self.layers, self.fit_fixes()):
            state = self.state[layer.index]
            self.fixes[layer.index] = fix
            state.fitted_on = state.long.quantiles(self.config.levels)
            if self.config.reset_after_refit:
                state.long = LogitSketch(state.num_experts, state.bins)
        self.refits += 1
        self.since_fit = 0
        if self.on_refit is not None:
            self.on_refit(len(self.log))

    def router_fixes(self) -> list[RouterFix]:
        """The current corrections (copies), as a plan's ``router``."""
        return [copy.deepcopy(f) for f in self.fixes.values()]

    def state_bytes(self) -> int:
        """Bytes of the monitor's streaming state (sketches and counters)."""
        return sum(s.long.state_bytes() + s.window.state_bytes() + s.counts.numel() * 8 for s in self.state.values())

    def summary(self) -> dict:
        cvs = [statistics.fmean(l.cv for l in e.layers) for e in self.log if e.layers]
        return {"windows": len(self.log), "served": self.served, "refits": self.refits,
                "state_bytes": self.state_bytes(), "mean_cv": statistics.fmean(cvs) if cvs else None}
