"""`romer chip`: turn your own chip's measurements into a noise preset (`fit`) and check the fit (`report`).

The preset file `fit` writes is accepted wherever a preset name is: `--preset mychip.yaml`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from romer.cli.common import user_errors
from romer.cli.output import Tabular, console, table
from romer.errors import UserError

chip_app = typer.Typer(no_args_is_help=True, help="Noise presets fitted to your own chip's measurements.")

UNITS_HELP = "Units of the file's conductances: uS or normalised (overrides its '# units:' line)."
G_MAX_HELP = "g_max in µS that normalises µS values (overrides its '# g_max_uS:' line)."


@chip_app.command("fit")
@user_errors
def chip_fit(
    measurements: Path = typer.Argument(..., help="CSV (or parquet) with one row per read: g_target (or w_target), "
                                                  "g_read, optional t, device_id, cycle."),
    out: Path = typer.Option(..., "--out", help="Preset file to write (YAML), e.g. mychip.yaml."),
    program_fit: str = typer.Option("poly", "--program-fit", help="σ_prog(ĝ): poly (polynomial) or table "
                                                                  "(lookup table, linear interpolation)."),
    degree: int = typer.Option(2, help="Degree of the σ_prog polynomial."),
    units: Optional[str] = typer.Option(None, help=UNITS_HELP),
    g_max_us: Optional[float] = typer.Option(None, "--g-max-us", help=G_MAX_HELP),
    min_devices: int = typer.Option(8, help="Fewest devices a level needs to be fitted (fewer: skipped)."),
):
    """Fit programming noise, drift and read noise per conductance level; write a preset file."""
    from romer.chipfit.fit import fit_measurements
    from romer.chipfit.measurements import load_measurements

    m = load_measurements(measurements, units=units, g_max_uS=g_max_us)
    fit = fit_measurements(m, program_fit=program_fit, degree=degree, min_devices=min_devices)
    path = fit.write(out)
    d, q = fit.data, fit.quality
    times = ", ".join(f"{t:g}" for t in d["times_s"]) if d["times_s"] else "—"
    console().print(f"{d['rows']} reads, {len(d['levels'])} levels, {d['devices'] or '—'} devices, times {times} s, "
                  f"{d['repeats_median']:g} reads per device and time (median)", highlight=False)
    console().print(per_level_table(fit))
    console().print(escape(f"σ_prog(ĝ_T): {dict(fit.preset.describe())['σ_prog']}"), highlight=False)
    rows = []
    for label, value in (("σ_prog fit R² (over levels)", q["programming"]["r2"]),
                         ("σ_prog residual std (units of g_max)", q["programming"]["residual_std"]),
                         ("drift R² (per-device log–log fits)", q["drift"].get("r2_loglog")),
                         ("drift residual std (ln g)", q["drift"].get("residual_std_log")),
                         ("levels fitted: σ_prog / drift / read noise",
                          f"{len(q['programming']['levels'])} / {len(q['drift']['levels'])} / "
                          f"{len(q['read_noise']['levels'])}")):
        rows.append((label, "—" if value is None else value if isinstance(value, str) else f"{value:.4g}"))
    console().print(table("fit quality", ("quantity", "value"), rows, keys=(0,), right=(1,)))
    for s in fit.skipped:
        where = f"ĝ_T = {s['g_target']:g}" if s["g_target"] is not None else "all levels"
        console().print(f"skipped {s['quantity']} ({where}): {s['reason']}", highlight=False)
    console().print(f"wrote {path} — use it as --preset {path}", highlight=False)


def per_level_table(fit) -> Tabular:
    """One row per target level: devices, measured and fitted σ_prog, μ_ν, σ_ν, Q ("—" where not fitted)."""
    q = fit.quality
    prog = {r["g_target"]: r for r in q["programming"]["levels"]}
    drift = {r["g_target"]: r for r in q["drift"]["levels"]}
    read = {r["g_target"]: r for r in q["read_noise"]["levels"]}
    rows = []
    for g in fit.data["levels"]:
        p, d, r = prog.get(g, {}), drift.get(g, {}), read.get(g, {})
        cells = [p.get("sigma"), p.get("fit"), d.get("mu_nu"), d.get("sigma_nu"), r.get("q")]
        devices = p.get("devices", d.get("devices"))
        rows.append((f"{g:g}", "—" if devices is None else str(devices),
                     *("—" if v is None else f"{v:.4f}" for v in cells)))
    return table("fitted per level (ĝ = g/g_max)", ("ĝ_T", "devices", "σ_prog measured", "σ_prog fit", "μ_ν", "σ_ν",
                                                    "Q"), rows, keys=(), right=range(7))


def _report_settings(path: Path, preset) -> dict:
    """The fit settings stored in the preset file, or those implied by the preset itself."""
    import yaml

    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    stored = doc.get("fit_quality", {}).get("settings", {}) if isinstance(doc, dict) else {}
    implied = {"program_fit": "poly" if preset.prog_poly else "table", "degree": max(len(preset.prog_poly) - 1, 0)}
    return {**stored, **implied}


@chip_app.command("report")
@user_errors
def chip_report(
    preset_file: Path = typer.Argument(..., help="Preset file written by `romer chip fit`."),
    data: Path = typer.Option(..., "--data", help="Measurement file to compare the preset with."),
    out: Path = typer.Option(..., "--out", help="Folder for the PNG plots and report.html."),
    units: Optional[str] = typer.Option(None, help=UNITS_HELP),
    g_max_us: Optional[float] = typer.Option(None, "--g-max-us", help=G_MAX_HELP),
    bootstraps: int = typer.Option(200, help="Bootstrap resamples of the σ_prog confidence band."),
    seed: int = typer.Option(0, help="Seed of the bootstrap generator."),
):
    """Plots (σ_prog with a bootstrap band, drift curves, ν and Q per level, QQ-plot) and a one-page HTML."""
    from romer.chipfit.report import write_report
    from romer.noise.measured import MeasuredPreset
    from romer.chipfit.measurements import load_measurements
    from romer.noise.registry import get_preset

    preset = get_preset(str(preset_file))
    if not isinstance(preset, MeasuredPreset):
        raise UserError(f"{preset_file}: holds the {preset.name} preset; a report needs a measured one "
                        "(from `romer chip fit`)")
    if bootstraps < 10:
        raise UserError(f"--bootstraps must be at least 10 (got {bootstraps})")
    m = load_measurements(data, units=units, g_max_uS=g_max_us)
    paths = write_report(preset, _report_settings(preset_file, preset), m, out, seed=seed, n_boot=bootstraps)
    console().print(f"wrote {len(paths)} files to {out}: {', '.join(paths)}", highlight=False)
