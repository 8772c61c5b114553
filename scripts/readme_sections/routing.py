"""docs/routing.md's routing findings (marker ``routing``) from results/routing/*.json, written by `make routing-study`."""

from __future__ import annotations

import json
from pathlib import Path

from romer.report.studies import fmt

from . import SectionError

PLACEMENTS = {"moe": "moe (router analog)", "experts": "experts only (router digital)", "all": "all"}


def render(root: Path) -> str:
    runs = [json.loads(p.read_text()) for p in sorted((root / "results/routing").glob("*.json"))]
    if not runs:
        raise SectionError("no results in results/routing/: run `make routing-study`")
    first = runs[0]
    text = first.get("text") or f"bundled validation, source order, first {first['max_chars']:,} characters"
    lines = [f"Text: {text} ({first['tokens']:,} tokens), default chip "
             f"(PCM ×10, t = 1 day), {first['chips']} chips per row, mean ± std over chips. Regenerate: "
             "`make routing-study`.", "",
             "| model | analog placement | PPL clean | PPL noisy | PPL oracle routing | routing share of damage "
             "| load CV clean → noisy | cold experts (all layers) | KL(f_noisy‖f_clean) | top-k Jaccard | top-1 changed |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(runs, key=lambda r: (r["model"], list(PLACEMENTS).index(r["chip"]["placement"]))):
        s = r["summary"]
        lines.append(f"| `{r['model']}` | {PLACEMENTS[r['chip']['placement']]} | {r['clean_ppl']:.2f} "
                     f"| {fmt(s['noisy_ppl'])} | {fmt(s['oracle_ppl'])} | {fmt(s['routing_share'])} "
                     f"| {r['clean']['overall']['cv']:.2f} → {fmt(s['cv'])} | {r['clean']['overall']['cold']} → "
                     f"{fmt(s['cold'], 1)} | {fmt(s['kl'], 3)} | {fmt(s['jaccard'], 3)} | {fmt(s['top1_changed'], 3)} |")
    lines += ["", "Per layer (placement moe): load CV clean → noisy and top-k Jaccard, mean over chips.", "",
              "| model | layer | CV clean | CV noisy | Jaccard | top-1 changed |", "|---|---|---|---|---|---|"]
    for r in sorted(runs, key=lambda r: r["model"]):
        if r["chip"]["placement"] != "moe":
            continue
        for layer in r["per_layer"]:
            lines.append(f"| `{r['model']}` | {layer['layer']} | {layer['clean_cv']:.2f} | {fmt(layer['cv'])} "
                         f"| {fmt(layer['jaccard'], 3)} | {fmt(layer['top1_changed'], 3)} |")
    return "\n".join(lines)
