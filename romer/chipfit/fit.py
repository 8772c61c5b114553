"""Fit a :class:`~romer.noise.measured.MeasuredPreset` to chip measurements, per target level ĝ_T (units of g_max).

Model of a read (the PCM model of :mod:`romer.noise.functional`): device k programmed to ĝ_T reads, t s after
programming, ĝ = ĝ_prog,k·(t/t0)^(−ν_k)·(1 + σ_read·N), with t0 the first read time. Per level:

- read noise: relative deviation of each read from its device's mean at that time (repeated reads, n ≥ 2,
  rescaled by √(n/(n−1))), divided by the 1/f time factor √ln((t + t_read)/(2·t_read)) → Q (robust std);
- programming noise: σ_prog² = s_between² − s_within²·mean(1/n), from the device means at t0 (s_between) and the
  repeated-read spread around them (s_within); then a weighted polynomial in ĝ_T or a lookup table;
- drift: per device least squares of ln ḡ(t) = ln ĝ0 − ν·ln(t/t0) over its time groups; μ_ν = robust mean of
  ν̂, σ_ν² = robust var of ν̂ − the mean estimation variance of ν̂ (from the log residuals, or from Q).

"Robust" = median and MAD, then mean and std of the values within 3.5 robust σ (std corrected for the
clipping): outlier reads and stuck devices do not move the fit. A level with fewer than ``min_devices``
devices (or mostly clamped at 0) is skipped for that quantity, with the reason recorded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist

import numpy as np
import torch

from romer.errors import UserError
from romer.noise.measured import PRESET_FILE_FORMAT, MeasuredPreset
from romer.chipfit.measurements import Measurements

CLIP = 3.5  # robust σ's kept around the median
_CLIP_STD = math.sqrt(1 - 2 * CLIP * NormalDist().pdf(CLIP) / (2 * NormalDist().cdf(CLIP) - 1))
MAX_ZERO_FRACTION = 0.02  # a level with more reads at 0 than this is clamped: its spread is not Gaussian
T_READ_S = 250e-9  # s, read pulse of the 1/f time factor (the PCM model's)


def robust_mean_std(x: np.ndarray) -> tuple[float, float]:
    """(mean, std) of ``x`` within CLIP robust σ of the median (σ from the MAD), std corrected for the clip."""
    x = np.asarray(x, dtype=float)
    if len(x) < 2:
        return (float(x[0]) if len(x) else float("nan")), float("nan")
    median = np.median(x)
    mad = 1.4826 * np.median(np.abs(x - median))
    kept = x[np.abs(x - median) <= CLIP * mad] if mad > 0 else x
    return float(kept.mean()), float(kept.std(ddof=1) / (_CLIP_STD if mad > 0 else 1.0))


def time_factor(t: np.ndarray | float, t_read: float = T_READ_S) -> np.ndarray:
    """√ln((t + t_read)/(2·t_read)) for t in s since programming (numpy form of
    :func:`romer.noise.functional.read_noise_time_factor`)."""
    return np.sqrt(np.maximum(np.log((np.asarray(t, dtype=float) + t_read) / (2 * t_read)), 0.0))


def _groups(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(distinct keys, index of each value's group, count per group, mean per group)."""
    uniq, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    return uniq, inverse, counts, np.bincount(inverse, values) / counts


@dataclass
class ChipFit:
    """A fitted preset with its data summary, fit quality, skipped levels, and (``levels``) per-level details
    kept for the report (device means, residuals); only the first four go to the preset file."""

    preset: MeasuredPreset
    data: dict
    quality: dict
    skipped: list[dict]
    levels: dict = field(default_factory=dict, repr=False)

    def document(self) -> dict:
        """The preset file's content (YAML-safe: plain lists, floats, strings)."""
        preset = {k: list(v) if isinstance(v, tuple) else v for k, v in self.preset.to_dict().items()}
        return {"format": PRESET_FILE_FORMAT, "preset": preset, "data": self.data,
                "fit_quality": self.quality, "skipped": self.skipped}

    def write(self, path: str | Path) -> Path:
        """Write the YAML preset file atomically; ``--preset PATH`` and :func:`get_preset` load it."""
        import yaml

        from romer.io import write_text_atomic

        header = ("# romer measured-chip preset, written by `romer chip fit`; use it as --preset "
                  f"{Path(path).name}\n")
        return write_text_atomic(path, header + yaml.safe_dump(self.document(), sort_keys=False,
                                                               allow_unicode=True, width=120))


def _sig(x: float, digits: int = 6) -> float:
    return float(f"{x:.{digits}g}")


def _skip(skipped: list[dict], quantity: str, g: float | None, reason: str) -> None:
    skipped.append({"quantity": quantity, "g_target": None if g is None else _sig(g), "reason": reason})


# ---------------------------------------------------------------- the three fits, per level
def fit_read_noise(m: Measurements, t_read: float, min_devices: int, skipped: list[dict]) -> dict[int, dict]:
    """Q per level from repeated reads (relative, per unit of the 1/f time factor)."""
    if m.device is None:
        _skip(skipped, "read noise", None, "no device_id column: repeated reads of a device cannot be told apart")
        return {}
    t = m.t if m.t is not None else np.full(len(m.g_read), 20.0)
    out = {}
    for i, g in enumerate(m.levels):
        sel = m.level == i
        keys = m.device[sel] * (len(m.times) if m.times is not None else 1) + m.time_group[sel]
        _, inv, counts, means = _groups(keys, m.g_read[sel])
        ok = (counts[inv] >= 2) & (means[inv] > 0)
        n_groups = len(np.unique(inv[ok]))
        if n_groups < min_devices:
            _skip(skipped, "read noise", g, f"only {n_groups} device(s) read repeatedly at one time "
                                            f"(need ≥ {min_devices})")
            continue
        rel = (m.g_read[sel][ok] / means[inv[ok]] - 1) * np.sqrt(counts[inv[ok]] / (counts[inv[ok]] - 1))
        _, q = robust_mean_std(rel / time_factor(t[sel][ok], t_read))
        out[i] = {"g_target": _sig(g), "q": _sig(q), "groups": int(n_groups), "reads": int(ok.sum())}
    if not out:
        _skip(skipped, "read noise", None, "no level has repeated reads: σ_prog includes the read noise")
    return out


def fit_programming(m: Measurements, min_devices: int, skipped: list[dict]) -> dict[int, dict]:
    """σ_prog per level from the device means at the first time group (read-noise share removed)."""
    out = {}
    for i, g in enumerate(m.levels):
        sel = (m.level == i) & (m.time_group == 0)
        _, inv, counts, means = _groups(m.device_ids[sel], m.g_read[sel])
        zeros = float(np.mean(m.g_read[sel] <= 0))
        if len(means) < min_devices:
            _skip(skipped, "programming", g, f"only {len(means)} device(s) at the first read (need ≥ {min_devices})")
            continue
        if zeros > MAX_ZERO_FRACTION:
            _skip(skipped, "programming", g, f"{100 * zeros:.0f} % of reads at 0 (clamped at the conductance "
                                             "floor): the spread is not Gaussian")
            continue
        loc, s_between = robust_mean_std(means)
        multi = counts[inv] >= 2
        s_within = 0.0
        if len(np.unique(inv[multi])) >= min_devices:
            resid = (m.g_read[sel][multi] - means[inv[multi]]) * np.sqrt(counts[inv[multi]] / (counts[inv[multi]] - 1))
            s_within = robust_mean_std(resid)[1]
        sigma = math.sqrt(max(s_between**2 - s_within**2 * float(np.mean(1.0 / counts)), 0.0))
        out[i] = {"g_target": _sig(g), "sigma": _sig(sigma), "devices": int(len(means)), "reads": int(sel.sum()),
                  "bias": _sig(loc - g), "between_std": _sig(s_between), "read_std_at_t0": _sig(s_within),
                  "read_noise_removed": bool(s_within > 0),
                  "_means": means, "_z": (means - loc) / s_between if s_between > 0 else np.zeros_like(means),
                  "_within_var": s_within**2 * float(np.mean(1.0 / counts)),
                  "_mean_var": np.bincount(inv, (m.g_read[sel] - means[inv]) ** 2) / np.maximum(counts - 1, 1) / counts}
    return out


def fit_drift(m: Measurements, read: dict[int, dict], t_read: float, min_devices: int,
              skipped: list[dict]) -> tuple[dict[int, dict], dict]:
    """(μ_ν, σ_ν) per level from per-device log–log fits, and the pooled log-residual quality."""
    why = ("no t column" if m.times is None else "no device_id column" if m.device is None
           else "reads at one time only" if len(m.times) < 2
           else "reads span less than a factor 2 in time" if m.times[-1] < 2 * m.times[0] else None)
    if why:
        _skip(skipped, "drift", None, f"{why}: drift not fitted (ν = 0)")
        return {}, {}
    t0, out, ss_res, ss_tot, pooled = float(m.times[0]), {}, 0.0, 0.0, []
    for i, g in enumerate(m.levels):
        sel = m.level == i
        keys = m.device[sel] * len(m.times) + m.time_group[sel]
        uniq, inv, counts, means = _groups(keys, m.g_read[sel])
        t_mean = np.bincount(inv, m.t[sel]) / counts
        live = means > 0
        dev, x, y, n_reads = uniq[live] // len(m.times), np.log(t_mean[live] / t0), np.log(means[live]), counts[live]
        devs, d_inv, n_pts, _ = _groups(dev, x)
        sx, sy = np.bincount(d_inv, x), np.bincount(d_inv, y)
        sxx_c = np.bincount(d_inv, x * x) - sx**2 / n_pts
        good = (n_pts >= 2) & (sxx_c > 1e-12)
        if good.sum() < min_devices:
            _skip(skipped, "drift", g, f"only {int(good.sum())} device(s) read at ≥ 2 times (need ≥ {min_devices})")
            continue
        slope = np.where(good, (np.bincount(d_inv, x * y) - sx * sy / n_pts) / np.where(good, sxx_c, 1.0), 0.0)
        resid = y - (sy / n_pts)[d_inv] - slope[d_inv] * (x - (sx / n_pts)[d_inv])
        rows = good[d_inv]
        ss_res += float(np.sum(resid[rows] ** 2))
        ss_tot += float(np.sum((y - (sy / n_pts)[d_inv])[rows] ** 2))
        dof = rows & (n_pts[d_inv] >= 3)
        if dof.any():  # estimation variance of ν̂ from the pooled log residuals
            s_res = robust_mean_std(resid[dof] * np.sqrt(n_pts[d_inv][dof] / (n_pts[d_inv][dof] - 2)))[1]
            pooled.append(resid[dof])
            noise_var = float(np.mean(s_res**2 / sxx_c[good]))
            noise_from = "log residuals"
        elif i in read:  # … or from the read noise: Var(ln ḡ) = (Q·f(t))²/n
            var_y = (read[i]["q"] * time_factor(np.exp(x) * t0, t_read)) ** 2 / n_reads
            x_c = x - (sx / n_pts)[d_inv]
            noise_var = float(np.mean((np.bincount(d_inv, x_c**2 * var_y) / sxx_c**2)[good]))
            noise_from = "read noise"
        else:
            noise_var, noise_from = 0.0, "none (σ_ν includes measurement noise)"
        mu, spread = robust_mean_std(-slope[good])
        out[i] = {"g_target": _sig(g), "mu_nu": _sig(max(mu, 0.0)),
                  "sigma_nu": _sig(math.sqrt(max(spread**2 - noise_var, 0.0))), "devices": int(good.sum()),
                  "nu_estimate_std": _sig(math.sqrt(noise_var)), "noise_from": noise_from, "_nu": -slope[good]}
    quality = {"r2_loglog": _sig(1 - ss_res / ss_tot) if ss_tot > 0 else None,
               "residual_std_log": _sig(robust_mean_std(np.concatenate(pooled))[1]) if pooled else None,
               "t0_s": _sig(t0), "t_max_s": _sig(float(m.times[-1]))}
    return out, quality


# ---------------------------------------------------------------- σ_prog(ĝ) curve
def program_curve(g: np.ndarray, sigma: np.ndarray, devices: np.ndarray, method: str, degree: int) -> dict:
    """Lookup table through the per-level σ_prog, or a polynomial weighted by √n/σ (the standard error of σ̂ is
    ∝ σ/√n), σ taken from an unweighted first pass: weights from the noisy σ̂ themselves would favour low ones."""
    if method == "table":
        return {"prog_knots_g": tuple(_sig(v) for v in g), "prog_knots_sigma": tuple(_sig(v) for v in sigma)}
    floor = 0.05 * max(float(sigma.max()), 1e-12)
    first = np.polynomial.polynomial.polyfit(g, sigma, degree, w=np.sqrt(devices))
    smooth = np.maximum(np.polynomial.polynomial.polyval(g, first), floor)
    coeffs = np.polynomial.polynomial.polyfit(g, sigma, degree, w=np.sqrt(devices) / smooth)
    return {"prog_poly": tuple(_sig(c) for c in coeffs)}


def fit_measurements(m: Measurements, *, program_fit: str = "poly", degree: int = 2, min_devices: int = 8,
                     t_read_s: float = T_READ_S) -> ChipFit:
    """Fit programming noise, drift and read noise per level; return the preset with its fit quality."""
    if program_fit not in ("poly", "table"):
        raise UserError(f"--program-fit must be poly or table (got {program_fit!r})")
    if program_fit == "poly" and not (isinstance(degree, int) and 0 <= degree <= 6):
        raise UserError(f"--degree must be an integer from 0 to 6 (got {degree!r})")
    if min_devices < 2:
        raise UserError(f"min_devices must be at least 2 (got {min_devices})")
    skipped: list[dict] = []
    read = fit_read_noise(m, t_read_s, min_devices, skipped)
    prog = fit_programming(m, min_devices, skipped)
    drift, drift_quality = fit_drift(m, read, t_read_s, min_devices, skipped)
    if len(prog) < (1 if program_fit == "table" else degree + 1):
        need = "one level" if program_fit == "table" else f"{degree + 1} levels for a degree-{degree} polynomial"
        raise UserError(f"{m.source}: programming noise fitted at {len(prog)} level(s), need {need} "
                        f"(levels need ≥ {min_devices} devices; see the skipped reasons: "
                        f"{'; '.join(s['reason'] for s in skipped if s['quantity'] == 'programming')[:300]})")
    g = np.array([prog[i]["g_target"] for i in sorted(prog)])
    sigma = np.array([prog[i]["sigma"] for i in sorted(prog)])
    devices = np.array([prog[i]["devices"] for i in sorted(prog)])
    curve = program_curve(g, sigma, devices, program_fit, degree)
    d_rows, r_rows = [drift[i] for i in sorted(drift)], [read[i] for i in sorted(read)]
    preset = MeasuredPreset(
        **curve, g_max_uS=m.g_max_uS, t0_s=float(m.times[0]) if m.times is not None else 20.0, t_read_s=t_read_s,
        drift_knots_g=tuple(r["g_target"] for r in d_rows), drift_knots_mu=tuple(r["mu_nu"] for r in d_rows),
        drift_knots_sigma=tuple(r["sigma_nu"] for r in d_rows), read_knots_g=tuple(r["g_target"] for r in r_rows),
        read_knots_q=tuple(r["q"] for r in r_rows))
    fitted = preset.sigma_prog(torch.tensor(g)).double().numpy()
    for i, value in zip(sorted(prog), fitted):
        prog[i]["fit"] = _sig(float(value))
    ss_res = float(np.sum((sigma - fitted) ** 2))
    ss_tot = float(np.sum((sigma - sigma.mean()) ** 2))
    dof = len(g) - (len(g) if program_fit == "table" else degree + 1)
    z = np.concatenate([prog[i]["_z"] for i in sorted(prog)])
    quality = {
        "settings": {"program_fit": program_fit, "degree": degree, "min_devices": min_devices,
                     "t_read_s": t_read_s},
        "programming": {"r2": _sig(1 - ss_res / ss_tot) if ss_tot > 0 else None,
                        "residual_std": _sig(math.sqrt(ss_res / dof)) if dof > 0 else 0.0,
                        "levels": [_public(prog[i]) for i in sorted(prog)]},
        "drift": {**drift_quality, "levels": [_public(r) for r in d_rows]},
        "read_noise": {"t_read_s": t_read_s, "levels": r_rows},
        "normality": {"device_means_within_2sigma": _sig(float(np.mean(np.abs(z) <= 2))) if len(z) else None},
    }
    return ChipFit(preset, m.summary(), quality, skipped, levels={"programming": prog, "drift": drift,
                                                                  "read": read})


def _public(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith("_")}
