"""docs/regime-map.md's map (marker ``regime``) from results/regime-map/cells.json (``make regime-map``); image
paths are relative to docs/."""

from __future__ import annotations

import json
from pathlib import Path

from readme_sections import SectionError
from romer.estimators import spearman
from romer.report.tables import interval_text, versus_text
from romer.studies.regime_map import (GRID_SOURCES, MIN_DAMAGE_PCT, MODELS, damage_pct, distinct, present_models,
                                      regime_presets)
PLACEMENTS = ("moe", "experts", "all")
WHEN = {1.0: "1 s", 3600.0: "1 hour", 86400.0: "1 day", 2592000.0: "30 days", 31536000.0: "1 year"}


def _pct(figure: dict | None) -> str:
    return interval_text(figure, ci_digits=0)


def _method(cell: dict, name: str, figure: str = "reduction_pct") -> dict | None:
    m = cell["methods"].get(name)
    return None if m is None else m[figure]


def _noisy_ppl(cell: dict) -> str:
    m = cell["methods"].get("noisy")
    return "—" if not m or m["ppl_mean"] is None else f"{m['ppl_mean']:.1f}"


def _snr(cell: dict, key: str) -> str:
    value = cell["snr_db"].get(key)
    return "—" if value is None else f"{value:.1f}"


def _grid(cells: list[dict]) -> str:
    lines = ["| model | preset | " + " | ".join(f"`{p}`: noisy PPL · ROMER % [95 % CI] · routing share %"
                                                for p in PLACEMENTS) + " | router-logit SNR `moe` (dB) |",
             "|---|---|" + "---|" * (len(PLACEMENTS) + 1)]
    by = {(c["model"], c["preset"], c["placement"]): c for c in cells if c["source"] in GRID_SOURCES}
    presets = regime_presets()
    for model in MODELS:
        for preset in presets:
            if not any((model, preset, p) in by for p in PLACEMENTS):
                continue
            parts = []
            for p in PLACEMENTS:
                c = by.get((model, preset, p))
                share = None if c is None or (damage_pct(c) or 0.0) < MIN_DAMAGE_PCT else c["routing_share_pct"]
                parts.append("—" if c is None else
                             f"{_noisy_ppl(c)} · {_pct(_method(c, 'romer'))} · "
                             f"{'—' if not share or share['mean'] is None else format(share['mean'], '.0f')}")
            moe = by.get((model, preset, "moe"))
            lines.append(f"| {model} | {preset} | " + " | ".join(parts) + f" | {_snr(moe, 'router_logits') if moe else '—'} |")
    return "\n".join(lines)


def _axis(cells: list[dict], source: str, key: str, label: str) -> str:
    """One row per model and value of a numeric ``key`` (e.g. t), one column per preset."""
    chosen = [c for c in cells if c["source"] == source]
    if not chosen:
        return f"_{source}: not run yet (`make regime-map`)._"
    values = list(dict.fromkeys(c[key] for c in chosen))
    presets = list(dict.fromkeys(c["preset"] for c in chosen))
    lines = [f"| model | {label} | " + " | ".join(f"{p}: noisy PPL · ROMER % · recalibration %" for p in presets) + " |",
             "|---|---|" + "---|" * len(presets)]
    by = {(c["model"], c[key], c["preset"]): c for c in chosen}
    for model in present_models(chosen):
        for value in values:
            cells_here = [by.get((model, value, p)) for p in presets]
            cols = ["—" if c is None else f"{_noisy_ppl(c)} · {_pct(_method(c, 'romer'))} · "
                    f"{_pct(_method(c, 'recalibration'))}" for c in cells_here]
            lines.append(f"| {model} | {WHEN.get(value, f'{value:g} s')} | " + " | ".join(cols) + " |")
    return "\n".join(lines)


def render(root: Path) -> str:
    path = root / "results" / "regime-map" / "cells.json"
    if not path.exists():
        raise SectionError(f"{path} is missing: run `make regime-map`")
    data = json.loads(path.read_text())
    cells, head = data["cells"], data["headline"]
    romer, gap = head["romer"]["reduction_pct"], head["romer"]["gap_recovered_pct"]
    snr_cells = [c for c in distinct(cells) if "router_logits" in c["snr_db"] and _method(c, "romer")
                 and _method(c, "romer")["mean"] is not None]
    paired = [(c["snr_db"]["router_logits"], _method(c, "romer")["mean"]) for c in snr_cells]
    rho = spearman([p[0] for p in paired], [p[1] for p in paired])
    hurts = romer["hurts"]
    mapping = [c for c in cells if c["source"] in ("regime-channel", "regime-tensor")]
    mapping += [c for c in cells if c["source"] == "regime" and c["placement"] == "moe"
                and c["preset"] in {m["preset"] for m in mapping}]
    return "\n\n".join([
        f"**ROMER lowers PPL by up to {romer['up_to']:.1f} %** ({_interval(romer)}the best of {romer['cells']} "
        "distinct cells: "
        f"{romer['up_to_cell']}; the paper's \"up to\" is phrased the same way), **typically by "
        f"{romer['typical']:+.1f} %** (the median cell), and recovers up to {gap['up_to']:.0f} % of the noise "
        f"gap (median {gap['typical']:+.0f} % over the {gap['cells']} cells where the chip raises PPL by ≥ "
        f"{MIN_DAMAGE_PCT:g} %). It **hurts** (95 % interval of the reduction below 0, uncorrected) in "
        f"{len(hurts)} cell{'s' if len(hurts) != 1 else ''}"
        + (": " + "; ".join(hurts) + "." if hurts else ".") + " " + _corrected(romer),
        f"Across cells, ROMER's reduction against the chip's router-logit SNR has Spearman ρ = {rho:+.2f} "
        f"({len(paired)} cells; negative: lower SNR, larger reduction). Pooled, that mixes placements and models; "
        f"split, it is {_rho_by(snr_cells, 'placement')} by placement and {_rho_by(snr_cells, 'model')} by model: "
        "the SNR tells where ROMER helps only within a placement and model where its ρ is strongly negative, and "
        "the same SNR can mean a large gain on one model and none on another. Every cell: "
        f"{chips_phrase(romer)} (seeds from 0), 4,096 validation tokens, 16 calibration windows of the train "
        "split (disjoint text). Regenerate: `make regime-map` (configs `regime`, `regime-deep`, `regime-time`, "
        "`regime-channel`, `regime-tensor`, `regime-repairs` in `romer/experiment/configs/`, then `python scripts/regime_map.py --update-readme`); "
        "every cell with every method is in `results/regime-map/cells.json`.",
        "![ROMER's reduction per preset and placement](../results/regime-map/map.png)\n\n"
        "![reduction against router-logit SNR](../results/regime-map/snr.png)",
        "Noise scale × placement (`moe`: MoE blocks analog, router included; `experts`: router digital; `all`: "
        "attention analog too; olmoe-deep on `regime-deep`'s grid, without PCM ×3). Routing share = oracle routing's gap recovered: how much of the damage is "
        f"routing (shown where the chip raises PPL by ≥ {MIN_DAMAGE_PCT:g} %).\n\n" + _grid(cells),
        "Inference time and drift compensation (`regime-time`, PCM ×10, placement `moe`):\n\n"
        + _axis(cells, "regime-time", "t", "t after programming") + "\n\n![ROMER's reduction against time](../results/regime-map/time.png)",
        "Mapping group (`regime-channel`, `regime-tensor`, with `regime`'s per-expert cells; placement `moe`):\n\n"
        + _mapping(mapping),
        "Router repairs (`regime-repairs`, placement `moe`), each pair on the same chips: P1 on 4 averaged router "
        "copies against P1 alone and against the 4 copies alone (PPL reduction %, mean over chips, 95 % interval):"
        "\n\n" + _repairs(cells),
    ])


def _versus(cell: dict, method: str, other: str) -> str:
    """``method``'s PPL reduction against ``other`` on the same chips of ``cell``: ``+2.9 [+1.4, +4.4]``."""
    a, b = cell["methods"].get(method), cell["methods"].get(other)
    return "—" if not a or not b else versus_text(dict(zip(a["seeds"], a["ppl"])), dict(zip(b["seeds"], b["ppl"])), 0)


def _repairs(cells: list[dict]) -> str:
    chosen = [c for c in cells if c["source"] == "regime-repairs"]
    if not chosen:
        return "_regime-repairs: not run yet (`make regime-map`)._"
    lines = ["| model | preset | P1 + 4 copies vs P1 % | P1 + 4 copies vs 4 copies % | 4 copies vs P1 % |",
             "|---|---|---|---|---|"]
    order = present_models(chosen)
    for c in sorted(chosen, key=lambda c: order.index(c["model"])):
        lines.append(f"| {c['model']} | {c['preset']} | " + " | ".join(
            _versus(c, a, b) for a, b in (("P1 + 4 router copies", "recalibration"),
                                          ("P1 + 4 router copies", "4 router copies"),
                                          ("4 router copies", "recalibration"))) + " |")
    return "\n".join(lines)


def _rho_by(cells: list[dict], key: str) -> str:
    """Spearman ρ of ROMER's reduction against the router-logit SNR within each value of ``key`` (≥ 3 cells)."""
    parts = []
    for value in dict.fromkeys(c[key] for c in cells):
        own = [c for c in cells if c[key] == value]
        if len(own) >= 3:
            rho = spearman([c["snr_db"]["router_logits"] for c in own], [_method(c, "romer")["mean"] for c in own])
            parts.append(f"`{value}` {rho:+.2f} ({len(own)})")
    return ", ".join(parts)


def chips_phrase(head: dict) -> str:
    """``3 chips`` or ``3–5 chips`` per cell, from the headline's chip counts (3 for maps written before them)."""
    counts = head.get("chips") or [3]
    return f"{counts[0]} chips" if len(counts) == 1 else f"{counts[0]}–{counts[-1]} chips"


def _interval(head: dict) -> str:
    low, high = head.get("up_to_interval") or (None, None)
    return "" if low is None else f"95 % interval [{low:.1f}, {high:.1f}] over its {head.get('up_to_chips', 3)} chips; "


def _corrected(head: dict) -> str:
    """How many cells keep a significant effect once every cell's paired t-test is corrected for the others."""
    if "helps_holm" not in head:
        return ""
    counts = {k: len(head[k]) for k in ("helps_holm", "hurts_holm", "helps_bh", "hurts_bh")}
    named = "; ".join(head["helps_holm"])
    return (f"Corrected for testing {head['cells']} cells at once, it helps in {counts['helps_holm']}"
            + (f" ({named})" if named else "") + f" and hurts in "
            f"{counts['hurts_holm']} (Holm, family-wise error {head['alpha']:g}), and helps in {counts['helps_bh']} "
            f"and hurts in {counts['hurts_bh']} (Benjamini–Hochberg, false discovery rate {head['alpha']:g}), with "
            f"{chips_phrase(head)} per cell (a paired t-test on 3 chips has 2 degrees of freedom); the map is read as "
            "a pattern across cells (the SNR correlation below); the headline cells (PCM ×10 and ×50 with the router "
            "analog, and the best cell) are re-measured on 5 chips, the others keep 3.")


def _mapping(cells: list[dict]) -> str:
    if not cells:
        return "_not run yet (`make regime-map`)._"
    presets = list(dict.fromkeys(c["preset"] for c in cells))
    mappings = list(dict.fromkeys(c["mapping"] for c in cells))
    by = {(c["model"], c["preset"], c["mapping"]): c for c in cells}
    lines = ["| model | preset | " + " | ".join(f"`{m}`: noisy PPL · ROMER %" for m in mappings) + " |",
             "|---|---|" + "---|" * len(mappings)]
    for model in present_models([c for c in cells if c["mapping"] != "expert"]):
        for preset in presets:
            row = [by.get((model, preset, m)) for m in mappings]
            lines.append(f"| {model} | {preset} | " + " | ".join(
                "—" if c is None else f"{_noisy_ppl(c)} · {_pct(_method(c, 'romer'))}" for c in row) + " |")
    return "\n".join(lines)
