"""The named estimators on hand-computed cases: the paired estimator and the ratio of means differ, and each
name holds one of them."""

import math

import pytest

from romer.estimators import (ESTIMATORS, PAIRED, RATIO_OF_MEANS, benjamini_hochberg, gap_recovered_of_means, holm,
                              interval,
                              paired_gap_recovered, paired_reduction, reduction_of_means, spearman, t_cdf)

PPL = {0: 50.0, 1: 90.0, 7: 10.0}  # seed 7 has no noisy or clean partner: never paired
NOISY = {0: 100.0, 1: 200.0}
CLEAN = {0: 40.0, 1: 40.0}


def test_interval_of_1_2_3_by_hand():
    # mean 2, sd 1, se 1/√3; t₀.₉₇₅,₂ = 4.3027 → half-width 2.4841; t = 2√3 = 3.4641 and for df 2
    # F(t) = ½ + t / (2 √(2 + t²)) = 0.96291 → two-sided p = 0.07418
    out = interval([1.0, 2.0, 3.0])
    assert out["mean"] == 2.0 and out["n"] == 3
    assert out["low"] == pytest.approx(2 - 2.4841, abs=1e-4) and out["high"] == pytest.approx(2 + 2.4841, abs=1e-4)
    assert out["p"] == pytest.approx(0.07418, abs=1e-5)
    assert t_cdf(-3.4641, 2) == pytest.approx(1 - 0.96291, abs=1e-5)


def test_interval_edge_cases():
    assert interval([]) == {"mean": None, "low": None, "high": None, "n": 0, "p": None}
    assert interval([4.0, math.nan]) == {"mean": 4.0, "low": None, "high": None, "n": 1, "p": None}
    assert interval([3.0, 3.0])["p"] == 0.0 and interval([0.0, 0.0])["p"] == 1.0


def test_paired_reduction_is_the_mean_of_per_chip_ratios():
    # chip 0: 1 − 50/100 = 50 %; chip 1: 1 − 90/200 = 55 %; mean 52.5 %
    out = paired_reduction(PPL, NOISY)
    assert out["mean"] == pytest.approx(52.5) and out["n"] == 2
    # ratio of means: 1 − 70/150 = 53.33 %: a different number under its own name
    assert reduction_of_means(PPL, NOISY) == pytest.approx(100 * (1 - 70 / 150))


def test_paired_gap_recovered_by_hand():
    # chip 0: (100 − 50)/(100 − 40) = 83.33 %; chip 1: (200 − 90)/(200 − 40) = 68.75 %
    out = paired_gap_recovered(PPL, NOISY, CLEAN)
    assert out["mean"] == pytest.approx((250 / 3 + 68.75) / 2)
    assert gap_recovered_of_means(PPL, NOISY, CLEAN) == pytest.approx(100 * (150 - 70) / (150 - 40))
    # a chip that did not raise PPL has no gap to recover
    assert paired_gap_recovered(PPL, NOISY, {0: 40.0, 1: 250.0})["n"] == 1


def test_every_figure_name_holds_one_estimator():
    assert ESTIMATORS["reduction_pct"] == ESTIMATORS["gap_recovered_pct"] == PAIRED
    assert ESTIMATORS["reduction_of_means_pct"] == ESTIMATORS["gap_recovered_of_means_pct"] == RATIO_OF_MEANS


def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04 of m = 3: 0.03, 0.06, max(0.06, 0.04) = 0.06
    assert holm([0.01, 0.04, 0.03, None]) == pytest.approx([0.03, 0.06, 0.06, None])
    assert holm([0.5, 0.6]) == [1.0, 1.0]


def test_spearman_by_hand():
    # ranks differ in two places by 1: ρ = 1 − 6 · 2 / (4 · 15) = 0.8
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert spearman([1, 2, 2, 3], [1, 2, 2, 3]) == pytest.approx(1.0)
    assert math.isnan(spearman([1, 2], [2, 1]))


def test_benjamini_hochberg_by_hand():
    # sorted 0.01, 0.03, 0.04 of m = 3: 3·0.01/1 = 0.03, 3·0.03/2 = 0.045, 3·0.04/3 = 0.04 → minima from the top:
    # 0.04, min(0.045, 0.04) = 0.04, min(0.03, 0.04) = 0.03
    assert benjamini_hochberg([0.01, 0.04, 0.03, None]) == pytest.approx([0.03, 0.04, 0.04, None])
    assert benjamini_hochberg([0.9]) == [0.9]


def test_versus_text_by_hand():
    """Chips 0 and 1 at 90 and 80 against 100 and 100 (chip 2 only on one side: left out): per-chip reductions 10
    and 20 %, mean 15, sd √50, se 5, t(0.975, 1) = 12.7062 → 15 ± 63.53; one chip has no interval."""
    from romer.report.tables import interval_text, versus_text

    assert versus_text({0: 90.0, 1: 80.0, 2: 1.0}, {0: 100.0, 1: 100.0}) == "+15.0 [-48.5, +78.5]"
    assert versus_text({0: 90.0, 1: 80.0}, {0: 100.0, 1: 100.0}, ci_digits=0) == "+15.0 [-49, +79]"
    assert versus_text({0: 90.0}, {0: 100.0}) == "+10.0" and versus_text({0: 90.0}, {1: 100.0}) == "—"
    assert interval_text(None) == "—"
