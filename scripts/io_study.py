"""docs/io.md's measurements, written as JSON under results/io/ (one file per study and model, atomically):

  python scripts/io_study.py tie-rate --model olmoe-tiny        → results/io/tie-rate-olmoe-tiny.json
  python scripts/io_study.py cost --model olmoe-tiny            → results/io/cost-olmoe-tiny.json

``--print`` renders the docs/io.md tables from the files already on disk; ``regime`` puts the
``romer run regime-io`` rows (results/regime-io/results.json) beside the same chips with ideal IO from the
regime map's cells (results/regime-map/cells.json, ``romer run regime``).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from romer.io import write_json_atomic

OUT = Path("results/io")


def tie_rate_table(paths: list[Path]) -> str:
    lines = ["| model | router periphery | ADC step (array units) | top-k changed | tie at the k-th logit |",
             "|---|---|---|---|---|"]
    for path in paths:
        data = json.loads(path.read_text())
        for row in data["rows"]:
            lines.append(f"| {data['model']} | {row['io']} | {row['adc_step']:.4g} | {100 * row['topk_changed']:.2f} % "
                         f"| {100 * row['tied_at_cut']:.2f} % |")
    return "\n".join(lines)


def cost_table(paths: list[Path]) -> str:
    lines = []
    for path in paths:
        data = json.loads(path.read_text())
        columns = list(next(iter(data["placements"].values())))
        if not lines:
            lines = ["| model | placement | clean | " + " | ".join(columns) + " |",
                     "|---|---|---|" + "---|" * len(columns)]
        for placement, cells in data["placements"].items():
            values = [f"{c['ppl_mean']:.2f} ± {c['ppl_std']:.2f} ({100 * (c['ppl_mean'] / data['clean_ppl'] - 1):+.1f} %)"
                      for c in cells.values()]
            lines.append(f"| {data['model']} | {placement} | {data['clean_ppl']:.2f} | " + " | ".join(values) + " |")
    return "\n".join(lines)


REGIME_METHODS = ("noisy", "recalibration", "romer")


def regime_table(cells: Path = Path("results/regime-map/cells.json"),
                 with_io: Path = Path("results/regime-io/results.json")) -> str:
    """PPL per method under IO (``romer run regime-io``) beside the same chips (seeds) with ideal IO, taken from
    the regime map's cells (``romer run regime``)."""
    io_rows = json.loads(with_io.read_text())["rows"]
    ideal_cells = json.loads(cells.read_text())["cells"]
    lines = ["| model | placement | chips (seeds) | IO | clean | noisy | recalibration (vs noisy) | romer (vs noisy) |",
             "|---|---|---|---|---|---|---|---|"]
    for model, placement, preset in sorted({(r["model"], r["placement"], r["preset"]) for r in io_rows}):
        base = preset.split(" + ")[0]
        mine = {r["method"]: r for r in io_rows if (r["model"], r["placement"], r["preset"]) == (model, placement,
                                                                                               preset)}
        seeds = mine["noisy"]["seeds"]
        cell = next(c for c in ideal_cells if (c["model"], c["placement"], c["preset"], c["source"]) == (
            model, placement, base, "regime"))
        ideal = {m: statistics.fmean(p for p, s in zip(v["ppl"], v["seeds"]) if s in seeds)
                 for m, v in cell["methods"].items()}
        for label, ppl in (("ideal", ideal), (preset.split(" + ")[1], {m: r["ppl_mean"] for m, r in mine.items()})):
            values = [f"{ppl[m]:.2f}" + ("" if m == "noisy" else f" ({100 * (ppl[m] / ppl['noisy'] - 1):+.1f} %)")
                      for m in REGIME_METHODS]
            lines.append(f"| {model} | {placement} | {base}, {len(seeds)} ({', '.join(map(str, seeds))}) | {label} "
                         f"| {ppl['clean']:.2f} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", choices=["tie-rate", "cost", "regime"])
    parser.add_argument("--model", action="append", default=[])
    parser.add_argument("--chips", type=int, default=3)
    parser.add_argument("--print", action="store_true", help="only print the table from results/io/")
    args = parser.parse_args()
    if args.study == "regime":
        print(regime_table())
        return
    if not args.print:
        from romer.studies.io_study import io_cost, router_tie_rate

        for name in args.model:
            result = router_tie_rate(name) if args.study == "tie-rate" else io_cost(name, chips=args.chips)
            write_json_atomic(OUT / f"{args.study}-{name}.json", result)
    paths = sorted(OUT.glob(f"{args.study}-*.json"))
    print(tie_rate_table(paths) if args.study == "tie-rate" else cost_table(paths))


if __name__ == "__main__":
    main()
