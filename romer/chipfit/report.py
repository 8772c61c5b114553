"""Fit report of a measured-chip preset against measurements: PNG plots and a one-page self-contained HTML.

Plots (matplotlib, Agg): σ_prog vs ĝ_T with the fitted curve and a bootstrap 95 % confidence band (device
means resampled within each level by a seeded ``numpy.random.Generator``, with their read-noise share,
curve refitted each time); drift curves ĝ(t) per level on log–log axes with the fitted median law
ĝ_T·(t/t0)^(−μ_ν); the fitted μ_ν, σ_ν and Q per level; a normal QQ-plot of the standardised device means.
The HTML page embeds the PNGs as base64 data URIs and tabulates constants, fit quality and skipped levels.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from statistics import NormalDist

import numpy as np
import torch

from romer.chipfit.fit import ChipFit, fit_measurements, program_curve, robust_mean_std
from romer.noise.measured import MeasuredPreset, interp
from romer.chipfit.measurements import Measurements


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    _pyplot().close(fig)
    return buffer.getvalue()


def bootstrap_band(fit: ChipFit, grid: np.ndarray, *, n_boot: int, generator: np.random.Generator
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(2.5 %, 97.5 %) percentiles of the refitted σ_prog curve on ``grid``, and of each level's σ_prog [2, L].

    Each resample draws every level's devices with replacement; the read-noise share subtracted from their
    spread follows the resampled devices' own repeated-read variance."""
    prog = fit.levels["programming"]
    order = sorted(prog)
    g = np.array([prog[i]["g_target"] for i in order])
    devices = np.array([prog[i]["devices"] for i in order])
    settings = fit.quality["settings"]
    curves, sigmas = np.empty((n_boot, len(grid))), np.empty((n_boot, len(order)))
    for b in range(n_boot):
        for j, i in enumerate(order):
            means, mean_var = prog[i]["_means"], prog[i]["_mean_var"]
            pick = generator.integers(0, len(means), len(means))
            s_between = robust_mean_std(means[pick])[1]
            within = prog[i]["_within_var"] * (mean_var[pick].mean() / mean_var.mean() if mean_var.mean() > 0 else 1)
            sigmas[b, j] = np.sqrt(max(s_between**2 - within, 0.0))
        curve = program_curve(g, sigmas[b], devices, settings["program_fit"], settings["degree"])
        if "prog_poly" in curve:
            curves[b] = np.clip(np.polynomial.polynomial.polyval(grid, curve["prog_poly"]), 0, None)
        else:
            curves[b] = np.interp(grid, g, sigmas[b])
    return np.percentile(curves, [2.5, 97.5], axis=0), np.percentile(sigmas, [2.5, 97.5], axis=0)


def sigma_plot(fit: ChipFit, preset: MeasuredPreset, *, n_boot: int, generator: np.random.Generator
               ) -> tuple[bytes, dict[float, tuple[float, float]]]:
    """σ_prog per level (95 % bootstrap bars), the preset's curve and the bootstrap band of the refitted curve;
    returns the PNG and the band at ĝ_T = 0, 0.5 and 1."""
    plt = _pyplot()
    prog = fit.levels["programming"]
    rows = [prog[i] for i in sorted(prog)]
    g = np.array([r["g_target"] for r in rows])
    sigma = np.array([r["sigma"] for r in rows])
    grid = np.union1d(np.linspace(0.0, max(1.0, float(g.max())), 201), [0.0, 0.5, 1.0])
    band, level_ci = bootstrap_band(fit, grid, n_boot=n_boot, generator=generator)
    curve = preset.sigma_prog(torch.tensor(grid)).double().numpy()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.fill_between(grid, band[0], band[1], color="C0", alpha=0.25, label=f"95 % band ({n_boot} bootstraps)")
    ax.plot(grid, curve, "C0-", label="fit in preset")
    ax.errorbar(g, sigma, yerr=np.abs(level_ci - sigma), fmt="ko", ms=4, capsize=2, label="measured per level")
    ax.set_xlabel("target conductance ĝ_T = g/g_max")
    ax.set_ylabel("σ_prog (units of g_max)")
    ax.set_title("programming noise")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    at = {x: (float(band[0][grid == x][0]), float(band[1][grid == x][0])) for x in (0.0, 0.5, 1.0)}
    return _png(fig), at


def drift_plot(m: Measurements, preset: MeasuredPreset) -> bytes:
    """Median over devices of each device's mean ĝ per time, per level (log–log), with ĝ_T·(t/t0)^(−μ_ν)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    colors = plt.get_cmap("viridis")(np.linspace(0, 0.9, len(m.levels)))
    t_line = np.geomspace(preset.t0_s, float(m.times[-1]) if m.times is not None else preset.t0_s * 10, 50)
    mu, _ = preset.drift_stats(torch.tensor(m.levels))
    for i, g in enumerate(m.levels):
        sel = m.level == i
        points = []
        for j in range(len(m.times) if m.times is not None else 1):
            at = sel & (m.time_group == j)
            if at.any():
                keys, inverse = np.unique(m.device_ids[at], return_inverse=True)
                means = np.bincount(inverse, m.g_read[at]) / np.bincount(inverse)
                points.append((np.median(m.t[at]) if m.t is not None else preset.t0_s, np.median(means)))
        t_pts, g_pts = np.array(points).T
        ax.loglog(t_pts, np.maximum(g_pts, 1e-6), "o", ms=3, color=colors[i])
        ax.loglog(t_line, g * (t_line / preset.t0_s) ** (-float(mu[i])), "-", lw=1, color=colors[i],
                  label=f"ĝ_T = {g:.3g}" if i % max(1, len(m.levels) // 6) == 0 else None)
    ax.set_xlabel("t (s after programming)")
    ax.set_ylabel("median read ĝ (units of g_max)")
    ax.set_title("drift: measured (dots), ĝ_T·(t/t0)^(−μ_ν) (lines)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def constants_plot(fit: ChipFit, preset: MeasuredPreset) -> bytes:
    """μ_ν ± σ_ν and Q per level (points) with the preset's interpolated tables (lines)."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    grid = torch.linspace(0, 1, 101)
    drift = [fit.levels["drift"][i] for i in sorted(fit.levels["drift"])]
    if drift:
        g = [r["g_target"] for r in drift]
        left.errorbar(g, [r["mu_nu"] for r in drift], yerr=[r["sigma_nu"] for r in drift], fmt="ko", ms=4,
                      capsize=2, label="μ_ν ± σ_ν per level")
        mu, sd = preset.drift_stats(grid)
        left.plot(grid, mu, "C1-", label="μ_ν (preset)")
        left.fill_between(grid.numpy(), (mu - sd).numpy(), (mu + sd).numpy(), color="C1", alpha=0.2)
    left.set_title("drift exponent ν" + ("" if drift else ": not measured"))
    read = [fit.levels["read"][i] for i in sorted(fit.levels["read"])]
    if read:
        right.plot([r["g_target"] for r in read], [r["q"] for r in read], "ko", ms=4, label="Q per level")
        right.plot(grid, interp(grid, preset.read_knots_g, preset.read_knots_q), "C2-", label="Q (preset)")
    right.set_title("read noise Q (relative, per unit √ln(t/2t_read))" + ("" if read else ": not measured"))
    for ax in (left, right):
        ax.set_xlabel("target conductance ĝ_T")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def qq_plot(fit: ChipFit) -> bytes:
    """Normal QQ-plot of the device means at t0, standardised per level ((m − mean)/std)."""
    plt = _pyplot()
    prog = fit.levels["programming"]
    z = np.sort(np.concatenate([prog[i]["_z"] for i in sorted(prog)]))
    theory = np.array([NormalDist().inv_cdf((k + 0.5) / len(z)) for k in range(len(z))])
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.plot(theory, z, "k.", ms=2)
    lim = float(max(np.abs(theory).max(), 1.0))
    ax.plot([-lim, lim], [-lim, lim], "C3-", lw=1, label="normal")
    ax.set_xlabel("normal quantile")
    ax.set_ylabel("standardised device mean at t0")
    ax.set_title(f"QQ-plot ({len(z)} devices)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def _table(header: list[str], rows: list[list], css: str = "") -> str:
    def cell(v):
        return "—" if v is None else f"{v:.4g}" if isinstance(v, float) else html.escape(str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table class='{css}'><tr>{head}</tr>{body}</table>"


def html_page(title: str, fit: ChipFit, preset: MeasuredPreset, images: dict[str, bytes],
              band: dict[float, tuple[float, float]] | None = None) -> str:
    """One self-contained page: data summary, constants, fit quality, skipped levels, embedded plots."""
    q = fit.quality
    data = [[k, ", ".join(f"{x:g}" for x in v) if isinstance(v, list) and v and isinstance(v[0], float)
             else "; ".join(v) if isinstance(v, list) else v] for k, v in fit.data.items()]
    prog = [[r["g_target"], r["devices"], r["reads"], r["sigma"], r.get("fit"), r["bias"]]
            for r in q["programming"]["levels"]]
    drift = [[r["g_target"], r["devices"], r["mu_nu"], r["sigma_nu"], r["nu_estimate_std"]]
             for r in q["drift"]["levels"]]
    read = [[r["g_target"], r["groups"], r["reads"], r["q"]] for r in q["read_noise"]["levels"]]
    summary = [["programming R²", q["programming"]["r2"]], ["programming residual std (g_max)",
                                                            q["programming"]["residual_std"]],
               ["drift R² (log–log, pooled)", q["drift"].get("r2_loglog")],
               ["drift residual std (ln g)", q["drift"].get("residual_std_log")],
               ["device means within ±2σ (normal: 0.954)", q["normality"]["device_means_within_2sigma"]]]
    summary += [[f"σ_prog at ĝ_T = {x:g}: preset / 95 % band", f"{float(preset.sigma_prog(torch.tensor([x]))):.4g}"
                 f" / {lo:.4g} … {hi:.4g}"] for x, (lo, hi) in (band or {}).items()]
    figures = "".join(f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,'
                      f'{base64.b64encode(png).decode()}"><figcaption>{html.escape(name)}</figcaption></figure>'
                      for name, png in images.items())
    skipped = _table(["quantity", "ĝ_T", "reason"], [[s["quantity"], s["g_target"], s["reason"]]
                                                      for s in fit.skipped], "text") if fit.skipped else "<p>none</p>"
    style = ("body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}table{border-collapse:collapse;"
             "margin:.5em 0 1em}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}th{background:#eee}"
             ".text td{text-align:left}"
             "figure{display:inline-block;margin:.5em}img{max-width:100%}.cols{display:flex;gap:2em;flex-wrap:wrap}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<div class=cols><div><h2>Data</h2>{_table(['', 'value'], data, 'text')}</div>"
            f"<div><h2>Fit quality</h2>{_table(['', 'value'], summary)}</div></div>"
            f"<h2>Constants</h2>{_table(['constant', 'value'], [list(r) for r in preset.describe()], 'text')}"
            f"<h2>Plots</h2>{figures}"
            f"<h2>Programming noise per level</h2>"
            f"{_table(['ĝ_T', 'devices', 'reads', 'σ_prog', 'σ_prog fit', 'bias (mean − ĝ_T)'], prog)}"
            f"<h2>Drift per level</h2>{_table(['ĝ_T', 'devices', 'μ_ν', 'σ_ν', 'std of one ν estimate'], drift)}"
            f"<h2>Read noise per level</h2>{_table(['ĝ_T', 'devices×times', 'reads', 'Q'], read)}"
            f"<h2>Skipped</h2>{skipped}</body></html>\n")


def write_report(preset: MeasuredPreset, settings: dict, m: Measurements, out: str | Path, *, seed: int = 0,
                 n_boot: int = 200) -> dict[str, Path]:
    """Refit ``m`` with the preset file's ``settings``, write the PNGs and report.html into ``out`` (atomically)."""
    from romer.io import write_bytes_atomic, write_text_atomic

    fit = fit_measurements(m, program_fit=settings.get("program_fit", "poly"), degree=settings.get("degree", 2),
                           min_devices=settings.get("min_devices", 8), t_read_s=preset.t_read_s)
    generator = np.random.default_rng(seed)
    sigma_png, band = sigma_plot(fit, preset, n_boot=n_boot, generator=generator)
    images = {"sigma_prog.png": sigma_png, "drift.png": drift_plot(m, preset), "drift_read_constants.png": constants_plot(fit, preset),
              "qq.png": qq_plot(fit)}
    out = Path(out)
    paths = {name: write_bytes_atomic(out / name, png) for name, png in images.items()}
    page = html_page(f"Measured chip: {Path(m.source).name}", fit, preset, images, band)
    paths["report.html"] = write_text_atomic(out / "report.html", page)
    return paths
