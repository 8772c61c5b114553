"""From stored trials to table rows: per (model, preset, t, placement, method), statistics over chips.

ppl_mean, ppl_std (sample std over chips), ppl_ci95 = mean ± t₀.₉₇₅,ₙ₋₁ · std/√n (Student t, n chips);
reduction_pct = 100 · (1 − PPL/PPL_noisy) and gap_recovered_pct = 100 · (PPL_noisy − PPL)/(PPL_noisy − PPL_clean),
as ratios of chip means over the chip seeds the method, the noisy baseline (method kind "noisy") and the clean
one (kind "clean") share — paired by seed — or over all their chips when they share none. PPL is per token (no
unit); inference time t in s; CV is the load-balance coefficient of variation of expert frequencies; accuracy
(zero-shot tasks, when the config has ``eval.tasks``) is lm-eval's acc / acc_norm, mean and std over chips.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict

from romer.experiment.config import noise_label
from romer.experiment.store import ResultsStore
from romer.routing.cim_load import VARIANT_TRAFFIC, cim_load, relative_throughput

SETTING = ("model", "preset", "t_inference", "placement")  # store columns
ROW_KEYS = ("model", "preset", "t", "placement", "method")  # table rows (t in s)
MEANS = {"word_ppl_mean": "word_ppl", "bits_per_byte_mean": "bits_per_byte", "cv_mean": "cv",
         "cv_before_mean": "cv_before", "digital_share": "digital_share", "seconds_mean": "seconds"}


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def incomplete_beta(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b), 0 ≤ x ≤ 1."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_quantile(p: float, df: int) -> float:
    """The p-quantile (p > 0.5) of Student's t with ``df`` degrees of freedom, by bisection on its CDF
    F(t) = 1 − ½ I_{df/(df+t²)}(df/2, ½). Golden: t₀.₉₇₅ = 12.706 (df 1), 2.776 (df 4), 2.042 (df 30)."""
    lo, hi = 0.0, 1e4
    for _ in range(200):
        mid = (lo + hi) / 2
        if 1.0 - 0.5 * incomplete_beta(df / 2, 0.5, df / (df + mid * mid)) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _finite(values) -> list[float]:
    return [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]


def _mean(values) -> float | None:
    values = _finite(values)
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


def _paired(own: dict[int, float], *others: dict[int, float]) -> list[dict[int, float]]:
    """The per-seed PPL dicts restricted to the seeds all share, or unrestricted when they share none."""
    shared = set(own).intersection(*others)
    if not shared:
        return [own, *others]
    return [{s: d[s] for s in shared} for d in (own, *others)]


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
           "tokens": first["metrics"].get("tokens"), "ppl_mean": mean, "ppl_std": std,
           "ppl_ci95": None if half is None else [mean - half, mean + half],
           "reduction_pct": None, "gap_recovered_pct": None}
    if mean is not None and noisy:
        own, base = _paired(ppl, noisy)
        out["reduction_pct"] = 100.0 * (1.0 - statistics.fmean(own.values()) / statistics.fmean(base.values()))
    if mean is not None and noisy and clean:
        own, base, ref = _paired(ppl, noisy, clean)
        p, n_, c = (statistics.fmean(d.values()) for d in (own, base, ref))
        out["gap_recovered_pct"] = 100.0 * (n_ - p) / (n_ - c) if n_ - c > 0 else None
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
                values[f"{task} {metric}"] += _finite([scores.get(metric)])
    return {k: {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0, "chips": len(v)}
            for k, v in values.items() if v}


def aggregate(store: ResultsStore | str, config_hash: str | None = None) -> list[dict]:
    """Table rows of one config's trials (default: the config of the latest stored trial), in config order."""
    if not isinstance(store, ResultsStore):
        with ResultsStore(store) as opened:
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
