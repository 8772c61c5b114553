"""The results tables: docs/results.md's "Main result" and "Ablations" (markers ``main-result`` and ``ablations``)
and README's key result (marker ``key-result``), from the reports `romer run` wrote
(results/<config>/results.json); a config not run yet renders as a one-line placeholder. The deep reference
model's rows of the default chip come from ``results/accuracy-deep`` (the accuracy config run for olmoe-deep
alone) and join the accuracy config's as one more column."""

from __future__ import annotations

import json
from pathlib import Path

from readme_sections.regime import chips_phrase
from romer.report.tables import reduction_cell

MODELS = ("olmoe-tiny", "qwenmoe-tiny", "deepseekmoe-tiny", "olmoe-deep")
KEY_METHODS = ("clean", "noisy", "recalibration", "romer")  # README's key result: the repair and its working part
WHEN = {1.0: "1 s", 3600.0: "1 hour", 86400.0: "1 day", 31536000.0: "1 year"}
DEEP_OUT = "accuracy-deep"  # romer run accuracy --set "models=[olmoe-deep]" --out results/accuracy-deep


def table(rows: list[dict], cell, placement: str | None = None) -> str:
    rows = [r for r in rows if placement is None or r["placement"] == placement]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    models = [m for m in MODELS if any(r["model"] == m for r in rows)]
    by = {(r["model"], r["method"]): r for r in rows}
    lines = ["| method | " + " | ".join(models) + " |", "|---|" + "---:|" * len(models)]
    for method in methods:
        lines.append(f"| {method} | " + " | ".join(cell(by[(m, method)]) if (m, method) in by else "—"
                                                   for m in models) + " |")
    return "\n".join(lines)


def reduction(r: dict) -> str:
    """The PPL reduction against noisy, paired by chip, with its 95 % interval (— for a row stored before per-chip
    PPLs were kept: rerun its command)."""
    return reduction_cell(r)


def gap(r: dict) -> str | None:
    """The share of the noisy − clean gap recovered, paired by chip (None without it)."""
    return None if r.get("gap_recovered_pct") is None else f"{r['gap_recovered_pct']:.0f} %"


ESTIMATOR_NOTE = ("Reductions and gaps: the paired estimator (mean over chips of the per-chip figure, 95 % "
                  "Student-t interval in brackets; `romer.estimators`).")


def main_cell(r: dict) -> str:
    if r["kind"] == "clean":
        return f"{r['ppl_mean']:.2f} (CV {r['cv_mean']:.2f})"
    throughput = r.get("throughput_mean")
    return (f"{r['ppl_mean']:.2f} ± {r['ppl_std']:.2f} · {reduction(r)} · gap {gap(r) or '—'}"
            f" · CV {r['cv_before_mean']:.2f}→{r['cv_mean']:.2f}"
            + ("" if throughput is None else f" · thr. {throughput:.2f}×")
            + (f" · dig. {100 * r['digital_share']:.1f} %" if r["digital_share"] else ""))


def accuracy_cell(r: dict) -> str:
    """Zero-shot accuracy (%), mean ± std over chips: cloze acc / next-sentence acc_norm."""
    acc = r.get("accuracy", {})
    parts = [acc.get(k) for k in ("romer_cloze acc", "romer_nextsent acc_norm")]
    if not any(parts):
        return "—"
    return " / ".join("—" if a is None else f"{100 * a['mean']:.1f} ± {100 * a['std']:.1f}" for a in parts)


def short_cell(r: dict) -> str:
    if r["kind"] in ("clean", "noisy"):
        return f"{r['ppl_mean']:.2f}"
    recovered = gap(r)
    return f"{r['ppl_mean']:.2f} ({reduction(r)}{'' if recovered is None else ', gap ' + recovered})"


def section(root: Path, config: str, placement: str | None, cell, intro: str, also: tuple[str, ...] = ()) -> str:
    """One table of ``config``'s rows, with the rows of the ``also`` output folders (same config, other models)."""
    path = root / "results" / config / "results.json"
    if not path.exists():
        return f"_{config}: not run yet (`romer run {config} --out results/{config}`)._"
    data = _rows(root, config, also)
    shown = [r for r in data if placement is None or r["placement"] == placement]
    return f"{intro}. {_setup(root, config, shown, also)} {ESTIMATOR_NOTE}\n\n" + table(data, cell, placement)


def render_main(root: Path) -> str:
    """The default chip (`moe`) from the accuracy config (the default job plus zero-shot tasks) when it has been
    run, else from main; the stress placement (`all`) from main."""
    parts = []
    moe_config = "accuracy" if _rows(root, "accuracy") else "main"
    for p, config in (("moe", moe_config), ("all", "main")):
        also = (DEEP_OUT,) if config == "accuracy" else ()
        command = f"**`romer run {config} --out results/{config}`**" + (
            f" (olmoe-deep: `romer run accuracy --set \"models=[olmoe-deep]\" --out results/{DEEP_OUT}`)"
            if also and _rows(root, DEEP_OUT) else "")
        parts.append(section(root, config, p, main_cell, f"{command}, test split, placement `{p}`", also))
        rows = [r for r in _rows(root, config, also) if r["placement"] == p]
        versus = parts_line(rows)
        if versus:
            parts.append(versus)
        if any(r.get("accuracy") for r in rows):
            parts.append(f"Zero-shot accuracy (%), placement `{p}`, mean ± std over the chips: `romer_cloze` acc / "
                         "`romer_nextsent` acc_norm, on the first items of each task (`eval.task_limit` of the "
                         "config; chance ≈ 0 / 25 %); oracle routing has none (it replays the evaluation tokens' "
                         "clean routing):\n\n" + table(rows, accuracy_cell, p))
    return "\n\n".join(parts)


PARTS = (("romer", "recalibration"), ("romer", "replacement"))  # ROMER against each of its parts alone


def parts_line(rows: list[dict]) -> str:
    """ROMER against each of its parts, paired by chip (mean of the per-chip reductions, 95 % interval), per model;
    empty where the rows carry no per-chip PPLs."""
    from romer.estimators import paired_reduction

    by = {(r["model"], r["method"]): dict(zip(r["seeds"], r["ppl_per_chip"])) for r in rows if r.get("ppl_per_chip")}
    groups = []
    for method, part in PARTS:
        cells = []
        for model in MODELS:
            if (model, method) in by and (model, part) in by:
                f = paired_reduction(by[(model, method)], by[(model, part)])
                if f["low"] is not None:
                    cells.append(f"{model} {f['mean']:+.2f} % [{f['low']:+.2f}, {f['high']:+.2f}]")
        if cells:
            groups.append(f"vs {part}: " + ", ".join(cells))
    if not groups:
        return ""
    return ("ROMER against its parts alone, paired by chip (PPL reduction of ROMER relative to the part on the same "
            "chip, mean over chips, 95 % interval) — " + "; ".join(groups) + ".")


def _setup(root: Path, config: str, rows: list[dict], also: tuple[str, ...] = ()) -> str:
    """The setup line (romer.report.setup) of results/<config>/results.json and its ``also`` folders, for ``rows``:
    the config's evaluation settings, the library versions the trials ran with (differing ones joined)."""
    from romer.report.setup import setup_line

    payloads = [json.loads(path.read_text()) for out in (config, *also)
                if (path := root / "results" / out / "results.json").exists()]
    libraries = sorted({k for p in payloads for k in p.get("versions", {})})
    versions = {k: ", ".join(sorted({p["versions"][k] for p in payloads if k in p.get("versions", {})}))
                for k in libraries}
    return setup_line(payloads[0].get("config"), versions, rows)


def _rows(root: Path, config: str, also: tuple[str, ...] = ()) -> list[dict]:
    """The rows of results/<config>/results.json, then those of each ``also`` output folder (none where absent)."""
    rows = []
    for out in (config, *also):
        path = root / "results" / out / "results.json"
        rows += json.loads(path.read_text())["rows"] if path.exists() else []
    return rows


def render_ablations(root: Path) -> str:
    return "\n\n".join([
        section(root, "ablations", "moe", short_cell, "**`romer run ablations --out results/ablations`**, "
                "validation split, placement `moe`"),
        section(root, "router-digital", None, short_cell, "**`romer run router-digital --out "
                "results/router-digital`**, validation split, router digital (placement `experts`)"),
        section(root, "per-layer", None, short_cell, "**`romer run per-layer --out results/per-layer`**, "
                "validation split, placement `moe`"),
        section(root, "per-layer-0", None, short_cell, "**`romer run per-layer --set \"models=[olmoe-tiny, "
                "qwenmoe-tiny]\" --set \"methods=[clean, noisy, {name: P1 layer 0 only, kind: recalibrate, "
                "recalibrate: {layers: [0]}}]\" --out results/per-layer-0`**, layer 0 (deepseekmoe-tiny's is dense)"),
        section(root, "noise-free", None, short_cell, "**`romer run noise-free --out results/noise-free`**, test "
                "split, a chip without noise (gaussian η = 0)")])


def key_cell(r: dict) -> str:
    if r["kind"] == "clean":
        return f"{r['ppl_mean']:.2f}"
    if r["kind"] == "noisy":
        return f"{r['ppl_mean']:.2f} ± {r['ppl_std']:.2f}"
    return f"{r['ppl_mean']:.2f} ± {r['ppl_std']:.2f} ({reduction(r)})"


def render_key(root: Path) -> str:
    """README's key result: the default chip's clean / noisy / recalibration / ROMER rows of the main result (the
    accuracy config where it has been run, else main; placement `moe`), and the regime map's headline where
    results/regime-map/cells.json exists."""
    config = "accuracy" if _rows(root, "accuracy") else "main"
    rows = [r for r in _rows(root, config) if r["placement"] == "moe" and r["method"] in KEY_METHODS]
    if not rows:
        return f"_{config}: not run yet (`make main-result`)._"
    r = rows[0]
    when = WHEN.get(r["t"], f"{r['t']:g} s")
    parts = [f"Test perplexity (lower is better) on the default chip — {r['preset']}, t = {when}, MoE blocks analog — "
             f"mean ± std over {r['chips']} chips; in brackets the reduction against noisy, paired by chip. "
             f"{_setup(root, config, rows)} From `romer run {config} --out "
             f"results/{config}`; regenerate: `make main-result`. {ESTIMATOR_NOTE}\n\n"
             + table(rows, key_cell)]
    cells = root / "results" / "regime-map" / "cells.json"
    if cells.exists():
        head = json.loads(cells.read_text())["headline"]["romer"]["reduction_pct"]
        low, high = head.get("up_to_interval") or (None, None)
        interval = "" if low is None else f", 95 % interval [{low:.1f}, {high:.1f}] over {head.get('up_to_chips', 3)} chips"
        corrected = ("" if "helps_holm" not in head else
                     f" Corrected for testing all {head['cells']} cells (Holm), it helps in "
                     f"{len(head['helps_holm'])} and hurts in {len(head['hurts_holm'])} ({chips_phrase(head)} per cell; "
                     "[regime-map.md](docs/regime-map.md)).")
        parts.append(f"Over the {head['cells']} distinct cells of the regime map (noise scale, placement, mapping, "
                     f"time) ROMER lowers PPL by up to {head['up_to']:.1f} % (the best cell: {head['up_to_cell']}"
                     f"{interval}) and by {head['typical']:+.1f} % in the median cell.{corrected} Regenerate: "
                     "`make regime-map`.")
    return "\n\n".join(parts)
