"""Load-balance and routing-agreement metrics, per MoE layer and overall.

Pure functions on tensors (golden-testable on hand-made counts) and ``RoutingStats``, which applies them to a
``RoutingRecord`` (or to raw counts) and optionally compares it with a reference (clean) record of the same
tokens. Definitions (E experts, top-k k, f_e = counts_e / tokens, so Σ_e f_e = k):

* CV = population std(f) / mean(f); normalised entropy = H(p) / ln E with p = f / Σf (1 uniform, 0 one expert);
* max/mean = max_e f_e / mean(f) (1 uniform, E one expert); cold experts: f_e < 0.1·k/E;
* KL(f_noisy ‖ f_clean) = Σ p_e ln(p_e / q_e) on p = f_noisy/Σ, q = f_clean/Σ, each smoothed as
  (p + ε)/(1 + E·ε) with ε = KL_EPSILON = 1e-9 (so an expert unused in the clean model stays finite);
* Jaccard of two tokens' top-k sets |A∩B|/|A∪B|, averaged over tokens; top-1 change share: tokens whose
  largest-gate-weight expert differs (the recorder keeps top-k sorted by gate weight, column 0 = top-1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from romer.routing.recorder import PERCENTILES, RoutingRecord

KL_EPSILON = 1e-9
COLD_FRACTION = 0.1
_CHUNK = 1 << 16


# --- pure metrics -----------------------------------------------------------------------------------------


def activation_frequency(counts: torch.Tensor, tokens: int) -> torch.Tensor:
    """f_e = counts_e / tokens (float64; zeros when no tokens)."""
    return torch.as_tensor(counts).double() / max(int(tokens), 1)


def coefficient_of_variation(f: torch.Tensor) -> float:
    """Population std / mean of f (NaN when the mean is 0)."""
    f = torch.as_tensor(f).double()
    mean = f.mean()
    return float(f.std(unbiased=False) / mean) if mean > 0 else math.nan


def normalised_entropy(f: torch.Tensor) -> float:
    """H(p) / ln E with p = f / Σf (0·ln 0 = 0); 1 for E = 1; NaN when Σf = 0."""
    f = torch.as_tensor(f).double()
    total = f.sum()
    if total <= 0:
        return math.nan
    if f.numel() == 1:
        return 1.0
    p = f / total
    h = -torch.where(p > 0, p * torch.log(p), torch.zeros_like(p)).sum()
    return float(h / math.log(f.numel()))


def max_over_mean(f: torch.Tensor) -> float:
    """max_e f_e / mean(f) (NaN when the mean is 0)."""
    f = torch.as_tensor(f).double()
    mean = f.mean()
    return float(f.max() / mean) if mean > 0 else math.nan


def cold_experts(f: torch.Tensor, top_k: int, fraction: float = COLD_FRACTION) -> int:
    """Number of experts with f_e < fraction · k / E."""
    f = torch.as_tensor(f).double()
    return int((f < fraction * top_k / f.numel()).sum())


def kl_divergence(f_noisy: torch.Tensor, f_clean: torch.Tensor, eps: float = KL_EPSILON) -> float:
    """KL(p ‖ q) in nats between the normalised distributions p ∝ f_noisy, q ∝ f_clean, each smoothed as
    (p + eps) / (1 + E·eps)."""
    p, q = (torch.as_tensor(x).double() for x in (f_noisy, f_clean))
    if p.shape != q.shape:
        raise ValueError(f"KL needs frequencies of the same experts, got shapes {tuple(p.shape)} and {tuple(q.shape)}")
    if p.sum() <= 0 or q.sum() <= 0:
        return math.nan
    n = p.numel()
    p = (p / p.sum() + eps) / (1 + n * eps)
    q = (q / q.sum() + eps) / (1 + n * eps)
    return float((p * torch.log(p / q)).sum())


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[0]:
        raise ValueError(f"top-k agreement needs [tokens, k] index sets of the same tokens, got shapes "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    return a.to(torch.int64), b.to(torch.int64)


def topk_jaccard(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-token Jaccard |A∩B| / |A∪B| of two ``[tokens, k]`` index sets (entries within a row distinct)."""
    a, b = _check_pair(a, b)
    out = torch.empty(a.shape[0], dtype=torch.float64)
    for s in range(0, a.shape[0], _CHUNK):
        x, y = a[s:s + _CHUNK], b[s:s + _CHUNK]
        inter = (x[:, :, None] == y[:, None, :]).any(dim=2).sum(dim=1).double()
        out[s:s + _CHUNK] = inter / (x.shape[1] + y.shape[1] - inter)
    return out


def mean_jaccard(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over tokens of the top-k Jaccard (NaN without tokens)."""
    j = topk_jaccard(a, b)
    return float(j.mean()) if j.numel() else math.nan


def top1_change_share(a: torch.Tensor, b: torch.Tensor) -> float:
    """Share of tokens whose top-1 (column 0: the largest gate weight) differs between a and b."""
    a, b = _check_pair(a, b)
    return float((a[:, 0] != b[:, 0]).double().mean()) if a.shape[0] else math.nan


# --- per layer and overall ------------------------------------------------------------------------------


@dataclass
class LayerStats:
    """Metrics of one MoE layer; the comparison fields are None without a reference."""

    layer: int
    num_experts: int
    top_k: int
    tokens: int
    frequency: list[float]
    cv: float
    entropy: float
    max_mean: float
    cold: int
    mass: list[float] | None = None
    percentiles: dict[str, list[float]] | None = None  # "p5" → per-expert router-logit percentile
    kl: float | None = None  # KL(f_this ‖ f_reference)
    jaccard: float | None = None
    top1_changed: float | None = None


def _layer_stats(layer: int, counts, tokens: int, top_k: int, mass=None, percentiles=None,
                 ref_counts=None, ref_tokens: int | None = None, topk=None, ref_topk=None) -> LayerStats:
    f = activation_frequency(counts, tokens)
    stats = LayerStats(layer=layer, num_experts=f.numel(), top_k=top_k, tokens=int(tokens),
                       frequency=f.tolist(), cv=coefficient_of_variation(f), entropy=normalised_entropy(f),
                       max_mean=max_over_mean(f), cold=cold_experts(f, top_k),
                       mass=None if mass is None else torch.as_tensor(mass).double().tolist(),
                       percentiles=percentiles)
    if ref_counts is not None:
        stats.kl = kl_divergence(f, activation_frequency(ref_counts, ref_tokens if ref_tokens is not None else tokens))
    if topk is not None and ref_topk is not None:
        stats.jaccard, stats.top1_changed = mean_jaccard(topk, ref_topk), top1_change_share(topk, ref_topk)
    return stats


def _mean(values: Sequence[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return float(sum(values) / len(values)) if values else None


@dataclass
class RoutingStats:
    """Load-balance metrics per MoE layer, and overall (means over layers; cold experts summed)."""

    layers: list[LayerStats]
    overall: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.overall:
            self.overall = self._overall()

    @classmethod
    def from_record(cls, record: RoutingRecord, reference: RoutingRecord | None = None,
                    percentiles: Sequence[float] = PERCENTILES) -> "RoutingStats":
        """Metrics of ``record``; with ``reference`` (the clean model on the same tokens) also KL(record ‖
        reference) and, when both kept top-k, Jaccard and top-1 change per token."""
        if reference is not None:
            _check_same_layout(record, reference)
        layers = []
        for i, rec in enumerate(record.layers):
            ref = reference.layers[i] if reference is not None else None
            q = rec.percentiles(percentiles)
            pct = {_pname(p): q[:, j].tolist() for j, p in enumerate(percentiles)}
            layers.append(_layer_stats(
                rec.layer, rec.counts, rec.tokens, rec.top_k, mass=rec.mass, percentiles=pct,
                ref_counts=None if ref is None else ref.counts, ref_tokens=None if ref is None else ref.tokens,
                topk=rec.topk if ref is not None else None, ref_topk=None if ref is None else ref.topk))
        return cls(layers)

    @classmethod
    def from_counts(cls, counts, tokens: int, top_k: int | Sequence[int], layer_indices: Sequence[int] | None = None,
                    reference_counts=None, reference_tokens: int | None = None) -> "RoutingStats":
        """Metrics from raw ``counts [layers, E]`` (or a list of per-layer [E_l] counts) over ``tokens``."""
        rows = list(counts)
        ks = [int(top_k)] * len(rows) if isinstance(top_k, int) else [int(k) for k in top_k]
        idx = list(range(len(rows))) if layer_indices is None else list(layer_indices)
        refs = list(reference_counts) if reference_counts is not None else [None] * len(rows)
        if not len(rows) == len(ks) == len(idx) == len(refs):
            raise ValueError("counts, top_k, layer_indices and reference_counts must have one entry per layer")
        return cls([_layer_stats(i, c, tokens, k, ref_counts=r, ref_tokens=reference_tokens)
                    for i, c, k, r in zip(idx, rows, ks, refs)])

    def _overall(self) -> dict:
        ls = self.layers
        out = {"layers": len(ls), "tokens": ls[0].tokens if ls else 0,
               "cv": _mean([s.cv for s in ls]), "cv_max": max((s.cv for s in ls), default=None),
               "entropy": _mean([s.entropy for s in ls]), "entropy_min": min((s.entropy for s in ls), default=None),
               "max_mean": _mean([s.max_mean for s in ls]), "cold": sum(s.cold for s in ls),
               "experts": sum(s.num_experts for s in ls)}
        for key in ("kl", "jaccard", "top1_changed"):
            out[key] = _mean([getattr(s, key) for s in ls])
        return out

    def layer(self, index: int) -> LayerStats:
        """The stats of decoder layer ``index``."""
        for s in self.layers:
            if s.layer == index:
                return s
        raise KeyError(f"no MoE layer {index}; layers are {[s.layer for s in self.layers]}")

    @property
    def frequency(self) -> list[list[float]]:
        return [s.frequency for s in self.layers]

    def to_dict(self) -> dict:
        """JSON-serialisable: {"kl_epsilon", "cold_fraction", "overall", "layers": [...]} (NaN → None)."""
        return _json_safe({"kl_epsilon": KL_EPSILON, "cold_fraction": COLD_FRACTION, "overall": self.overall,
                           "layers": [vars(s) for s in self.layers]})

    def table_rows(self, with_total: bool = True) -> list[dict[str, str]]:
        """One row of formatted strings per layer (plus an "all" row): layer, tokens, CV, entropy, max/mean,
        cold experts, and KL / Jaccard / top-1 changed when compared with a reference."""
        compared = any(s.kl is not None for s in self.layers)
        agreed = any(s.jaccard is not None for s in self.layers)

        def row(name, tokens, cv, ent, mm, cold, experts, kl, jac, top1):
            r = {"layer": str(name), "tokens": str(tokens), "CV": _fmt(cv), "entropy": _fmt(ent),
                 "max/mean": _fmt(mm, 2), "cold": f"{cold}/{experts}"}
            if compared:
                r["KL"] = _fmt(kl, 4)
            if agreed:
                r["Jaccard"] = _fmt(jac)
                r["top-1 changed"] = "—" if top1 is None else f"{100 * top1:.1f} %"
            return r

        rows = [row(s.layer, s.tokens, s.cv, s.entropy, s.max_mean, s.cold, s.num_experts, s.kl, s.jaccard,
                    s.top1_changed) for s in self.layers]
        if with_total and self.layers:
            o = self.overall
            rows.append(row("all", o["tokens"], o["cv"], o["entropy"], o["max_mean"], o["cold"], o["experts"],
                            o["kl"], o["jaccard"], o["top1_changed"]))
        return rows


def compare(noisy: RoutingRecord, clean: RoutingRecord) -> RoutingStats:
    """``RoutingStats`` of the noisy record with the clean one as reference (same tokens)."""
    return RoutingStats.from_record(noisy, reference=clean)


def _check_same_layout(a: RoutingRecord, b: RoutingRecord) -> None:
    la = [(l.layer, l.num_experts, l.top_k) for l in a.layers]
    lb = [(l.layer, l.num_experts, l.top_k) for l in b.layers]
    if la != lb:
        raise ValueError(f"records of different MoE layouts (layer, experts, top_k): {la} vs {lb}")
    if a.tokens != b.tokens:
        raise ValueError(f"records saw different numbers of tokens ({a.tokens} vs {b.tokens}): not the same text")


def _pname(p: float) -> str:
    return f"p{p:g}"


def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "—"
    if isinstance(x, float) and math.isnan(x):
        return "nan"
    return f"{x:.{digits}f}"


def _json_safe(obj):
    if isinstance(obj, float):
        return None if not math.isfinite(obj) else obj
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return _json_safe(obj.tolist())
    return obj
