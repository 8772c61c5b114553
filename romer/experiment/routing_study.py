"""How noise breaks routing: clean vs chip-programmed routing statistics on the same tokens, plus oracle routing.

For each chip: noisy PPL and routing record (same windows as clean), PPL with the clean model's routing
replayed (oracle), and the share of the PPL damage that routing causes,
(PPL_noisy − PPL_oracle) / (PPL_noisy − PPL_clean).
"""

from __future__ import annotations

import math
import statistics

from romer.eval import perplexity
from romer.noise.chip import Chip, program
from romer.routing import RoutingStats, capture_routing, compare, oracle_perplexity, record_routing
from romer.routing.oracle import routing_damage_share

SUMMARY_KEYS = ("noisy_ppl", "oracle_ppl", "routing_share", "cv", "entropy", "cold", "kl", "jaccard", "top1_changed")


def _mean_std(values: list[float]) -> dict:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return {"mean": None, "std": None}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def routing_study(model, tokenizer, text: str, chip: Chip | None, chips: int = 3, window: int = 512,
                  batch_size: int = 8, progress: bool = False) -> dict:
    """Clean routing statistics of ``model`` on ``text``; with a ``chip``, also per-chip noisy statistics against
    clean on the same tokens, oracle-routing PPL and the routing share of the damage (chip seeds s … s+chips−1).

    Returns a JSON-serialisable dict; ``records`` (clean and first-chip RoutingRecords, for plots) is separate.
    """
    with record_routing(model, keep_topk=chip is not None) as clean_record:
        captured = capture_routing(model, tokenizer, text, window, batch_size, progress=progress)
    clean_stats = RoutingStats.from_record(clean_record)
    result = {"tokens": clean_record.tokens, "window": window, "clean_ppl": captured.clean.ppl,
              "clean": clean_stats.to_dict(), "records": {"clean": clean_record}}
    if chip is None:
        return result
    per_chip = []
    for i, chip_i in enumerate(chip.series(chips)):
        with program(model, chip_i):
            with record_routing(model, keep_topk=True) as noisy_record:
                noisy = perplexity(model, tokenizer, text, window=window, batch_size=batch_size, progress=progress,
                                   description=f"chip {chip_i.seed}: noisy")
            oracle = oracle_perplexity(model, tokenizer, text, captured, progress=progress)
        stats = compare(noisy_record, clean_record)
        per_chip.append({"seed": chip_i.seed, "noisy_ppl": noisy.ppl, "oracle_ppl": oracle.ppl,
                         "routing_share": routing_damage_share(captured.clean.ppl, noisy.ppl, oracle.ppl),
                         **{k: stats.overall[k] for k in SUMMARY_KEYS[3:]}, "stats": stats.to_dict()})
        if i == 0:
            result["records"]["noisy"] = noisy_record
    layers = [s["layer"] for s in result["clean"]["layers"]]
    result.update(
        chip=chip.to_dict(), chips=chips, per_chip=per_chip,
        summary={k: _mean_std([c[k] for c in per_chip]) for k in SUMMARY_KEYS},
        per_layer=[{"layer": layer, "clean_cv": result["clean"]["layers"][j]["cv"],
                    **{k: _mean_std([c["stats"]["layers"][j][k] for c in per_chip])
                       for k in ("cv", "cold", "kl", "jaccard", "top1_changed")}}
                   for j, layer in enumerate(layers)],
    )
    return result


def fmt(stat: dict, digits: int = 2) -> str:
    """"mean ± std" of a ``_mean_std`` dict."""
    if stat["mean"] is None:
        return "—"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"
