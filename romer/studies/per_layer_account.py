"""Does the router-noise account predict where P1 helps? Per MoE layer, predicted against measured PPL gain.

For a model, PCM scales (placement ``moe``, t = 1 day) and chips, on the first ``max_tokens`` validation tokens
(``EvalSpec(split="validation")``; P1 fitted on 32 train windows of 512 tokens: disjoint text), per MoE layer l:

* routing damage D_l = ln PPL_noisy − ln PPL_oracle(l): what replaying the clean routing in layer l alone
  recovers (``oracle_perplexity(layers=(l,))``);
* the account's recoverable share A_l: the measured affine share of layer l's logit noise (paired clean / chip
  logits on the same tokens, ``romer.routing.router_noise``), and the router's own share of it;
* predicted gain D_l · A_l against the measured gain G_l = ln PPL_noisy − ln PPL_P1(l), P1 in layer l only.

:func:`agreement` reduces the rows to Pearson's r and Spearman's ρ of measured against predicted and against damage
alone (over all points and without the single largest prediction), slopes and per-model figures.
``scripts/per_layer_account.py`` runs it and writes ``results/router-noise/per-layer.json`` and ``.png``.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import replace

import torch

from romer.calibrate import Calibrator, MethodConfig
from romer.calibrate.calibrator import observe, observe_chip
from romer.calibrate.config import CalibrationData
from romer.calibrate.routing_rule import RouterFix
from romer.estimators import pearson, spearman
from romer.eval import perplexity
from romer.eval.spec import EvalSpec
from romer.experiment import states
from romer.models import load_model
from romer.noise.chip import Chip, default_chip, program
from romer.routing import capture_routing, oracle_perplexity
from romer.routing.router_noise import record_logit_noise, record_router_inputs, router_noise_report

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
