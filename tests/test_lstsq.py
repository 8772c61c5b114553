"""Least-squares per-expert affine recalibration (recalibrate mode lstsq), by hand and on a chip."""

import pytest
import torch

from romer.calibrate import Calibrator, MethodConfig
from romer.calibrate.config import RecalibrateConfig
from romer.calibrate.recalibration import fit_lstsq
from romer.calibrate.routing_rule import RouterFix


def test_an_exact_affine_distortion_is_undone_exactly():
    clean = torch.randn(400, 5, generator=torch.Generator().manual_seed(0))
    noisy = clean * torch.tensor([2.0, 0.5, 1.0, 4.0, -1.0]) + torch.tensor([3.0, 0.0, -1.0, 0.25, 2.0])
    fix = fit_lstsq(noisy, clean, RecalibrateConfig(mode="lstsq"), RouterFix(0))
    # z_n = s·z_c + o  ⇒  z_c = z_n / s − o / s
    assert fix.scale == pytest.approx([0.5, 2.0, 1.0, 0.25, -1.0], rel=1e-6)  # float32 inputs
    assert fix.offset == pytest.approx([-1.5, 0.0, 1.0, -0.0625, 2.0], abs=1e-6)


def test_a_constant_expert_is_only_shifted():
    clean = torch.randn(50, 2, generator=torch.Generator().manual_seed(1))
    noisy = torch.stack([torch.full((50,), 3.0), clean[:, 1]], dim=1)
    fix = fit_lstsq(noisy, clean, RecalibrateConfig(mode="lstsq"), RouterFix(0))
    assert fix.scale[0] == 1.0 and fix.offset[0] == pytest.approx(float(clean[:, 0].mean()) - 3.0)


def test_on_a_chip_it_fits_the_clean_logits_better_than_percentiles(tmp_path):
    """Least squares is the best affine map on the tokens it is fitted on: its corrected logits are closer to the
    clean ones there than P1's (same chip, same windows)."""
    from romer.calibrate.calibrator import observe, observe_chip
    from romer.models import load_model
    from romer.noise.chip import default_chip

    model, tokenizer = load_model("olmoe-tiny")
    chip = default_chip(0)
    errors = {}
    for mode in ("lstsq", "quantile"):
        method = MethodConfig(name=mode, kind="recalibrate", recalibrate={"mode": mode},
                              calibration={"sequences": 2, "window": 128})
        calibrator = Calibrator(method)
        windows = calibrator.windows(tokenizer)
        clean = observe(model, windows, 2, keep_logits=True)
        noisy = observe_chip(model, chip, windows, 2)
        plan = calibrator.fit(model, windows, chip, clean=clean, noisy=noisy)
        layer = plan.router[0]
        corrected = noisy.logits[layer.layer] * torch.tensor(layer.scale) + torch.tensor(layer.offset)
        errors[mode] = float((corrected - clean.logits[layer.layer]).square().mean())
    assert errors["lstsq"] < errors["quantile"]


def test_it_cannot_follow_a_replacement():
    with pytest.raises(ValueError, match="lstsq"):
        MethodConfig(name="x", kind="romer", recalibrate={"mode": "lstsq"})
