"""Reports read stores read-only: an empty file, another application's database and a store on a read-only mount
and a real store are read without a single byte of them changing."""

import hashlib
import sqlite3

import pytest
from typer.testing import CliRunner

from romer.cli.main import app
from romer.experiment.config_file import load_config
from romer.experiment.runner import run_experiment
from romer.report import build_report
from tests.test_experiment_runner import SMALL, fake_evaluator


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_bytes(b""), "the file is empty"),
    (lambda p: sqlite3.connect(p).executescript("CREATE TABLE notes (x TEXT); INSERT INTO notes VALUES ('mine');"),
     "is not a romer results store"),
    (lambda p: p.write_bytes(b"not a database at all, just bytes" * 40), "is not a romer results store"),
])
def test_a_file_that_is_not_a_store_is_refused_untouched(tmp_path, make, message):
    path = tmp_path / "results.sqlite"
    make(path)
    before, files = digest(path), sorted(p.name for p in tmp_path.iterdir())
    result = CliRunner().invoke(app, ["report", str(path), "--out", str(tmp_path / "report")])
    assert result.exit_code == 2 and message in result.output
    assert digest(path) == before and sorted(p.name for p in tmp_path.iterdir()) == files


def test_reporting_a_store_changes_none_of_its_bytes(tmp_path):
    """The database file is byte-identical after a report (SQLite's own -wal / -shm companions aside)."""
    store = tmp_path / "run" / "results.sqlite"
    run_experiment(load_config("default", SMALL), store, evaluator=fake_evaluator, progress=False)
    before = digest(store)
    rows = build_report(store, plots=False).rows
    assert len(rows) == 8 and digest(store) == before
    assert {p.name for p in store.parent.iterdir()} <= {"results.sqlite", "results.sqlite-wal", "results.sqlite-shm"}
