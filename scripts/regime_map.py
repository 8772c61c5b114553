"""The regime map (docs/regime-map.md, "When ROMER helps") from the stores of the regime configs.

    python scripts/regime_map.py [--results results] [--update-readme]

Reads ``results/<config>/results.sqlite`` for every regime config that has been run (``make regime-map`` runs
them: regime, regime-deep, regime-time, regime-channel, regime-tensor, regime-repairs); the cells of a config
whose store is absent (stores are not committed) are kept from the existing ``cells.json``, which holds every
cell's per-chip PPLs. It writes ``results/regime-map/``:

* ``cells.json``: every cell's per-method per-chip PPLs, reduction / gap-recovered intervals, routing share and
  SNRs (``romer.studies.regime_map``), and the headline figures;
* ``map.png``: ROMER's PPL reduction per noise preset × placement, one panel per model;
* ``snr.png``: reduction against the router-logit SNR of the chip (dB), comparable across models;
* ``time.png``: reduction against inference time, drift compensation on and off;
* ``pareto.png``: gap recovered against cost (share of the analog weights kept digital or programmed again) for
  every repair on the ``moe`` grid, the digital router read off the paired ``experts`` cells.

``--update-readme`` (the name kept from when the map lived in README.md) then rewrites the ``regime`` section of
docs/regime-map.md and README's ``key-result`` section, which quotes the map's headline
(``scripts/update_readme.py regime key-result``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

from romer.errors import UserError
from romer.io import write_bytes_atomic, write_text_atomic
from romer.report.regime_plots import map_plot, pareto_plot, snr_plot, time_plot
from romer.studies.regime_map import GRID_SOURCES, build, present_models, regime_presets

matplotlib.use("Agg")
ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=ROOT / "results")
    parser.add_argument("--update-readme", action="store_true",
                        help="then rewrite the regime section of docs/regime-map.md and README's key-result section")
    args = parser.parse_args(argv)
    try:
        data = build(args.results)
    except UserError as e:
        print(f"regime_map: {e}", file=sys.stderr)
        return 1
    cells = data["cells"]
    grid = [c for c in cells if c["source"] in GRID_SOURCES]
    timed = [c for c in cells if c["source"] == "regime-time"]
    out = args.results / "regime-map"
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "cells.json", json.dumps(data, indent=1, sort_keys=True, allow_nan=False,
                                                     default=str) + "\n")
    write_bytes_atomic(out / "map.png", map_plot(grid, regime_presets(), present_models(grid)))
    write_bytes_atomic(out / "snr.png", snr_plot(cells, present_models(cells)))
    write_bytes_atomic(out / "time.png", time_plot(timed, present_models(timed)))
    write_bytes_atomic(out / "pareto.png", pareto_plot(data["pareto"], present_models(data["pareto"])))
    print(f"{len(data['cells'])} cells → {out}")
    if args.update_readme:
        sys.path.insert(0, str(ROOT / "scripts"))
        from update_readme import main as update

        return update(["regime", "key-result"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
