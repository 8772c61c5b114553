"""The named estimators every table, study and README renderer uses: one name, one estimator.

Per-chip figures compare a method with a baseline on the same chip and the same tokens (paired by chip seed):

    reduction % (chip s)      = 100 · (1 − PPL_s / PPL_noisy,s)
    gap recovered % (chip s)  = 100 · (PPL_noisy,s − PPL_s) / (PPL_noisy,s − PPL_clean,s)   (chips with PPL_noisy > PPL_clean)

``PAIRED`` reports their mean over chips with a 95 % Student-t interval, mean ± t₀.₉₇₅,ₙ₋₁ · sd / √n — the estimator
of every ``reduction_pct`` and ``gap_recovered_pct`` romer writes. ``RATIO_OF_MEANS`` is the same formula on the
chip means (100 · (1 − mean PPL / mean PPL_noisy)); it has no interval and is written under its own names
(``reduction_of_means_pct``, ``gap_recovered_of_means_pct``). Across many cells, :func:`holm` adjusts the paired
t-tests' p-values (Holm's step-down, family-wise error rate).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence

PAIRED = "paired: mean over chips of the per-chip figure, 95 % Student-t interval"
RATIO_OF_MEANS = "ratio of means: the figure computed on the chip means, no interval"
ESTIMATORS = {"reduction_pct": PAIRED, "gap_recovered_pct": PAIRED, "reduction_of_means_pct": RATIO_OF_MEANS,
              "gap_recovered_of_means_pct": RATIO_OF_MEANS}


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


def t_cdf(t: float, df: int) -> float:
    """Student's t CDF, F(t) = 1 − ½ I_{df/(df+t²)}(df/2, ½) for t ≥ 0 (symmetric below 0)."""
    upper = 0.5 * incomplete_beta(df / 2, 0.5, df / (df + t * t))
    return 1.0 - upper if t >= 0 else upper


def t_quantile(p: float, df: int) -> float:
    """The p-quantile (p > 0.5) of Student's t with ``df`` degrees of freedom, by bisection on its CDF.
    Golden: t₀.₉₇₅ = 12.706 (df 1), 2.776 (df 4), 2.042 (df 30)."""
    lo, hi = 0.0, 1e4
    for _ in range(200):
        mid = (lo + hi) / 2
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def finite(values) -> list[float]:
    """The finite numbers among ``values`` (None, NaN, ±∞ and booleans dropped)."""
    return [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n − 1; 0 for a single value)."""
    values = list(values)
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def interval(values: Sequence[float], level: float = 0.95) -> dict:
    """``{"mean", "low", "high", "n", "p"}``: the mean of ``values``, its two-sided Student-t interval
    (mean ± t_{(1+level)/2, n−1} · sd / √n; None for n < 2) and the two-sided p-value of the t-test of mean 0."""
    values = finite(values)
    n = len(values)
    if not n:
        return {"mean": None, "low": None, "high": None, "n": 0, "p": None}
    mean = statistics.fmean(values)
    if n < 2:
        return {"mean": mean, "low": None, "high": None, "n": 1, "p": None}
    se = statistics.stdev(values) / math.sqrt(n)
    half = t_quantile((1 + level) / 2, n - 1) * se
    p = (0.0 if mean else 1.0) if se == 0 else 2.0 * (1.0 - t_cdf(abs(mean) / se, n - 1))
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": n, "p": p}


def shared_seeds(*by_seed: Mapping[int, float | None]) -> list[int]:
    """The chip seeds every per-seed dict holds a finite value for, sorted."""
    held = [{s for s, v in d.items() if finite([v])} for d in by_seed]
    return sorted(set.intersection(*held)) if held else []


def per_chip_reduction(ppl: Mapping[int, float], noisy: Mapping[int, float]) -> list[float]:
    """100 · (1 − PPL_s / PPL_noisy,s) for every chip seed s both hold."""
    return [100.0 * (1.0 - ppl[s] / noisy[s]) for s in shared_seeds(ppl, noisy)]


def per_chip_gap_recovered(ppl: Mapping[int, float], noisy: Mapping[int, float],
                           clean: Mapping[int, float]) -> list[float]:
    """100 · (PPL_noisy,s − PPL_s) / (PPL_noisy,s − PPL_clean,s) for every shared seed where the chip raised PPL."""
    return [100.0 * (noisy[s] - ppl[s]) / (noisy[s] - clean[s]) for s in shared_seeds(ppl, noisy, clean)
            if noisy[s] > clean[s]]


def paired_reduction(ppl: Mapping[int, float], noisy: Mapping[int, float]) -> dict:
    """:data:`PAIRED` reduction %: :func:`interval` of :func:`per_chip_reduction`."""
    return interval(per_chip_reduction(ppl, noisy))


def paired_gap_recovered(ppl: Mapping[int, float], noisy: Mapping[int, float], clean: Mapping[int, float]) -> dict:
    """:data:`PAIRED` gap recovered %: :func:`interval` of :func:`per_chip_gap_recovered`."""
    return interval(per_chip_gap_recovered(ppl, noisy, clean))


def reduction_of_means(ppl: Mapping[int, float], noisy: Mapping[int, float]) -> float | None:
    """:data:`RATIO_OF_MEANS` reduction %: 100 · (1 − mean PPL / mean PPL_noisy) over the shared seeds."""
    seeds = shared_seeds(ppl, noisy)
    if not seeds:
        return None
    return 100.0 * (1.0 - statistics.fmean(ppl[s] for s in seeds) / statistics.fmean(noisy[s] for s in seeds))


def gap_recovered_of_means(ppl: Mapping[int, float], noisy: Mapping[int, float],
                           clean: Mapping[int, float]) -> float | None:
    """:data:`RATIO_OF_MEANS` gap recovered %, on the chip means over the shared seeds (None without a gap)."""
    seeds = shared_seeds(ppl, noisy, clean)
    if not seeds:
        return None
    p, n, c = (statistics.fmean(d[s] for s in seeds) for d in (ppl, noisy, clean))
    return 100.0 * (n - p) / (n - c) if n > c else None


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (family-wise error rate over the non-None entries), in input order:
    the i-th smallest of m is multiplied by (m − i), running maxima kept, capped at 1."""
    indexed = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    m = len(indexed)
    out: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(indexed):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson's r; NaN when either side does not vary."""
    mx, my = statistics.fmean(x), statistics.fmean(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx, syy = sum((a - mx) ** 2 for a in x), sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else math.nan


def ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks; ties get their mean rank."""
    order = sorted(range(len(values)), key=values.__getitem__)
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation: Pearson's r of the ranks; NaN below 3 pairs."""
    if len(x) != len(y):
        raise ValueError(f"{len(x)} x values but {len(y)} y values")
    if len(x) < 3:
        return math.nan
    return pearson(ranks(x), ranks(y))


def benjamini_hochberg(p_values: Sequence[float | None]) -> list[float | None]:
    """Benjamini–Hochberg adjusted p-values (false discovery rate over the non-None entries), in input order: the
    i-th smallest of m is multiplied by m / i, running minima from the largest down, capped at 1."""
    indexed = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    m = len(indexed)
    out: list[float | None] = [None] * len(p_values)
    running = 1.0
    for rank in range(m, 0, -1):
        p, i = indexed[rank - 1]
        running = min(running, m * p / rank)
        out[i] = running
    return out
