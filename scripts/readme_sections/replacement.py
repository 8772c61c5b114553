"""docs/regime-map.md's "Which replacement" (marker ``replacement``) and "Depth or width" (marker ``depth``), from
the reports of ``romer run regime-replacement`` and ``romer run regime-depth`` (results/<config>/results.json).

Every comparison is paired by chip: a method's PPL reduction against another on the same chip and the same tokens,
the mean over chips with its 95 % Student-t interval (``romer.estimators.paired_reduction``)."""

from __future__ import annotations

import json
from pathlib import Path

from romer.report.tables import versus_text
from romer.report.setup import setup_line

VARIANTS = ("replica", "split")
DEPTH_MODELS = ("olmoe-tiny", "olmoe-narrow", "olmoe-deep")


def _load(root: Path, out: str) -> dict | None:
    path = root / "results" / out / "results.json"
    return json.loads(path.read_text()) if path.exists() else None


def _not_run(out: str) -> str:
    return f"_{out}: not run yet (`romer run {out} --out results/{out}`)._"


def _chips(row: dict) -> dict[int, float]:
    return dict(zip(row["seeds"], row["ppl_per_chip"]))


def versus(a: dict | None, b: dict | None) -> str:
    """Row ``a``'s PPL reduction against row ``b`` on the same chips: ``+2.1 [+0.4, +3.8]`` (— without both)."""
    return "—" if not a or not b else versus_text(_chips(a), _chips(b))


def _load_cell(r: dict) -> str:
    throughput = r.get("throughput_mean")
    return f"CV {r['cv_mean']:.2f}" + ("" if throughput is None else f" · {throughput:.2f}×")


def _by(rows: list[dict]) -> dict[tuple, dict]:
    return {(r["model"], r["preset"], r["placement"], r["method"]): r for r in rows}


def _study(root: Path, out: str) -> tuple[dict, list[dict], dict[tuple, dict], list[str]] | None:
    """results/<out>/results.json as (payload, rows, rows by (model, preset, placement, method), presets in
    order); None where it has not been run."""
    data = _load(root, out)
    if data is None:
        return None
    rows = data["rows"]
    return data, rows, _by(rows), list(dict.fromkeys(r["preset"] for r in rows))


def _models(rows: list[dict], order: tuple[str, ...] = ()) -> list[str]:
    seen = list(dict.fromkeys(r["model"] for r in rows))
    return [m for m in order if m in seen] + [m for m in seen if m not in order]


def render_replacement(root: Path) -> str:
    study = _study(root, "regime-replacement")
    if study is None:
        return _not_run("regime-replacement")
    data, rows, by, presets = study
    head = ("| model | preset | noisy: PPL · load | replica: % vs noisy · load | split: % vs noisy · load | "
            "split vs replica % | ROMER (replica) % vs noisy | ROMER (split) % vs noisy | ROMER split vs replica % |")
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    for model in _models(rows, DEPTH_MODELS):
        for preset in presets:
            for placement in dict.fromkeys(r["placement"] for r in rows):
                get = lambda method: by.get((model, preset, placement, method))  # noqa: E731
                noisy = get("noisy")
                if noisy is None:
                    continue
                cells = [f"{noisy['ppl_mean']:.1f} · {_load_cell(noisy)}"]
                for variant in VARIANTS:
                    r = get(variant)
                    cells.append("—" if r is None else f"{versus(r, noisy)} · {_load_cell(r)}")
                cells.append(versus(get("split"), get("replica")))
                cells += [versus(get(f"romer ({v})"), noisy) for v in VARIANTS]
                cells.append(versus(get("romer (split)"), get("romer (replica)")))
                label = preset if placement == "moe" else f"{preset} · {placement}"
                lines.append(f"| {model} | {label} | " + " | ".join(cells) + " |")
    return (f"**`romer run regime-replacement --out results/regime-replacement`**. "
            f"{setup_line(data.get('config'), data.get('versions', {}), rows)} Load: the CV of the expert "
            "frequencies on the evaluated tokens and the MoE throughput of a CIM chip relative to the clean model "
            "(Σ over layers of the busiest array's load; `romer.routing.cim_load`), mean over chips. A percentage is "
            "a PPL reduction paired by chip, 95 % interval in brackets.\n\n" + "\n".join(lines))


def _shape(root: Path, model: str) -> str:
    """``4 · 128 / 32``: a zoo model's decoder layers · hidden size / routed-expert width (— for other models)."""
    path = root / "romer" / "models" / "zoo" / model / "config.json"
    if not path.exists():
        return "—"
    c = json.loads(path.read_text())
    return f"{c['num_hidden_layers']} · {c['hidden_size']} / {c['intermediate_size']}"


def render_depth(root: Path) -> str:
    study = _study(root, "regime-depth")
    if study is None:
        return _not_run("regime-depth")
    data, rows, by, presets = study
    lines = ["| model | layers · width | preset | clean PPL | noisy PPL (+% over clean) | clean-routing replay: gap "
             "recovered % | ROMER % vs noisy |", "|---|---|---|---|---|---|---|"]
    for model in _models(rows, DEPTH_MODELS):
        for preset in presets:
            get = lambda method: by.get((model, preset, "moe", method))  # noqa: E731
            clean, noisy = get("clean"), get("noisy")
            if not clean or not noisy:
                continue
            oracle = get("oracle routing")
            replay = "—" if not oracle or oracle.get("gap_recovered_pct") is None else (
                f"{oracle['gap_recovered_pct']:.0f}" + ("" if not oracle.get("gap_recovered_ci95") else
                                                        " [{:.0f}, {:.0f}]".format(*oracle["gap_recovered_ci95"])))
            damage = 100 * (noisy["ppl_mean"] / clean["ppl_mean"] - 1)
            lines.append(f"| {model} | {_shape(root, model)} | {preset} | {clean['ppl_mean']:.1f} | "
                         f"{noisy['ppl_mean']:.1f} (+{damage:.0f} %) | {replay} | "
                         f"{versus(get('romer'), noisy)} |")
    return (f"**`romer run regime-depth --out results/regime-depth`**. "
            f"{setup_line(data.get('config'), data.get('versions', {}), rows)}\n\n" + "\n".join(lines))
