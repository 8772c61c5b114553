"""Device physics as pure tensor functions on normalised conductance ĝ = g / g_max (dimensionless, ≥ 0).

Times are in seconds. Every random draw takes an explicit ``torch.Generator``; nothing here keeps state.
Arithmetic is float32; callers cast back to their own dtype. Published constants are cited where they appear:

- PCM: Joshi et al., Nat. Commun. 11, 2473 (2020); Nandakumar et al., ICECS 2019 (defaults of aihwkit's
  PCMLikeNoiseModel).
- HERMES: Le Gallo et al., Nat. Electron. 6, 680 (2023), the two-devices-per-sign unit cell as fitted in
  aihwkit's HermesNoiseModel (num_devices = 2).
- ReRAM: Wan et al., Nature 608, 504 (2022) (NeuRRAM), deviation-vs-conductance fits at 1 s, 1 day and
  2 days as in aihwkit's ReRamWan2022NoiseModel.

Time convention (shared by PCM and HERMES). ``g_prog`` is the conductance read at the drift reference time
t₀ after the programming pulse; ``t_inference`` counts from there, so the device has been idle for
``t_inference + t₀`` seconds when it is read. Drift uses ((t_inference + t₀)/t₀)^(−ν); the accumulated 1/f
read noise is integrated over that whole idle time, σ_read = Q_s·√ln((t_inference + t₀ + t_read)/(2·t_read)).
This is the formula of the reference model for every t_inference > 0, extended continuously to
t_inference = 0 — there the reference silently drops read noise, we keep it (≈ Q_s·4.2 for PCM).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from romer.noise.draws import NormalSource, NormalStream

G_FLOOR = 1e-7  # ĝ below this is treated as 1e-7 inside logarithms (drift statistics)


# ---------------------------------------------------------------- shared helpers
def standard_normal(shape: Sequence[int], generator: NormalSource,
                    device: torch.device | str | None = None) -> Tensor:
    """N(0, 1) float32 draws of ``shape`` from ``generator`` — a ``torch.Generator`` or a
    :class:`~romer.noise.draws.NormalStream` — drawn on the generator's device, then moved to ``device``."""
    if isinstance(generator, NormalStream):
        z = generator.normal(shape)
    else:
        z = torch.randn(tuple(shape), generator=generator, device=generator.device, dtype=torch.float32)
    return z if device is None else z.to(device)


def polyval(coeffs: Sequence[float], x: Tensor) -> Tensor:
    """Σ_i c_i·x^i with the constant coefficient first (Horner)."""
    out = torch.full_like(x, float(coeffs[-1]))
    for c in reversed(coeffs[:-1]):
        out = out * x + c
    return out


def program_conductance(g_target: Tensor, sigma_prog: Tensor | float, generator: NormalSource) -> Tensor:
    """Programmed conductance ĝ_prog = max(0, ĝ_T + σ_prog·N); σ_prog in units of g_max."""
    g_target = g_target.float()
    noise = standard_normal(g_target.shape, generator, g_target.device)
    return noise.mul_(sigma_prog).add_(g_target).clamp_min_(0.0)


def draw_drift_exponent(mu_nu: Tensor, sigma_nu: Tensor, generator: NormalSource) -> Tensor:
    """Drift exponent ν = |μ_ν + σ_ν·N| (dimensionless; a folded normal, drawn once at programming)."""
    noise = standard_normal(mu_nu.shape, generator, mu_nu.device)
    return noise.mul_(sigma_nu).add_(mu_nu).abs_()


def drift(g_prog: Tensor, nu_drift: Tensor, t_inference: float, t0: float) -> Tensor:
    """Power-law conductance drift ĝ(t) = ĝ_prog·((t_inference + t₀)/t₀)^(−ν); t_inference, t₀ in s."""
    if t_inference < 0 or t0 <= 0:
        raise ValueError(f"need t_inference >= 0 and t0 > 0 (got {t_inference}, {t0})")
    return (nu_drift * -math.log((t_inference + t0) / t0)).exp_().mul_(g_prog)


def read_noise_time_factor(t_since_program: float, t_read: float) -> float:
    """√ln((t + t_read)/(2·t_read)): the accumulated 1/f noise of a read t seconds after programming.

    The 1/f band runs from 1/t to the read bandwidth 1/(2·t_read); for t ≤ t_read the band is empty and the
    factor is 0 (never the root of a negative number).
    """
    if t_read <= 0:
        raise ValueError(f"t_read must be > 0 (got {t_read})")
    return math.sqrt(max(math.log((t_since_program + t_read) / (2.0 * t_read)), 0.0))


def add_read_noise(g: Tensor, sigma_rel: Tensor | float, generator: NormalSource) -> Tensor:
    """Read-out ĝ = max(0, ĝ + |ĝ|·σ_rel·N); σ_rel is relative to the conductance read."""
    noise = standard_normal(g.shape, generator, g.device)
    return noise.mul_(sigma_rel).mul_(g.abs()).add_(g).clamp_min_(0.0)


def drift_compensation_factor(w_ref: Tensor, w_now: Tensor, probe: Tensor) -> float:
    """Global drift compensation α = mean|W_ref·x| / mean|W_now·x| for one matrix [out, in], probe x [in, k].

    This is the digital per-layer output scale of the hardware, estimated once from a fixed probe input;
    α = 1 when the present output is all zero.
    """
    ref = (w_ref.float() @ probe).abs().mean()
    now = (w_now.float() @ probe).abs().mean()
    return float(ref / now) if float(now) > 0 else 1.0


# ---------------------------------------------------------------- PCM (Joshi 2020 / Nandakumar 2019)
PCM_PROG_COEFFS_US = (0.26348, 1.9650, -1.1731)  # σ_prog [µS] at g_max = 25 µS, constant first
PCM_PROG_G_REF_US = 25.0


def pcm_programming_sigma(g_target: Tensor) -> Tensor:
    """σ_prog(ĝ_T) in units of g_max: (0.26348 + 1.9650·ĝ_T − 1.1731·ĝ_T²)/25 (≈ 1.05 % at 0, 4.2 % at 1)."""
    return polyval(PCM_PROG_COEFFS_US, g_target.float()) / PCM_PROG_G_REF_US


def pcm_drift_stats(g_target: Tensor) -> tuple[Tensor, Tensor]:
    """(μ_ν, σ_ν) of the PCM drift exponent at ĝ_T (clamped ≥ 1e-7):

    μ_ν = clip(−0.0155·ln ĝ_T + 0.0244, 0.049, 0.1), σ_ν = clip(−0.0125·ln ĝ_T − 0.0059, 0.008, 0.045).
    """
    log_g = g_target.float().clamp_min(G_FLOOR).log()
    mu = (-0.0155 * log_g + 0.0244).clamp(0.049, 0.1)
    sigma = (-0.0125 * log_g - 0.0059).clamp(0.008, 0.045)
    return mu, sigma


def pcm_drift_exponent(g_target: Tensor, generator: NormalSource) -> Tensor:
    """PCM drift exponent ν = |μ_ν(ĝ_T) + σ_ν(ĝ_T)·N| (dimensionless)."""
    return draw_drift_exponent(*pcm_drift_stats(g_target), generator)


def pcm_read_noise_sigma(g_prog: Tensor, t_since_program: float, t_read: float) -> Tensor:
    """Relative 1/f read noise σ_read = Q_s(ĝ_prog)·√ln((t + t_read)/(2·t_read)), t = s since programming.

    Q_s = min(0.0088 / max(ĝ_prog^0.65, 1e-3), 0.2). Q_s is taken from the *programmed* conductance
    ĝ_prog, not the target: the 1/f amplitude belongs to the state the device actually reached (this is what
    the reference code does; its docs say ĝ_T). Zero-safe: ĝ_prog = 0 gives Q_s = 0.2, multiplied later by
    |ĝ| = 0.
    """
    factor = read_noise_time_factor(t_since_program, t_read)
    q_s = g_prog.float().clamp_min(0.0).pow_(0.65).clamp_min_(1e-3).reciprocal_().mul_(0.0088).clamp_max_(0.2)
    return q_s.mul_(factor)


# ---------------------------------------------------------------- HERMES (Le Gallo 2023), 2 devices per sign
HERMES_PROG_COEFFS_US = (0.16603222, 4.71806468, -8.48101252, 4.68961419)  # σ_prog [µS] at g_max = 20.7 µS
HERMES_PROG_G_REF_US = 20.7


def hermes_programming_sigma(g_target: Tensor) -> Tensor:
    """σ_prog(ĝ_T) in units of g_max: (0.16603 + 4.71806ĝ − 8.48101ĝ² + 4.68961ĝ³)/20.7 (0.8 %…5.3 %)."""
    return polyval(HERMES_PROG_COEFFS_US, g_target.float()) / HERMES_PROG_G_REF_US


def hermes_drift_stats(g_target: Tensor) -> tuple[Tensor, Tensor]:
    """(μ_ν, σ_ν) of the HERMES drift exponent at ĝ_T (clamped ≥ 1e-7), two-branch fits:

    μ_ν = clip(−0.0387·ln ĝ − 0.0182, 0.072, 0.13) for ĝ < 0.0945, else −0.0436ĝ² − 0.0126ĝ + 0.0736;
    σ_ν = clip(−0.0117·ln ĝ − 0.0057, 0.0091, 0.04) for ĝ < 0.3055, else −0.0118ĝ² + 0.0093ĝ + 0.0073.
    """
    g = g_target.float().clamp_min(G_FLOOR)
    log_g = g.log()
    mu_low = (-0.0387 * log_g - 0.0182).clamp(0.072, 0.13)
    mu_high = polyval((0.0736, -0.0126, -0.0436), g)
    sig_low = (-0.0117 * log_g - 0.0057).clamp(0.0091, 0.04)
    sig_high = polyval((0.0073, 0.0093, -0.0118), g)
    return torch.where(g < 0.0945, mu_low, mu_high), torch.where(g < 0.3055, sig_low, sig_high)


def hermes_drift_exponent(g_target: Tensor, generator: NormalSource) -> Tensor:
    """HERMES drift exponent ν = |μ_ν(ĝ_T) + σ_ν(ĝ_T)·N| (dimensionless)."""
    return draw_drift_exponent(*hermes_drift_stats(g_target), generator)


def hermes_read_noise_sigma(g_prog: Tensor, t_since_program: float, t_read: float) -> Tensor:
    """Relative read noise Q_s(ĝ_prog)·√ln((t + t_read)/(2·t_read)), t = s since programming, where

    Q_s = clip(−0.0117·ln ĝ − 0.0069, 0.015, 0.04) for ĝ_prog < 0.16, else
    0.0069ĝ³ − 0.0280ĝ² + 0.0211ĝ + 0.0123 (from ĝ_prog, as for PCM).
    """
    g = g_prog.float().clamp_min(G_FLOOR)
    q_low = (-0.0117 * g.log() - 0.0069).clamp(0.015, 0.04)
    q_high = polyval((0.0123, 0.0211, -0.0280, 0.0069), g)
    return torch.where(g < 0.16, q_low, q_high) * read_noise_time_factor(t_since_program, t_read)


# ---------------------------------------------------------------- ReRAM (Wan 2022, NeuRRAM)
# σ [µS] of the read conductance around its target, at g_max = 40 µS, constant first, per time after
# programming (s). The fits are the total deviation at that time (programming + relaxation), not increments.
RERAM_SIGMA_COEFFS_US = {
    1.0: (0.348, 16.030, -43.853, 45.393, -16.815),
    86400.0: (0.701, 22.086, -50.773, 47.095, -16.458),
    172800.0: (0.782, 20.274, -43.507, 37.062, -11.934),
}
RERAM_G_REF_US = 40.0


def reram_sigma(g_target: Tensor, t_inference: float) -> Tensor:
    """σ(ĝ_T, t) in units of g_max of a ReRAM device read t_inference s after programming.

    At the fitted times (1 s, 1 day, 2 days) σ = poly_t(ĝ_T)/40; between them σ is interpolated linearly
    in ln t; t ≤ 1 s uses the 1 s fit. Beyond 2 days there is no data: ValueError.
    """
    times = sorted(RERAM_SIGMA_COEFFS_US)
    if t_inference > times[-1]:
        raise ValueError(f"ReRAM fits stop at {times[-1]:.0f} s (2 days); got t_inference = {t_inference} s")
    g = g_target.float()
    t = max(float(t_inference), times[0])
    for lo, hi in zip(times, times[1:]):
        if t <= hi:
            w = (math.log(t) - math.log(lo)) / (math.log(hi) - math.log(lo))
            sig_lo = polyval(RERAM_SIGMA_COEFFS_US[lo], g)
            sig_hi = polyval(RERAM_SIGMA_COEFFS_US[hi], g)
            return ((1.0 - w) * sig_lo + w * sig_hi) / RERAM_G_REF_US
    raise AssertionError("unreachable")  # pragma: no cover


def reram_read(g_target: Tensor, t_inference: float, generator: NormalSource,
               noise_scale: float = 1.0) -> tuple[Tensor, Tensor]:
    """(ĝ at the first read, ĝ read t_inference s after programming) of ReRAM devices programmed to ĝ_T.

    ĝ_first = max(0, ĝ_T + σ_1s·N₁); ĝ_t = max(0, ĝ_T + σ_1s·N₁ + √(σ_t² − σ_1s²)·N₂): relaxation
    is an independent increment, so each device keeps its programming error and at every t its deviation is
    N(0, σ_t²) before the clamp, as measured (σ_t ≥ σ_1s at all ĝ for the published fits). No drift.
    """
    g_target = g_target.float()
    sigma_first = noise_scale * reram_sigma(g_target, 0.0)
    sigma_now = noise_scale * reram_sigma(g_target, t_inference)
    relax = (sigma_now.square() - sigma_first.square()).clamp_min(0.0).sqrt()
    g_first = g_target + sigma_first * standard_normal(g_target.shape, generator, g_target.device)
    g_now = g_first + relax * standard_normal(g_target.shape, generator, g_target.device)
    return g_first.clamp_min(0.0), g_now.clamp_min(0.0)
