"""PNG plots of clean vs noisy routing (matplotlib Agg; every file written atomically).

* ``plot_frequency_heatmaps``: layer × expert activation frequency f_e, clean | noisy | noisy − clean;
* ``plot_load_curves``: per layer, experts sorted by load (f_e / Σf), clean vs noisy, with the uniform line;
* ``plot_logit_percentiles``: per layer, each expert's router-logit p5 / p50 / p95, clean vs noisy.

Inputs are ``RoutingRecord`` or ``RoutingStats`` objects (percentile plots need records or stats built from
records). Layers with fewer experts are padded with blanks in the heatmaps.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import torch

from romer.io import write_bytes_atomic
from romer.routing.recorder import RoutingRecord
from romer.routing.stats import RoutingStats

PERCENTILE_TRIO = ("p5", "p50", "p95")


def _stats(x: RoutingRecord | RoutingStats) -> RoutingStats:
    return RoutingStats.from_record(x, percentiles=(5, 50, 95)) if isinstance(x, RoutingRecord) else x


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    plt = _pyplot()
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    return write_bytes_atomic(path, buf.getvalue())


def _matrix(stats: RoutingStats) -> torch.Tensor:
    width = max(s.num_experts for s in stats.layers)
    out = torch.full((len(stats.layers), width), math.nan, dtype=torch.float64)
    for i, s in enumerate(stats.layers):
        out[i, : s.num_experts] = torch.tensor(s.frequency, dtype=torch.float64)
    return out


def _check_pair(clean: RoutingStats, noisy: RoutingStats) -> None:
    a = [(s.layer, s.num_experts) for s in clean.layers]
    b = [(s.layer, s.num_experts) for s in noisy.layers]
    if a != b:
        raise ValueError(f"clean and noisy records have different layers/experts: {a} vs {b}")


def _grid(n: int, max_cols: int = 4) -> tuple[int, int]:
    cols = min(n, max_cols)
    return math.ceil(n / cols), cols


def plot_frequency_heatmaps(clean: RoutingRecord | RoutingStats, noisy: RoutingRecord | RoutingStats,
                            path: str | Path, title: str = "") -> Path:
    """Three heatmaps (layer × expert): clean f_e, noisy f_e, and noisy − clean; returns the PNG path."""
    plt = _pyplot()
    clean, noisy = _stats(clean), _stats(noisy)
    _check_pair(clean, noisy)
    fc, fn = _matrix(clean), _matrix(noisy)
    diff = fn - fc
    vmax = float(torch.nan_to_num(torch.maximum(fc, fn), nan=0.0).max()) or 1.0
    dmax = float(torch.nan_to_num(diff.abs(), nan=0.0).max()) or 1e-12
    layers = [s.layer for s in clean.layers]
    fig, axes = plt.subplots(1, 3, figsize=(max(9.0, 3 * (2 + 0.18 * fc.shape[1])), 1.8 + 0.35 * len(layers)),
                             squeeze=False, layout="constrained")
    panels = ((fc, "clean f_e", "viridis", 0.0, vmax), (fn, "noisy f_e", "viridis", 0.0, vmax),
              (diff, "noisy − clean", "RdBu_r", -dmax, dmax))
    for ax, (m, name, cmap, lo, hi) in zip(axes[0], panels):
        im = ax.imshow(m.numpy(), aspect="auto", cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_title(name)
        ax.set_xlabel("expert")
        ax.set_ylabel("layer")
        ax.set_yticks(range(len(layers)), [str(l) for l in layers])
        fig.colorbar(im, ax=ax)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_load_curves(clean: RoutingRecord | RoutingStats, noisy: RoutingRecord | RoutingStats, path: str | Path,
                     title: str = "") -> Path:
    """Per layer: expert load (share of top-k slots) sorted from hottest to coldest, clean vs noisy."""
    plt = _pyplot()
    clean, noisy = _stats(clean), _stats(noisy)
    _check_pair(clean, noisy)
    rows, cols = _grid(len(clean.layers))
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows), squeeze=False,
                             layout="constrained")
    for ax in axes.flat[len(clean.layers):]:
        ax.set_visible(False)
    for ax, c, n in zip(axes.flat, clean.layers, noisy.layers):
        for s, label, style in ((c, "clean", "-"), (n, "noisy", "--")):
            f = torch.tensor(s.frequency, dtype=torch.float64)
            load = (f / f.sum()).sort(descending=True).values if f.sum() > 0 else f
            ax.plot(range(1, len(load) + 1), load.numpy(), style, marker=".", label=f"{label} (CV {s.cv:.2f})")
        ax.axhline(1 / c.num_experts, color="grey", lw=0.8, ls=":", label="uniform")
        ax.set_yscale("log")
        ax.set_title(f"layer {c.layer}")
        ax.set_xlabel("expert rank")
        ax.set_ylabel("load")
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_logit_percentiles(clean: RoutingRecord | RoutingStats, noisy: RoutingRecord | RoutingStats,
                           path: str | Path, title: str = "") -> Path:
    """Per layer and expert: router-logit p5 / p50 / p95, clean (solid) vs noisy (dashed)."""
    plt = _pyplot()
    clean, noisy = _stats(clean), _stats(noisy)
    _check_pair(clean, noisy)
    for s in clean.layers + noisy.layers:
        if not s.percentiles or any(p not in s.percentiles for p in PERCENTILE_TRIO):
            raise ValueError(f"layer {s.layer}: no router-logit percentiles {PERCENTILE_TRIO} (pass routing records)")
    rows, cols = _grid(len(clean.layers))
    fig, axes = plt.subplots(rows, cols, figsize=(3.8 * cols, 3.0 * rows + 0.4), squeeze=False,
                             layout="constrained")
    for ax in axes.flat[len(clean.layers):]:
        ax.set_visible(False)
    colours = {"p5": "tab:blue", "p50": "tab:green", "p95": "tab:red"}
    for ax, c, n in zip(axes.flat, clean.layers, noisy.layers):
        experts = range(c.num_experts)
        for p in PERCENTILE_TRIO:
            ax.plot(experts, c.percentiles[p], "-", color=colours[p], marker=".", lw=1, label=f"clean {p}")
            ax.plot(experts, n.percentiles[p], "--", color=colours[p], marker="x", lw=1, label=f"noisy {p}")
        ax.set_title(f"layer {c.layer}")
        ax.set_xlabel("expert")
        ax.set_ylabel("router logit")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=6, fontsize=7)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def write_routing_plots(clean: RoutingRecord | RoutingStats, noisy: RoutingRecord | RoutingStats,
                        directory: str | Path, prefix: str = "", title: str = "") -> list[Path]:
    """All three plots into ``directory``: {prefix}frequency_heatmap.png, {prefix}expert_load.png and, when
    percentiles are available, {prefix}logit_percentiles.png."""
    directory = Path(directory)
    clean, noisy = _stats(clean), _stats(noisy)
    paths = [plot_frequency_heatmaps(clean, noisy, directory / f"{prefix}frequency_heatmap.png", title),
             plot_load_curves(clean, noisy, directory / f"{prefix}expert_load.png", title)]
    if all(s.percentiles and all(p in s.percentiles for p in PERCENTILE_TRIO) for s in clean.layers + noisy.layers):
        paths.append(plot_logit_percentiles(clean, noisy, directory / f"{prefix}logit_percentiles.png", title))
    return paths
