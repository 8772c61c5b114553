"""The regime map (README, "When ROMER helps") from the stores of the regime configs.

    python scripts/regime_map.py [--results results] [--update-readme]

Reads ``results/<config>/results.sqlite`` for every regime config that has been run (``make regime-map`` runs
them: regime, regime-time, regime-channel, regime-tensor), and writes ``results/regime-map/``:

* ``cells.json``: every cell's per-method per-chip PPLs, reduction / gap-recovered intervals, routing share and
  SNRs (``romer.experiment.regime_map``), and the headline figures;
* ``map.png``: ROMER's PPL reduction per noise preset × placement, one panel per model;
* ``snr.png``: reduction against the router-logit SNR of the chip (dB), the axis that transfers between models;
* ``time.png``: reduction against inference time, drift compensation on and off.

``--update-readme`` then rewrites README's ``regime`` section (``scripts/update_readme.py regime``).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure

from romer.experiment.regime_map import cells_from_store, headline
from romer.io import write_bytes_atomic, write_text_atomic

matplotlib.use("Agg")
ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ("regime", "regime-time", "regime-channel", "regime-tensor")
METHODS = ("romer", "recalibration", "replacement", "oracle routing", "maxnn-12.5%")
MODELS = ("olmoe-tiny", "qwenmoe-tiny", "deepseekmoe-tiny")
PLACEMENTS = ("moe", "experts", "all")
MARKERS = {"moe": "o", "experts": "s", "all": "^"}


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return buffer.getvalue()


def _reduction(cell: dict, method: str = "romer") -> dict | None:
    m = cell["methods"].get(method)
    return None if m is None else m["reduction_pct"]


def map_plot(cells: list[dict]) -> bytes:
    grid = [c for c in cells if c["source"] == "regime"]
    presets = list(dict.fromkeys(c["preset"] for c in grid))
    fig = Figure(figsize=(4.2 * len(MODELS), 0.55 * len(presets) + 1.6))
    for i, model in enumerate(MODELS):
        ax = fig.add_subplot(1, len(MODELS), i + 1)
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
        if j == 0:
            ax.legend(fontsize=6, ncol=1)
    fig.tight_layout()
    return _png(fig)


def time_plot(cells: list[dict]) -> bytes:
    timed = [c for c in cells if c["source"] == "regime-time"]
    fig = Figure(figsize=(11, 3.6))
    for i, model in enumerate(MODELS):
        ax = fig.add_subplot(1, len(MODELS), i + 1)
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
        if i == 0:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def build(results: Path) -> dict:
    cells = []
    for config in CONFIGS:
        store = results / config / "results.sqlite"
        if store.is_file():
            cells += cells_from_store(store)
    if not cells:
        raise SystemExit(f"no regime store under {results} (run `make regime-map`)")
    return {"cells": cells,
            "headline": {method: {figure: headline(cells, method, figure)
                                  for figure in ("reduction_pct", "gap_recovered_pct")} for method in METHODS}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=ROOT / "results")
    parser.add_argument("--update-readme", action="store_true")
    args = parser.parse_args(argv)
    data = build(args.results)
    out = args.results / "regime-map"
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "cells.json", json.dumps(data, indent=1, sort_keys=True, allow_nan=False,
                                                     default=str) + "\n")
    for name, plot in (("map.png", map_plot), ("snr.png", snr_plot), ("time.png", time_plot)):
        write_bytes_atomic(out / name, plot(data["cells"]))
    print(f"{len(data['cells'])} cells → {out}")
    if args.update_readme:
        sys.path.insert(0, str(ROOT / "scripts"))
        from update_readme import main as update

        return update(["regime"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
