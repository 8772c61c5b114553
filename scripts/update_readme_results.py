"""Regenerate README's result tables from the reports `romer run` wrote (results/<config>/results.json).

    python scripts/update_readme_results.py        # after: romer run main / ablations / router-digital / ...
"""

from __future__ import annotations

import json
from pathlib import Path

from romer.io import replace_between_markers

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("olmoe-tiny", "qwenmoe-tiny", "deepseekmoe-tiny")


def rows(config: str) -> list[dict]:
    return json.loads((ROOT / "results" / config / "results.json").read_text())["rows"]


def table(rows_: list[dict], cell, placement: str | None = None) -> str:
    rows_ = [r for r in rows_ if placement is None or r["placement"] == placement]
    methods = list(dict.fromkeys(r["method"] for r in rows_))
    models = [m for m in MODELS if any(r["model"] == m for r in rows_)]
    by = {(r["model"], r["method"]): r for r in rows_}
    lines = ["| method | " + " | ".join(models) + " |", "|---|" + "---:|" * len(models)]
    for method in methods:
        lines.append(f"| {method} | " + " | ".join(cell(by[(m, method)]) if (m, method) in by else "—"
                                                   for m in models) + " |")
    return "\n".join(lines)


def main_cell(r: dict) -> str:
    if r["kind"] == "clean":
        return f"{r['ppl_mean']:.2f} (CV {r['cv_mean']:.2f})"
    return (f"{r['ppl_mean']:.2f} ± {r['ppl_std']:.2f} · {r['reduction_pct']:+.1f} % · gap {r['gap_recovered_pct']:.0f} %"
            f" · CV {r['cv_before_mean']:.2f}→{r['cv_mean']:.2f}" + (f" · dig. {100 * r['digital_share']:.1f} %"
                                                                     if r["digital_share"] else ""))


def short_cell(r: dict) -> str:
    if r["kind"] in ("clean", "noisy"):
        return f"{r['ppl_mean']:.2f}"
    gap = "" if r["gap_recovered_pct"] is None else f", gap {r['gap_recovered_pct']:.0f} %"
    return f"{r['ppl_mean']:.2f} ({r['reduction_pct']:+.1f} %{gap})"


def section(config: str, placement: str | None, cell, intro: str) -> str:
    path = ROOT / "results" / config / "results.json"
    if not path.exists():
        return f"_{config}: not run yet (`romer run {config} --out results/{config}`)._"
    data = rows(config)
    tokens = {r["tokens"] for r in data}
    chips = {r["chips"] for r in data}
    return (f"{intro} — {'/'.join(map(str, sorted(tokens)))} tokens, {'/'.join(map(str, sorted(chips)))} chips "
            f"(seeds {data[0]['seeds'][0]}…), window 512:\n\n" + table(data, cell, placement))


def main() -> None:
    readme = ROOT / "README.md"
    main_text = "\n\n".join(
        section("main", p, main_cell, f"**`romer run main --out results/main`**, test split, placement `{p}`")
        for p in ("moe", "all"))
    replace_between_markers(readme, "<!-- main-result:begin -->", "<!-- main-result:end -->", main_text)
    parts = [section("ablations", "moe", short_cell, "**`romer run ablations --out results/ablations`**, "
                     "validation split, placement `moe`"),
             section("router-digital", None, short_cell, "**`romer run router-digital --out "
                     "results/router-digital`**, validation split, router digital (placement `experts`)"),
             section("per-layer", None, short_cell, "**`romer run per-layer --out results/per-layer`**, "
                     "validation split, placement `moe`"),
             section("per-layer-0", None, short_cell, "**`romer run per-layer --set \"models=[olmoe-tiny, "
                     "qwenmoe-tiny]\" --set \"methods=[clean, noisy, {name: P1 layer 0 only, kind: recalibrate, "
                     "recalibrate: {layers: [0]}}]\" --out results/per-layer-0`**, layer 0 (deepseekmoe-tiny's is dense)"),
             section("noise-free", None, short_cell, "**`romer run noise-free --out results/noise-free`**, test "
                     "split, a chip without noise (gaussian η = 0)")]
    replace_between_markers(readme, "<!-- ablations:begin -->", "<!-- ablations:end -->", "\n\n".join(parts))


if __name__ == "__main__":
    main()
