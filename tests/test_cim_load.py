"""CIM load model (romer.routing.cim_load): golden cases computed by hand."""

import math

import pytest
import torch

from romer.routing.cim_load import VARIANT_TRAFFIC, array_loads, cim_load, layer_load, relative_throughput


def test_utilisation_of_an_unbalanced_layer():
    """Loads [4, 2, 1, 1]: mean 8/4 = 2, max 4 → utilisation 0.5."""
    out = layer_load(array_loads([4, 2, 1, 1]))
    assert out == {"max_load": 4.0, "mean_load": 2.0, "utilisation": 0.5}


def test_shared_replica_halves_the_hot_load():
    """Expert 0 (4 tokens) gets a replica in slot 3 (whose own token is gone: masked): 0 and 3 carry 4/2 = 2 each
    → [2, 2, 1, 2]; mean 7/4, max 2 → utilisation 0.875; busiest array 4 → 2: throughput ×2."""
    loads = array_loads([4, 2, 1, 1], [(3, 0)], traffic="share", mask_cold=True)
    assert loads.tolist() == [2.0, 2.0, 1.0, 2.0]
    assert layer_load(loads)["utilisation"] == pytest.approx(0.875)
    clean = cim_load([[4, 2, 1, 1]], [0])
    method = cim_load([[4, 2, 1, 1]], [0], {0: [(3, 0)]})
    assert relative_throughput(clean, method) == 2.0


def test_two_replicas_of_one_hot_expert_and_unmasked_cold_slots():
    """Loads [6, 3, 1, 2], slots 2 and 3 both replicate expert 0 and keep their own tokens (split-like): expert 0's
    6 tokens over 3 arrays → 2 each; slot 2: 1 + 2 = 3, slot 3: 2 + 2 = 4 → [2, 3, 3, 4], max 4, mean 3."""
    loads = array_loads([6, 3, 1, 2], [(2, 0), (3, 0)], traffic="share", mask_cold=False)
    assert loads.tolist() == [2.0, 3.0, 3.0, 4.0]
    assert layer_load(loads)["utilisation"] == 0.75


def test_averaged_replica_buys_no_throughput():
    """ROMER's replica variant drives both arrays with every token of the hot expert: [4, 2, 1, 1] → [4, 2, 1, 4];
    the busiest array still carries 4 tokens (throughput ×1), utilisation 11/4 / 4 = 0.6875."""
    traffic, mask = VARIANT_TRAFFIC["replica"]
    loads = array_loads([4, 2, 1, 1], [(3, 0)], traffic=traffic, mask_cold=mask)
    assert loads.tolist() == [4.0, 2.0, 1.0, 4.0]
    assert layer_load(loads)["utilisation"] == pytest.approx(0.6875)
    assert relative_throughput(cim_load([[4, 2, 1, 1]], [5]), cim_load([[4, 2, 1, 1]], [5], {5: [(3, 0)]},
                                                                       traffic, mask)) == 1.0


def test_own_traffic_leaves_loads_or_drops_the_masked_slot():
    assert array_loads([4, 2, 1, 1], [(3, 0)], traffic="own", mask_cold=False).tolist() == [4, 2, 1, 1]
    assert array_loads([4, 2, 1, 1], [(3, 0)], traffic="own", mask_cold=True).tolist() == [4, 2, 1, 0]


def test_model_totals_over_layers():
    """Layer 1: [4, 2, 1, 1] (max 4, mean 2); layer 3: [2, 2, 2, 2] (max 2, mean 2). Σ max = 6, Σ mean = 4 →
    overall utilisation 2/3. Sharing expert 0 of layer 1 with slot 3: Σ max = 2 + 2 = 4 → throughput 6/4 = 1.5."""
    counts = torch.tensor([[4, 2, 1, 1], [2, 2, 2, 2]])
    clean = cim_load(counts, [1, 3])
    assert clean["total_max_load"] == 6.0
    assert clean["utilisation"] == pytest.approx(2 / 3)
    assert [r["utilisation"] for r in clean["layers"]] == [0.5, 1.0]
    method = cim_load(counts, [1, 3], {1: [(3, 0)]})
    assert relative_throughput(clean, method) == 1.5


def test_refuses_bad_pairs_and_unknown_layers():
    with pytest.raises(ValueError, match="replaced once"):
        array_loads([1, 2, 3], [(0, 2), (0, 1)])
    with pytest.raises(ValueError, match="never by itself"):
        array_loads([1, 2, 3], [(1, 1)])
    with pytest.raises(ValueError, match="cold"):
        array_loads([1, 2, 3, 4], [(0, 3), (3, 2)])
    with pytest.raises(ValueError, match="not MoE layers"):
        cim_load([[1, 2]], [0], {4: [(0, 1)]})
    with pytest.raises(ValueError, match="traffic"):
        array_loads([1, 2], traffic="teleport")


def test_idle_layer_has_undefined_utilisation():
    assert math.isnan(layer_load(torch.zeros(4, dtype=torch.float64))["utilisation"])
