"""Bad input, as a stranger's checkpoint or a typo brings it: every case is one line on stderr, a non-zero exit,
no traceback, and no output file left behind or half-written."""

from __future__ import annotations

import errno
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM
from typer.testing import CliRunner

from romer.cli.main import app
from romer.data import load_tokenizer
from tests.tiny_models import save_tiny

TOKENIZER = load_tokenizer()
VOCAB = dict(vocab_size=8192, num_hidden_layers=2, bos_token_id=0, eos_token_id=0, pad_token_id=0)
runner = CliRunner()


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    """A valid tiny olmoe checkpoint folder with the bundled tokenizer (context 64 tokens)."""
    return save_tiny("olmoe", tmp_path_factory.mktemp("good") / "olmoe", TOKENIZER, **VOCAB)


def copy_folder(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def edit_config(folder: Path, **changes) -> Path:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def poison(folder: Path, value: float) -> Path:
    path = folder / "model.safetensors"
    tensors = load_file(path)
    name = next(n for n in tensors if n.endswith("q_proj.weight"))
    tensors[name][0, 0] = value
    save_file(tensors, path, metadata={"format": "pt"})
    return folder


def calibrated(good: Path, tmp: Path) -> Path:
    out = tmp / "calibrated"
    result = runner.invoke(app, ["calibrate", "--model", str(good), "--out", str(out), "--method", "recalibrate",
                                 "--preset", "gaussian", "--set", "chip.overrides.eta=0.2", "--sequences", "2",
                                 "--set", "calibration.window=32"])
    assert result.exit_code == 0, result.output
    return out


def edit_plan(folder: Path, edit) -> Path:
    plan = json.loads((folder / "plan.json").read_text())
    edit(plan)
    (folder / "plan.json").write_text(json.dumps(plan))
    return folder


def case_missing_folder(tmp, good):
    return ["eval", "--model", str(tmp / "nope")], "neither a zoo model"


def case_no_config(tmp, good):
    (tmp / "empty").mkdir()
    return ["eval", "--model", str(tmp / "empty")], "config.json"


def case_config_not_json(tmp, good):
    folder = copy_folder(good, tmp / "m")
    (folder / "config.json").write_text("{model_type: olmoe")
    return ["eval", "--model", str(folder)], "config.json"


def case_config_latin1(tmp, good):
    folder = copy_folder(good, tmp / "m")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_bytes(json.dumps({**config, "note": "café"}, ensure_ascii=False).encode("latin-1"))
    return ["eval", "--model", str(folder)], "config.json: not UTF-8 text"


def case_config_is_a_folder(tmp, good):
    folder = copy_folder(good, tmp / "m")
    (folder / "config.json").unlink()
    (folder / "config.json").mkdir()
    return ["eval", "--model", str(folder)], "config.json: cannot be read"


def case_config_value_of_the_wrong_type(tmp, good):
    folder = edit_config(copy_folder(good, tmp / "m"), num_experts="eight")
    return ["eval", "--model", str(folder), "--window", "32"], "config.json: Validation error for field 'num_experts'"


def case_no_tokenizer(tmp, good):
    folder = copy_folder(good, tmp / "m")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()
    return ["eval", "--model", str(folder), "--window", "32"], "no tokenizer"


def case_corrupt_tokenizer(tmp, good):
    folder = copy_folder(good, tmp / "m")
    (folder / "tokenizer.json").write_text('{"version": "1.0", "model": {')
    return ["eval", "--model", str(folder), "--window", "32"], "tokenizer.json: not valid JSON"


def case_tokenizer_of_another_kind(tmp, good):
    folder = copy_folder(good, tmp / "m")
    (folder / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "NoSuchModel"}}')
    return ["eval", "--model", str(folder), "--window", "32"], "cannot load the tokenizer"


def case_corrupt_safetensors(tmp, good):
    folder = copy_folder(good, tmp / "m")
    (folder / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    return ["eval", "--model", str(folder)], "cannot read the weights"


def case_truncated_safetensors(tmp, good):
    folder = copy_folder(good, tmp / "m")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    return ["eval", "--model", str(folder)], "cannot read the weights"


def case_shape_mismatch(tmp, good):
    folder = edit_config(copy_folder(good, tmp / "m"), hidden_size=48)
    return ["eval", "--model", str(folder)], "do not match config.json"


def case_nan_weights(tmp, good):
    return ["eval", "--model", str(poison(copy_folder(good, tmp / "m"), math.nan))], "q_proj"


def case_inf_weights(tmp, good):
    return ["eval", "--model", str(poison(copy_folder(good, tmp / "m"), math.inf))], "q_proj"


def case_dense_model(tmp, good):
    config = LlamaConfig(vocab_size=8192, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    folder = tmp / "llama"
    LlamaForCausalLM(config).save_pretrained(folder)
    TOKENIZER.save_pretrained(folder)
    return ["eval", "--model", str(folder)], "dense"


def case_unknown_layout(tmp, good):
    from tests.test_families import other

    folder = tmp / "minimax_m2"  # a router that needs the block's correction bias as an argument
    other("minimax_m2").save_pretrained(folder)
    TOKENIZER.save_pretrained(folder)
    return ["eval", "--model", str(folder)], "fails on [tokens, hidden] input"


def case_pickle_only(tmp, good):
    folder = tmp / "pickled"
    folder.mkdir()
    for f in good.iterdir():
        if f.name != "model.safetensors":
            (folder / f.name).write_bytes(f.read_bytes())
    torch.save(load_file(good / "model.safetensors"), folder / "pytorch_model.bin")
    return ["eval", "--model", str(folder)], "--allow-pickle"


def case_remote_code(tmp, good):
    folder = edit_config(copy_folder(good, tmp / "m"), auto_map={"AutoModelForCausalLM": "modeling_x.XForCausalLM"})
    return ["eval", "--model", str(folder)], "trust"


def case_malformed_yaml(tmp, good):
    (tmp / "bad.yaml").write_text("models: [olmoe-tiny\nchip: {")
    return ["run", str(tmp / "bad.yaml"), "--out", str(tmp / "out")], "not valid YAML"


def case_unknown_config_key(tmp, good):
    return ["run", "default", "--set", "colour=blue", "--out", str(tmp / "out")], "colour"


def case_noise_scale(tmp, good, value="-1"):
    return ["eval", "--model", "olmoe-tiny", "--preset", "pcm", "--set", f"chip.overrides.prog_noise_scale={value}"], \
        "prog_noise_scale"


def case_negative_t(tmp, good):
    return ["eval", "--model", "olmoe-tiny", "--preset", "pcm", "--t", "-1"], "inference time"


def case_unknown_mapping(tmp, good):
    return ["eval", "--model", "olmoe-tiny", "--preset", "pcm", "--mapping", "rows"], "rows"


def case_unknown_placement(tmp, good):
    return ["eval", "--model", "olmoe-tiny", "--preset", "pcm", "--placement", "brain"], "brain"


def case_too_many_replacements(tmp, good):
    return ["calibrate", "--model", "olmoe-tiny", "--out", str(tmp / "out"), "--method", "replace",
            "--set", "method.replace.count=60"], "replacing 60 of 64 experts"


def case_percentile_outside(tmp, good):
    return ["calibrate", "--model", "olmoe-tiny", "--out", str(tmp / "out"), "--method", "recalibrate",
            "--set", "method.recalibrate.percentiles=[0, 101]"], "percentiles"


def case_empty_dataset(tmp, good):
    (tmp / "empty.txt").write_text("  \n\n")
    return ["eval", "--model", "olmoe-tiny", "--dataset", "text", "--data-path", str(tmp / "empty.txt")], "empty"


def case_corpus_too_short(tmp, good):
    (tmp / "short.txt").write_text("Too short to calibrate on.")
    return ["calibrate", "--model", "olmoe-tiny", "--out", str(tmp / "out"), "--method", "recalibrate",
            "--calibration-dataset", "text", "--calibration-data-path", str(tmp / "short.txt"), "--sequences", "4"], \
        "has 11 tokens, fewer than the 2,044 that 4 windows of 512 tokens need"


def case_window_beyond_context(tmp, good):
    return ["eval", "--model", str(good), "--window", "128"], "context of 64 tokens"


def case_unwritable_output(tmp, good):
    (tmp / "a-file").write_text("")
    return ["noise", "show", "pcm", "--json", str(tmp / "a-file" / "out.json")], "a-file"


def case_calibrate_out_under_a_file(tmp, good):
    (tmp / "a-file").write_text("")
    return ["calibrate", "--model", str(good), "--out", str(tmp / "a-file" / "out"), "--sequences", "2",
            "--set", "calibration.window=32"], "a-file is a file"


def case_report_out_is_a_file(tmp, good):
    (tmp / "a-file").write_text("")
    return ["report", str(store_of_two_trials(tmp)), "--out", str(tmp / "a-file")], "is a file"


def case_report_out_under_a_file(tmp, good):
    (tmp / "a-file").write_text("")
    return ["report", str(store_of_two_trials(tmp)), "--out", str(tmp / "a-file" / "out")], "a-file is a file"


def case_report_out_dangling_link(tmp, good):
    (tmp / "link").symlink_to(tmp / "nowhere")
    return ["report", str(store_of_two_trials(tmp)), "--out", str(tmp / "link")], "does not exist"


def store_of_two_trials(tmp: Path) -> Path:
    from romer.experiment.config_file import load_config
    from romer.experiment.runner import run_experiment
    from tests.test_experiment_runner import fake_evaluator

    config = load_config("default", ["models=[olmoe-tiny]", "chip.chips=1", "methods=[clean, noisy]"])
    run_experiment(config, tmp / "run" / "results.sqlite", evaluator=fake_evaluator, progress=False)
    return tmp / "run" / "results.sqlite"


def case_plan_from_another_model(tmp, good):
    folder = edit_plan(calibrated(good, tmp), lambda p: p["model"].update(num_experts=[16, 16]))
    return ["eval", "--model", str(folder), "--window", "32"], "another model"


def case_plan_from_another_chip(tmp, good):
    folder = edit_plan(calibrated(good, tmp), lambda p: p["chip"].update(seed=7))
    return ["eval", "--model", str(folder), "--window", "32"], "another chip"


def case_newer_preset_file(tmp, good):
    (tmp / "chip.yaml").write_text("format: romer-measured-preset/2\npreset: {name: pcm}\n")
    return ["eval", "--model", "olmoe-tiny", "--preset", str(tmp / "chip.yaml")], "newer"


CASES = {name[len("case_"):]: fn for name, fn in sorted(globals().items()) if name.startswith("case_")}


def check_one_line_error(result, message: str, outputs: list[Path]) -> None:
    assert result.exit_code not in (0, None), result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and message in lines[0], lines[0]
    assert "Traceback" not in result.output
    for path in outputs:
        assert not path.exists(), path
        assert not list(path.parent.glob(f".{path.name}.*")), f"temporary file of {path} left behind"


@pytest.mark.parametrize("name", sorted(set(CASES) - {"noise_scale"}))
def test_bad_input_is_one_line(name, tmp_path, good):
    args, message = CASES[name](tmp_path, good)
    outputs = [Path(a) for a in args if a.startswith(str(tmp_path)) and Path(a).name in ("out", "out.json")]
    check_one_line_error(runner.invoke(app, args), message, outputs)


@pytest.mark.parametrize("value", ["-1", "nan", "1e9"])
def test_bad_noise_scale_is_one_line(value, tmp_path, good):
    args, message = case_noise_scale(tmp_path, good, value)
    check_one_line_error(runner.invoke(app, args), message, [])


def test_disk_full_while_writing_leaves_no_file(tmp_path, monkeypatch):
    """ENOSPC in the middle of writing a JSON output: one line, and neither the file nor its temp file remains."""
    import romer.io

    real_fdopen = romer.io.os.fdopen

    class FullDisk:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, data):
            self.handle.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(romer.io.os, "fdopen", lambda fd, mode: FullDisk(real_fdopen(fd, mode)))
    out = tmp_path / "out.json"
    result = runner.invoke(app, ["noise", "show", "pcm", "--json", str(out)])
    check_one_line_error(result, "No space left on device", [out])
    assert list(tmp_path.iterdir()) == []


def test_a_size_mismatch_is_one_line_without_transformers_load_report(tmp_path, good):
    """transformers logs a multi-line load report to its own stderr handler (not seen by CliRunner), so this runs
    the real executable: stderr must be romer's one line, naming a mismatched tensor."""
    import os
    import subprocess
    import sys

    folder = edit_config(copy_folder(good, tmp_path / "m"), num_experts=4)
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-m", "romer.cli.main", "eval", "--model", str(folder)], cwd=root,
                          env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()], done.stderr
    assert "do not match config.json" in done.stderr and "checkpoint [8," in done.stderr
