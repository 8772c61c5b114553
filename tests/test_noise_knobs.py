"""The noise scale knobs behind the main result scale σ or ν as the formulas say (romer/noise/presets.py,
functional.py), measured statistically on programmed weights.

Every weight tensor here is one 1.0 (it pins max|w|, so ĝ_T = w) followed by n copies of one level; only the
copies are measured. A positive weight w sits on ĝ⁺ = w and ĝ⁻ = 0, and the ĝ⁻ device is programmed too: its
read-back is max(0, s₀·N) with s₀ its σ at ĝ_T = 0, a rectified normal of mean s₀/√(2π) and variance
s₀²·(1/2 − 1/(2π)). Drift compensation is off (it rescales every matrix). Each knob is varied with the other
sources switched off, so the expected mean and std follow from one formula each.
"""

import math

import pytest
import torch

from romer.noise import get_preset

N = 100_000
RECT_VAR = 0.5 - 1 / (2 * math.pi)  # variance of max(0, N(0, 1))
RECT_MEAN = 1 / math.sqrt(2 * math.pi)


def weights(level: float, n: int = N) -> torch.Tensor:
    return torch.cat([torch.ones(1), torch.full((n,), level)])[None]


def read_back(name: str, level: float, t: float, seed: int = 0, **knobs) -> torch.Tensor:
    preset = get_preset(name, **knobs, **({} if name.startswith("gaussian") else {"drift_compensation": False}))
    out = preset.program(weights(level), group="tensor", t_inference=t, generator=torch.Generator().manual_seed(seed))
    return out[0, 1:].double()


def assert_mean(x: torch.Tensor, want: float, sd: float) -> None:
    """Mean within 5 standard errors of ``want`` (sd: the expected std of one sample)."""
    assert abs(float(x.mean()) - want) < 5 * sd / math.sqrt(x.numel()) + 1e-7, (float(x.mean()), want)


def assert_std(x: torch.Tensor, want: float, rel: float = 0.02) -> None:
    """Std within ``rel`` of ``want`` (the standard error of a std over 10⁵ samples is ≈ 0.22 %)."""
    assert float(x.std()) == pytest.approx(want, rel=rel)


def poly(coeffs, x):
    return sum(c * x ** i for i, c in enumerate(coeffs))


# σ_prog(ĝ) in units of g_max (NOISE.md): PCM (0.26348 + 1.9650ĝ − 1.1731ĝ²)/25, HERMES cubic / 20.7
PROG_SIGMA = {
    "pcm": lambda g: poly((0.26348, 1.9650, -1.1731), g) / 25.0,
    "hermes": lambda g: poly((0.16603222, 4.71806468, -8.48101252, 4.68961419), g) / 20.7,
}


@pytest.mark.parametrize("name", ["pcm", "hermes"])
@pytest.mark.parametrize("scale", [0.5, 1.0, 3.0])
def test_prog_noise_scale_multiplies_sigma_prog(name, scale):
    """No drift, no read noise: w/s = max(0, ĝ + k·σ(ĝ)·N) − max(0, k·σ(0)·N'); at ĝ = 0.5 and k ≤ 3 the first
    clamp is > 3.9σ away, so mean = ĝ − k·σ(0)/√(2π), var = (k·σ(ĝ))² + (k·σ(0))²·(1/2 − 1/(2π))."""
    g, sigma = 0.5, PROG_SIGMA[name]
    x = read_back(name, g, 3600.0, prog_noise_scale=scale, read_noise_scale=0, drift_scale=0)
    sd = math.sqrt((scale * sigma(g)) ** 2 + (scale * sigma(0.0)) ** 2 * RECT_VAR)
    assert_std(x, sd)
    assert_mean(x, g - scale * sigma(0.0) * RECT_MEAN, sd)


@pytest.mark.parametrize("t", [0.0, 3600.0, 86400.0])
@pytest.mark.parametrize("scale", [0.5, 1.0, 3.0])
def test_read_noise_scale_multiplies_sigma_read(t, scale):
    """PCM, no programming noise, no drift: ĝ⁻ stays 0, w/s = ĝ·(1 + k·σ_read·N) with
    σ_read = Q_s(ĝ)·√ln((t + t₀ + t_read)/(2·t_read)), Q_s = min(0.0088/ĝ^0.65, 0.2), t₀ = 20 s, t_read = 250 ns."""
    g = 0.5
    q_s = min(0.0088 / g ** 0.65, 0.2)
    sigma_read = q_s * math.sqrt(math.log((t + 20.0 + 250e-9) / (2 * 250e-9)))
    x = read_back("pcm", g, t, prog_noise_scale=0, read_noise_scale=scale, drift_scale=0)
    assert_std(x, g * scale * sigma_read)
    assert_mean(x, g, g * scale * sigma_read)


@pytest.mark.parametrize("name, mu, sigma, t0", [("pcm", 0.049, 0.008, 20.0), ("hermes", None, None, 300.0)])
@pytest.mark.parametrize("scale", [0.5, 1.0, 2.0])
def test_drift_scale_multiplies_nu(name, mu, sigma, t0, scale):
    """No programming or read noise: w/s = ĝ·((t + t₀)/t₀)^(−ν), so ν = −ln(w/(s·ĝ)) / ln((t + t₀)/t₀) is read
    off each weight. ν = k·|μ_ν + σ_ν·N|. PCM at ĝ = 0.5: μ_ν = clip(−0.0155 ln 0.5 + 0.0244, 0.049, 0.1) = 0.049,
    σ_ν = clip(−0.0125 ln 0.5 − 0.0059, 0.008, 0.045) = 0.008. HERMES at ĝ = 0.5 (≥ 0.0945 and ≥ 0.3055):
    μ_ν = −0.0436ĝ² − 0.0126ĝ + 0.0736 = 0.0564, σ_ν = −0.0118ĝ² + 0.0093ĝ + 0.0073 = 0.00870. μ/σ > 6, so the
    fold changes neither moment measurably."""
    g, t = 0.5, 86400.0
    if name == "hermes":
        mu, sigma = poly((0.0736, -0.0126, -0.0436), g), poly((0.0073, 0.0093, -0.0118), g)
    x = read_back(name, g, t, prog_noise_scale=0, read_noise_scale=0, drift_scale=scale)
    nu = -torch.log(x / g) / math.log((t + t0) / t0)
    assert_std(nu, scale * sigma)
    assert_mean(nu, scale * mu, scale * sigma)


def test_drift_scale_zero_means_no_drift():
    x = read_back("pcm", 0.5, 86400.0, prog_noise_scale=0, read_noise_scale=0, drift_scale=0)
    assert torch.equal(x, torch.full_like(x, 0.5))


# ReRAM σ(ĝ, t) [µS at g_max = 40 µS], the 1 day fit (NOISE.md / Wan et al. 2022)
RERAM_1DAY = (0.701, 22.086, -50.773, 47.095, -16.458)


@pytest.mark.parametrize("scale", [0.5, 1.0, 2.0])
def test_reram_noise_scale_multiplies_sigma(scale):
    """At t = 1 day the read deviation is N(0, σ_1day²) before the clamp, σ × noise_scale, and the ĝ⁻ device at
    target 0 reads max(0, k·σ_1day(0)·N'). At ĝ = 0.8, σ = 0.0812: the clamp is > 4.9σ away for k ≤ 2."""
    g = 0.8
    s_g, s_0 = poly(RERAM_1DAY, g) / 40.0, poly(RERAM_1DAY, 0.0) / 40.0
    x = read_back("reram", g, 86400.0, noise_scale=scale)
    sd = math.sqrt((scale * s_g) ** 2 + (scale * s_0) ** 2 * RECT_VAR)
    assert_std(x, sd)
    assert_mean(x, g - scale * s_0 * RECT_MEAN, sd)


@pytest.mark.parametrize("eta", [0.01, 0.05, 0.2])
def test_gaussian_eta_is_sigma_over_the_group_maximum(eta):
    """w̃ = w + η·max|w|·N: std η (max|w| = 1), mean w; multiplicative: w·(1 + η·N), std η·|w|."""
    x = read_back("gaussian", 0.5, 0.0, eta=eta)
    assert_std(x, eta)
    assert_mean(x, 0.5, eta)
    m = read_back("gaussian-mult", 0.5, 0.0, eta=eta)
    assert_std(m, 0.5 * eta)
    assert_mean(m, 0.5, 0.5 * eta)
