"""Property-based tests (hypothesis) on noise functions, presets and configs: finite outputs, shapes and dtypes
kept, zero noise is the identity, restore is exact, a seed gives bit-identical weights, σ grows with every scale
knob, configs validate and count the way their fields say. Seeded (``derandomize``) and small, so they are fast
and give the same cases on every run."""

import functools
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from romer.calibrate.config import RecalibrateConfig
from romer.errors import UserError
from romer.experiment.config_file import load_config
from romer.noise import functional as F
from romer.noise import get_preset, preset_from_dict
from romer.noise.chip import Chip, program
from tests.tiny_models import tiny

FAST = settings(max_examples=12, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])
PRESETS = ["pcm", "hermes", "reram", "gaussian", "gaussian-mult"]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
GROUPS = ["expert", "channel", "tile", "tensor"]
# every scale knob of every preset, with the other noise sources of that preset switched off
KNOBS = {
    ("pcm", "prog_noise_scale"): dict(read_noise_scale=0, drift_scale=0, drift_compensation=False),
    ("pcm", "read_noise_scale"): dict(prog_noise_scale=0, drift_scale=0, drift_compensation=False),
    ("pcm", "drift_scale"): dict(prog_noise_scale=0, read_noise_scale=0, drift_compensation=False),
    ("hermes", "prog_noise_scale"): dict(read_noise_scale=0, drift_scale=0, drift_compensation=False),
    ("hermes", "read_noise_scale"): dict(prog_noise_scale=0, drift_scale=0, drift_compensation=False),
    ("hermes", "drift_scale"): dict(prog_noise_scale=0, read_noise_scale=0, drift_compensation=False),
    ("reram", "noise_scale"): {},
    ("gaussian", "eta"): {},
    ("gaussian-mult", "eta"): {},
}
ZERO = {"pcm": dict(prog_noise_scale=0, read_noise_scale=0, drift_scale=0, drift_compensation=False),
        "hermes": dict(prog_noise_scale=0, read_noise_scale=0, drift_scale=0, drift_compensation=False),
        "reram": dict(noise_scale=0), "gaussian": dict(eta=0), "gaussian-mult": dict(eta=0)}


@st.composite
def tensors(draw, max_side=24):
    """A float tensor of 1–3 dims (a fused [E, out, in] tensor included), a dtype, values of varied scale."""
    shape = tuple(draw(st.lists(st.integers(1, max_side), min_size=1, max_size=3)))
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([1e-3, 0.1, 1.0, 30.0]))
    w = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale
    if draw(st.booleans()):  # some exact zeros, as pruned or padded weights have
        w = torch.where(w.abs() < 0.3 * scale, torch.zeros_like(w), w)
    return w.to(dtype)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def t_for(name: str, t: float) -> float:
    return min(t, 172800.0) if name == "reram" else t


# ---------------------------------------------------------------- programming one tensor
@FAST
@given(w=tensors(), name=st.sampled_from(PRESETS), group=st.sampled_from(GROUPS),
       t=st.sampled_from([0.0, 1.0, 3600.0, 86400.0, 1e6]), seed=st.integers(0, 2**31 - 1),
       tile_rows=st.integers(1, 8))
def test_program_keeps_shape_and_dtype_is_finite_seeded_and_leaves_the_input(w, name, group, t, seed, tile_rows):
    preset, t = get_preset(name), t_for(name, t)
    before = w.clone()
    a = preset.program(w, group=group, t_inference=t, generator=gen(seed), tile_rows=tile_rows)
    b = preset.program(w, group=group, t_inference=t, generator=gen(seed), tile_rows=tile_rows)
    assert a.shape == w.shape and a.dtype == w.dtype
    assert torch.isfinite(a.float()).all()
    assert torch.equal(a, b), "the same generator seed gives bit-identical read-back weights"
    assert torch.equal(w, before), "the input is never touched"


@FAST
@given(w=tensors(), name=st.sampled_from(PRESETS), group=st.sampled_from(GROUPS),
       t=st.sampled_from([0.0, 3600.0, 86400.0]), seed=st.integers(0, 2**31 - 1))
def test_zero_noise_is_the_identity(w, name, group, t, seed):
    """All noise knobs at 0: the read-back weight is the weight — exactly in bf16 / fp16 (the float32 round
    trip w/s·s is within an ulp of w, and rounding back to the narrower type lands on w), to 2 ulps in float32."""
    out = get_preset(name, **ZERO[name]).program(w, group=group, t_inference=t_for(name, t), generator=gen(seed))
    if w.dtype == torch.float32:
        torch.testing.assert_close(out, w, rtol=2.5e-7, atol=0.0)
    else:
        assert torch.equal(out, w)


@FAST
@given(knob=st.sampled_from(sorted(KNOBS)), base=st.floats(0.05, 1.0), ratios=st.tuples(
    st.floats(1.5, 3.0), st.floats(1.5, 3.0)), seed=st.integers(0, 2**31 - 1),
    level=st.sampled_from([0.05, 0.3, 0.7]))
def test_noise_grows_with_every_scale_knob(knob, base, ratios, seed, level):
    """RMS deviation of the read-back weights from the clean ones, the same seed at knob values k₁ < k₂ < k₃
    (each ≥ 1.5× the last), other sources off: 0 at k = 0, then strictly increasing."""
    name, key = knob
    w = (torch.rand(64, 64, generator=gen(seed)) * 2 - 1) * level
    w[0, 0] = 1.0  # pins max|w| so the levels sit at ĝ ≈ level

    def rms(k: float) -> float:
        preset = get_preset(name, **{key: k, **KNOBS[knob]})
        out = preset.program(w, group="tensor", t_inference=86400.0, generator=gen(seed + 1))
        return float((out - w).double().pow(2).mean().sqrt())

    values = [base, base * ratios[0], base * ratios[0] * ratios[1]]
    measured = [rms(k) for k in values]
    assert rms(0.0) < 1e-6
    assert measured[0] > 0 and measured[0] < measured[1] < measured[2], (values, measured)


# ---------------------------------------------------------------- the pure device functions
@FAST
@given(shape=st.lists(st.integers(1, 16), min_size=1, max_size=3), seed=st.integers(0, 2**31 - 1),
       g=st.floats(0.0, 1.0), t=st.floats(0.0, 1e7), t0=st.floats(1.0, 1000.0))
def test_device_functions_zero_sigma_is_identity_and_drift_only_shrinks(shape, seed, g, t, t0):
    target = torch.full(shape, g)
    assert torch.equal(F.program_conductance(target, 0.0, gen(seed)), target)
    assert torch.equal(F.add_read_noise(target, 0.0, gen(seed)), target)
    assert torch.equal(F.drift(target, torch.zeros(shape), t, t0), target)
    nu = F.pcm_drift_exponent(target, gen(seed))
    assert (nu >= 0).all() and nu.shape == target.shape
    drifted = F.drift(target, nu, t, t0)
    assert (drifted <= target).all() and (drifted >= 0).all()
    later = F.drift(target, nu, 10 * t + 1, t0)
    assert (later <= drifted).all()
    z1, z2 = F.standard_normal(shape, gen(seed)), F.standard_normal(shape, gen(seed))
    assert z1.dtype == torch.float32 and tuple(z1.shape) == tuple(shape) and torch.equal(z1, z2)


@FAST
@given(g=st.floats(0.0, 1.0), t=st.floats(0.0, 1e7))
def test_device_sigmas_are_finite_and_non_negative(g, t):
    x = torch.tensor([g])
    for sigma in (F.pcm_programming_sigma(x), F.hermes_programming_sigma(x),
                  F.pcm_read_noise_sigma(x, t + 20.0, 250e-9), F.hermes_read_noise_sigma(x, t + 300.0, 512e-9),
                  F.reram_sigma(x, min(t, 172800.0)), *F.pcm_drift_stats(x), *F.hermes_drift_stats(x)):
        assert torch.isfinite(sigma).all() and (sigma >= 0).all()


# ---------------------------------------------------------------- presets and their knobs
@FAST
@given(name=st.sampled_from(PRESETS), value=st.one_of(st.floats(0.0, 1e3), st.integers(0, 1000)))
def test_any_finite_non_negative_knob_is_accepted_and_round_trips(name, value):
    knob = "eta" if name.startswith("gaussian") else ("noise_scale" if name == "reram" else "prog_noise_scale")
    preset = get_preset(name, **{knob: value})
    assert getattr(preset, knob) == float(value)
    assert preset_from_dict(preset.to_dict()) == preset
    assert get_preset(name, **{knob: str(value)}) == preset  # CLI strings mean the same


@FAST
@given(name=st.sampled_from(PRESETS), value=st.one_of(st.floats(max_value=-1e-9), st.just(math.nan),
                                                      st.just(math.inf), st.just("abc"), st.just(True)))
def test_negative_nan_inf_or_non_numeric_knobs_are_one_line_errors(name, value):
    knob = "eta" if name.startswith("gaussian") else ("noise_scale" if name == "reram" else "read_noise_scale")
    with pytest.raises(UserError) as info:
        get_preset(name, **{knob: value})
    assert "\n" not in str(info.value) and knob in str(info.value)


# ---------------------------------------------------------------- restore on a model
@functools.cache
def _model(dtype):
    return tiny("qwen2_moe").to(dtype)


@settings(FAST, max_examples=8)
@given(name=st.sampled_from(PRESETS), placement=st.sampled_from(["moe", "experts", "all", "attention,router"]),
       mapping=st.sampled_from(GROUPS), seed=st.integers(0, 2**31 - 1), dtype=st.sampled_from(DTYPES),
       store=st.sampled_from(["disk", "memory"]))
def test_program_then_restore_is_bit_exact_and_seeded(name, placement, mapping, seed, dtype, store):
    model = _model(dtype)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    chip = Chip(get_preset(name), placement, mapping, seed, t_for(name, 3600.0))
    with program(model, chip, clean_store=store):
        first = {k: v.clone() for k, v in model.state_dict().items()}
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with program(model, chip, clean_store=store):
        assert all(torch.equal(v, first[k]) for k, v in model.state_dict().items())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert any(not torch.equal(first[k], before[k]) for k in before)


# ---------------------------------------------------------------- configs
@FAST
@given(chips=st.integers(1, 6), methods=st.lists(st.sampled_from(["clean", "noisy", "romer", "maxnn-12.5%",
                                                                  "recalibration", "bias balancing"]),
                                                 min_size=1, max_size=4, unique=True),
       times=st.lists(st.sampled_from([1, 3600, 86400]), min_size=1, max_size=3, unique=True),
       placements=st.lists(st.sampled_from(["moe", "experts", "all"]), min_size=1, max_size=2, unique=True))
def test_config_counts_trials_as_its_axes_multiply_and_hashes_stably(chips, methods, times, placements):
    overrides = [f"chip.chips={chips}", f"methods=[{', '.join(methods)}]", f"chip.t_inference={times}",
                 f"chip.placements=[{', '.join(placements)}]", "models=[olmoe-tiny]"]
    config = load_config("default", overrides)
    assert config.trial_count() == chips * len(methods) * len(times) * len(placements)
    groups = config.groups()
    assert len(groups) == chips * len(times) * len(placements)
    keys = [g.trial_key(m) for g in groups for m in g.method_names]
    assert len(keys) == len(set(keys)) == config.trial_count()
    assert load_config("default", overrides).config_hash == config.config_hash
    other = load_config("default", overrides[:1] + [f"chip.seed={chips + 100}"] + overrides[1:])
    assert other.config_hash != config.config_hash


@FAST
@given(bad=st.one_of(st.integers(-5, 0), st.just("two"), st.just(1.5)))
def test_config_rejects_bad_chip_counts_in_one_line(bad):
    with pytest.raises(UserError) as info:
        load_config("default", [f"chip.chips={bad}"])
    assert "\n" not in str(info.value) and "chip.chips" in str(info.value)


@FAST
@given(lo=st.floats(-10, 110), hi=st.floats(-10, 110))
def test_recalibration_percentiles_valid_exactly_when_lo_below_50_below_hi(lo, hi):
    valid = 0 <= lo < 50 < hi <= 100
    if valid:
        assert RecalibrateConfig(percentiles=(lo, hi)).percentiles == (lo, hi)
    else:
        with pytest.raises(ValueError, match="percentiles"):
            RecalibrateConfig(percentiles=(lo, hi))
