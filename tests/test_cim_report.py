"""The CIM throughput and utilisation columns of the report, on hand-made trials."""

import pytest

from romer.report.aggregate import aggregate_rows
from romer.report.tables import markdown


def trial(method, kind, frequency, plan=None):
    return {"model": "m", "preset": "pcm", "t_inference": 86400.0, "placement": "moe", "method": method,
            "method_kind": kind, "chip_seed": 0, "ppl": 10.0, "plan": plan,
            "metrics": {"ppl": 10.0, "frequency": frequency}}


def test_throughput_is_the_busiest_array_of_clean_over_that_of_the_method():
    clean = trial("clean", "clean", [[0.25, 0.25, 0.25, 0.25]])
    noisy = trial("noisy", "noisy", [[0.5, 0.25, 0.125, 0.125]])
    # split: a replica of expert 0 in slot 3 shares expert 0's traffic, and slot 3 keeps its own selections
    shared = trial("split", "replace", [[0.5, 0.25, 0.125, 0.125]],
                   {"model": {"moe_layers": [1]}, "replacement": [{"layer": 1, "variant": "split", "pairs": [[3, 0]]}]})
    rows = {r["method"]: r for r in aggregate_rows([clean, noisy, shared])}
    assert rows["clean"]["throughput_mean"] == pytest.approx(1.0) and rows["clean"]["utilisation_mean"] == 1.0
    # noisy: max load 0.5 against clean's 0.25 → half the throughput; utilisation mean 0.25 / max 0.5
    assert rows["noisy"]["throughput_mean"] == pytest.approx(0.5)
    assert rows["noisy"]["utilisation_mean"] == pytest.approx(0.5)
    # loads [0.5/2, 0.25, 0.125, 0.5/2 + 0.125] = [0.25, 0.25, 0.125, 0.375]: max 0.375 → 0.25 / 0.375 = 2/3
    assert rows["split"]["throughput_mean"] == pytest.approx(2 / 3)
    assert "| 0.50× |" in markdown(list(rows.values()))
