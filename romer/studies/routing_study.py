"""How noise breaks routing: clean vs chip-programmed routing statistics on the same tokens, plus oracle routing.

For each chip: noisy PPL and routing record (same windows as clean), PPL with the clean model's routing
replayed (oracle), and the share of the PPL damage that routing causes,
(PPL_noisy − PPL_oracle) / (PPL_noisy − PPL_clean).

The physical side of the same run (issue 15): the weight SNR of the programmed routers and experts
(``romer.noise.snr``), the router-logit SNR and the systematic / per-token split of the router noise with the
router inputs' anisotropy (``romer.routing.router_noise``), and the CIM load of the clean, noisy and replaced
routing (``romer.routing.cim_load``; replacement = ROMER's default pairs fitted on the chip's own counts).
"""

from __future__ import annotations

import math
import statistics

from romer.calibrate import replacement as rep
from romer.calibrate.config import ReplaceConfig
from romer.estimators import finite, interval
from romer.eval import perplexity
from romer.noise.chip import Chip, program
from romer.noise.snr import summarize_snr, weight_snr
from romer.routing import RoutingRecord, RoutingStats, capture_routing, compare, oracle_perplexity, record_routing
from romer.routing.cim_load import VARIANT_TRAFFIC, cim_load, relative_throughput
from romer.routing.oracle import routing_damage_share
from romer.routing.router_noise import record_logit_noise, record_router_inputs, router_noise_report

SUMMARY_KEYS = ("noisy_ppl", "oracle_ppl", "routing_share", "cv", "entropy", "cold", "kl", "jaccard", "top1_changed")
PHYSICAL_SUMMARY_KEYS = ("router_snr_db", "experts_snr_db", "throughput_noisy", "throughput_replica",
                         "throughput_shared")
PHYSICAL_LAYER_KEYS = ("router_snr_db", "experts_snr_db", "logit_snr_db", "systematic_share", "affine_share",
                       "measured_systematic_share", "measured_affine_share", "router_own_share", "utilisation")


def _mean_std(values: list[float]) -> dict:
    """Mean and sample std of the finite values (None, NaN and ±∞ — e.g. the SNR of a router kept digital — are
    left out; no finite value gives None)."""
    values = finite(values)
    if not values:
        return {"mean": None, "std": None}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def _withhold_shares(summary: dict) -> dict:
    """No routing share where the chip did not raise PPL beyond its chip-to-chip spread (the 95 % interval of
    PPL_noisy − PPL_clean over chips reaches 0): a share of a gap that may be zero is noise."""
    low = summary["damage"]["low"]
    if low is None or low <= 0:
        summary["routing_share"] = {"mean": None, "std": None,
                                    "withheld": "the chip did not raise PPL beyond its chip-to-chip spread"}
    return summary


def routing_study(model, tokenizer, text: str, chip: Chip | None, chips: int = 3, window: int = 512,
                  batch_size: int = 8, progress: bool = False) -> dict:
    """Clean routing statistics of ``model`` on ``text``; with a ``chip``, also per-chip noisy statistics against
    clean on the same tokens, oracle-routing PPL and the routing share of the damage (chip seeds s … s+chips−1).

    Returns a JSON-serialisable dict; ``records`` (clean and first-chip RoutingRecords, for plots) is separate.
    """
    with record_routing(model, keep_topk=chip is not None) as clean_record, \
            record_router_inputs(model, keep_logits=chip is not None) as inputs:
        captured = capture_routing(model, tokenizer, text, window, batch_size, progress=progress)
    clean_stats = RoutingStats.from_record(clean_record)
    clean_load = _load(clean_record)
    result = {"tokens": clean_record.tokens, "window": window, "clean_ppl": captured.clean.ppl,
              "clean": clean_stats.to_dict(), "records": {"clean": clean_record},
              "router_inputs": [{"layer": r.layer, "anisotropy": r.moments.anisotropy,
                                 "mean_cosine": r.moments.mean_cosine} for r in inputs],
              "cim_load": {"clean": clean_load}}
    if chip is None:
        return result
    per_chip = []
    for i, chip_i in enumerate(chip.series(chips)):
        with program(model, chip_i) as programmed:
            snr = summarize_snr(weight_snr(programmed))
            with record_routing(model, keep_topk=True) as noisy_record, record_logit_noise(model, inputs) as noise:
                noisy = perplexity(model, tokenizer, text, window=window, batch_size=batch_size, progress=progress,
                                   description=f"chip {chip_i.seed}: noisy")
            oracle = oracle_perplexity(model, tokenizer, text, captured, progress=progress)
        stats = compare(noisy_record, clean_record)
        per_chip.append({"seed": chip_i.seed, "noisy_ppl": noisy.ppl, "oracle_ppl": oracle.ppl,
                         "routing_share": routing_damage_share(captured.clean.ppl, noisy.ppl, oracle.ppl),
                         **{k: stats.overall[k] for k in SUMMARY_KEYS[3:]}, "stats": stats.to_dict(),
                         **_physical(snr, router_noise_report(inputs, noise), noisy_record, clean_load)})
        if i == 0:
            result["records"]["noisy"] = noisy_record
    layers = [s["layer"] for s in result["clean"]["layers"]]
    result.update(
        chip=chip.to_dict(), chips=chips, per_chip=per_chip,
        summary=_withhold_shares({**{k: _mean_std([c[k] for c in per_chip]) for k in SUMMARY_KEYS},
                                  **{k: _mean_std([c["physical"][k] for c in per_chip]) for k in PHYSICAL_SUMMARY_KEYS},
                                  "damage": interval([c["noisy_ppl"] - result["clean_ppl"] for c in per_chip])}),
        per_layer=[{"layer": layer, "clean_cv": result["clean"]["layers"][j]["cv"],
                    "anisotropy": result["router_inputs"][j]["anisotropy"],
                    "mean_cosine": result["router_inputs"][j]["mean_cosine"],
                    "clean_utilisation": clean_load["layers"][j]["utilisation"],
                    **{k: _mean_std([c["stats"]["layers"][j][k] for c in per_chip])
                       for k in ("cv", "cold", "kl", "jaccard", "top1_changed")},
                    **{k: _mean_std([c["physical"]["layers"][j][k] for c in per_chip]) for k in PHYSICAL_LAYER_KEYS}}
                   for j, layer in enumerate(layers)],
    )
    return result


def _load(record: RoutingRecord, pairs: dict | None = None, variant: str | None = None) -> dict:
    """CIM load of a record's counts, with replacement ``pairs`` driven as ``variant`` (None: shared traffic)."""
    traffic, mask = VARIANT_TRAFFIC[variant] if variant else ("share", True)
    return cim_load([layer.counts for layer in record.layers], record.layer_indices, pairs, traffic, mask)


def _replacement_pairs(record: RoutingRecord) -> dict[int, list[tuple[int, int]]]:
    """ROMER's default replacement pairs (``ReplaceConfig()``) fitted on a record's counts, per layer."""
    config = ReplaceConfig()
    return {layer.layer: rep.choose_pairs(layer.frequency, rep.replacement_count(layer.frequency, layer.top_k, config),
                                          config.select) for layer in record.layers}


def _by_layer(rows: list[dict], layer: int) -> dict:
    return next((r for r in rows if r["layer"] == layer), {})


def _physical(snr: dict, noise_rows: list[dict], noisy_record: RoutingRecord, clean_load: dict) -> dict:
    """One chip's weight SNR, router-noise account and CIM load: ``snr``, ``router_noise``, ``cim_load`` as
    computed, and ``physical`` (the flat figures the summary and the table use)."""
    pairs = _replacement_pairs(noisy_record)
    loads = {"noisy": _load(noisy_record), "replica": _load(noisy_record, pairs, "replica"),
             "shared": _load(noisy_record, pairs)}
    for load in loads.values():
        load["throughput"] = relative_throughput(clean_load, load)
    nan = {"snr_db": math.nan}
    layers = []
    for j, row in enumerate(noise_rows):
        layers.append({
            "router_snr_db": _by_layer(snr.get("router", {}).get("layers", []), row["layer"]).get("snr_db", math.nan),
            "experts_snr_db": _by_layer(snr.get("routed_experts", {}).get("layers", []),
                                        row["layer"]).get("snr_db", math.nan),
            "logit_snr_db": row["measured"]["logit_snr_db"],
            "systematic_share": row["weight"]["systematic_share"], "affine_share": row["weight"]["affine_share"],
            "measured_systematic_share": row["measured"]["systematic_share"],
            "measured_affine_share": row["measured"]["affine_share"], "router_own_share": row["router_own_share"],
            "utilisation": loads["noisy"]["layers"][j]["utilisation"]})
    physical = {"router_snr_db": snr.get("router", {"overall": nan})["overall"]["snr_db"],
                "experts_snr_db": snr.get("routed_experts", {"overall": nan})["overall"]["snr_db"],
                **{f"throughput_{k}": v["throughput"] for k, v in loads.items()}, "layers": layers}
    return {"snr": snr, "router_noise": noise_rows, "cim_load": {**loads, "pairs": {str(k): v for k, v in pairs.items()}},
            "physical": physical}
