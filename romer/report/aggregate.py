"""From stored trials to table rows: per (model, preset, t, placement, method), statistics over chips.

ppl_mean, ppl_std (sample std over chips), ppl_ci95 = mean ± t₀.₉₇₅,ₙ₋₁ · std/√n (Student t, n chips), and
ppl_per_chip (aligned with seeds). Against the noisy baseline (method kind "noisy") and the clean one (kind "clean")
on the same chip seeds, with the estimators of ``romer.estimators``: reduction_pct and gap_recovered_pct are the
paired estimator (mean over chips of the per-chip figure; reduction_ci95 / gap_recovered_ci95 its 95 % t-interval,
reduction_p its t-test p-value), reduction_of_means_pct and gap_recovered_of_means_pct the ratio of chip means. PPL
is per token (no unit); inference time t in s; CV is the load-balance coefficient of variation of expert frequencies; accuracy
(zero-shot tasks, when the config has ``eval.tasks``) is lm-eval's acc / acc_norm, mean and std over chips.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict

from romer.estimators import (finite, gap_recovered_of_means, paired_gap_recovered, paired_reduction,
                              reduction_of_means, t_quantile)
from romer.noise.registry import noise_label
from romer.store import ResultsStore
from romer.routing.cim_load import VARIANT_TRAFFIC, cim_load, relative_throughput

SETTING = ("model", "preset", "t_inference", "placement")  # store columns
ROW_KEYS = ("model", "preset", "t", "placement", "method")  # table rows (t in s)
MEANS = {"word_ppl_mean": "word_ppl", "bits_per_byte_mean": "bits_per_byte", "cv_mean": "cv",
         "cv_before_mean": "cv_before", "digital_share": "digital_share", "seconds_mean": "seconds"}


def _mean(values) -> float | None:
    values = finite(values)
    return statistics.fmean(values) if values else None


def config_orders(config: dict | None) -> dict[str, list]:
    """The config's order of models, preset labels, t, placements and methods (tables and plots follow it)."""
    if not config:
        return {}
    chip = config.get("chip", {})
    return {"model": config.get("models", []),
            "preset": [noise_label(p["preset"], p.get("overrides", {}), p.get("label"))
                       for p in chip.get("presets", [])],
            "t": chip.get("t_inference", []), "placement": chip.get("placements", []),
            "method": [m["name"] for m in config.get("methods", [])]}


def sort_key(orders: dict[str, list], row: dict, keys=ROW_KEYS) -> tuple:
    """Config order first, then anything the config does not list, sorted."""
    out = []
    for key in keys:
        order = orders.get(key, [])
        value = row[key]
        out.append((order.index(value), "") if value in order else (len(order), str(value)))
    return tuple(out)


def _baseline(rows_by_method: dict[str, list[dict]], kind: str) -> dict[int, float]:
    """Seed → PPL of the first method of ``kind`` in this setting (empty if none)."""
    for rows in rows_by_method.values():
        if rows and rows[0]["method_kind"] == kind:
            return {r["chip_seed"]: r["ppl"] for r in rows if r["ppl"] is not None}
    return {}


def _ci(interval: dict) -> list[float] | None:
    return None if interval["low"] is None else [interval["low"], interval["high"]]


def summarise(rows: list[dict], noisy: dict[int, float], clean: dict[int, float],
              clean_frequency: list | None = None) -> dict:
    """One table row from one method's trials in one setting (all rows share model, preset, t, placement)."""
    first = rows[0]
    ppl = {r["chip_seed"]: r["ppl"] for r in rows if r["ppl"] is not None and math.isfinite(r["ppl"])}
    values = [ppl[s] for s in sorted(ppl)]
    n = len(values)
    mean = statistics.fmean(values) if values else None
    std = statistics.stdev(values) if n > 1 else (0.0 if n else None)
    half = t_quantile(0.975, n - 1) * std / math.sqrt(n) if n > 1 else None
    out = {"model": first["model"], "preset": first["preset"], "t": first["t_inference"],
           "placement": first["placement"], "method": first["method"], "kind": first["method_kind"],
           "chips": len(rows), "seeds": sorted(r["chip_seed"] for r in rows),
           "ppl_per_chip": [ppl.get(r["chip_seed"]) for r in sorted(rows, key=lambda r: r["chip_seed"])],
           "tokens": first["metrics"].get("tokens"), "ppl_mean": mean, "ppl_std": std,
           "ppl_ci95": None if half is None else [mean - half, mean + half],
           "reduction_pct": None, "gap_recovered_pct": None}
    if mean is not None and noisy:
        reduction = paired_reduction(ppl, noisy)
        out.update(reduction_pct=reduction["mean"], reduction_ci95=_ci(reduction), reduction_p=reduction["p"],
                   reduction_of_means_pct=reduction_of_means(ppl, noisy))
    if mean is not None and noisy and clean:
        gap = paired_gap_recovered(ppl, noisy, clean)
        out.update(gap_recovered_pct=gap["mean"], gap_recovered_ci95=_ci(gap),
                   gap_recovered_of_means_pct=gap_recovered_of_means(ppl, noisy, clean))
    for key, metric in MEANS.items():
        out[key] = _mean(r["metrics"].get(metric) for r in rows)
    accuracy = _accuracy(rows)
    if accuracy:
        out["accuracy"] = accuracy
    out.update(_cim(rows, clean_frequency))
    return out


def _trial_load(trial: dict) -> dict | None:
    """The CIM load (romer.routing.cim_load) of one trial: its expert frequencies on the evaluated tokens, with its
    plan's replicas driven as that variant drives them; None without frequencies."""
    frequency = trial["metrics"].get("frequency")
    if not frequency:
        return None
    plan = trial.get("plan") or {}
    layers = (plan.get("model") or {}).get("moe_layers") or list(range(len(frequency)))
    pairs, traffic, mask = {}, "share", True
    for r in plan.get("replacement", []):
        pairs[r["layer"]] = [tuple(p) for p in r["pairs"]]
        traffic, mask = VARIANT_TRAFFIC[r["variant"]]
    return cim_load(frequency, layers, pairs, traffic, mask)


def _cim(rows: list[dict], clean_frequency: list | None) -> dict:
    """Mean over chips of the array utilisation (mean / max load) and of the MoE throughput relative to the
    clean model on the same tokens (Σ_l max load, clean / method)."""
    loads = [load for load in map(_trial_load, rows) if load is not None]
    if not loads:
        return {}
    out = {"utilisation_mean": statistics.fmean(load["utilisation"] for load in loads)}
    if clean_frequency:
        clean = cim_load(clean_frequency, list(range(len(clean_frequency))))
        out["throughput_mean"] = statistics.fmean(relative_throughput(clean, load) for load in loads)
    return out


def _accuracy(rows: list[dict]) -> dict[str, dict]:
    """``{"TASK acc": {"mean", "std", "chips"}, "TASK acc_norm": …}`` over the chips (sample std; 0 for one)."""
    values: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        for task, scores in sorted((r["metrics"].get("tasks") or {}).items()):
            for metric in ("acc", "acc_norm"):
                values[f"{task} {metric}"] += finite([scores.get(metric)])
    return {k: {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0, "chips": len(v)}
            for k, v in values.items() if v}


def aggregate(store: ResultsStore | str, config_hash: str | None = None) -> list[dict]:
    """Table rows of one config's trials (default: the config of the latest stored trial), in config order."""
    if not isinstance(store, ResultsStore):
        with ResultsStore(store, read_only=True) as opened:
            return aggregate(opened, config_hash)
    config_hash = config_hash or store.latest_config_hash()
    if config_hash is None:
        return []
    record = store.config(config_hash)
    return aggregate_rows(store.rows(config_hash), record["config"] if record else None)


def aggregate_rows(trials: list[dict], config: dict | None = None) -> list[dict]:
    """:func:`aggregate` on already-read store rows."""
    orders = config_orders(config)
    settings: dict[tuple, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for trial in trials:
        settings[tuple(trial[k] for k in SETTING)][trial["method"]].append(trial)
    out = []
    for by_method in settings.values():
        noisy, clean = _baseline(by_method, "noisy"), _baseline(by_method, "clean")
        clean_trials = next((rows for rows in by_method.values() if rows and rows[0]["method_kind"] == "clean"), [])
        clean_frequency = next((t["metrics"].get("frequency") for t in clean_trials if t["metrics"].get("frequency")),
                               None)
        out += [summarise(rows, noisy, clean, clean_frequency) for rows in by_method.values()]
    return sorted(out, key=lambda row: sort_key(orders, row))


def mean_frequency(trials: list[dict]) -> list[list[float]] | None:
    """Expert frequency [layer][expert] averaged over chips, from the trials' metrics "frequency" (or None)."""
    tables = [t["metrics"]["frequency"] for t in trials if t["metrics"].get("frequency")]
    if not tables:
        return None
    return [[statistics.fmean(table[layer][e] for table in tables) for e in range(len(tables[0][layer]))]
            for layer in range(len(tables[0]))]
