"""Result tables as markdown, CSV and JSON (deterministic: same rows → same bytes).

Columns: model, preset, t (s), placement, method, chips, PPL mean ± std over chips, its 95 % interval, PPL reduction
vs noisy (%), share of the noisy − clean gap recovered (%), load-balance CV before (noisy) → after, CIM throughput
(MoE throughput relative to the clean model with one array per expert slot: romer.routing.cim_load), digital share
of the analog weights, and one column per zero-shot metric when the config scores tasks. For comparison the same rows also pivot into one method × model grid per (preset, placement, t).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass

from romer.estimators import paired_reduction

CSV_COLUMNS = ("model", "preset", "t", "placement", "method", "kind", "chips", "tokens", "ppl_mean",
               "ppl_std", "ppl_ci95_low", "ppl_ci95_high", "reduction_pct", "gap_recovered_pct", "word_ppl_mean",
               "bits_per_byte_mean", "cv_before_mean", "cv_mean", "utilisation_mean", "throughput_mean",
               "digital_share", "seconds_mean")
HEADER = ("model", "preset", "t (s)", "placement", "method", "chips", "PPL (mean ± std)", "95 % interval",
          "reduction vs noisy", "gap recovered", "CV before → after", "CIM throughput", "digital share")
GRID_SETTING = ("preset", "placement", "t")  # one method × model grid per setting


def clean_floats(value):
    """NaN / ±inf → None, recursively (strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean_floats(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_floats(v) for v in value]
    return value


def _num(value, digits: int = 2, suffix: str = "") -> str:
    return "—" if value is None else f"{value:.{digits}f}{suffix}"


def accuracy_keys(rows: list[dict]) -> list[str]:
    """The zero-shot columns ("TASK acc", "TASK acc_norm") any row has, in first-seen order."""
    return list(dict.fromkeys(k for row in rows for k in row.get("accuracy", {})))


def header(rows: list[dict]) -> list[str]:
    """HEADER and one column per zero-shot metric of ``rows``."""
    return [*HEADER, *(f"{k} (%)" for k in accuracy_keys(rows))]


def _accuracy_cell(row: dict, key: str) -> str:
    a = row.get("accuracy", {}).get(key)
    return "—" if a is None else f"{100 * a['mean']:.1f} ± {100 * a['std']:.1f}"


def cells(row: dict, accuracy: list[str] = ()) -> list[str]:
    """The human-readable cells of one row (markdown, HTML and the terminal table share them), with the
    ``accuracy`` columns (see :func:`accuracy_keys`) at the end."""
    return _base_cells(row) + [_accuracy_cell(row, k) for k in accuracy]


def model_name(model: str) -> str:
    """A model as tables show it: a zoo name as it is, a folder (a path) by its last part."""
    return model.rstrip("/").rsplit("/", 1)[-1] if "/" in model.rstrip("/") else model


def _base_cells(row: dict) -> list[str]:
    ci = row.get("ppl_ci95")
    cv = "—" if row.get("cv_mean") is None else (f"{_num(row.get('cv_before_mean'), 3)} → {row['cv_mean']:.3f}")
    return [model_name(row["model"]), row["preset"], f"{row['t']:g}", row["placement"], row["method"],
            str(row["chips"]), "—" if row["ppl_mean"] is None else f"{row['ppl_mean']:.3f} ± {row['ppl_std']:.3f}",
            "—" if ci is None else f"{ci[0]:.3f} – {ci[1]:.3f}", reduction_cell(row),
            _num(row.get("gap_recovered_pct"), 1, " %"), cv, _num(row.get("throughput_mean"), 2, "×"),
            _num(row.get("digital_share"), 3)]


@dataclass(frozen=True)
class Grid:
    """The rows of one (preset, placement, t) setting as a method × model grid, both in row order."""

    setting: dict
    methods: list[str]
    models: list[str]
    cells: dict[tuple[str, str], dict]  # (method, model) → row


def grids(rows: list[dict]) -> list[Grid]:
    """One :class:`Grid` per (preset, placement, t) setting, in the order the settings first appear in ``rows``."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in GRID_SETTING), []).append(row)
    return [Grid(dict(zip(GRID_SETTING, key)), list(dict.fromkeys(r["method"] for r in group)),
                 list(dict.fromkeys(r["model"] for r in group)), {(r["method"], r["model"]): r for r in group})
            for key, group in groups.items()]


def grid_cell(row: dict) -> tuple[str, str]:
    """(PPL mean ± std, the comparison with the noisy chip) of one row, for a method × model grid."""
    ppl = "—" if row["ppl_mean"] is None else f"{row['ppl_mean']:.2f} ± {row['ppl_std']:.2f}"
    if row["kind"] == "noisy":
        return ppl, "reference"
    parts = [] if row.get("reduction_pct") is None else [f"{row['reduction_pct']:+.1f} %"]
    if row.get("gap_recovered_pct") is not None and row["kind"] != "clean":  # clean: 100 % by definition
        parts.append(f"gap {row['gap_recovered_pct']:.0f} %")
    if row.get("digital_share"):
        parts.append(f"dig. {100 * row['digital_share']:.1f} %")
    parts += [f"{k} {100 * a['mean']:.1f} %" for k, a in row.get("accuracy", {}).items()]
    return ppl, " · ".join(parts) or "—"


ESTIMATOR_LINE = ("Reduction vs noisy and gap recovered: the paired estimator — the mean over chips of each chip's "
                  "figure against the noisy and clean rows of the same chip, 95 % Student-t interval in brackets "
                  "(romer.estimators).")


def interval_text(figure: dict | None, ci_digits: int = 1) -> str:
    """A paired figure (``romer.estimators.interval``: mean, low, high) as ``+2.1 [+0.4, +3.8]``: the mean alone
    without an interval (one chip), — without a mean."""
    if not figure or figure.get("mean") is None:
        return "—"
    if figure.get("low") is None:
        return f"{figure['mean']:+.1f}"
    return f"{figure['mean']:+.1f} [{figure['low']:+.{ci_digits}f}, {figure['high']:+.{ci_digits}f}]"


def versus_text(ppl: Mapping[int, float], other: Mapping[int, float], ci_digits: int = 1) -> str:
    """``ppl``'s PPL reduction % against ``other`` on the chips (seeds) both have, paired: ``+2.1 [+0.4, +3.8]``."""
    return interval_text(paired_reduction(ppl, other), ci_digits)


def reduction_cell(row: dict) -> str:
    """The paired reduction with its interval: ``+2.7 % [+1.1, +4.3]`` (— without one)."""
    value, ci = row.get("reduction_pct"), row.get("reduction_ci95")
    return "—" if value is None else f"{value:+.1f} %" + ("" if ci is None else f" [{ci[0]:+.1f}, {ci[1]:+.1f}]")


def markdown(rows: list[dict], title: str | None = None, setup: str | None = None) -> str:
    """The rows as one markdown table under ``title`` and its ``setup`` line (romer.report.setup)."""
    lines = ([f"# {title}", ""] if title else []) + ([setup, ""] if setup else [])
    columns, accuracy = header(rows), accuracy_keys(rows)
    lines += ["| " + " | ".join(columns) + " |", "|" + "|".join("---:" if i >= 5 else "---" for i in range(len(columns)))
              + "|"]
    for row in rows:
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells(row, accuracy)) + " |")
    return "\n".join([*lines, "", ESTIMATOR_LINE]) + "\n"


def to_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    accuracy = [f"{k} {stat}" for k in accuracy_keys(rows) for stat in ("mean", "std")]
    writer.writerow([*CSV_COLUMNS, *accuracy])
    for row in rows:
        ci = row.get("ppl_ci95") or [None, None]
        flat = {**row, "ppl_ci95_low": ci[0], "ppl_ci95_high": ci[1],
                **{f"{k} {stat}": a[stat] for k, a in row.get("accuracy", {}).items() for stat in ("mean", "std")}}
        writer.writerow(["" if flat.get(c) is None else _csv_value(flat[c]) for c in (*CSV_COLUMNS, *accuracy)])
    return buffer.getvalue()


def _csv_value(value) -> str:
    if isinstance(value, float):
        return "" if not math.isfinite(value) else repr(value)
    return str(value)


def to_json(rows: list[dict], config: dict | None, config_hash: str | None, git: str, versions: dict) -> str:
    """``{"rows": [...], "config": {...}, "config_hash", "git", "versions", "estimators"}`` with sorted keys, 2-space
    indent; ``estimators`` names the estimator behind each figure (``romer.estimators.ESTIMATORS``)."""
    from romer.estimators import ESTIMATORS

    payload = {"rows": rows, "config": config, "config_hash": config_hash, "git": git, "versions": versions,
               "estimators": ESTIMATORS}
    return json.dumps(clean_floats(payload), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
