"""The example scripts run end to end (``--quick``) and print what their docstrings promise."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NUMBER = r"[\d.]+"
EXPECTED = {
    "own_model.py": [r"random-weight qwen3_moe: \d+ analog tensors on PCM ×10 \(chip seed 0\)",
                     rf"PPL clean {NUMBER}, on the chip {NUMBER} \(bundled test, shuffled order, first 256 tokens"],
    "calibrate_save_reload.py": [r"saved olmoe-tiny-calibrated: .*model\.safetensors, plan\.json",
                                 rf"PPL clean +{NUMBER}", rf"PPL noisy +{NUMBER}", rf"PPL calibrated +{NUMBER}",
                                 r"romer reduces the chip's PPL by -?[\d.]+ %"],
    "sweep.py": [rf"clean PPL {NUMBER}", rf"PCM ×10 chip 1: noisy {NUMBER}, recalibrate {NUMBER}",
                 r"PCM ×10: recalibrate reduces PPL by -?[\d.]+ % \(95 % CI -?[\d.]+ … -?[\d.]+, 2 chips\)"],
}
ARGS = {"sweep.py": ["--scales", "10"]}  # one noise scale: the loop over scales is plain Python


def run_quick(script: str) -> str:
    # one intra-op thread: tiny matmuls on a busy 2-core machine are ×3 slower with OpenMP's spinning pool
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "examples" / script), "--quick", *ARGS.get(script, [])],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_example_runs_quick(script):
    out = run_quick(script)
    for pattern in EXPECTED[script]:
        assert re.search(pattern, out), f"{pattern!r} not in:\n{out}"


def test_every_example_is_tested_and_documented():
    scripts = sorted(p.name for p in (ROOT / "examples").glob("*.py"))
    assert scripts == sorted(EXPECTED)
    readme = (ROOT / "examples" / "README.md").read_text()
    for script in scripts:
        source = (ROOT / "examples" / script).read_text()
        assert source.startswith('"""') and "--quick" in source and re.search(r"about \d+ (s|min)", source)
        assert f"examples/{script}" in readme
