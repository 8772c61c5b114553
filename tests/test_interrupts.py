"""Interrupting `romer calibrate --out`: SIGKILL or Ctrl-C while the folder is being written leaves no folder at
OUT (it is built in a hidden staging folder beside it and renamed into place), and the same command again
writes the complete folder (and removes the staging folder a killed run left). Driven by an event the child reports, never by sleeps: the child runs the real CLI
with ``Plan.save`` wrapped so that, once model and tokenizer are written into the staging folder, it prints
``writing plan.json`` and blocks reading stdin (which the test never writes)."""

import json
import signal
import sys
import textwrap

import pytest
from typer.testing import CliRunner

import romer
from romer.cli.main import app
from tests.test_cli import folder  # noqa: F401 (the tiny OLMoE checkpoint fixture, shared)
from tests.test_experiment_runner import SAFETY_S, spawn, wait_for_line

GATED_CALIBRATE = textwrap.dedent("""
    import sys
    from romer.calibrate.plan import Plan
    save = Plan.save

    def gated(self, path):
        print("writing plan.json", flush=True)
        sys.stdin.readline()
        save(self, path)

    Plan.save = gated
    from romer.cli.main import app
    app(sys.argv[1:], prog_name="romer")
""")
FILES = {"config.json", "model.safetensors", "tokenizer.json", "plan.json"}


def calibrate_args(folder, out):
    return ["calibrate", "--model", str(folder), "--out", str(out), "--sequences", "2",
            "--set", "calibration.window=32", "--seed", "1"]


def finish(folder, out):
    """The same command again (in this process, ungated): it succeeds and leaves a complete, loadable folder."""
    again = CliRunner().invoke(app, calibrate_args(folder, out))
    assert again.exit_code == 0, again.output
    assert FILES <= {p.name for p in out.iterdir()}
    plan = json.loads((out / "plan.json").read_text())
    assert plan["chip"]["seed"] == 1 and plan["method"]["kind"] == "recalibrate"  # the recommended default
    model, _ = romer.load(out)
    assert model is not None


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_interrupted_calibrate_leaves_no_folder_and_a_rerun_completes(folder, tmp_path, sig):
    out = tmp_path / "calibrated"
    process = spawn([sys.executable, "-c", GATED_CALIBRATE, *calibrate_args(folder, out)])
    wait_for_line(process, r"^writing plan\.json")
    staging = [p for p in tmp_path.iterdir() if p.name.startswith(".calibrated.")]
    assert len(staging) == 1 and {"config.json", "model.safetensors"} <= {p.name for p in staging[0].iterdir()}
    assert not out.exists()  # half-written: only ever in the staging folder
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=SAFETY_S)
    assert not out.exists()
    if sig == signal.SIGINT:
        assert process.returncode == 130 and stderr.strip().splitlines()[-1] == "interrupted"
        assert "Traceback" not in stderr
        assert list(tmp_path.iterdir()) == []  # Ctrl-C also removes the staging folder
    else:
        assert process.returncode == -signal.SIGKILL  # a killed process cleans nothing: only the hidden folder
        assert [p.name for p in tmp_path.iterdir()] == [staging[0].name]
    finish(folder, out)
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # the killed run's staging folder removed at start
