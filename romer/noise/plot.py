"""A picture of a preset: read-back conductance spread vs target conductance, and drift vs time."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np

from romer.noise.presets import NoisePreset

G_VALUES = tuple(np.round(np.linspace(0.05, 1.0, 20), 3))
T_SERIES = (0.0, 3600.0, 86400.0)
T_DRIFT = tuple(float(t) for t in np.logspace(0, 7.5, 16))  # 1 s … ~1 year


def _programming_only(preset: NoisePreset) -> NoisePreset | None:
    """The same preset with read noise and drift switched off, when it has those knobs."""
    names = {f.name for f in dataclasses.fields(preset)}
    if not {"read_noise_scale", "drift_scale"} <= names:
        return None
    return dataclasses.replace(preset, read_noise_scale=0.0, drift_scale=0.0)


def plot_preset(preset: NoisePreset, path: str | Path) -> Path:
    """Write a two-panel PNG: σ(ĝ) at several times (and programming noise alone), and mean ĝ(t)/ĝ_T."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from romer.io import write_bytes_atomic

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    prog = _programming_only(preset)
    if prog is not None:
        rows = prog.sigma_table(G_VALUES, [0.0])
        left.plot([r.g_target for r in rows], [r.std for r in rows], "k--", label="programming only")
    times = [t for t in T_SERIES if t <= preset.max_t_inference]
    for t in times:
        rows = preset.sigma_table(G_VALUES, [t])
        left.plot([r.g_target for r in rows], [r.std for r in rows], label=f"total, t = {t:g} s")
    left.set_xlabel("target conductance ĝ_T = g/g_max")
    left.set_ylabel("std of read-back ĝ (units of g_max)")
    left.set_title(f"{preset.name}: conductance noise")
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    drift_times = [t for t in T_DRIFT if t <= preset.max_t_inference]
    for g in (0.1, 0.5, 1.0):
        rows = preset.sigma_table([g], drift_times)
        right.semilogx([r.t_inference for r in rows], [r.mean / g for r in rows], "o-", ms=3, label=f"ĝ_T = {g}")
    right.set_xlabel("inference time t (s after programming)")
    right.set_ylabel("mean read-back ĝ / ĝ_T (no compensation)")
    right.set_title(f"{preset.name}: drift")
    right.legend(fontsize=8)
    right.grid(alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return write_bytes_atomic(path, buffer.getvalue())
