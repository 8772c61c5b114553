"""Signal-to-noise ratio of the programmed weights: the physical axis on which chips and models compare.

For one analog tensor with intended weights W and read-back (programmed, drifted, read-noisy, compensated)
weights W_chip, both in the model's weight units,

    SNR = ‖W‖_F / ‖W_chip − W‖_F            (a ratio of amplitudes),   SNR_dB = 20·log10(SNR) = 10·log10(P_W / P_ΔW)

with P_W = Σ W² and P_ΔW = Σ (W_chip − W)² the tensors' energies. A group of tensors (a layer's router, a layer's
routed experts, all routers) pools energies: SNR_group = √(Σ P_W / Σ P_ΔW), i.e. the SNR of the concatenated
weights, not the mean of per-tensor SNRs. A noise-scale knob does not transfer between models (the mapping scale
g_max / max|w| is set by a group's largest weight, so outlier weights push typical weights to low conductance,
where PCM's relative noise is largest); the SNR does.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from romer.noise.chip import Programmed
from romer.noise.placement import analog_weights

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")
_CHUNK = 1 << 22  # elements compared at a time (bounded float64 temporaries)


@dataclass(frozen=True)
class TensorSNR:
    """One analog tensor: its name, placement group, decoder layer (None outside the decoder blocks) and the
    energies P_W = Σ W², P_ΔW = Σ (W_chip − W)² (weight units²)."""

    name: str
    group: str
    layer: int | None
    signal: float
    noise: float

    @property
    def snr(self) -> float:
        return snr_ratio(self.signal, self.noise)


def snr_ratio(signal: float, noise: float) -> float:
    """√(P_signal / P_noise) (amplitude ratio); inf for a noise-free tensor, NaN when both are 0."""
    if noise == 0:
        return math.inf if signal > 0 else math.nan
    return math.sqrt(signal / noise)


def snr_db(ratio: float) -> float:
    """20·log10 of an amplitude ratio (dB); inf / NaN pass through."""
    if math.isnan(ratio) or math.isinf(ratio):
        return ratio
    return 20.0 * math.log10(ratio) if ratio > 0 else -math.inf


def energies(clean: torch.Tensor, chip: torch.Tensor) -> tuple[float, float]:
    """(Σ W², Σ (W_chip − W)²) in float64, a chunk at a time."""
    a, b = clean.reshape(-1), chip.reshape(-1).to(clean.device)
    signal = noise = 0.0
    for start in range(0, a.numel(), _CHUNK):
        w = a[start:start + _CHUNK].double()
        signal += float(w.square().sum())
        noise += float((b[start:start + _CHUNK].double() - w).square().sum())
    return signal, noise


@torch.no_grad()
def weight_snr(programmed: Programmed) -> list[TensorSNR]:
    """Per analog tensor of a programmed model, its weight SNR (see the module docstring), by parameter name."""
    model = programmed.model
    groups = {w.name: w.group for w in analog_weights(model, programmed.chip.placement, strict=False)}
    params = dict(model.named_parameters())
    out = []
    for name in programmed.names:
        signal, noise = energies(programmed.clean(name), params[name].detach())
        match = _LAYER.search(name)
        out.append(TensorSNR(name, groups.get(name, "other"), int(match.group(1)) if match else None, signal, noise))
    return out


def _pooled(tensors: list[TensorSNR]) -> dict:
    ratio = snr_ratio(sum(t.signal for t in tensors), sum(t.noise for t in tensors))
    return {"snr": ratio, "snr_db": snr_db(ratio), "tensors": len(tensors),
            "min_tensor_snr_db": min(snr_db(t.snr) for t in tensors)}


def summarize_snr(tensors: list[TensorSNR]) -> dict:
    """Per placement group (``router``, ``routed_experts``, …): pooled SNR overall and per decoder layer.

    ``{group: {"overall": {snr, snr_db, tensors, min_tensor_snr_db}, "layers": [{layer, snr, snr_db, …}]}}``.
    """
    out = {}
    for group in sorted({t.group for t in tensors}):
        members = [t for t in tensors if t.group == group]
        layers = sorted({t.layer for t in members if t.layer is not None})
        out[group] = {"overall": _pooled(members),
                      "layers": [{"layer": layer, **_pooled([t for t in members if t.layer == layer])}
                                 for layer in layers]}
    return out
