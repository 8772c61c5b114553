"""Report plots (PNG bytes, deterministic: Agg, no "Software" metadata, fixed size and order).

Per setting (preset, placement, t): PPL per method with ± std over chips (one panel per model) and load-balance CV
of expert frequencies before (the noisy chip) and after each method; PPL against inference time t (s) per method
with ± std bands when the store holds several t, against the preset when it holds several presets; and per model
the expert-frequency heatmap (layer × expert, share of routed tokens, mean over chips) of the methods that
recorded it.
"""

from __future__ import annotations

import io
import re
from collections import defaultdict
from dataclasses import dataclass

import matplotlib
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator  # rendered by Agg on savefig; pyplot (global state) is never used

from romer.report.aggregate import mean_frequency

DPI = 100
HEATMAP_METHODS = 6
HEATMAP_FIRST = ("clean", "noisy", "oracle", "romer")


@dataclass(frozen=True)
class Plot:
    """One PNG: file name, caption, bytes."""

    name: str
    caption: str
    png: bytes


def slug(*parts) -> str:
    text = "_".join(f"{p:g}" if isinstance(p, float) else str(p) for p in parts)
    return re.sub(r"[^A-Za-z0-9.-]+", "_", text).strip("_")


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def _ordered(values, order: list) -> list:
    """Distinct ``values`` in ``order``, then the rest sorted."""
    distinct = list(dict.fromkeys(values))
    return [v for v in dict.fromkeys(order) if v in distinct] + sorted((v for v in distinct if v not in order), key=str)


def _panels(n: int, width: float, height: float) -> tuple[Figure, list]:
    fig = Figure(figsize=(width * n, height), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    return fig, list(axes)


def ppl_bars(rows: list[dict], models: list[str], title: str) -> Figure:
    methods = list(dict.fromkeys(r["method"] for r in rows))  # rows come in config order
    fig, axes = _panels(len(models), 4.2, 1.4 + 0.3 * len(methods))
    for ax, model in zip(axes, models):
        by = {r["method"]: r for r in rows if r["model"] == model}
        y = list(range(len(methods)))[::-1]
        means = [by[m]["ppl_mean"] if m in by and by[m]["ppl_mean"] is not None else 0.0 for m in methods]
        stds = [(by[m]["ppl_std"] or 0.0) if m in by else 0.0 for m in methods]
        colors = [{"clean": "tab:green", "noisy": "tab:red"}.get(by[m]["kind"], "tab:blue") if m in by else "grey"
                  for m in methods]
        ax.barh(y, means, xerr=stds, color=colors, capsize=3, alpha=0.85)
        ax.set_yticks(y, methods if ax is axes[0] else [""] * len(methods), fontsize=8)
        ax.set_title(model, fontsize=10)
        ax.set_xlabel("perplexity (mean ± std over chips)")
        present = [m for m in means if m > 0]
        if present:
            ax.set_xlim(min(present) * 0.9, max(m + s for m, s in zip(means, stds)) * 1.03)
    fig.suptitle(title, fontsize=10)
    return fig


def cv_bars(rows: list[dict], models: list[str], title: str) -> Figure:
    methods = list(dict.fromkeys(r["method"] for r in rows))  # rows come in config order
    fig, axes = _panels(len(models), 4.2, 1.4 + 0.3 * len(methods))
    for ax, model in zip(axes, models):
        by = {r["method"]: r for r in rows if r["model"] == model}
        y = list(range(len(methods)))[::-1]
        before = [(by[m]["cv_before_mean"] or 0.0) if m in by else 0.0 for m in methods]
        after = [(by[m]["cv_mean"] or 0.0) if m in by else 0.0 for m in methods]
        ax.barh([v + 0.2 for v in y], before, height=0.4, color="tab:red", alpha=0.6, label="before (noisy chip)")
        ax.barh([v - 0.2 for v in y], after, height=0.4, color="tab:blue", alpha=0.85, label="after (method)")
        ax.set_yticks(y, methods if ax is axes[0] else [""] * len(methods), fontsize=8)
        ax.set_title(model, fontsize=10)
        ax.set_xlabel("CV of expert frequencies (mean over layers, chips)")
    fig.legend(*axes[0].get_legend_handles_labels(), fontsize=8, loc="outside lower center", ncols=2)
    fig.suptitle(title, fontsize=10)
    return fig


def ppl_lines(rows: list[dict], models: list[str], axis: str, levels: list, title: str) -> Figure:
    """PPL vs ``axis`` ("t": inference time, log x; "preset": categorical) per method, ± std bands."""
    methods = list(dict.fromkeys(r["method"] for r in rows))  # rows come in config order
    fig, axes = _panels(len(models), 4.2, max(3.6, 1.2 + 0.17 * len(methods)))
    positions = levels if axis == "t" else list(range(len(levels)))
    colors = matplotlib.colormaps["tab20"].colors
    for ax, model in zip(axes, models):
        for i, method in enumerate(methods):
            by = {r[axis]: r for r in rows if r["model"] == model and r["method"] == method and r["ppl_mean"]}
            xs = [x for x, level in zip(positions, levels) if level in by]
            if not xs:
                continue
            means = [by[level]["ppl_mean"] for level in levels if level in by]
            stds = [by[level]["ppl_std"] or 0.0 for level in levels if level in by]
            color, style = colors[i % len(colors)], ("-", "--", ":")[i // len(colors) % 3]
            ax.plot(xs, means, marker="o", markersize=3, color=color, linestyle=style,
                    label=method if ax is axes[0] else None)
            ax.fill_between(xs, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                            color=color, alpha=0.12, linewidth=0)
        if axis == "t":
            ax.set_xscale("symlog", linthresh=1.0) if min(levels) <= 0 else ax.set_xscale("log")
            ax.set_xlabel("inference time t (s)")
        else:
            ax.set_xticks(positions, [str(level) for level in levels], fontsize=8, rotation=20)
            ax.set_xlabel("noise preset")
        ax.set_ylabel("perplexity (mean ± std over chips)" if ax is axes[0] else "")
        ax.set_title(model, fontsize=10)
    fig.legend(fontsize=7, loc="outside right upper")
    fig.suptitle(title, fontsize=10)
    return fig


def heatmaps(tables: list[tuple[str, list[list[float]]]], title: str) -> Figure:
    fig, axes = _panels(len(tables), 3.0, 3.2)
    vmax = max(max(max(row) for row in table) for _, table in tables) or 1.0
    image = None
    for ax, (method, table) in zip(axes, tables):
        image = ax.imshow(table, aspect="auto", cmap="viridis", vmin=0.0, vmax=vmax, interpolation="nearest")
        ax.set_title(method, fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("expert")
        ax.set_ylabel("MoE layer" if ax is axes[0] else "")
    fig.colorbar(image, ax=axes, shrink=0.8, label="routing frequency")
    fig.suptitle(title, fontsize=10)
    return fig


def make_plots(rows: list[dict], trials: list[dict], orders: dict[str, list]) -> list[Plot]:
    """Every plot of a report, in a fixed order, from aggregated ``rows`` and the raw ``trials``."""
    plots: list[Plot] = []
    models = _ordered([r["model"] for r in rows], orders.get("model", []))
    presets = _ordered([r["preset"] for r in rows], orders.get("preset", []))
    placements = _ordered([r["placement"] for r in rows], orders.get("placement", []))
    times = _ordered([r["t"] for r in rows], orders.get("t", []))
    for preset in presets:
        for placement in placements:
            for t in times:
                chosen = [r for r in rows if (r["preset"], r["placement"], r["t"]) == (preset, placement, t)]
                if not chosen:
                    continue
                setting = f"{preset}, {placement} analog, t = {t:g} s"
                name = slug(preset, placement, f"t{t:g}")
                plots.append(Plot(f"ppl-{name}.png", f"Perplexity per method ({setting})",
                                  _png(ppl_bars(chosen, models, f"Perplexity per method — {setting}"))))
                if any(r["cv_mean"] is not None for r in chosen):
                    plots.append(Plot(f"cv-{name}.png", f"Load balance before and after ({setting})",
                                      _png(cv_bars(chosen, models, f"Load-balance CV — {setting}"))))
                plots += _heatmap_plots(trials, chosen, models, preset, placement, t, setting, name)
    if len(times) > 1:
        for preset in presets:
            for placement in placements:
                chosen = [r for r in rows if (r["preset"], r["placement"]) == (preset, placement)]
                if chosen:
                    title = f"Perplexity vs inference time — {preset}, {placement} analog"
                    plots.append(Plot(f"ppl-vs-t-{slug(preset, placement)}.png", title,
                                      _png(ppl_lines(chosen, models, "t", times, title))))
    if len(presets) > 1:
        for placement in placements:
            for t in times:
                chosen = [r for r in rows if (r["placement"], r["t"]) == (placement, t)]
                if chosen:
                    title = f"Perplexity vs noise preset — {placement} analog, t = {t:g} s"
                    plots.append(Plot(f"ppl-vs-preset-{slug(placement, f't{t:g}')}.png", title,
                                      _png(ppl_lines(chosen, models, "preset", presets, title))))
    return plots


def _heatmap_plots(trials, chosen, models, preset, placement, t, setting, name) -> list[Plot]:
    by_method = defaultdict(list)
    for trial in trials:
        if (trial["preset"], trial["placement"], trial["t_inference"]) == (preset, placement, t):
            by_method[(trial["model"], trial["method"])].append(trial)
    out = []
    for model in models:
        rows = [r for r in chosen if r["model"] == model]
        ranked = sorted(rows, key=lambda r: (HEATMAP_FIRST.index(r["kind"]) if r["kind"] in HEATMAP_FIRST
                                             else len(HEATMAP_FIRST)))
        tables = []
        for row in ranked:
            table = mean_frequency(by_method[(model, row["method"])])
            if table:
                tables.append((row["method"], table))
        if tables:
            tables = tables[:HEATMAP_METHODS]
            title = f"{model}: expert routing frequency — {setting}"
            out.append(Plot(f"frequency-{slug(model)}-{name}.png", title, _png(heatmaps(tables, title))))
    return out
