"""The regime map (docs/regime-map.md, "When ROMER helps") from the stores of the regime configs.

    python scripts/regime_map.py [--results results] [--update-readme]

Reads ``results/<config>/results.sqlite`` for every regime config that has been run (``make regime-map`` runs
them: regime, regime-deep, regime-time, regime-channel, regime-tensor, regime-repairs); the cells of a config
whose store is absent (stores are not committed) are kept from the existing ``cells.json``, which holds every
cell's per-chip PPLs. It writes ``results/regime-map/``:

* ``cells.json``: every cell's per-method per-chip PPLs, reduction / gap-recovered intervals, routing share and
  SNRs (``romer.studies.regime_map``), and the headline figures;
* ``map.png``: ROMER's PPL reduction per noise preset × placement, one panel per model;
* ``snr.png``: reduction against the router-logit SNR of the chip (dB), the axis that transfers between models;
* ``time.png``: reduction against inference time, drift compensation on and off;
* ``pareto.png``: gap recovered against cost (share of the analog weights kept digital or programmed again) for
  every repair on the ``moe`` grid, the digital router read off the paired ``experts`` cells.

``--update-readme`` (the name kept from when the map lived in README.md) then rewrites the ``regime`` section of
docs/regime-map.md and README's ``key-result`` section, which quotes the map's headline
(``scripts/update_readme.py regime key-result``).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure

from romer.estimators import interval, per_chip_gap_recovered
from romer.studies.regime_map import (GRID_SOURCES, MIN_DAMAGE_PCT, MODELS, cells_from_store, damage_pct,
                                        headline, merge_cells, present_models, regime_presets)
from romer.io import write_bytes_atomic, write_text_atomic

matplotlib.use("Agg")
ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ("regime", "regime-deep", "regime-time", "regime-channel", "regime-tensor", "regime-repairs")
METHODS = ("romer", "recalibration", "replacement", "oracle routing", "maxnn-12.5%", "least squares")
REPAIRS = ("recalibration", "least squares", "romer", "replacement", "maxnn-12.5%", "oracle routing",
           "2 router copies", "4 router copies", "P1 + 2 router copies", "P1 + 4 router copies")
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


def map_plot(cells: list[dict]) -> bytes:
    grid = [c for c in cells if c["source"] in GRID_SOURCES]
    presets = regime_presets()
    models = present_models(grid)
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


def snr_plot(cells: list[dict]) -> bytes:
    fig = Figure(figsize=(11, 4.2))
    for j, method in enumerate(("romer", "oracle routing")):
        ax = fig.add_subplot(1, 2, j + 1)
        for k, model in enumerate(MODELS):
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


def time_plot(cells: list[dict]) -> bytes:
    timed = [c for c in cells if c["source"] == "regime-time"]
    models = present_models(timed)
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


def router_shares(models: list[str]) -> dict[str, float]:
    """Per zoo model, the router's share of the analog weights of placement ``moe`` (what keeping it digital
    costs)."""
    from romer.models import load_model
    from romer.noise.placement import analog_weights, parse_placement

    out = {}
    for model in models:
        lm, _ = load_model(model)
        weights = analog_weights(lm, parse_placement("moe"), strict=False)
        out[model] = sum(w.parameter.numel() for w in weights if w.group == "router") / sum(
            w.parameter.numel() for w in weights)
    return out


def pareto_points(cells: list[dict], shares: dict[str, float]) -> list[dict]:
    """Per (model, preset) of the ``moe`` grid where the chip raises PPL by ≥ MIN_DAMAGE_PCT: each repair's cost (% of the analog weights kept digital or
    programmed again) and gap recovered (%), the digital router read off the paired ``experts`` cell (same chips,
    same expert draws: each tensor's noise is seeded by chip seed and parameter name); methods of the
    ``regime-repairs`` config join the cell of the same setting (same chips and tokens)."""
    grid = {(c["model"], c["preset"], c["placement"]): c for c in cells if c["source"] in GRID_SOURCES}
    extra = {(c["model"], c["preset"], c["placement"]): c["methods"] for c in cells if c["source"] == "regime-repairs"}
    points = []
    for (model, preset, placement), cell in grid.items():
        if placement != "moe" or (damage_pct(cell) or 0.0) < MIN_DAMAGE_PCT:
            continue
        methods = {**extra.get((model, preset, placement), {}), **cell["methods"]}
        for name in REPAIRS:
            m = methods.get(name)
            if m and m["gap_recovered_pct"]["mean"] is not None:
                cost = 100 * ((m["digital_share"] or 0.0) + (m["extra_analog_share"] or 0.0))
                points.append({"model": model, "preset": preset, "method": name, "cost_pct": cost,
                               "gap_recovered_pct": m["gap_recovered_pct"]})
        digital = grid.get((model, preset, "experts"))
        if digital and model in shares:
            noisy, clean = cell["methods"]["noisy"], cell["methods"]["clean"]
            other = digital["methods"]["noisy"]
            gaps = per_chip_gap_recovered(*(dict(zip(m["seeds"], m["ppl"])) for m in (other, noisy, clean)))
            if gaps:
                points.append({"model": model, "preset": preset, "method": "digital router",
                               "cost_pct": 100 * shares[model], "gap_recovered_pct": interval(gaps)})
    return points


def pareto_plot(points: list[dict]) -> bytes:
    models = present_models(points)
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


def build(results: Path) -> dict:
    cells = []
    for config in CONFIGS:
        store = results / config / "results.sqlite"
        if store.is_file() and store.stat().st_size:
            cells += cells_from_store(store)
    committed = results / "regime-map" / "cells.json"
    if committed.is_file():
        cells = merge_cells(cells, json.loads(committed.read_text())["cells"])
    order = {config: i for i, config in enumerate(CONFIGS)}
    cells.sort(key=lambda c: order.get(c["source"], len(order)))  # stable: a config's cells keep their order
    if not cells:
        raise SystemExit(f"no regime store under {results} (run `make regime-map`)")
    return {"cells": cells, "pareto": pareto_points(cells, router_shares(present_models(cells))),
            "headline": {method: {"reduction_pct": headline(cells, method, "reduction_pct"),
                                  "gap_recovered_pct": headline(cells, method, "gap_recovered_pct", MIN_DAMAGE_PCT)}
                         for method in METHODS}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=ROOT / "results")
    parser.add_argument("--update-readme", action="store_true",
                        help="then rewrite the regime section of docs/regime-map.md and README's key-result section")
    args = parser.parse_args(argv)
    data = build(args.results)
    out = args.results / "regime-map"
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "cells.json", json.dumps(data, indent=1, sort_keys=True, allow_nan=False,
                                                     default=str) + "\n")
    for name, plot in (("map.png", map_plot), ("snr.png", snr_plot), ("time.png", time_plot)):
        write_bytes_atomic(out / name, plot(data["cells"]))
    write_bytes_atomic(out / "pareto.png", pareto_plot(data["pareto"]))
    print(f"{len(data['cells'])} cells → {out}")
    if args.update_readme:
        sys.path.insert(0, str(ROOT / "scripts"))
        from update_readme import main as update

        return update(["regime", "key-result"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
