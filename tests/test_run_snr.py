"""Every chip row of ``romer run`` carries the chip's SNR: checked against the gaussian preset's own law.

Gaussian noise w̃ = w + η·max|w|·N with one scale per tensor (mapping ``tensor``) has noise energy
E Σ (w̃ − w)² = n·η²·max|w|² for a tensor of n weights, so a layer's router of weights W has
SNR = ‖W‖ / (√n·η·max|W|) up to the chi-square spread of the draw (relative sd √(2/n) of the energy).
"""

import math

import pytest

from romer.experiment.config_file import load_config
from romer.experiment.evaluate import Evaluator
from romer.models.view import moe_layers

ETA = 0.05


@pytest.fixture(scope="module")
def rows_and_model():
    config = load_config("default", ["models=[olmoe-tiny]", "chip.chips=1", "chip.mapping=tensor",
                                     "chip.presets=[{preset: gaussian, overrides: {eta: 0.05}}]",
                                     "eval.max_tokens=256", "calibration.sequences=2",
                                     "methods=[clean, noisy, recalibration]"])
    (group,) = config.groups()
    evaluator = Evaluator()
    rows = {row["method"]: row for row in evaluator(group)}
    model, _ = evaluator.model("olmoe-tiny")
    return rows, model


def test_router_snr_follows_the_gaussian_law(rows_and_model):
    rows, model = rows_and_model
    signal = noise = 0.0
    for layer in moe_layers(model):
        w = layer.router_weight.detach().double()
        signal += float(w.square().sum())
        noise += w.numel() * (ETA * float(w.abs().max())) ** 2
    expected_db = 20 * math.log10(math.sqrt(signal / noise))
    n = sum(layer.router_weight.numel() for layer in moe_layers(model))
    tolerance_db = 10 * math.log10(1 + 4 * math.sqrt(2 / n))  # 4 sd of the pooled noise energy
    assert rows["noisy"]["snr_db"]["router"] == pytest.approx(expected_db, abs=tolerance_db)


def test_every_chip_row_has_the_same_snr_and_clean_has_none(rows_and_model):
    rows, _ = rows_and_model
    assert "snr_db" not in rows["clean"]
    assert rows["recalibration"]["snr_db"] == rows["noisy"]["snr_db"]
    snr = rows["noisy"]["snr_db"]
    assert {"router", "routed_experts", "router_logits"} <= set(snr)
    assert all(math.isfinite(v) for v in snr.values())
