"""Noise presets from chip measurements: sample → fit round trips, lookup tables, malformed files, preset files."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from romer.cli.chip import chip_app
from romer.errors import UserError
from romer.noise import functional as F
from romer.noise.chip import Chip
from romer.chipfit.fit import fit_measurements
from romer.noise.measured import MeasuredPreset
from romer.chipfit.measurements import load_measurements, sample_measurements, write_measurements_csv
from romer.noise.registry import get_preset, preset_from_dict

runner = CliRunner(env={"COLUMNS": "200"})
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "pcm_measurements.csv"
TIMES = [20.0, 3600.0, 86400.0, 2.592e6]  # s after programming; pcm's t0 = 20 s
LEVELS = [k / 12 for k in range(1, 13)]


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def pcm_fit():
    """12 levels × 1024 devices × 4 times × 3 reads sampled from pcm, fitted with a quadratic σ_prog."""
    m = sample_measurements(get_preset("pcm"), LEVELS, 1024, TIMES, 3, gen(0))
    return m, fit_measurements(m, program_fit="poly", degree=2)


def step_preset(**extra):
    """σ_prog = 1 % of g_max below ĝ = 0.5 and 4 % above it (a step no low-degree polynomial follows)."""
    return MeasuredPreset(prog_knots_g=(0.0, 0.49, 0.51, 1.0), prog_knots_sigma=(0.01, 0.01, 0.04, 0.04), **extra)


# ---------------------------------------------------------------- round trips
def test_pcm_constants_recovered(pcm_fit):
    """Stated tolerances (1024 devices per level): σ_prog within 5 % at every level, μ_ν and σ_ν within 0.0025,
    Q within 8 % of pcm's Q_s(ĝ_T) (pcm takes Q_s from ĝ_prog, so the lowest level reads ~5 % more)."""
    _, fit = pcm_fit
    p, g = fit.preset, torch.tensor(LEVELS)
    assert len(p.prog_poly) == 3 and p.t0_s == 20.0 and p.g_max_uS == 25.0 and not fit.skipped
    assert float(((p.sigma_prog(g) - F.pcm_programming_sigma(g)) / F.pcm_programming_sigma(g)).abs().max()) < 0.05
    mu, sigma = p.drift_stats(g)
    mu_true, sigma_true = F.pcm_drift_stats(g)
    assert float((mu - mu_true).abs().max()) < 0.0025 and float((sigma - sigma_true).abs().max()) < 0.0025
    q_true = 0.0088 / g.pow(0.65)
    assert float(((torch.tensor(p.read_knots_q) - q_true) / q_true).abs().max()) < 0.08
    q = fit.quality
    assert q["programming"]["r2"] > 0.95 and q["drift"]["r2_loglog"] > 0.9
    assert all(r["devices"] == 1024 for r in q["programming"]["levels"])


def test_measured_preset_round_trip_through_its_own_samples():
    """Sample from a measured preset, refit: its own tables come back (no ĝ_prog/ĝ_T mismatch here)."""
    truth = MeasuredPreset(prog_poly=(0.01, 0.03), drift_knots_g=(0.2, 1.0), drift_knots_mu=(0.06, 0.04),
                           drift_knots_sigma=(0.02, 0.01), read_knots_g=(0.2, 1.0), read_knots_q=(0.02, 0.008))
    levels = [0.2, 0.4, 0.6, 0.8, 1.0]
    fit = fit_measurements(sample_measurements(truth, levels, 1024, TIMES, 3, gen(5)), degree=1)
    g = torch.tensor(levels)
    assert float(((fit.preset.sigma_prog(g) - truth.sigma_prog(g)) / truth.sigma_prog(g)).abs().max()) < 0.05
    for got, want in zip(fit.preset.drift_stats(g), truth.drift_stats(g)):
        assert float((got - want).abs().max()) < 0.0025
    q, q_true = torch.tensor(fit.preset.read_knots_q), truth.sigma_read(g, 1.0) / F.read_noise_time_factor(1.0, 2.5e-7)
    assert float(((q - q_true) / q_true).abs().max()) < 0.05  # Q is read at ĝ_prog, spread around ĝ_T


@pytest.mark.parametrize("shape", ["step", "sqrt"])
def test_table_fit_follows_a_non_polynomial_sigma(shape):
    knots = np.linspace(0, 1, 101)
    truth = step_preset() if shape == "step" else MeasuredPreset(prog_knots_g=tuple(knots),
                                                                 prog_knots_sigma=tuple(0.04 * np.sqrt(knots)))
    levels = [0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9]
    g = torch.tensor(levels)
    m = sample_measurements(truth, levels, 1024, [20.0], 2, gen(7))
    table = fit_measurements(m, program_fit="table").preset
    poly = fit_measurements(m, program_fit="poly", degree=2).preset
    table_error = ((table.sigma_prog(g) - truth.sigma_prog(g)) / truth.sigma_prog(g)).abs().max()
    poly_error = ((poly.sigma_prog(g) - truth.sigma_prog(g)) / truth.sigma_prog(g)).abs().max()
    assert table.prog_knots_g == tuple(levels) and not table.prog_poly and float(table_error) < 0.08
    assert float(poly_error) > (0.2 if shape == "step" else 0.0)  # a quadratic cannot follow the step
    mid = table.sigma_prog(torch.tensor([0.2, 0.25, 0.3]))  # linear interpolation between levels
    assert float(mid[1]) == pytest.approx(float(mid[0] + mid[2]) / 2, rel=1e-5)
    assert float(table.sigma_prog(torch.tensor([0.0]))) == pytest.approx(table.prog_knots_sigma[0])


def test_outliers_and_thin_levels(pcm_fit):
    """2 % of reads replaced by garbage barely move σ_prog; a level with 3 devices is skipped with its reason."""
    m, clean = pcm_fit
    rng = np.random.default_rng(3)
    g_read = m.g_read.copy()
    bad = rng.random(len(g_read)) < 0.02
    g_read[bad] = rng.uniform(0, 1.5, bad.sum())
    noisy = fit_measurements(type(m)(m.g_target, g_read, m.t, m.device))
    g = torch.tensor(LEVELS)
    change = (noisy.preset.sigma_prog(g) - clean.preset.sigma_prog(g)) / clean.preset.sigma_prog(g)
    assert float(change.abs().max()) < 0.1
    thin = sample_measurements(get_preset("pcm"), [0.25, 0.5, 0.75], 64, TIMES, 2, gen(4))
    keep = (thin.level != 1) | (thin.device % 64 < 3)
    sub = type(thin)(thin.g_target[keep], thin.g_read[keep], thin.t[keep], thin.device[keep])
    fit = fit_measurements(sub, degree=1)
    reasons = {(s["quantity"], s["g_target"]): s["reason"] for s in fit.skipped}
    assert "only 3 device(s)" in reasons[("programming", 0.5)] and ("drift", 0.5) in reasons
    assert fit.preset.drift_knots_g == (0.25, 0.75)


def test_no_devices_no_times_fit_what_they_can(tmp_path):
    path = tmp_path / "plain.csv"
    rows = [f"{w},{w + 0.02 * z:.5f}" for w in (0.25, 0.5, 1.0) for z in np.random.default_rng(1).standard_normal(40)]
    path.write_text("# units: normalised\nw_target,g_read\n" + "\n".join(rows) + "\n")
    fit = fit_measurements(load_measurements(path), degree=1)
    assert not fit.preset.drift_knots_g and not fit.preset.read_knots_g
    assert {s["quantity"] for s in fit.skipped} == {"read noise", "drift"}
    assert float(fit.preset.sigma_prog(torch.tensor([0.5]))) == pytest.approx(0.02, rel=0.25)
    in_us = load_measurements(path, units="uS", g_max_uS=2.0)  # flags override the header; w_target stays as is
    assert in_us.units == "uS" and np.allclose(in_us.g_read, load_measurements(path).g_read / 2)
    assert np.array_equal(in_us.levels, [0.25, 0.5, 1.0])


# ---------------------------------------------------------------- files and the CLI
MALFORMED = {
    "missing": ("# units: uS\n# g_max_uS: 25\ng_target,t\n1,20\n", "missing column(s) g_read"),
    "negative": ("# units: uS\n# g_max_uS: 25\ng_target,g_read\n5,4.9\n10,-0.3\n", "negative conductance"),
    "nan": ("# units: normalised\ng_target,g_read\n0.5,0.49\n1.0,nan\n1.0,\n", "2 missing, NaN"),
    "single": ("# units: normalised\ng_target,g_read\n0.5,0.49\n0.5,0.51\n", "only one target level"),
    "empty": ("", "empty file"),
    "units": ("g_target,g_read\n0.5,0.49\n1,1\n", "units not given"),
    "header only": ("# units: uS\n# g_max_uS: 25\ng_target,g_read\n", "no measurement rows"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_files_one_error_line_exit_2(tmp_path, case):
    text, message = MALFORMED[case]
    path = tmp_path / "bad.csv"
    path.write_text(text)
    result = runner.invoke(chip_app, ["fit", str(path), "--out", str(tmp_path / "x.yaml")])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and result.stderr.startswith("error: ")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output
    assert not (tmp_path / "x.yaml").exists()


def test_parquet_needs_pyarrow(tmp_path, monkeypatch):
    """Without pyarrow (a None entry in sys.modules makes its import fail), parquet is one clear error."""
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    path = tmp_path / "reads.parquet"
    path.write_bytes(b"PAR1")
    with pytest.raises(UserError, match="pip install pyarrow"):
        load_measurements(path)


def test_parquet_reads_as_the_same_csv(tmp_path):
    pa_csv = pytest.importorskip("pyarrow.csv")
    pq = pytest.importorskip("pyarrow.parquet")
    text = EXAMPLE.read_text()
    body = "\n".join(line for line in text.splitlines() if not line.startswith("#")) + "\n"
    (tmp_path / "body.csv").write_text(body)
    pq.write_table(pa_csv.read_csv(tmp_path / "body.csv"), tmp_path / "reads.parquet")
    a = load_measurements(EXAMPLE)  # its '# units: uS' and '# g_max_uS: 25' lines, given as options for parquet
    b = load_measurements(tmp_path / "reads.parquet", units="uS", g_max_uS=25.0)
    assert a.g_target.tolist() == b.g_target.tolist() and a.g_read.tolist() == b.g_read.tolist()


def test_cli_fit_writes_a_preset_file_that_programs_weights(tmp_path):
    out = tmp_path / "mychip.yaml"
    result = runner.invoke(chip_app, ["fit", str(EXAMPLE), "--out", str(out), "--degree", "2"])
    assert result.exit_code == 0, result.output
    assert "16384 reads, 16 levels, 2048 devices" in result.output and out.exists()
    assert "skipped programming (ĝ_T = 0.01): 23 % of reads at 0" in result.output  # clamped at the floor
    preset = get_preset(str(out))
    assert isinstance(preset, MeasuredPreset) and preset.t0_s == 20.0 and len(preset.drift_knots_g) == 16
    w = torch.randn(2, 16, 24, generator=gen(1))
    a = preset.program(w, group="expert", t_inference=86400.0, generator=gen(2))
    b = get_preset(str(out)).program(w, group="expert", t_inference=86400.0, generator=gen(2))
    assert torch.equal(a, b) and 0 < float((a - w).abs().mean()) < 0.3 * float(w.abs().mean())
    assert get_preset(str(out), prog_noise_scale="3").prog_noise_scale == 3.0
    rows = preset.sigma_table([0.25, 1.0], [0.0, 3600.0], n_samples=2000)
    assert all(r.std > 0 for r in rows) and all(isinstance(v, str) for _, v in preset.describe())
    chip = Chip.from_options(str(out), seed=3, t_inference=3600.0)
    again = Chip.from_dict(json.loads(json.dumps(chip.to_dict())))
    assert again == chip and hash(again.preset) == hash(preset) and again.preset == preset
    assert preset_from_dict(json.loads(json.dumps(preset.to_dict()))) == preset


def test_preset_file_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        get_preset(str(tmp_path / "nope.yaml"))
    (tmp_path / "bad.yaml").write_text("preset: [unclosed\n")
    with pytest.raises(UserError, match="not a valid preset file"):
        get_preset(str(tmp_path / "bad.yaml"))
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="not a preset file"):
        get_preset(str(tmp_path / "list.yaml"))
    (tmp_path / "pcm.yaml").write_text("preset: {name: pcm, drift_scale: 2}\n")
    assert get_preset(str(tmp_path / "pcm.yaml")) == get_preset("pcm", drift_scale=2)
    with pytest.raises(UserError, match="romer chip fit"):
        get_preset("measured")
    with pytest.raises(UserError, match="unknown option 'sigma'"):
        preset_from_dict({**step_preset().to_dict(), "sigma": 1})


def test_cli_report_writes_plots_and_self_contained_html(tmp_path):
    data = tmp_path / "small.csv"
    write_measurements_csv(sample_measurements(get_preset("pcm"), [0.25, 0.5, 0.75, 1.0], 32, TIMES, 2, gen(9)), data)
    assert runner.invoke(chip_app, ["fit", str(data), "--out", str(tmp_path / "c.yaml")]).exit_code == 0
    result = runner.invoke(chip_app, ["report", str(tmp_path / "c.yaml"), "--data", str(data), "--out",
                                      str(tmp_path / "rep"), "--bootstraps", "20"])
    assert result.exit_code == 0, result.output
    names = {p.name for p in (tmp_path / "rep").iterdir()}
    assert {"sigma_prog.png", "drift.png", "qq.png", "drift_read_constants.png", "report.html"} <= names
    page = (tmp_path / "rep" / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 4 and "http" not in page and "R²" in page
    bad = runner.invoke(chip_app, ["report", str(tmp_path / "c.yaml"), "--data", str(tmp_path / "none.csv"),
                                   "--out", str(tmp_path / "rep2")])
    assert bad.exit_code == 2 and "does not exist" in bad.stderr


# ---------------------------------------------------------------- determinism and the shipped example
def test_same_seed_same_numbers():
    from romer.chipfit.report import bootstrap_band

    pcm = get_preset("pcm")
    a = sample_measurements(pcm, [0.25, 0.5, 1.0], 64, TIMES[:2], 2, gen(11))
    b = sample_measurements(pcm, [0.25, 0.5, 1.0], 64, TIMES[:2], 2, gen(11))
    c = sample_measurements(pcm, [0.25, 0.5, 1.0], 64, TIMES[:2], 2, gen(12))
    assert np.array_equal(a.g_read, b.g_read) and not np.array_equal(a.g_read, c.g_read)
    fit_a, fit_b = fit_measurements(a, degree=1), fit_measurements(b, degree=1)
    assert fit_a.document() == fit_b.document()
    grid = np.linspace(0, 1, 5)
    band_a = bootstrap_band(fit_a, grid, n_boot=20, generator=np.random.default_rng(1))
    band_b = bootstrap_band(fit_b, grid, n_boot=20, generator=np.random.default_rng(1))
    assert all(np.array_equal(x, y) for x, y in zip(band_a, band_b))


def test_shipped_example_is_small_synthetic_and_loads():
    head = EXAMPLE.read_text().splitlines()[0]
    assert "SYNTHETIC" in head and EXAMPLE.stat().st_size < 1_000_000
    m = load_measurements(EXAMPLE)
    assert m.units == "uS" and len(m.levels) == 16 and list(m.times) == TIMES
    assert math.isclose(m.levels[-1], 1.0) and m.summary()["devices"] == 2048
