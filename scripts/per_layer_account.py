"""Does the router-noise account predict where P1 helps? Per MoE layer, predicted against measured PPL gain.

    python scripts/per_layer_account.py [--chips 3] [--scales 10 25] [--max-tokens 8192] [--out results/router-noise]
    python scripts/per_layer_account.py --replot     # figures and plot again from per-layer.json, no measuring

For each zoo model, PCM scale (placement ``moe``, t = 1 day) and chip, on the first ``--max-tokens`` validation
tokens (P1 fitted on 32 train windows of 512 tokens: disjoint text), per MoE layer l:

* routing damage D_l = ln PPL_noisy − ln PPL_oracle(l): what replaying the clean routing in layer l alone
  recovers (``oracle_perplexity(layers=(l,))``);
* the account's recoverable share A_l: the measured affine share of layer l's logit noise (paired clean / chip
  logits on the same tokens, ``romer.routing.router_noise``), and the router's own share of it;
* predicted gain D_l · A_l against the measured gain G_l = ln PPL_noisy − ln PPL_P1(l), P1 in layer l only.

Writes ``per-layer.json`` (every layer, chip and scale, and the agreement figures: Pearson's r and Spearman's ρ of
measured against predicted and against damage alone, over all points and without the single largest prediction)
and ``per-layer.png`` (measured against predicted: all points, and zoomed on the bulk), and prints them.
docs/regime-map.md ("Reading the map", item 8) and docs/router-noise.md (finding 7) quote it; it writes no
markdown itself.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import torch
from matplotlib.figure import Figure

from romer.calibrate import Calibrator, MethodConfig
from romer.calibrate.calibrator import observe, observe_chip
from romer.calibrate.config import CalibrationData
from romer.calibrate.routing_rule import RouterFix
from romer.eval import perplexity
from romer.experiment import states
from romer.eval.spec import EvalSpec
from romer.estimators import pearson, spearman
from romer.studies.regime_map import MODELS
from romer.io import write_bytes_atomic, write_text_atomic
from romer.models import load_model
from romer.noise.chip import Chip, default_chip, program
from romer.routing import capture_routing, oracle_perplexity
from romer.routing.router_noise import record_logit_noise, record_router_inputs, router_noise_report

ROOT = Path(__file__).resolve().parents[1]
WINDOW, BATCH = 512, 8


def only_layer(plan, index: int):
    """The plan with every router fix but layer ``index``'s replaced by the identity."""
    return replace(plan, router=[fix if fix.layer == index else RouterFix(fix.layer) for fix in plan.router])


@torch.no_grad()
def measure_model(name: str, scales: list[float], chips: int, max_tokens: int) -> list[dict]:
    model, tokenizer = load_model(name)
    text = EvalSpec(split="validation", max_tokens=max_tokens).text(tokenizer)
    with record_router_inputs(model) as reference:
        captured = capture_routing(model, tokenizer, text, WINDOW, BATCH)
    method = MethodConfig(name="P1", kind="recalibrate", calibration=CalibrationData(sequences=32))
    calibrator = Calibrator(method)
    windows = calibrator.windows(tokenizer)
    clean_obs = observe(model, windows, BATCH, keep_logits=True)
    rows = []
    for scale in scales:
        base = default_chip(0)
        for seed in range(chips):
            chip = Chip(replace(base.preset, prog_noise_scale=scale, read_noise_scale=scale), base.placement,
                        base.mapping, seed, base.t_inference)
            noisy_obs = observe_chip(model, chip, windows, BATCH)
            plan = calibrator.fit(model, windows, chip, clean=clean_obs, noisy=noisy_obs)
            with program(model, chip):
                with record_logit_noise(model, reference) as noise:
                    noisy = perplexity(model, tokenizer, text, window=WINDOW, batch_size=BATCH)
                account = {r["layer"]: r for r in router_noise_report(reference, noise)}
                for fix in plan.router:
                    oracle = oracle_perplexity(model, tokenizer, text, captured, layers=(fix.layer,))
                    with states.routing(model, only_layer(plan, fix.layer)):
                        p1 = perplexity(model, tokenizer, text, window=WINDOW, batch_size=BATCH)
                    a = account[fix.layer]
                    damage = math.log(noisy.ppl) - math.log(oracle.ppl)
                    share = a["measured"]["affine_share"]
                    rows.append({"model": name, "scale": scale, "chip": seed, "layer": fix.layer,
                                 "clean_ppl": captured.clean.ppl, "noisy_ppl": noisy.ppl, "oracle_ppl": oracle.ppl,
                                 "p1_ppl": p1.ppl, "damage": damage, "affine_share": share,
                                 "systematic_share": a["measured"]["systematic_share"],
                                 "own_share": a["router_own_share"], "predicted_gain": damage * share,
                                 "measured_gain": math.log(noisy.ppl) - math.log(p1.ppl)})
            print(f"{name} ×{scale:g} chip {seed}: " + ", ".join(
                f"L{r['layer']} pred {r['predicted_gain']:+.4f} meas {r['measured_gain']:+.4f}"
                for r in rows if r["scale"] == scale and r["chip"] == seed), flush=True)
    return rows


def agreement(rows: list[dict]) -> dict:
    """Pearson r and Spearman ρ of the measured gain against the prediction and against the damage alone, over all
    rows and without the row of the largest prediction (Pearson's r leans on extreme points)."""
    top = max(rows, key=lambda row: row["predicted_gain"])
    out = {}
    for label, chosen in (("all", rows), ("without_largest", [row for row in rows if row is not top])):
        measured = [row["measured_gain"] for row in chosen]
        out[label] = {"points": len(chosen), **{
            f"{stat.__name__}_{key}": stat([row[key] for row in chosen], measured)
            for stat in (pearson, spearman) for key in ("predicted_gain", "damage")}}
    out["largest"] = {k: top[k] for k in ("model", "scale", "chip", "layer", "predicted_gain", "measured_gain")}
    first = {name: min(row["layer"] for row in rows if row["model"] == name) for name in {r["model"] for r in rows}}
    is_first = [row["layer"] == first[row["model"]] for row in rows]
    # least-squares slope of measured on predicted through the origin: 1 = the prediction is right in scale
    out["slope"] = {label: _slope([row for row, f in zip(rows, is_first) if keep(f)])
                    for label, keep in (("all", lambda f: True), ("first_moe_layer", bool),
                                        ("later_layers", lambda f: not f))}
    out["per_model"] = {}
    for name in dict.fromkeys(row["model"] for row in rows):
        own = [(row, f) for row, f in zip(rows, is_first) if row["model"] == name]
        later = [row["damage"] for row, f in own if not f]
        out["per_model"][name] = {
            "pearson_predicted_gain": pearson([r["predicted_gain"] for r, _ in own], [r["measured_gain"] for r, _ in own]),
            "slope": _slope([r for r, _ in own]),
            "damage_first_moe_layer": statistics.fmean(r["damage"] for r, f in own if f),
            "damage_later_layers": statistics.fmean(later) if later else None,
            "affine_share_first_moe_layer": statistics.fmean(r["affine_share"] for r, f in own if f),
            "first_layer_share_of_gains": sum(r["measured_gain"] for r, f in own if f)
            / sum(r["measured_gain"] for r, _ in own)}
    out["affine_share_later_layers"] = statistics.fmean(row["affine_share"] for row, f in zip(rows, is_first)
                                                         if not f)
    out["affine_share_first_moe_layers"] = statistics.fmean(row["affine_share"] for row, f in zip(rows, is_first)
                                                             if f)
    return out


def _slope(rows: list[dict]) -> float:
    return (sum(r["predicted_gain"] * r["measured_gain"] for r in rows)
            / sum(r["predicted_gain"] ** 2 for r in rows))


def plot(rows: list[dict], figures: dict) -> bytes:
    fig = Figure(figsize=(11, 4.8))
    scales = sorted({row["scale"] for row in rows})
    rest = figures["without_largest"]
    for panel, (title, zoom) in enumerate(((f"all {len(rows)} points: Pearson r = "
                                            f"{figures['all']['pearson_predicted_gain']:.2f}", False),
                                           (f"without the largest: r = {rest['pearson_predicted_gain']:.2f}, "
                                            f"Spearman ρ = {rest['spearman_predicted_gain']:.2f}", True))):
        ax = fig.add_subplot(1, 2, panel + 1)
        for k, name in enumerate(dict.fromkeys(row["model"] for row in rows)):
            for j, scale in enumerate(scales):
                pts = [row for row in rows if row["model"] == name and row["scale"] == scale]
                ax.scatter([100 * p["predicted_gain"] for p in pts], [100 * p["measured_gain"] for p in pts], s=14,
                           color=f"C{k}", marker="os^D"[j % 4], label=f"{name} ×{scale:g}")
        shown = sorted(100 * row["predicted_gain"] for row in rows)[:-1] if zoom else [100 * r["damage"] for r in rows]
        lim = [min(0, *(100 * row["measured_gain"] for row in rows)) if not zoom else -1.0, max(shown)]
        ax.plot(lim, lim, color="0.6", lw=0.8)
        if zoom:
            ax.set_xlim(-0.5, max(shown) * 1.05)
            ax.set_ylim(-3.5, 6)
        ax.set_xlabel("predicted: routing damage of layer l × affine share  (% of ln PPL)")
        ax.set_ylabel("measured: P1 in layer l only  (% of ln PPL)")
        ax.set_title(title, fontsize=9)
        if panel == 0:
            ax.legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chips", type=int, default=3)
    parser.add_argument("--scales", type=float, nargs="+", default=[10.0, 25.0])
    parser.add_argument("--max-tokens", type=int, default=8192)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "router-noise")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--replot", action="store_true", help="recompute the figures and the plot from "
                                                                 "OUT/per-layer.json instead of measuring")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.replot:
        saved = json.loads((args.out / "per-layer.json").read_text())
        rows, settings = saved["rows"], saved["settings"]
    else:
        rows = [row for name in args.models for row in measure_model(name, args.scales, args.chips, args.max_tokens)]
        settings = {"chips": args.chips, "scales": args.scales, "max_tokens": args.max_tokens}
    figures = agreement(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / "per-layer.json", json.dumps(
        {"agreement": figures, "rows": rows, "settings": settings}, indent=1) + "\n")
    write_bytes_atomic(args.out / "per-layer.png", plot(rows, figures))
    for label in ("all", "without_largest"):
        f = figures[label]
        print(f"{label} ({f['points']} points): predicted r = {f['pearson_predicted_gain']:.3f}, ρ = "
              f"{f['spearman_predicted_gain']:.3f}; damage alone r = {f['pearson_damage']:.3f}, ρ = "
              f"{f['spearman_damage']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
