"""docs/io.md's measurements, written as JSON under results/io/ (one file per study and model, atomically):

  python scripts/io_study.py tie-rate --model olmoe-tiny        → results/io/tie-rate-olmoe-tiny.json
  python scripts/io_study.py cost --model olmoe-tiny            → results/io/cost-olmoe-tiny.json
  python scripts/io_study.py bound --model olmoe-tiny --chips 2 → results/io/bound-olmoe-tiny.json

``--print`` renders the docs/io.md tables from the files already on disk; ``regime`` puts the
``romer run regime-io`` rows (results/regime-io/results.json) beside the same chips with ideal IO from the
regime map's cells (results/regime-map/cells.json, ``romer run regime``).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from romer.estimators import holm, interval, per_chip_reduction, shared_seeds
from romer.io import write_json_atomic
from romer.report.tables import interval_text

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


def cost(ppl: dict[int, float], ideal: dict[int, float]) -> dict:
    """The periphery's cost, paired by chip: the interval of 100·(PPL / PPL with ideal IO − 1) over shared seeds."""
    return interval([100.0 * (ppl[s] / ideal[s] - 1.0) for s in shared_seeds(ppl, ideal)])


def bound_table(paths: list[Path]) -> str:
    """The periphery's cost against ideal IO on the same chip (paired by chip, %), per model, weights, placement."""
    lines = []
    for path in paths:
        data = json.loads(path.read_text())
        variants = [k for k in data["cells"][0]["ppl_per_chip"] if k != "ideal"]
        if not lines:
            lines = ["| model | weights | analog | column scale, read / exact | ideal IO: PPL | "
                     + " | ".join(variants) + " |", "|---|---|---|---:|---:|" + "---:|" * len(variants)]
        for cell in data["cells"]:
            chips = cell["ppl_per_chip"]
            ideal = dict(enumerate(chips["ideal"]))
            weights = "exact" if not cell["pcm_scale"] else f"pcm×{cell['pcm_scale']:g}"
            costs = [interval_text(cost(dict(enumerate(chips[v])), ideal)) + " %" for v in variants]
            ratio = cell.get("column_scale_ratio")
            lines.append(f"| {data['model']} | {weights} | {cell['placement']} | "
                         f"{'1' if not cell['pcm_scale'] else '—' if ratio is None else format(ratio, '.2f')} | "
                         f"{statistics.fmean(ideal.values()):.2f} | " + " | ".join(costs) + " |")
    return "\n".join(lines)


REPAIRS = ("recalibration", "recalibration fitted without IO", "romer", "maxnn-12.5%")


def _by_seed(ppl: list[float], seeds: list[int], keep: set[int] | None = None) -> dict[int, float]:
    """Chip seed → PPL, only the seeds in ``keep`` when given."""
    return {s: p for s, p in zip(seeds, ppl) if keep is None or s in keep}


def regime_table(cells: Path = Path("results/regime-map/cells.json"),
                 with_io: Path = Path("results/regime-io/results.json")) -> str:
    """The ``romer run regime-io`` cells (IO on) beside the same chips with ideal IO from the regime map's cells
    (``romer run regime``), paired by chip: the periphery's cost on the noisy chip, and each repair's PPL reduction
    against its own noisy chip, ideal IO → IO on. Below the table: how many of the repairs' IO − ideal differences
    are significant after Holm's correction over every difference in the table."""
    io_rows = json.loads(with_io.read_text())["rows"]
    ideal_cells = {(c["model"], c["placement"], c["preset"]): c for c in json.loads(cells.read_text())["cells"]
                   if c["source"] == "regime"}
    lines = ["| model | chip | placement | noisy PPL, ideal IO | the periphery's cost on noisy | "
             + " | ".join(f"{m}: ideal → IO" for m in REPAIRS) + " |", "|---|---|---|---:|---:|" + "---:|" * len(REPAIRS)]
    differences = []
    for model, preset, placement in sorted({(r["model"], r["preset"], r["placement"]) for r in io_rows}):
        base = preset.split(" + ")[0]
        mine = {r["method"]: r for r in io_rows if (r["model"], r["preset"], r["placement"]) == (model, preset,
                                                                                               placement)}
        cell = ideal_cells.get((model, placement, base))
        if cell is None or "noisy" not in mine:
            continue
        seeds = set(shared_seeds(_by_seed(cell["methods"]["noisy"]["ppl"], cell["methods"]["noisy"]["seeds"]),
                                 _by_seed(mine["noisy"]["ppl_per_chip"], mine["noisy"]["seeds"])))
        ideal = {m: _by_seed(v["ppl"], v["seeds"], seeds) for m, v in cell["methods"].items()}  # the chips both
        on = {m: _by_seed(r["ppl_per_chip"], r["seeds"], seeds) for m, r in mine.items()}     # runs have, everywhere
        added = cost(on["noisy"], ideal["noisy"])
        parts = []
        for method in REPAIRS:
            if method not in on:
                parts.append("—")
                continue
            with_io = per_chip_reduction(on[method], on["noisy"])
            reference = ideal.get("recalibration" if method == "recalibration fitted without IO" else method)
            if reference is None:
                parts.append(f"— → {interval_text(interval(with_io))}")
                continue
            without = per_chip_reduction(reference, ideal["noisy"])
            differences.append(interval([a - b for a, b in zip(with_io, without)])["p"])
            parts.append(f"{interval_text(interval(without))} → {interval_text(interval(with_io))}")
        lines.append(f"| {model} | {base}, {len(seeds)} chips | {placement} | "
                     f"{statistics.fmean(ideal['noisy'][s] for s in seeds):.2f} | {interval_text(added)} % | "
                     + " | ".join(parts) + " |")
    adjusted = [p for p in holm(differences) if p is not None]
    lines += ["", f"Repairs' reduction under IO − under ideal IO, paired by chip: {sum(p < 0.05 for p in adjusted)} of "
                  f"{len(adjusted)} differences significant at 5 % after Holm's correction."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", choices=["tie-rate", "cost", "bound", "regime"])
    parser.add_argument("--model", action="append", default=[])
    parser.add_argument("--chips", type=int, default=3)
    parser.add_argument("--print", action="store_true", help="only print the table from results/io/")
    args = parser.parse_args()
    if args.study == "regime":
        print(regime_table())
        return
    if not args.print:
        from romer.studies.io_study import io_bound, io_cost, router_tie_rate

        study = {"tie-rate": router_tie_rate, "cost": lambda name: io_cost(name, chips=args.chips),
                 "bound": lambda name: io_bound(name, chips=args.chips)}[args.study]
        for name in args.model:
            write_json_atomic(OUT / f"{args.study}-{name}.json", study(name))
    paths = sorted(OUT.glob(f"{args.study}-*.json"))
    print({"tie-rate": tie_rate_table, "cost": cost_table, "bound": bound_table}[args.study](paths))


if __name__ == "__main__":
    main()
