"""Programming on any dtype and device: bf16/fp16 keep fp32's noise statistics (against the formulas), in-place
streamed programming equals the out-of-place result, the draw stream does not depend on how it is sliced, and
weights that cannot be programmed are refused in one line."""

import math

import pytest
import torch

from romer.devices import check_programmable, parse_device, parse_dtype
from romer.errors import UserError
from romer.noise import get_preset
from romer.noise.chip import Chip, program
from romer.noise.draws import NormalStream
from tests.tiny_models import tiny

LEVELS = torch.tensor([1.0, 0.5, 0.25, -0.75, 0.125])  # exact in bf16 and fp16; max|w| = 1
PER_LEVEL = 60_000


def gen(seed):
    return torch.Generator().manual_seed(seed)


def clamped_normal_moments(mu, sigma):
    """Mean and variance of max(0, μ + σN)."""
    a = mu / sigma
    phi = math.exp(-a * a / 2) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1 + math.erf(a / math.sqrt(2)))
    mean = mu * cdf + sigma * phi
    return mean, (mu * mu + sigma * sigma) * cdf + mu * sigma * phi - mean * mean


def pcm_sigma(g):
    return (0.26348 + 1.9650 * g - 1.1731 * g * g) / 25


def weights(dtype):
    return LEVELS[:, None].expand(-1, PER_LEVEL).contiguous().to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_pcm_programming_noise_matches_the_formula_in_every_dtype(dtype):
    # programming noise only (no drift, no read noise, no compensation): w = (ĝ⁺ − ĝ⁻)·max|w|, the sign device at
    # max(0, |w| + σ(|w|)N), the other at max(0, σ(0)N'): mean and variance from the censored-normal formulas
    preset = get_preset("pcm", drift_scale=0, read_noise_scale=0, drift_compensation=False)
    out = preset.program(weights(dtype), group="tensor", t_inference=0.0, generator=gen(1))
    assert out.dtype == dtype
    for level, row in zip(LEVELS.tolist(), out.float()):
        m1, v1 = clamped_normal_moments(abs(level), pcm_sigma(abs(level)))
        m0, v0 = clamped_normal_moments(0.0, pcm_sigma(0.0))
        mean, std = math.copysign(m1 - m0, level), math.sqrt(v1 + v0)
        resolution = abs(level) * 2.0 ** -8 if dtype == torch.bfloat16 else 0.0  # bf16 output rounding
        assert abs(float(row.mean()) - mean) < 5 * std / math.sqrt(PER_LEVEL) + resolution / 4, (dtype, level)
        assert abs(float(row.std()) / std - 1) < 0.03, (dtype, level)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["pcm", "hermes", "reram"])
def test_low_precision_keeps_the_statistics_of_fp32(name, dtype):
    preset = get_preset(name, drift_compensation=False)
    ref = preset.program(weights(torch.float32), group="tensor", t_inference=3600.0, generator=gen(2)).float()
    low = preset.program(weights(dtype), group="tensor", t_inference=3600.0, generator=gen(3)).float()
    for level, a, b in zip(LEVELS.tolist(), ref, low):
        se = math.sqrt((a.var() + b.var()) / a.numel())
        assert abs(float(a.mean() - b.mean())) < 5 * se + abs(level) * 2.0 ** -9, (name, dtype, level)
        assert abs(float(b.std() / a.std()) - 1) < 0.03, (name, dtype, level)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gaussian_noise_std_in_low_precision(dtype):
    w = weights(dtype)
    out = get_preset("gaussian", eta=0.05).program(w, group="tensor", generator=gen(4))
    noise = out.float() - w.float()
    assert abs(float(noise.std()) / 0.05 - 1) < 0.02 and abs(float(noise.mean())) < 1e-3


def test_in_place_streamed_programming_equals_out_of_place():
    w = torch.randn(6, 40, 24, generator=gen(5)).to(torch.bfloat16)
    preset = get_preset("pcm")
    expected = preset.program(w, group="channel", t_inference=86400.0, generator=gen(6))
    inplace = w.clone()
    preset.program(inplace, group="channel", t_inference=86400.0, generator=gen(6), out=inplace)
    assert torch.equal(inplace, expected) and not torch.equal(inplace, w)


@pytest.mark.parametrize("prefetch", [False, True])
def test_stream_numbers_do_not_depend_on_slicing_or_prefetch(prefetch):
    plain = torch.cat([torch.randn(64, generator=gen(7)) for _ in range(1)])
    with NormalStream(gen(7), bound=64, prefetch=False) as s:
        whole = s.take(64)
    with NormalStream(gen(7), bound=64, prefetch=prefetch) as s:
        pieces = torch.cat([s.take(n) for n in (1, 7, 20, 36)])
        assert s.drawn == 64
    assert torch.equal(whole, plain) and torch.equal(pieces, whole)
    big = 5 * (1 << 18)
    with NormalStream(gen(8), bound=big, prefetch=False) as a, NormalStream(gen(8), bound=big, prefetch=True) as b:
        assert torch.equal(a.take(big - 3), torch.cat([b.take(1 << 18), b.take(big - 3 - (1 << 18))]))


def test_chip_draws_are_counted_and_reproducible():
    model = tiny("olmoe").to(torch.bfloat16)
    chip = Chip.from_options("pcm", seed=4)
    with program(model, chip) as handle:
        first = {n: model.get_parameter(n).detach().clone() for n in handle.names}
        analog = sum(t.numel() for t in first.values())
        assert analog * 5 <= handle.draws <= analog * 6 + 16 * sum(t.shape[-1] for t in first.values())
    with program(model, chip) as handle:
        assert all(torch.equal(model.get_parameter(n), first[n]) for n in handle.names)


def test_meta_and_unsupported_devices_are_refused():
    with torch.device("meta"):
        model = tiny("olmoe")
    with pytest.raises(UserError, match="meta device"):
        program(model, Chip.from_options("pcm"))
    with pytest.raises(UserError, match="programming supports cpu and cuda"):
        check_programmable(torch.device("xpu"))


def test_device_and_dtype_parsing():
    assert parse_dtype("bf16") == torch.bfloat16 and parse_dtype("float16") == torch.float16
    with pytest.raises(UserError, match="unknown dtype"):
        parse_dtype("int8")
    assert parse_device("cpu") == torch.device("cpu")
    assert parse_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UserError, match="unknown device"):
        parse_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA GPU"):
            parse_device("cuda:0")
