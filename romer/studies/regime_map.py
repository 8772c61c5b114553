"""The regime map: where along noise, placement, mapping and time a repair helps, from results stores.

A **cell** is one (model, preset, placement, mapping, t) setting of a store; per method it holds the per-chip
PPLs (paired by chip seed with the cell's noisy and clean rows), its cost (mean ``digital_share`` and
``extra_analog_share``: the shares of the analog weights kept digital or programmed again as replicas) and, per
chip, three paired figures:

    reduction % = 100 · (1 − PPL / PPL_noisy)
    gap recovered % = 100 · (PPL_noisy − PPL) / (PPL_noisy − PPL_clean)
    routing share % (oracle routing only) = 100 · (PPL_noisy − PPL_oracle) / (PPL_noisy − PPL_clean)

each reported with the paired estimator of ``romer.estimators`` (the mean over chips, 95 % Student-t interval). A cell's
physical position is the chips' mean weight SNR per placement group and router-logit SNR (dB, ``snr_db`` of the
rows: ``romer.noise.snr``), which, unlike a noise-scale knob, is comparable across models (the gain at one SNR
still differs between models).

``headline`` phrases the map the way the paper phrases its own result ("up to": the best cell) next to the
typical cell (the median over cells) and lists the cells where a method hurts (interval entirely below 0).
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from pathlib import Path

from romer.errors import UserError
from romer.store import ResultsStore
from romer.estimators import benjamini_hochberg, holm, interval, pearson, per_chip_gap_recovered, per_chip_reduction, spearman

CELL_KEYS = ("model", "preset", "placement", "mapping", "t_inference")
MODELS = ("olmoe-tiny", "qwenmoe-tiny", "deepseekmoe-tiny", "olmoe-deep")  # the map's models, in table order
GRID_SOURCES = ("regime", "regime-deep")  # configs whose cells form the noise scale × placement grid
MIN_DAMAGE_PCT = 5.0  # gap-recovered figures are read only where the chip raised PPL by at least this, % of clean
SNR_KEYS = ("router", "routed_experts", "router_logits")
CONFIGS = ("regime", "regime-deep", "regime-time", "regime-channel", "regime-tensor", "regime-repairs")
METHODS = ("romer", "recalibration", "replacement", "oracle routing", "maxnn-12.5%", "least squares")
REPAIRS = ("recalibration", "least squares", "romer", "replacement", "maxnn-12.5%", "oracle routing",
           "2 router copies", "4 router copies", "P1 + 2 router copies", "P1 + 4 router copies")


def _by_kind(rows: list[dict], kind: str) -> dict[int, float]:
    return {r["chip_seed"]: r["ppl"] for r in rows if r["method_kind"] == kind and r["ppl"] is not None}


def _cell(key: tuple, rows: list[dict], source: str) -> dict:
    noisy, clean = _by_kind(rows, "noisy"), _by_kind(rows, "clean")
    methods: dict[str, dict] = {}
    for name in dict.fromkeys(r["method"] for r in rows):
        own = {r["chip_seed"]: r for r in rows if r["method"] == name and r["ppl"] is not None}
        seeds = sorted(set(own) & set(noisy) & set(clean))
        ppl = [own[s]["ppl"] for s in seeds]
        paired = {s: own[s]["ppl"] for s in seeds}
        reduction = per_chip_reduction(paired, noisy)
        gap = per_chip_gap_recovered(paired, noisy, clean)
        cost = {k: statistics.fmean(own[s]["metrics"].get(k) or 0.0 for s in seeds) if seeds else None
                for k in ("digital_share", "extra_analog_share")}
        methods[name] = {"kind": own[seeds[0]]["method_kind"] if seeds else None, "seeds": seeds, "ppl": ppl, **cost,
                         "ppl_mean": statistics.fmean(ppl) if ppl else None,
                         "reduction_pct": interval(reduction), "gap_recovered_pct": interval(gap)}
    snr = defaultdict(list)
    for r in rows:
        if r["method_kind"] == "noisy":
            for k, v in (r["metrics"].get("snr_db") or {}).items():
                snr[k].append(v)
    cell = dict(zip(CELL_KEYS, key))
    cell["t"] = cell.pop("t_inference")
    oracle = next((m for m in methods.values() if m["kind"] == "oracle"), None)
    return {**cell, "source": source, "methods": methods,
            "routing_share_pct": oracle["gap_recovered_pct"] if oracle else None,
            "snr_db": {k: statistics.fmean(v) for k, v in snr.items() if all(math.isfinite(x) for x in v)}}


def present_models(items: list[dict]) -> list[str]:
    """The map's models that appear (key ``model``) among ``items`` (cells or points), in MODELS order."""
    return [m for m in MODELS if any(item["model"] == m for item in items)]


def cell_id(cell: dict) -> tuple:
    """What names a cell across runs: its source config and setting."""
    return (cell["source"], cell["model"], cell["preset"], cell["placement"], cell["mapping"], cell["t"])


def merge_cells(measured: list[dict], kept: list[dict]) -> list[dict]:
    """``measured`` cells (from stores on disk) and, after them, every ``kept`` cell (e.g. the committed
    cells.json, whose per-chip PPLs are the record of a run whose store is gone) that no measured cell replaces."""
    seen = {cell_id(c) for c in measured}
    return measured + [c for c in kept if cell_id(c) not in seen]


def cells_from_store(path: str | Path) -> list[dict]:
    """Every cell of every config in one results store (the store's folder name is the cells' ``source``)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no results store at {path}")
    with ResultsStore(path, read_only=True) as store:
        rows = store.rows()
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[tuple(r[k] for k in CELL_KEYS)].append(r)
    return [_cell(key, members, path.parent.name) for key, members in groups.items()]


def _mean(cell: dict, method: str, figure: str) -> float | None:
    m = cell["methods"].get(method)
    return None if m is None else m[figure]["mean"]


def damage_pct(cell: dict) -> float | None:
    """How much the chip raised PPL in this cell, % of clean: 100 · (PPL_noisy / PPL_clean − 1) (chip means)."""
    noisy, clean = cell["methods"].get("noisy"), cell["methods"].get("clean")
    if not noisy or not clean or not noisy["ppl_mean"] or not clean["ppl_mean"]:
        return None
    return 100.0 * (noisy["ppl_mean"] / clean["ppl_mean"] - 1.0)


def distinct(cells: list[dict]) -> list[dict]:
    """Each setting once: a cell measured by two configs (``regime`` and ``regime-time`` share the default time)
    counts only where it was first measured (``cells`` in config order)."""
    seen, out = set(), []
    for c in cells:
        key = (c["model"], c["preset"], c["placement"], c["mapping"], c["t"])
        if key not in seen:
            seen.add(key)
            out.append(c)
    return out


def headline(cells: list[dict], method: str = "romer", figure: str = "reduction_pct",
             min_damage_pct: float | None = None, alpha: float = 0.05) -> dict:
    """Over the distinct cells: the best cell ("up to", with its interval), the median over cells (typical), the
    cells where ``method`` hurts by its 95 % interval alone (uncorrected), and the cells where it helps or hurts
    after correcting the cells' paired t-tests across every cell counted: Holm (family-wise error ``alpha``) and
    Benjamini–Hochberg (false discovery rate ``alpha``);
    with ``min_damage_pct``, only cells where the chip raised PPL by at least that many % count (a
    gap-recovered share of a near-zero gap is noise)."""
    cells = distinct(cells)
    if min_damage_pct is not None:
        cells = [c for c in cells if (damage_pct(c) or 0.0) >= min_damage_pct]
    scored = [(c, _mean(c, method, figure)) for c in cells]
    scored = [(c, v) for c, v in scored if v is not None]
    if not scored:
        return {"cells": 0}
    best_cell, best = max(scored, key=lambda cv: cv[1])
    figures = [c["methods"][method][figure] for c, _ in scored]
    hurts = [c for (c, _), f in zip(scored, figures) if f["high"] is not None and f["high"] < 0.0]
    p_values = [f.get("p") for f in figures]

    def significant(adjusted: list) -> list[tuple[dict, float]]:
        return [(c, v) for (c, v), p in zip(scored, adjusted) if p is not None and p < alpha]
    fwer, fdr = significant(holm(p_values)), significant(benjamini_hochberg(p_values))
    return {"cells": len(scored), "up_to": best, "up_to_cell": _label(best_cell),
            "up_to_interval": [best_cell["methods"][method][figure]["low"],
                               best_cell["methods"][method][figure]["high"]],
            "up_to_chips": best_cell["methods"][method][figure]["n"],
            "chips": sorted({f["n"] for f in figures}),
            "typical": statistics.median(v for _, v in scored), "hurts": [_label(c) for c in hurts],
            "alpha": alpha,
            "helps_holm": [_label(c) for c, v in fwer if v > 0], "hurts_holm": [_label(c) for c, v in fwer if v < 0],
            "helps_bh": [_label(c) for c, v in fdr if v > 0], "hurts_bh": [_label(c) for c, v in fdr if v < 0]}


def _label(cell: dict) -> str:
    """model · preset · placement, and the mapping and t where they are not the default chip's."""
    parts = [cell["model"], cell["preset"], cell["placement"]]
    if cell["mapping"] != "expert":
        parts.append(f"{cell['mapping']} mapping")
    if cell["t"] != 86400:
        parts.append(f"t = {cell['t']:g} s")
    return " · ".join(parts)


def regime_presets(config: str = "regime") -> list[str]:
    """The preset labels of a bundled regime config, in its order (tables and plots follow it)."""
    from romer.experiment.config_file import load_config

    return [spec.name for spec in load_config(config).chip.presets]


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


def build(results: Path) -> dict:
    """Every cell of the regime configs' stores under ``results`` (cells of a config whose store is gone kept from
    ``results/regime-map/cells.json``), the Pareto points and the headline figures."""
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
        raise UserError(f"no regime store under {results} (run `make regime-map`)")
    return {"cells": cells, "pareto": pareto_points(cells, router_shares(present_models(cells))),
            "headline": {method: {"reduction_pct": headline(cells, method, "reduction_pct"),
                                  "gap_recovered_pct": headline(cells, method, "gap_recovered_pct", MIN_DAMAGE_PCT)}
                         for method in METHODS}}
