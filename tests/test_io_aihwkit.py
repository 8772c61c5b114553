"""romer's IO path (romer.noise.io) against aihwkit's torch inference tile on one Linear, weight noise off.

aihwkit (``TorchInferenceRPUConfig``, ``AnalogLinear``) is the reference: the same DAC and ADC levels and clipping
with output noise off (≤ 1 ADC step, float rounding aside), the same output-noise statistics with it on. Weights
are drawn with an abs-max of exactly 1 per tile (or per output within a tile), so romer's weight scaling is the
identity and aihwkit needs no remapping. Iterative bound management is compared one token per call: aihwkit's
torch tile decides it for the whole batch, romer per token.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

pytest.importorskip("aihwkit", reason="aihwkit is not installed (make test installs it)")

from aihwkit.nn import AnalogLinear  # noqa: E402
from aihwkit.simulator.configs import InferenceRPUConfig, TorchInferenceRPUConfig  # noqa: E402
from aihwkit.simulator.parameters.enums import BoundManagementType, NoiseManagementType  # noqa: E402
from aihwkit.simulator.presets import StandardHWATrainingPreset  # noqa: E402

from romer.noise.io import AIHWKIT_DEFAULT, HWA_STANDARD, IOConfig, analog_matmul  # noqa: E402

IN, OUT = 1024, 16  # two tiles of 512 inputs


def unit_weights(per_output: bool, seed: int = 0) -> torch.Tensor:
    """Uniform weights in [−1, 1] with |w| = 1 somewhere in every tile (every output's row of a tile)."""
    w = torch.rand(OUT, IN, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    for a in range(0, IN, 512):
        if per_output:
            w[:, a + 7] = torch.where(torch.arange(OUT) % 2 == 0, 1.0, -1.0)
        else:
            w[3, a + 11] = -1.0
    return w


def aihwkit_linear(w: torch.Tensor, configure) -> AnalogLinear:
    config = TorchInferenceRPUConfig()
    config.drift_compensation = None
    config.mapping.max_input_size, config.mapping.max_output_size = 512, 512
    configure(config.forward)
    layer = AnalogLinear(IN, OUT, bias=False, rpu_config=config)
    layer.set_weights(w)
    return layer.eval()


def aihwkit_forward(layer: AnalogLinear, x: torch.Tensor, seed: int = 0, rows_one_by_one: bool = False):
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        if rows_one_by_one:
            return torch.cat([layer(x[i:i + 1]) for i in range(x.shape[0])])
        return layer(x)


def default_forward(forward, out_noise: float = 0.0):
    forward.out_noise = out_noise  # the rest: aihwkit 1.1.0 defaults (7/9 bit, bound 12, ABS_MAX, ITERATIVE)


def test_presets_carry_aihwkit_constants():
    """The presets' bits are aihwkit's resolutions: inp_res = 1/(2^bits − 2) (or 2^bits − 2 steps)."""
    default, hwa = InferenceRPUConfig().forward, StandardHWATrainingPreset().forward
    steps = lambda res: 1 / res if res < 1 else res  # noqa: E731 — aihwkit takes a resolution or a step count
    assert steps(default.inp_res) == pytest.approx(2**AIHWKIT_DEFAULT.dac_bits - 2)
    assert steps(default.out_res) == pytest.approx(2**AIHWKIT_DEFAULT.adc_bits - 2)
    assert (default.out_bound, default.out_noise, default.inp_bound) == (AIHWKIT_DEFAULT.out_bound,
                                                                         AIHWKIT_DEFAULT.out_noise, 1.0)
    assert default.noise_management == NoiseManagementType.ABS_MAX
    assert default.bound_management == BoundManagementType.ITERATIVE
    assert steps(hwa.inp_res) == 2**HWA_STANDARD.dac_bits - 2 and steps(hwa.out_res) == 2**HWA_STANDARD.adc_bits - 2
    assert (hwa.out_bound, hwa.out_noise) == (HWA_STANDARD.out_bound, HWA_STANDARD.out_noise)
    assert hwa.noise_management == NoiseManagementType.CONSTANT and hwa.nm_thres == 1.0
    assert StandardHWATrainingPreset().mapping.weight_scaling_columnwise and HWA_STANDARD.weight_scaling == "column"


def _within_one_step(ours, theirs, step):
    """Every output within one ADC step (step per row, output units); nearly all equal to float rounding."""
    diff = (ours - theirs).abs()
    assert (diff <= step * 1.001 + 1e-5).all()
    assert (diff <= 1e-4 * step).float().mean() >= 0.99


def test_aihwkit_default_levels_clipping_and_bound_management():
    """7-bit DAC on abs-max inputs, 9-bit ADC at ±12, ITERATIVE bound management, no output noise; inputs large
    enough that about half the tokens clip at first and are rerun."""
    w = unit_weights(per_output=False)
    x = torch.randn(48, IN, generator=torch.Generator().manual_seed(1)) * torch.linspace(0.1, 3, 48)[:, None]
    x[5, 100] = 40.0  # an outlier: that token's other inputs round to few levels
    theirs = aihwkit_forward(aihwkit_linear(w, default_forward), x, rows_one_by_one=True)
    io = dataclasses.replace(AIHWKIT_DEFAULT, out_noise=0.0)
    ours = analog_matmul(x, w, io)
    peak = torch.stack([x[:, :512].abs().amax(-1), x[:, 512:].abs().amax(-1)], -1)  # r per tile
    _within_one_step(ours, theirs, io.output_step * 16 * peak.max(-1, keepdim=True).values)
    plain = analog_matmul(x, w, dataclasses.replace(io, bound_management="none"))
    assert not torch.allclose(plain, ours)  # bound management changed some tokens: the comparison covers it


def test_constant_range_clips_inputs_like_aihwkit_hwa_settings():
    """hwa-standard's periphery: 8-bit DAC on a fixed range ±1 (aihwkit CONSTANT noise management, nm_thres 1),
    inputs beyond it clip; 8-bit ADC at ±10 (outputs clip too); column-wise weight scaling; whole batch at once."""
    w = unit_weights(per_output=True)
    x = torch.randn(64, IN, generator=torch.Generator().manual_seed(2)) * 0.7

    def configure(forward):
        forward.inp_res, forward.out_res, forward.out_bound, forward.out_noise = 1 / 254, 1 / 254, 10.0, 0.0
        forward.noise_management, forward.nm_thres = NoiseManagementType.CONSTANT, 1.0
        forward.bound_management = BoundManagementType.NONE

    theirs = aihwkit_forward(aihwkit_linear(w, configure), x)
    io = dataclasses.replace(HWA_STANDARD, out_noise=0.0)
    ours = analog_matmul(x, w, io, ranges=[1.0, 1.0])
    assert (x.abs() > 1).any() and (theirs.abs() > 10).any()  # both clippings happen
    _within_one_step(ours, theirs, torch.full((64, 1), io.output_step * 2))


def test_output_noise_statistics_match():
    """out_noise 0.06 on a 7-bit DAC, no ADC, no bound: 2,000 copies of one token; the residual around the
    noiseless output has mean 0 and std 0.06·r per tile (r = the tile's abs-max of the token, 1 and 2), summed over
    the two tiles: 0.06·√(1 + 4). Tolerances: mean within 4 standard errors, std within 3 % (its standard error
    here is 0.4 %)."""
    w = unit_weights(per_output=False)
    token = torch.randn(1, IN, generator=torch.Generator().manual_seed(3))
    token = torch.cat([token[:, :512] / token[:, :512].abs().max(), 2 * token[:, 512:] / token[:, 512:].abs().max()],
                      -1)  # abs-max r = 1 in tile 0, 2 in tile 1
    x = token.expand(2000, IN).contiguous()

    def configure(noise):
        def set_it(forward):
            forward.out_noise, forward.out_res, forward.out_bound = noise, -1, 0.0
            forward.bound_management = BoundManagementType.NONE
        return set_it

    io = IOConfig(name="noise", dac_bits=7, out_noise=0.06)
    exact = analog_matmul(token, w, dataclasses.replace(io, out_noise=0.0, out_bound=1e9))
    theirs_exact = aihwkit_forward(aihwkit_linear(w, configure(0.0)), token)
    torch.testing.assert_close(exact, theirs_exact, rtol=1e-5, atol=1e-5)
    sigma = 0.06 * 5**0.5
    for residual in (analog_matmul(x, w, io, torch.Generator().manual_seed(4)) - exact,
                     aihwkit_forward(aihwkit_linear(w, configure(0.06)), x, seed=5) - exact):
        assert residual.mean().abs() < 4 * sigma / residual.numel() ** 0.5
        assert residual.std().item() == pytest.approx(sigma, rel=0.03)


def test_quantised_noisy_outputs_share_aihwkit_levels_and_spread():
    """Output noise then a 5-bit ADC at ±12 (a coarse step, 0.8): every output of both is a multiple of the step
    (one tile, abs-max r = 1 exactly), and the spread of the quantised outputs agrees within 5 %."""
    w = unit_weights(per_output=False)[:, :512].contiguous()
    token = torch.rand(1, 512, generator=torch.Generator().manual_seed(6)) * 2 - 1
    token[0, 0] = 1.0
    x = token.expand(3000, 512).contiguous()
    io = IOConfig(name="adc5", dac_bits=7, out_noise=0.5, adc_bits=5, out_bound=12.0)

    def configure(forward):
        forward.out_noise, forward.out_res, forward.bound_management = 0.5, 1 / 30, BoundManagementType.NONE

    config = TorchInferenceRPUConfig()
    config.drift_compensation = None
    configure(config.forward)
    layer = AnalogLinear(512, OUT, bias=False, rpu_config=config)
    layer.set_weights(w)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(7)
        theirs = layer.eval()(x)
    ours = analog_matmul(x, w, io, torch.Generator().manual_seed(8))
    for y in (ours, theirs):
        levels = y / io.output_step
        assert (levels - levels.round()).abs().max() < 1e-3
    assert ours.std(0).mean().item() == pytest.approx(theirs.std(0).mean().item(), rel=0.05)
    assert (ours.mean(0) - theirs.mean(0)).abs().max() < 6 * theirs.std(0).max() / 3000**0.5
