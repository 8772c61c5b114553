"""Load-balance and agreement metrics: golden values on hand-made counts and index sets."""

import json
import math

import pytest
import torch

from romer.routing.stats import (
    KL_EPSILON,
    RoutingStats,
    activation_frequency,
    coefficient_of_variation,
    cold_experts,
    kl_divergence,
    max_over_mean,
    mean_jaccard,
    normalised_entropy,
    top1_change_share,
    topk_jaccard,
)


def test_uniform_load():
    f = activation_frequency(torch.tensor([2, 2, 2, 2]), 8)  # 4 experts, top-1, 8 tokens
    assert f.tolist() == [0.25] * 4
    assert coefficient_of_variation(f) == 0
    assert normalised_entropy(f) == pytest.approx(1.0, abs=1e-15)
    assert max_over_mean(f) == 1
    assert cold_experts(f, top_k=1) == 0


def test_one_hot_load():
    # f = (1, 0, 0, 0): mean 1/4, population std sqrt((3/4)² + 3·(1/4)²)/2 = sqrt(3)/4 → CV = sqrt(3)
    f = activation_frequency(torch.tensor([4, 0, 0, 0]), 4)
    assert coefficient_of_variation(f) == pytest.approx(math.sqrt(3), rel=1e-12)
    assert normalised_entropy(f) == 0
    assert max_over_mean(f) == pytest.approx(4)
    assert cold_experts(f, top_k=1) == 3


def test_two_expert_golden_values():
    # top-1 over 2 experts, f = (3/4, 1/4): CV = 0.25/0.5, H = -(.75 ln .75 + .25 ln .25) / ln 2
    f = torch.tensor([0.75, 0.25])
    assert coefficient_of_variation(f) == pytest.approx(0.5)
    assert normalised_entropy(f) == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) / math.log(2))
    assert max_over_mean(f) == pytest.approx(1.5)
    # cold threshold 0.1·k/E = 0.05 with top-1: 0.04 is cold, 0.06 is not
    assert cold_experts(torch.tensor([0.96, 0.04]), top_k=1) == 1
    assert cold_experts(torch.tensor([0.94, 0.06]), top_k=1) == 0
    # with top-2 over 4 experts the threshold is 0.05 too, on f that sums to 2
    assert cold_experts(torch.tensor([0.96, 0.04, 0.5, 0.5]), top_k=2) == 1


def test_kl_divergence():
    assert kl_divergence(torch.tensor([0.3, 0.5, 0.2]), torch.tensor([0.3, 0.5, 0.2])) == pytest.approx(0, abs=1e-15)
    # scale does not matter: distributions are normalised (top-k frequencies sum to k)
    assert kl_divergence(torch.tensor([0.6, 1.0, 0.4]), torch.tensor([0.3, 0.5, 0.2])) == pytest.approx(0, abs=1e-15)
    # KL(p ‖ q) with p = (1/2, 1/2), q = (3/4, 1/4): ½ ln(2/3) + ½ ln 2 = ½ ln(4/3); the direction matters
    assert kl_divergence(torch.tensor([1.0, 1.0]), torch.tensor([3.0, 1.0])) == pytest.approx(0.5 * math.log(4 / 3),
                                                                                             abs=1e-8)
    assert kl_divergence(torch.tensor([3.0, 1.0]), torch.tensor([1.0, 1.0])) == pytest.approx(
        0.75 * math.log(1.5) + 0.25 * math.log(0.5), abs=1e-8)
    # an expert the clean model never uses: finite thanks to the stated epsilon, ≈ ln(1/ε)·p_e
    kl = kl_divergence(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 0.0]))
    assert KL_EPSILON == 1e-9 and math.isfinite(kl) and kl == pytest.approx(0.5 * math.log(0.5 / KL_EPSILON) +
                                                                              0.5 * math.log(0.5), rel=1e-6)


def test_topk_agreement():
    a = torch.tensor([[0, 1], [1, 2], [3, 0], [5, 4]], dtype=torch.uint8)
    b = torch.tensor([[1, 2], [2, 1], [0, 3], [6, 7]], dtype=torch.uint8)
    assert topk_jaccard(a[:1], b[:1]).tolist() == [pytest.approx(1 / 3)]  # {0,1} vs {1,2}
    assert topk_jaccard(a, b).tolist() == pytest.approx([1 / 3, 1.0, 1.0, 0.0])
    assert mean_jaccard(a, b) == pytest.approx((1 / 3 + 2) / 4)
    # top-1 is column 0: changed in tokens 0 (0→1), 1 (1→2), 2 (3→0), 3 (5→6)
    assert top1_change_share(a, b) == 1.0
    assert top1_change_share(a, torch.tensor([[0, 2], [1, 0], [2, 3], [5, 4]])) == 0.25  # only token 2 (3→2)
    assert mean_jaccard(a, a) == 1.0 and top1_change_share(a, a) == 0.0
    with pytest.raises(ValueError):
        topk_jaccard(a, b[:3])


def test_routing_stats_from_counts():
    counts = torch.tensor([[2, 2, 2, 2], [4, 0, 0, 0]])
    stats = RoutingStats.from_counts(counts, tokens=8, top_k=1, layer_indices=[3, 5])
    assert [s.layer for s in stats.layers] == [3, 5]
    # the second row over 8 tokens: f = (1/2, 0, 0, 0)
    second = stats.layer(5)
    assert second.cv == pytest.approx(math.sqrt(3)) and second.entropy == 0 and second.cold == 3
    assert stats.overall["cold"] == 3 and stats.overall["cv"] == pytest.approx(math.sqrt(3) / 2)
    assert stats.overall["entropy"] == pytest.approx(0.5) and stats.overall["kl"] is None
    rows = stats.table_rows()
    assert [r["layer"] for r in rows] == ["3", "5", "all"] and rows[1]["cold"] == "3/4" and "KL" not in rows[0]
    json.dumps(stats.to_dict(), allow_nan=False)


def test_routing_stats_against_reference_counts():
    stats = RoutingStats.from_counts(torch.tensor([[1, 1]]), tokens=2, top_k=1,
                                     reference_counts=torch.tensor([[3, 1]]), reference_tokens=4)
    assert stats.layers[0].kl == pytest.approx(0.5 * math.log(4 / 3), abs=1e-8)
    assert stats.overall["kl"] == stats.layers[0].kl
    assert stats.table_rows()[0]["KL"] == f"{0.5 * math.log(4 / 3):.4f}"


def test_empty_layer_is_nan_not_an_error():
    stats = RoutingStats.from_counts(torch.zeros(1, 4, dtype=torch.long), tokens=0, top_k=1)
    assert math.isnan(stats.layers[0].cv) and math.isnan(stats.layers[0].entropy)
    payload = stats.to_dict()
    json.dumps(payload, allow_nan=False)
    assert payload["layers"][0]["cv"] is None
