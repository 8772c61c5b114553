"""A calibrated chip in service: a plan fitted at one time after programming and served at another
(``MethodConfig.fit_time``)."""

import pytest
import torch

from romer.calibrate import Calibrator, apply
from romer.calibrate.config import MethodConfig
from romer.errors import UserError
from romer.experiment.config_file import load_config
from romer.noise.chip import Chip
from tests.tiny_models import VOCAB, tiny

HOUR, YEAR = 3600.0, 365 * 86400.0
# PCM ×10 without drift compensation: the chip's logits move visibly between 1 h and 1 year
CHIP = Chip.from_options("pcm", placement="moe", seed=2, t_inference=YEAR, prog_noise_scale=10.0,
                         read_noise_scale=10.0, drift_compensation=False)


def windows(rows=6, length=24, seed=0):
    return torch.randint(1, VOCAB, (rows, length), generator=torch.Generator().manual_seed(seed))


def calibrator(kind="recalibrate", **options):
    return Calibrator(MethodConfig(name=kind, kind=kind, calibration={"batch_size": 3}, **options))


def decided(plan):
    return {k: plan.to_dict()[k] for k in ("replacement", "router", "digital_experts")}


@pytest.mark.parametrize("kind", ["recalibrate", "romer"])
def test_a_plan_fitted_at_fit_time_is_the_plan_fitted_on_the_chip_read_then(kind):
    model, ids = tiny("olmoe"), windows()
    early = calibrator(kind, fit_time=HOUR).fit(model, ids, CHIP)
    there = calibrator(kind).fit(model, ids, CHIP.with_time(HOUR))
    fresh = calibrator(kind).fit(model, ids, CHIP)
    assert early.chip["t_inference"] == HOUR and fresh.chip["t_inference"] == YEAR
    assert early.chip == there.chip and early.chip["seed"] == CHIP.seed
    assert decided(early) == decided(there) and decided(early) != decided(fresh)


def test_with_time_reads_the_same_devices_later():
    """Same seed, other time: the programmed weights differ (drift), but with no drift, no read noise and time
    not entering programming noise, they are bit-identical: the draws do not depend on t."""
    model = tiny("olmoe")
    still = Chip.from_options("pcm", placement="moe", seed=1, t_inference=HOUR, drift_scale=0.0,
                              read_noise_scale=0.0)

    def read(chip):
        with apply(model, chip, calibrator().fit(model, windows(), chip)):
            return model.model.layers[0].mlp.experts.down_proj.detach().clone()

    assert torch.equal(read(still), read(still.with_time(YEAR)))
    assert not torch.equal(read(CHIP), read(CHIP.with_time(HOUR)))


def test_a_fit_time_past_the_device_data_is_refused():
    chip = Chip.from_options("reram", placement="moe", seed=0, t_inference=3600.0)
    with pytest.raises(UserError, match="fit_time .* past the reram device data"):
        calibrator(fit_time=30 * 86400.0).fit(tiny("olmoe"), windows(), chip)
    with pytest.raises(ValueError):
        MethodConfig(name="x", kind="recalibrate", fit_time=-1.0)


@pytest.mark.parametrize("key, value", [("fit_time", "3600"), ("fit_io", "ideal")])
def test_a_fit_option_enters_the_config_hash_only_when_set(key, value):
    """fit_time (a plan fitted at another time) and fit_io (behind another periphery): configs without them hash
    as before they existed, so existing stores stay valid."""
    base = ["models=[olmoe-tiny]", "chip.chips=1"]
    plain = load_config("default", [*base, "methods=[{name: p1, kind: recalibrate}]"]).config_hash
    unset = load_config("default", [*base, f"methods=[{{name: p1, kind: recalibrate, {key}: null}}]"]).config_hash
    chosen = load_config("default", [*base, f"methods=[{{name: p1, kind: recalibrate, {key}: {value}}}]"]).config_hash
    assert plain == unset != chosen
