"""The regime map's figures, hand-checked on a store written through the real runner with made-up PPLs."""

import math

import pytest

from romer.errors import UserError
from romer.experiment.config_file import load_config
from romer.estimators import interval
from romer.studies.regime_map import cells_from_store, headline
from romer.experiment.runner import run_experiment

# chip seed → PPL per method, in two presets; pcm×50's romer is worse than noisy on every chip
PPL = {
    "pcm×10": {"clean": [50, 50, 50], "noisy": [100, 120, 110], "oracle routing": [60, 70, 80], "romer": [80, 90, 99]},
    "pcm×50": {"clean": [50, 50, 50], "noisy": [200, 200, 200], "oracle routing": [150, 150, 150],
               "romer": [210, 211, 212]},
}


def _evaluator(group, missing):
    for method in sorted(missing):
        ppl = PPL[group.preset][method][group.chip["seed"]]
        yield {"method": method, "ppl": float(ppl), "snr_db": {"router": 10.0 + group.chip["seed"]}}


@pytest.fixture(scope="module")
def cells(tmp_path_factory):
    config = load_config("default", ["models=[olmoe-tiny]", "chip.chips=3",
                                     "chip.presets=[{preset: pcm, overrides: {prog_noise_scale: 10}, label: pcm×10},"
                                     " {preset: pcm, overrides: {prog_noise_scale: 50}, label: pcm×50}]",
                                     "methods=[clean, noisy, oracle routing, romer]"])
    store = tmp_path_factory.mktemp("regime") / "results.sqlite"
    run_experiment(config, store, evaluator=_evaluator, progress=False)
    return {c["preset"]: c for c in cells_from_store(store)}


def test_reduction_and_gap_by_hand(cells):
    romer = cells["pcm×10"]["methods"]["romer"]
    # reduction per chip: 1 − 80/100, 1 − 90/120, 1 − 99/110 = 20 %, 25 %, 10 %; mean 18.333…, sd √(175/3)
    # = 7.6376; t₀.₉₇₅,₂ = 4.3027 → half-width 4.3027 · 7.6376 / √3 = 18.973
    assert romer["reduction_pct"]["mean"] == pytest.approx(55 / 3)
    assert romer["reduction_pct"]["high"] - romer["reduction_pct"]["mean"] == pytest.approx(18.973, abs=1e-3)
    # gap recovered per chip: 20/50, 30/70, 11/60 → mean (40 + 42.857 + 18.333) / 3 = 33.730 %
    assert romer["gap_recovered_pct"]["mean"] == pytest.approx((40 + 300 / 7 + 110 / 6) / 3)
    # routing share = oracle's gap recovered: 40/50, 50/70, 30/60 → (80 + 71.429 + 50) / 3
    assert cells["pcm×10"]["routing_share_pct"]["mean"] == pytest.approx((80 + 500 / 7 + 50) / 3)
    assert cells["pcm×10"]["snr_db"]["router"] == pytest.approx(11.0)  # chips at 10, 11, 12 dB


def test_headline_best_typical_and_where_it_hurts(cells):
    h = headline(list(cells.values()))
    assert h["cells"] == 2
    assert h["up_to"] == pytest.approx(55 / 3) and "pcm×10" in h["up_to_cell"]
    # pcm×50: −5 %, −5.5 %, −6 %: interval −5.5 ± 4.3027 · 0.5 / √3 = −5.5 ± 1.24, entirely below 0: it hurts
    assert len(h["hurts"]) == 1 and "pcm×50" in h["hurts"][0]
    assert h["typical"] == pytest.approx((55 / 3 - 5.5) / 2)


def test_interval_edge_cases():
    assert interval([])["mean"] is None
    assert interval([3.0])["low"] is None
    assert interval([1.0, 1.0, 1.0])["low"] == 1.0
    assert interval([1.0, math.nan, 3.0])["n"] == 2


def test_missing_store_is_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="no results store"):
        cells_from_store(tmp_path / "nothing.sqlite")


def test_spearman_by_hand():
    from romer.estimators import spearman

    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # x ranks 1 2 3 4, y = [1, 3, 2, 4] ranks 1 3 2 4: Σd² = 2, ρ = 1 − 6·2 / (4·15) = 0.8
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    # ties: y ranks 1.5 1.5 3 → Pearson of (1,2,3) and (1.5,1.5,3) = 0.866…
    assert spearman([1, 2, 3], [5, 5, 9]) == pytest.approx(math.sqrt(3) / 2)
    assert math.isnan(spearman([1, 2], [3, 4]))


def test_cells_measured_again_replace_the_kept_ones_and_the_rest_are_kept(cells):
    from romer.studies.regime_map import merge_cells

    kept = [dict(cells["pcm×10"], methods={}), dict(cells["pcm×50"], source="regime-time")]
    merged = merge_cells([cells["pcm×10"]], kept)
    assert merged[0] is cells["pcm×10"]  # the measured cell, not the kept copy of the same (source, setting)
    assert [c["source"] for c in merged] == [cells["pcm×10"]["source"], "regime-time"]
    assert len(merged) == 2


def test_headline_counts_distinct_cells_and_corrects_across_them():
    """Three settings (one measured twice, by two configs): Holm's adjusted p-values 3·0.001, 2·0.02, 1·0.5 keep
    the first cell's help and the second's harm at 0.05; the repeated cell counts once."""
    from romer.studies.regime_map import headline

    def cell(source, preset, mean, p):
        figure = {"mean": mean, "low": mean - 1, "high": mean + 1, "n": 3, "p": p}
        return {"source": source, "model": "olmoe-tiny", "preset": preset, "placement": "moe", "mapping": "expert",
                "t": 86400, "methods": {"romer": {"reduction_pct": figure}}}

    cells = [cell("regime", "a", 10.0, 0.001), cell("regime", "b", -5.0, 0.02), cell("regime", "c", 1.0, 0.5),
             cell("regime-time", "a", 99.0, 0.0)]
    head = headline(cells)
    assert head["cells"] == 3 and head["up_to"] == 10.0 and head["up_to_interval"] == [9.0, 11.0]
    assert head["helps_holm"] == ["olmoe-tiny · a · moe"] and head["hurts_holm"] == ["olmoe-tiny · b · moe"]
    assert head["helps_bh"] == ["olmoe-tiny · a · moe"] and head["hurts_bh"] == ["olmoe-tiny · b · moe"]
    assert headline(cells, alpha=0.01)["hurts_holm"] == []  # 0.04 > 0.01
