"""The hardware view of load balance: on a CIM chip with one array (group) per expert slot, a layer's latency is
set by its most loaded array.

Per MoE layer with token counts c_e (tokens whose top-k selects slot e) the arrays process loads ℓ_e (tokens);
the layer takes time ∝ max_e ℓ_e (arrays run in parallel, each processes its tokens one after another), so

    array utilisation U = mean_e ℓ_e / max_e ℓ_e ∈ (0, 1]     (1: perfectly balanced; 1/E when one array does all)
    relative throughput = Σ_l max_e ℓ_le (reference) / Σ_l max_e ℓ_le (method)   (same tokens; > 1: faster)

Replacement pairs (cold slot l ← hot expert h) change the loads; what a replica array carries depends on how the
pair is driven (``traffic``):

* ``share``: h's tokens are split equally over h's array and its replicas: each carries c_h / (1 + replicas);
* ``duplicate``: every replica array also processes all of h's tokens (ROMER's ``replica`` variant averages the
  two arrays' outputs: more accuracy, no relief of the busiest array);
* ``own``: a replica slot carries only the tokens that select it (``prune-duplicate``, ``redirect``).

``mask_cold``: the cold slot's own selections are gone (its router row can no longer win: variants replica and
redirect). Their tokens move to their next-best experts, which counts alone cannot tell: they are dropped, which
is exact when ``counts`` are measured on the model with the plan applied (a masked slot then has no selections)
and otherwise slightly favourable (the coldest slots carry the fewest tokens).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

TRAFFIC = ("share", "duplicate", "own")
# How each replacement variant (romer.calibrate.replacement) drives its pairs: (traffic, mask_cold).
VARIANT_TRAFFIC = {"replica": ("duplicate", True), "split": ("share", False), "prune-duplicate": ("own", False),
                   "redirect": ("own", True)}


def array_loads(counts: Sequence[float] | torch.Tensor, pairs: Sequence[tuple[int, int]] = (),
                traffic: str = "share", mask_cold: bool = True) -> torch.Tensor:
    """Tokens each expert slot's array processes in one layer (float64 [E]) given the slots' counts and the
    (cold, hot) replacement pairs (module docstring)."""
    if traffic not in TRAFFIC:
        raise ValueError(f"unknown traffic {traffic!r}; choose one of {', '.join(TRAFFIC)}")
    counts = torch.as_tensor(counts, dtype=torch.float64)
    loads = counts.clone()
    colds = [int(c) for c, _ in pairs]
    if len(set(colds)) != len(colds) or any(c == h for c, h in pairs):
        raise ValueError(f"bad replacement pairs {list(pairs)}: a slot is replaced once, never by itself")
    if set(colds) & {int(h) for _, h in pairs}:
        raise ValueError(f"bad replacement pairs {list(pairs)}: a replaced (cold) slot cannot also be a hot source")
    replicas: dict[int, list[int]] = {}
    for cold, hot in pairs:
        replicas.setdefault(int(hot), []).append(int(cold))
    for hot, slots in replicas.items():
        own = torch.zeros(len(slots), dtype=torch.float64) if mask_cold else counts[slots]
        if traffic == "share":
            share = counts[hot] / (1 + len(slots))
            loads[hot] = share
            loads[slots] = own + share
        elif traffic == "duplicate":
            loads[slots] = own + counts[hot]
        else:
            loads[slots] = own
    return loads


def layer_load(loads: torch.Tensor) -> dict:
    """``max_load`` (tokens on the busiest array), ``mean_load`` and utilisation = mean / max of one layer."""
    peak, mean = float(loads.max()), float(loads.mean())
    return {"max_load": peak, "mean_load": mean, "utilisation": mean / peak if peak > 0 else float("nan")}


def cim_load(counts: Sequence[Sequence[float]] | torch.Tensor, layers: Sequence[int],
             replacement: Mapping[int, Sequence[tuple[int, int]]] | None = None, traffic: str = "share",
             mask_cold: bool = True) -> dict:
    """Per MoE layer (``counts[j]`` for decoder layer ``layers[j]``) the array loads and their summary, with the
    replacement pairs of ``replacement[layer]`` (e.g. ``{r.layer: r.pairs for r in plan.replacement}``).

    ``total_max_load`` = Σ_l max load (∝ the model's MoE latency); overall ``utilisation`` = Σ_l mean / Σ_l max.
    """
    replacement = replacement or {}
    unknown = set(replacement) - set(layers)
    if unknown:
        raise ValueError(f"replacement names layers {sorted(unknown)} that are not MoE layers {list(layers)}")
    rows = []
    for layer, row in zip(layers, counts):
        loads = array_loads(row, replacement.get(layer, ()), traffic, mask_cold)
        rows.append({"layer": layer, **layer_load(loads)})
    total_max = sum(r["max_load"] for r in rows)
    total_mean = sum(r["mean_load"] for r in rows)
    return {"layers": rows, "total_max_load": total_max,
            "utilisation": total_mean / total_max if total_max > 0 else float("nan")}


def relative_throughput(reference: dict, method: dict) -> float:
    """Σ_l max load of the reference over that of the method (two ``cim_load`` results on the same tokens)."""
    return reference["total_max_load"] / method["total_max_load"] if method["total_max_load"] > 0 else float("nan")
