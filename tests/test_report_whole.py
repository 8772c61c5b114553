"""A report folder is replaced as a whole: the new report is written beside it and only then put in place, so a
failure while writing leaves the old report byte-identical and no staging folder; the results store in the same
folder stays where it is."""

import errno
import hashlib

import pytest
from typer.testing import CliRunner

import romer.report.write
from romer.cli.main import app
from romer.experiment.config_file import load_config
from romer.experiment.runner import run_experiment
from tests.test_experiment_runner import fake_evaluator

SETTINGS = ["models=[olmoe-tiny]", "methods=[clean, noisy]", "name=whole"]


def snapshot(folder) -> dict:
    """path → (SHA-256, mode) of every file and folder under ``folder``."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir",
                                         p.stat().st_mode & 0o777) for p in sorted(folder.rglob("*"))}


@pytest.fixture
def run_folder(tmp_path):
    """A run folder with its store and the report of a 2-chip config, and a 3-chip config stored since (so a new
    report differs from the old one)."""
    folder = tmp_path / "run"
    store = folder / "results.sqlite"
    run_experiment(load_config("default", SETTINGS + ["chip.chips=2"]), store, evaluator=fake_evaluator,
                   progress=False)
    assert CliRunner().invoke(app, ["report", str(store)]).exit_code == 0
    (folder / "plots" / "from-an-older-report.png").write_bytes(b"old")
    run_experiment(load_config("default", SETTINGS + ["chip.chips=3"]), store, evaluator=fake_evaluator,
                   progress=False)
    return folder


def test_a_failing_write_leaves_the_old_report_untouched(run_folder, monkeypatch):
    real = romer.report.write.write_bytes_atomic
    written = []

    def full_disk_at_the_second_plot(path, data):
        written.append(path)
        if len(written) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)

    before = {k: v for k, v in snapshot(run_folder).items() if not k.startswith("results.sqlite")}
    monkeypatch.setattr(romer.report.write, "write_bytes_atomic", full_disk_at_the_second_plot)
    result = CliRunner().invoke(app, ["report", str(run_folder)])
    assert result.exit_code == 1 and "No space left on device" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    after = {k: v for k, v in snapshot(run_folder).items() if not k.startswith("results.sqlite")}
    assert after == before
    assert [p.name for p in run_folder.parent.iterdir()] == ["run"]  # no staging folder left


def test_a_new_report_replaces_the_old_one_and_keeps_the_store(run_folder):
    old = snapshot(run_folder)
    result = CliRunner().invoke(app, ["report", str(run_folder)])
    assert result.exit_code == 0, result.output
    new = snapshot(run_folder)
    assert new["results.json"] != old["results.json"]  # the 3-chip config's report
    assert "plots/from-an-older-report.png" not in new  # a plot the new report lacks is gone
    assert {"results.sqlite", "results.md", "results.csv", "report.html", "plots"} <= set(new)
    assert {mode for name, (_, mode) in new.items() if not name.startswith("results.sqlite")} == {0o644, 0o755}
    assert [p.name for p in run_folder.parent.iterdir()] == ["run"]


def test_a_report_into_a_new_folder_is_renamed_into_place(run_folder, tmp_path):
    out = tmp_path / "reports" / "fresh"
    result = CliRunner().invoke(app, ["report", str(run_folder), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.stat().st_mode & 0o777 == 0o755 and (out / "report.html").is_file()
    assert [p.name for p in out.parent.iterdir()] == ["fresh"]
