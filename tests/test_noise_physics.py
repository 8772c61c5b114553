"""Device-noise physics: statistics against the published formulas, mapping groups, determinism, presets."""

import json
import math

import pytest
import torch

from romer.errors import UserError
from romer.noise import functional as F
from romer.noise import (
    MAPPING_GROUPS,
    PRESET_NAMES,
    from_conductance,
    get_preset,
    preset_from_dict,
    to_conductance,
    weight_scale,
)

N = 200_000


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def full(value, n=N):
    return torch.full((n,), float(value))


def close(actual, expected, rel):
    return abs(float(actual) - float(expected)) <= rel * abs(float(expected))


def folded_normal_moments(mu, sigma):
    """Mean and std of |μ + σN|."""
    a = mu / sigma
    phi = math.exp(-a * a / 2) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1 + math.erf(-a / math.sqrt(2)))
    mean = sigma * math.sqrt(2 / math.pi) * math.exp(-a * a / 2) + mu * (1 - 2 * cdf)
    assert phi > 0
    return mean, math.sqrt(mu * mu + sigma * sigma - mean * mean)


def clamped_normal_moments(mu, sigma):
    """Mean and std of max(0, μ + σN) (a normal censored at 0)."""
    a = mu / sigma
    phi = math.exp(-a * a / 2) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1 + math.erf(a / math.sqrt(2)))
    mean = mu * cdf + sigma * phi
    second = (mu * mu + sigma * sigma) * cdf + mu * sigma * phi
    return mean, math.sqrt(second - mean * mean)


# ---------------------------------------------------------------- PCM
def test_pcm_programming_sigma_golden_values():
    sigma = F.pcm_programming_sigma(torch.tensor([0.0, 0.5, 1.0]))
    expected = [0.26348 / 25, (0.26348 + 0.9825 - 0.293275) / 25, (0.26348 + 1.9650 - 1.1731) / 25]
    assert torch.allclose(sigma, torch.tensor(expected), rtol=1e-6)
    assert close(sigma[0], 0.0105, 0.01) and close(sigma[2], 0.0422, 0.01)  # ≈ 1.05 % and 4.2 % of g_max


@pytest.mark.parametrize("g", [0.1, 0.5, 1.0])
def test_pcm_programmed_mean_and_std(g):
    g_target = full(g)
    sigma = F.pcm_programming_sigma(g_target)
    g_prog = F.program_conductance(g_target, sigma, gen(1))
    assert abs(float(g_prog.mean()) - g) < 4 * float(sigma[0]) / math.sqrt(N)  # clamp at 0 is ≥ 5σ away
    assert close(g_prog.std(), sigma[0], 0.01)


def test_pcm_programming_clamps_at_zero():
    """At ĝ_T = 0 the device cannot go negative: max(0, σN) has mean σ/√(2π) and half the devices at 0."""
    g_prog = F.program_conductance(full(0.0), F.pcm_programming_sigma(full(0.0)), gen(2))
    sigma = 0.26348 / 25
    assert float(g_prog.min()) == 0.0
    assert close((g_prog == 0).float().mean(), 0.5, 0.01)
    assert close(g_prog.mean(), sigma / math.sqrt(2 * math.pi), 0.01)


def test_drift_factor_at_one_hour_and_one_day():
    nu = full(0.049, 4)
    one = torch.ones(4)
    assert abs(float(F.drift(one, nu, 3600.0, 20.0)[0]) - 0.78) < 0.01
    assert abs(float(F.drift(one, nu, 86400.0, 20.0)[0]) - 0.66) < 0.01
    assert float(F.drift(one, nu, 0.0, 20.0)[0]) == 1.0
    assert torch.allclose(F.drift(one, nu, 3600.0, 20.0), one * (3620.0 / 20.0) ** -0.049)


@pytest.mark.parametrize("g, mu, sigma", [
    (1.0, 0.049, 0.008),  # both clipped at their floors
    (0.5, 0.049, 0.008),
    (0.1, -0.0155 * math.log(0.1) + 0.0244, -0.0125 * math.log(0.1) - 0.0059),  # inside the clip range
    (0.0, 0.1, 0.045),  # ĝ clamped to 1e-7, both clipped at their ceilings
])
def test_pcm_drift_exponent_distribution(g, mu, sigma):
    mu_t, sigma_t = F.pcm_drift_stats(full(g, 1))
    assert close(mu_t, mu, 1e-5) and close(sigma_t, sigma, 1e-5)
    nu = F.pcm_drift_exponent(full(g), gen(3))
    mean, std = folded_normal_moments(mu, sigma)
    assert float(nu.min()) >= 0
    assert close(nu.mean(), mean, 0.005) and close(nu.std(), std, 0.015)
    if mu > 4 * sigma:
        assert close(nu.mean(), mu, 0.005)  # μ ≫ σ: folding is invisible


def test_drift_exponent_is_folded_not_clipped():
    nu = F.draw_drift_exponent(torch.zeros(N), torch.ones(N), gen(30))
    assert close(nu.mean(), math.sqrt(2 / math.pi), 0.01) and float(nu.min()) >= 0  # half-normal, not max(0, N)


@pytest.mark.parametrize("t", [3600.0, 86400.0])
@pytest.mark.parametrize("g", [0.1, 0.5, 1.0])
def test_pcm_read_noise_std(g, t):
    q_s = min(0.0088 / max(g ** 0.65, 1e-3), 0.2)
    expected = q_s * math.sqrt(math.log((t + 250e-9) / (2 * 250e-9))) * g
    g_prog = full(g)
    sigma = F.pcm_read_noise_sigma(g_prog, t, 250e-9)
    read = F.add_read_noise(g_prog, sigma, gen(4))
    assert close(sigma[0] * g, expected, 1e-5)
    assert close(read.std(), expected, 0.01) and abs(float(read.mean()) - g) < 4 * expected / math.sqrt(N)


def test_read_noise_time_factor_is_zero_safe():
    assert F.read_noise_time_factor(0.0, 250e-9) == 0.0  # empty 1/f band, not √(ln ½)
    assert F.read_noise_time_factor(100e-9, 250e-9) == 0.0
    assert F.pcm_read_noise_sigma(torch.zeros(3), 3600.0, 250e-9).isfinite().all()
    assert F.add_read_noise(torch.zeros(3), 0.2, gen()).eq(0).all()  # an off device stays off


def test_pcm_read_noise_is_present_at_t0():
    """Decision: at t_inference = 0 the device has been idle t₀ since programming, so the accumulated read noise
    is Q_s·√ln((t₀ + t_read)/(2·t_read)) — present, and continuous with t_inference > 0."""
    g = 0.5
    w = torch.cat([torch.ones(1), full(g)])[None]  # the 1.0 pins the tensor scale to g_max
    pcm = get_preset("pcm", prog_noise_scale=0.0, drift_compensation=False)
    read = pcm.program(w, group="tensor", t_inference=0.0, generator=gen(5))[0, 1:]
    expected = 0.0088 / g ** 0.65 * math.sqrt(math.log((20.0 + 250e-9) / (2 * 250e-9))) * g
    assert float(read.std()) > 0
    assert close(read.std(), expected, 0.01)
    # continuous in t: the same as a read a microsecond later
    later = pcm.program(w, group="tensor", t_inference=1e-6, generator=gen(5))[0, 1:]
    assert close(later.std(), read.std(), 1e-3)


# ---------------------------------------------------------------- HERMES
def _poly(coeffs, x):
    return sum(c * x ** i for i, c in enumerate(coeffs))


@pytest.mark.parametrize("g", [0.05, 0.3, 0.8])
def test_hermes_programming(g):
    expected = _poly([0.16603222, 4.71806468, -8.48101252, 4.68961419], g) / 20.7
    g_prog = F.program_conductance(full(g), F.hermes_programming_sigma(full(g)), gen(6))
    assert close(F.hermes_programming_sigma(full(g, 1)), expected, 1e-5)
    assert close(g_prog.std(), expected, 0.01) and abs(float(g_prog.mean()) - g) < 4 * expected / math.sqrt(N)


@pytest.mark.parametrize("g, mu, sigma, q_s", [
    (0.05, -0.0387 * math.log(0.05) - 0.0182, -0.0117 * math.log(0.05) - 0.0057, -0.0117 * math.log(0.05) - 0.0069),
    (0.5, -0.0436 * 0.25 - 0.0126 * 0.5 + 0.0736, -0.0118 * 0.25 + 0.0093 * 0.5 + 0.0073,
     0.0069 * 0.125 - 0.0280 * 0.25 + 0.0211 * 0.5 + 0.0123),
    (1e-4, 0.13, 0.04, 0.04),  # low-conductance branches clip at their ceilings
])
def test_hermes_drift_and_read_noise(g, mu, sigma, q_s):
    mu_t, sigma_t = F.hermes_drift_stats(full(g, 1))
    assert close(mu_t, mu, 1e-4) and close(sigma_t, sigma, 1e-4)
    nu = F.hermes_drift_exponent(full(g), gen(7))
    mean, std = folded_normal_moments(mu, sigma)
    assert close(nu.mean(), mean, 0.005) and close(nu.std(), std, 0.015)
    t = 3600.0 + 300.0
    expected = q_s * math.sqrt(math.log((t + 512e-9) / (2 * 512e-9)))
    assert close(F.hermes_read_noise_sigma(full(g, 1), t, 512e-9), expected, 1e-4)
    read = F.add_read_noise(full(g), F.hermes_read_noise_sigma(full(g), t, 512e-9), gen(8))
    assert close(read.std(), expected * g, 0.01)


def test_hermes_drift_stats_grid():
    """Both branches of μ_ν (break 0.0945) and σ_ν (break 0.3055), re-derived here in plain Python."""
    grid = [1e-7, 0.01, 0.09, 0.094, 0.097, 0.2, 0.3, 0.31, 0.6, 1.0]
    mu_t, sigma_t = F.hermes_drift_stats(torch.tensor(grid))
    for x, mu, sigma in zip(grid, mu_t.tolist(), sigma_t.tolist()):
        mu_ref = (min(max(-0.0387 * math.log(x) - 0.0182, 0.072), 0.13) if x < 0.0945
                  else -0.0436 * x * x - 0.0126 * x + 0.0736)
        sigma_ref = (min(max(-0.0117 * math.log(x) - 0.0057, 0.0091), 0.04) if x < 0.3055
                     else -0.0118 * x * x + 0.0093 * x + 0.0073)
        assert close(mu, mu_ref, 1e-5) and close(sigma, sigma_ref, 1e-5), x


def test_hermes_read_noise_amplitude_branches():
    g = torch.tensor([1e-4, 0.05, 0.159, 0.16, 0.5, 1.0])
    low = [min(max(-0.0117 * math.log(x) - 0.0069, 0.015), 0.04) for x in g.tolist()[:3]]
    high = [_poly([0.0123, 0.0211, -0.0280, 0.0069], x) for x in g.tolist()[3:]]
    assert low[2] == 0.015  # the floor of the low branch is in use just below the 0.16 break
    q_s = F.hermes_read_noise_sigma(g, 1e6, 512e-9) / F.read_noise_time_factor(1e6, 512e-9)
    assert torch.allclose(q_s, torch.tensor(low + high), rtol=1e-5)


# ---------------------------------------------------------------- ReRAM
RERAM_1S = [0.348, 16.030, -43.853, 45.393, -16.815]
RERAM_1D = [0.701, 22.086, -50.773, 47.095, -16.458]


@pytest.mark.parametrize("g", [0.2, 0.5, 0.9])
def test_reram_spread_at_fitted_times(g):
    for t, coeffs in ((0.0, RERAM_1S), (1.0, RERAM_1S), (86400.0, RERAM_1D)):
        expected = _poly(coeffs, g) / 40.0
        assert close(F.reram_sigma(full(g, 1), t), expected, 1e-5)
        first, now = F.reram_read(full(g), t, gen(9))
        mean, std = clamped_normal_moments(g, expected)  # at ĝ = 0.2 after a day, the clamp at 0 matters
        assert close(now.std(), std, 0.01) and abs(float(now.mean()) - mean) < 4 * std / math.sqrt(N)
        assert close(first.std(), clamped_normal_moments(g, _poly(RERAM_1S, g) / 40.0)[1], 0.01)
    first, now = F.reram_read(full(g), 86400.0, gen(10))
    corr = torch.corrcoef(torch.stack([first, now]))[0, 1]
    assert close(corr, _poly(RERAM_1S, g) / _poly(RERAM_1D, g), 0.02)  # each device keeps its programming error


def test_reram_time_interpolation_and_limits():
    w = math.log(3600.0) / math.log(86400.0)
    expected = ((1 - w) * _poly(RERAM_1S, 0.5) + w * _poly(RERAM_1D, 0.5)) / 40.0
    assert close(F.reram_sigma(full(0.5, 1), 3600.0), expected, 1e-5)
    with pytest.raises(ValueError):
        F.reram_sigma(full(0.5, 1), 3 * 86400.0)
    with pytest.raises(UserError, match="2 days"):
        get_preset("reram").program(torch.randn(4, 4), t_inference=3 * 86400.0, generator=gen())


# ---------------------------------------------------------------- gaussian presets
def test_gaussian_std_per_group():
    w = torch.randn(3, 8, 4096, generator=gen(11))
    w[0, 0, 0] = 40.0  # an outlier in expert 0
    eta = 0.05
    for group in ("expert", "channel", "tensor"):
        noisy = get_preset("gaussian", eta=eta).program(w, group=group, t_inference=0.0, generator=gen(12))
        scale = weight_scale(w, group)
        rel = ((noisy - w) / (eta * scale)).reshape(3, 8, -1) if group == "channel" else (noisy - w) / (eta * scale)
        per_group = rel.std(dim=-1) if group == "channel" else rel.reshape(3, -1).std(dim=-1)
        assert torch.allclose(per_group, torch.ones_like(per_group), rtol=0.06), group
    expert = get_preset("gaussian", eta=eta).program(w, group="expert", t_inference=0.0, generator=gen(12))
    assert close((expert - w)[1].std(), eta * float(w[1].abs().max()), 0.03)  # expert 1 ignores expert 0's outlier


def test_gaussian_mult_relative_std():
    sign = torch.where(torch.rand(64, 4096, generator=gen(14)) > 0.5, 1, -1)
    w = (torch.rand(64, 4096, generator=gen(13)) + 0.5) * sign
    noisy = get_preset("gaussian-mult", eta=0.03).program(w, group="expert", t_inference=0.0, generator=gen(15))
    assert close((noisy / w - 1).std(), 0.03, 0.01) and abs(float((noisy / w - 1).mean())) < 1e-3
    assert get_preset("gaussian-mult").program(torch.zeros(4, 4), generator=gen()).eq(0).all()


# ---------------------------------------------------------------- mapping
@pytest.mark.parametrize("group", MAPPING_GROUPS)
def test_mapping_round_trip_and_range(group):
    w = torch.randn(4, 1100, 24, generator=gen(16)) * torch.logspace(-3, 1, 24)
    scale = weight_scale(w, group, tile_rows=512)
    g_pos, g_neg = to_conductance(w, scale)
    assert g_pos.min() >= 0 and g_neg.min() >= 0 and g_pos.max() <= 1 and g_neg.max() <= 1
    assert ((g_pos > 0) & (g_neg > 0)).sum() == 0  # one device of each pair is off
    back = from_conductance(g_pos, g_neg, scale)
    assert float((back - w).abs().max()) <= 1e-6 * float(w.abs().max())


def test_mapping_group_shapes_and_scales():
    w = torch.randn(3, 1100, 16, generator=gen(17))
    clean_expert1 = weight_scale(w, "expert")[1].clone()
    w[0, 5, 5] = 1000.0
    expert = weight_scale(w, "expert")
    assert expert.shape == (3, 1, 1) and float(expert[0]) == 1000.0
    assert torch.equal(expert[1], clean_expert1) and float(expert[1]) == float(w[1].abs().max())
    channel = weight_scale(w, "channel")
    assert channel.shape == (3, 1100, 1) and torch.equal(channel[..., 0], w.abs().amax(-1))
    tile = weight_scale(w, "tile", tile_rows=512)
    assert tile.shape == (3, 1100, 1)
    for lo, hi in ((0, 512), (512, 1024), (1024, 1100)):
        block = w[:, lo:hi].abs().amax(dim=(-2, -1))
        assert torch.equal(tile[:, lo:hi, 0], block[:, None].expand(3, hi - lo))
    assert weight_scale(w, "tensor").shape == (1, 1, 1) and float(weight_scale(w, "tensor")) == 1000.0
    assert weight_scale(torch.randn(7, 5), "expert").shape == (1, 1)  # a dense matrix is one group
    assert weight_scale(torch.randn(9), "channel").shape == (1,)


def test_zero_groups_get_unit_scale_and_read_back_zero():
    w = torch.randn(6, 32, generator=gen(18))
    w[2] = 0.0
    assert float(weight_scale(w, "channel")[2]) == 1.0
    for name in PRESET_NAMES:
        out = get_preset(name).program(w, group="channel", t_inference=3600.0, generator=gen(19))
        assert out[2].eq(0).all() and out.isfinite().all(), name
    with pytest.raises(UserError, match="mapping group"):
        weight_scale(w, "row")


# ---------------------------------------------------------------- determinism and dtypes
@pytest.mark.parametrize("name", PRESET_NAMES)
def test_determinism_and_input_untouched(name):
    preset = get_preset(name)
    w = torch.randn(2, 48, 40, generator=gen(20))
    before = w.clone()
    a = preset.program(w, group="expert", t_inference=3600.0, generator=gen(21))
    torch.manual_seed(999)  # the global RNG plays no part
    b = preset.program(w, group="expert", t_inference=3600.0, generator=gen(21))
    c = preset.program(w, group="expert", t_inference=3600.0, generator=gen(22))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(w, before) and a.data_ptr() != w.data_ptr()
    assert a.shape == w.shape and a.dtype == w.dtype
    assert 0 < float((a - w).abs().mean()) < 0.3 * float(w.abs().mean())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("name", PRESET_NAMES)
def test_dtype_preserved(name, dtype):
    w = torch.randn(3, 16, 24, generator=gen(23)).to(dtype)
    out = get_preset(name).program(w, group="channel", t_inference=86400.0, generator=gen(24))
    assert out.dtype == dtype and out.shape == w.shape and out.isfinite().all()


# ---------------------------------------------------------------- presets
@pytest.mark.parametrize("name", PRESET_NAMES)
def test_preset_serialisation_round_trip(name):
    preset = get_preset(name)
    data = json.loads(json.dumps(preset.to_dict()))
    assert data["name"] == name
    again = preset_from_dict(data)
    assert again == preset and hash(again) == hash(preset)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in preset.describe())
    rows = preset.sigma_table([0.1, 1.0], [0.0, 3600.0], n_samples=2000)
    assert len(rows) == 4 and all(r.std > 0 for r in rows)


def test_preset_overrides_and_errors():
    assert get_preset("pcm", drift_scale="2", drift_compensation="off") == get_preset("pcm", drift_scale=2.0,
                                                                                    drift_compensation=False)
    assert get_preset("pcm", drift_scale=2) != get_preset("pcm")
    with pytest.raises(UserError, match="pcm, hermes, reram, gaussian, gaussian-mult"):
        get_preset("flash")
    with pytest.raises(UserError, match="unknown option 'sigma'"):
        get_preset("gaussian", sigma=0.1)
    with pytest.raises(UserError):
        get_preset("pcm", read_noise_scale=-1)
    with pytest.raises(UserError):
        get_preset("hermes", g_max_uS=30)
    with pytest.raises(UserError):
        preset_from_dict({"eta": 0.1})
    with pytest.raises(UserError):
        get_preset("pcm").program(torch.randn(4, 4), t_inference=-1.0, generator=gen())
    with pytest.raises(UserError):
        get_preset("pcm").program(torch.ones(4, 4, dtype=torch.int64), generator=gen())


def _mean_abs_output(w, x):
    return float((w @ x).abs().mean())


@pytest.mark.parametrize("name", ["pcm", "hermes"])
def test_drift_compensation(name):
    w = torch.randn(2, 256, 256, generator=gen(25))
    x = torch.randn(256, 64, generator=gen(26))  # a test input, not the calibration probe
    on = get_preset(name).program(w, group="expert", t_inference=86400.0, generator=gen(27))
    off = get_preset(name, drift_compensation=False).program(w, group="expert", t_inference=86400.0, generator=gen(27))
    for e in range(2):
        clean = _mean_abs_output(w[e], x)
        assert 0.6 < _mean_abs_output(off[e], x) / clean < 0.85  # drift shrinks the weights
        assert abs(_mean_abs_output(on[e], x) / clean - 1) < 0.03  # compensation restores the output scale
        ratio = on[e] / off[e]
        ratio = ratio[off[e] != 0]
        assert float(ratio.max() - ratio.min()) < 1e-5 * float(ratio.mean())  # one α per matrix, same draws
