"""The prepared GPU check (benchmarks/gpu_check.py) in its small CPU form, so it cannot rot between GPU runs:
every stage runs, the JSON on disk is the result, and its figures obey what they measure (parameter counts from
the shape's formula, tokens from the windows, the chip's draws covering its analog weights, bit-identical
reprogramming). Plus the stage machinery: a stage over its limit is recorded as such and its dependents skipped."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def load_script(relative: str):
    """A script of this repository (not a package module) imported from its file."""
    path = ROOT / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gpu_check():
    return load_script("benchmarks/gpu_check.py")


@pytest.fixture(scope="module")
def small_run(gpu_check, tmp_path_factory):
    path = tmp_path_factory.mktemp("gpu-check") / "gpu-check.json"
    return path, gpu_check.run_check(path, device="cpu", small=True)


def olmoe_params(c: dict) -> tuple[int, int]:
    """(all parameters, MoE-block parameters) of an OLMoE config, by hand: embeddings and LM head; per layer
    q, k, v, o (heads × head_dim = hidden), OLMoE's q/k norms over the projections' outputs, two RMS norms, the
    router (experts × hidden) and each expert's gate, up and down (3 × hidden × width); the final norm."""
    h, v, e, w, layers = c["hidden_size"], c["vocab_size"], c["num_experts"], c["intermediate_size"], \
        c["num_hidden_layers"]
    kv = h // c["num_attention_heads"] * c["num_key_value_heads"]
    moe = e * h + e * 3 * h * w
    per_layer = h * h + 2 * h * kv + h * h + h + kv + 2 * h + moe
    return 2 * v * h + layers * per_layer + h, layers * moe


def test_the_small_check_runs_every_stage_and_writes_its_json(small_run):
    path, result = small_run
    assert json.loads(path.read_text()) == result
    stages = result["stages"]
    assert list(stages) == ["environment", "default_job", "build", "load", "program", "reprogram", "evaluate",
                            "calibrate", "zero_shot", "memory"]
    lm_eval = importlib.util.find_spec("lm_eval") is not None
    expected = {name: "ok" for name in stages} | ({} if lm_eval else {"zero_shot": "skipped"})
    assert {name: s["status"] for name, s in stages.items()} == expected, stages
    assert result["mode"] == "small" and result["device"] == "cpu"
    assert stages["environment"]["torch"] == torch.__version__
    assert all(s["seconds"] >= 0 for s in stages.values() if s["status"] == "ok")


def test_the_small_checks_figures_follow_from_the_shape_and_sizes(small_run):
    _, result = small_run
    stages, sizes, shape = result["stages"], result["sizes"], result["shape"]
    total, moe = olmoe_params(shape)
    assert stages["build"]["params"] == total
    assert stages["program"]["analog_params"] == moe  # the default chip: MoE blocks (router + experts) analog
    assert stages["program"]["draws"] >= moe  # at least one normal draw per analog weight
    assert stages["program"]["ratio"] == pytest.approx(stages["program"]["randn_s"] / stages["program"]["program_s"],
                                                       rel=0.01)
    assert stages["reprogram"]["identical"] is True and stages["reprogram"]["differing"] == []
    assert result["goals"]["bit_identical"]["met"] is True
    evaluate = stages["evaluate"]
    assert evaluate["tokens"] == sizes["eval_windows"] * sizes["window"]
    rates = evaluate["tok_per_s"]
    assert evaluate["ratio"] == pytest.approx(rates["romer_eval"] / rates["hf_forward"], rel=0.01)
    assert stages["calibrate"]["windows"] == sizes["calibration_windows"]
    assert stages["calibrate"]["ppl"] is not None and stages["calibrate"]["ppl"] > 1
    # the default job in its small form: one zoo model × one chip × two methods (clean, noisy)
    assert stages["default_job"]["trials"] == 1 * 1 * 2 and stages["default_job"]["wall_s"] > 0
    memory = stages["memory"]
    assert memory["measured_bytes"] > stages["load"]["model_bytes"] == total * 2  # bf16
    assert memory["plan_peak_bytes"] > total * 2
    assert memory["ratio"] == pytest.approx(memory["measured_bytes"] /
                                            (memory["plan_peak_bytes"] + memory["plan_runtime_bytes"]), rel=0.01)
    assert set(result["goals"]) == {"program_vs_randn", "bit_identical", "eval_vs_hf", "memory_vs_plan"}


def test_the_table_has_a_row_per_stage(gpu_check, small_run):
    _, result = small_run
    rows = [line for line in gpu_check.table(result).splitlines() if line.startswith("| ")][1:]
    assert [row.split(" | ")[0].strip("| ") for row in rows] == [name for name, _, _ in gpu_check.STAGES]
    assert "bit-identical" in gpu_check.table(result)


def test_a_stage_over_its_limit_is_recorded_and_its_dependents_skipped(gpu_check, tmp_path):
    check = gpu_check.Check(tmp_path / "c.json", torch.device("cpu"), small=True, budget=60)

    def spin(_):
        end = time.monotonic() + 30
        while time.monotonic() < end:  # Python bytecode: the alarm lands here
            pass

    check.run("build", 0.2, (), spin)
    check.run("load", 10, ("build",), lambda _: {"never": True})
    written = json.loads((tmp_path / "c.json").read_text())["stages"]
    assert written["build"]["status"] == "timeout" and written["build"]["seconds"] < 5
    assert written["load"] == {"status": "skipped", "reason": "needs build"}


def test_a_failing_stage_says_why_and_the_rest_go_on(gpu_check, tmp_path):
    check = gpu_check.Check(tmp_path / "c.json", torch.device("cpu"), small=True, budget=60)
    check.run("build", 10, (), lambda _: 1 / 0)
    check.run("environment", 10, (), lambda _: {"fine": 1})
    stages = json.loads((tmp_path / "c.json").read_text())["stages"]
    assert stages["build"]["status"] == "error" and stages["build"]["reason"].startswith("ZeroDivisionError")
    assert stages["environment"]["status"] == "ok" and stages["environment"]["fine"] == 1


def test_skip_leaves_stages_out_and_their_dependents_with_them(gpu_check, tmp_path):
    result = gpu_check.run_check(tmp_path / "c.json", device="cpu", small=True,
                                 skip=("default_job", "build", "zero_shot"))
    stages = result["stages"]
    assert stages["environment"]["status"] == "ok"
    assert stages["default_job"]["reason"] == stages["build"]["reason"] == "left out by --skip"
    assert {stages[n]["reason"] for n in ("load",)} == {"needs build"}
    assert {stages[n]["reason"] for n in ("program", "calibrate", "zero_shot", "memory")} <= \
        {"needs load", "left out by --skip"}
    assert all(s["status"] == "skipped" for name, s in stages.items() if name != "environment")


def test_an_unknown_stage_to_skip_is_a_usage_error(gpu_check, capsys):
    with pytest.raises(SystemExit) as exit_:
        gpu_check.main(["--small", "--skip", "nope"])
    assert exit_.value.code == 2 and "unknown stage(s) nope" in capsys.readouterr().err
