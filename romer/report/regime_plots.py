"""The regime map's plots (PNG bytes) from its cells (``romer.studies.regime_map``): reduction per preset ×
placement, against the router-logit SNR, against time, and the Pareto front of cost against gap recovered.
Plotting only: the cells, presets and model order are given."""

from __future__ import annotations

import io

from matplotlib.figure import Figure

PLACEMENTS = ("moe", "experts", "all")
MARKERS = {"moe": "o", "experts": "s", "all": "^"}
MARKS = "osD^v*PXhd<>"  # one per repair in the Pareto plot


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return buffer.getvalue()


def _reduction(cell: dict, method: str = "romer") -> dict | None:
    m = cell["methods"].get(method)
    return None if m is None else m["reduction_pct"]


def map_plot(grid: list[dict], presets: list[str], models: list[str]) -> bytes:
    """ROMER's reduction per noise preset × placement of the grid cells, one panel per model (``models`` in order)."""
    fig = Figure(figsize=(4.2 * len(models), 0.55 * len(presets) + 1.6))
    for i, model in enumerate(models):
        ax = fig.add_subplot(1, len(models), i + 1)
        values = [[None] * len(PLACEMENTS) for _ in presets]
        for c in grid:
            if c["model"] == model and c["placement"] in PLACEMENTS and _reduction(c):
                values[presets.index(c["preset"])][PLACEMENTS.index(c["placement"])] = _reduction(c)["mean"]
        shown = [[v if v is not None else float("nan") for v in row] for row in values]
        ax.imshow(shown, cmap="RdBu", vmin=-60, vmax=60, aspect="auto")
        for r, row in enumerate(values):
            for col, v in enumerate(row):
                ax.text(col, r, "—" if v is None else f"{v:+.1f}", ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(PLACEMENTS)), PLACEMENTS)
        ax.set_yticks(range(len(presets)), presets if i == 0 else [""] * len(presets))
        ax.set_title(f"{model}: ROMER PPL reduction %", fontsize=9)
    fig.tight_layout()
    return _png(fig)


def snr_plot(cells: list[dict], models: list[str]) -> bytes:
    """Reduction of ROMER and of oracle routing against the router-logit SNR, every cell."""
    fig = Figure(figsize=(11, 4.2))
    for j, method in enumerate(("romer", "oracle routing")):
        ax = fig.add_subplot(1, 2, j + 1)
        for k, model in enumerate(models):
            for placement in PLACEMENTS:
                points = [(c["snr_db"]["router_logits"], _reduction(c, method)) for c in cells
                          if c["model"] == model and c["placement"] == placement
                          and "router_logits" in c["snr_db"] and _reduction(c, method)
                          and _reduction(c, method)["mean"] is not None]
                if not points:
                    continue
                x = [p[0] for p in points]
                y = [p[1]["mean"] for p in points]
                err = [[p[1]["mean"] - (p[1]["low"] or p[1]["mean"]) for p in points],
                       [(p[1]["high"] or p[1]["mean"]) - p[1]["mean"] for p in points]]
                ax.errorbar(x, y, yerr=err, fmt=MARKERS[placement], color=f"C{k}", ms=4, lw=0.8, capsize=2,
                            label=f"{model} · {placement}")
        ax.axhline(0, color="0.5", lw=0.8)
        ax.set_xlabel("router-logit SNR ‖z‖ / ‖z_chip − z‖ (dB), calibration tokens")
        ax.set_ylabel(f"{method}: PPL reduction vs noisy (%)")
        ax.set_title(f"{method}, every cell (95 % intervals over chips)", fontsize=9)
        if j == 0 and ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6, ncol=1)
    fig.tight_layout()
    return _png(fig)


def time_plot(timed: list[dict], models: list[str]) -> bytes:
    """ROMER's reduction against inference time, one line per preset, one panel per model."""
    fig = Figure(figsize=(3.7 * len(models), 3.6))
    for i, model in enumerate(models):
        ax = fig.add_subplot(1, len(models), i + 1)
        for k, preset in enumerate(dict.fromkeys(c["preset"] for c in timed)):
            points = sorted((c["t"], _reduction(c)) for c in timed if c["model"] == model and c["preset"] == preset
                            and _reduction(c) and _reduction(c)["mean"] is not None)
            if points:
                ax.errorbar([p[0] for p in points], [p[1]["mean"] for p in points],
                            yerr=[[p[1]["mean"] - (p[1]["low"] or p[1]["mean"]) for p in points],
                                  [(p[1]["high"] or p[1]["mean"]) - p[1]["mean"] for p in points]],
                            marker="o", ms=3, color=f"C{k}", capsize=2, label=preset)
        ax.set_xscale("log")
        ax.axhline(0, color="0.5", lw=0.8)
        ax.set_xlabel("t after programming (s)")
        ax.set_title(f"{model}: ROMER PPL reduction %", fontsize=9)
        if i == 0 and ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def pareto_plot(points: list[dict], models: list[str]) -> bytes:
    """Gap recovered against cost for every repair point, one panel per model."""
    fig = Figure(figsize=(4.2 * len(models), 3.8))
    methods = list(dict.fromkeys(p["method"] for p in points))
    presets = list(dict.fromkeys(p["preset"] for p in points))
    for i, model in enumerate(models):
        ax = fig.add_subplot(1, len(models), i + 1)
        for p in points:
            if p["model"] != model:
                continue
            g = p["gap_recovered_pct"]
            err = [[g["mean"] - (g["low"] if g["low"] is not None else g["mean"])],
                   [(g["high"] if g["high"] is not None else g["mean"]) - g["mean"]]]
            ax.errorbar([p["cost_pct"] + 0.05], [g["mean"]], yerr=err, fmt=MARKS[methods.index(p["method"]) % len(MARKS)],
                        color=f"C{presets.index(p['preset'])}", ms=4, capsize=2, lw=0.8)
        ax.set_xscale("symlog", linthresh=0.5)
        ax.set_ylim(-40, 100)
        ax.axhline(0, color="0.5", lw=0.8)
        ax.set_xlabel("cost: % of analog weights digital or programmed again")
        ax.set_ylabel("gap recovered (%)")
        ax.set_title(f"{model}, placement moe", fontsize=9)
    handles = [ax.plot([], [], MARKS[k % len(MARKS)], color="0.3", ls="")[0] for k in range(len(methods))]
    handles += [ax.plot([], [], "s", color=f"C{k}", ls="")[0] for k in range(len(presets))]
    fig.legend(handles, methods + presets, fontsize=7, loc="lower center", ncol=(len(methods) + len(presets) + 1) // 2)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    return _png(fig)
