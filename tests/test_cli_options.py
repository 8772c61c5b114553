"""The command line's shared grammar: one ``--set SECTION.KEY=VALUE`` key space per command (the YAML config's),
the same data options building one EvalSpec, the old forms refused with the new one named, one-line usage errors,
and tables whose numbers stay whole in a pipe at 80 columns."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from romer.cli.common import chip_from, data_given, eval_spec, resolve_settings
from romer.cli.main import app
from romer.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner(env={"COLUMNS": "300"})


def romer(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """The entry point as a user runs it: stdout a pipe at 80 columns."""
    return subprocess.run([sys.executable, "-c", "from romer.cli.main import main; main()", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "80", "PYTHONPATH": str(ROOT)})


# --- --set: one syntax, the YAML's keys --------------------------------------------------------------------------

def test_set_uses_the_yaml_keys_and_wins_over_the_options():
    data = resolve_settings("eval", {"chip.preset": "pcm", "eval.window": 128},
                            ["chip.overrides.prog_noise_scale=3", "eval.window=64", "eval.tasks=[romer_cloze]",
                             "eval.task_data.romer_cloze=x.jsonl"])
    assert data["chip"] == {"preset": "pcm", "overrides": {"prog_noise_scale": 3}}
    assert data["eval"] == {"window": 64, "tasks": ["romer_cloze"], "task_data": {"romer_cloze": "x.jsonl"}}
    chip, chips = chip_from(data["chip"])
    assert chip.preset.prog_noise_scale == 3 and chip.preset.read_noise_scale == 1 and chips == 5
    calibrate = resolve_settings("calibrate", {"method.kind": "romer"},
                                 ["method.replace.variant=split", "calibration.window=64", "chip.seed=2"])
    assert calibrate["method"] == {"kind": "romer", "replace": {"variant": "split"}}
    assert calibrate["calibration"] == {"window": 64} and calibrate["chip"] == {"seed": 2}


@pytest.mark.parametrize("command, item, message", [
    ("eval", "prog_noise_scale=3", "use --set chip.overrides.prog_noise_scale=3"),
    ("eval", "window=128", "use --set eval.window=128"),
    ("noise show", "eta=0.1", "use --set chip.overrides.eta=0.1"),
    ("calibrate", "window=64", "use --set calibration.window=64"),
    ("calibrate", "replace.variant=split", "--set method.replace.variant=split"),
    ("eval", "overrides.eta=1", "use --set chip.overrides.eta=1"),
    ("eval", "eval.bogus=1", "unknown key eval.bogus"),
    ("stats", "eval.tasks=[romer_cloze]", "unknown key eval.tasks"),
    ("eval", "method.kind=romer", "romer eval takes chip.*, eval.*, not method.*"),
    ("eval", "eval.window", "--set takes SECTION.KEY=VALUE"),
    ("eval", "eval.window=abc", "eval.window takes a whole number"),
    ("eval", "eval.window.x=1", "takes one value"),
])
def test_old_and_wrong_set_forms_name_the_new_form(command, item, message):
    with pytest.raises(UserError, match=re.escape(message)):
        resolve_settings(command, {}, [item])


def test_defaults_agree_across_commands():
    from romer.noise.chip import default_chip

    for command in ("eval", "stats"):  # the same text by default: the bundled test split
        assert eval_spec(resolve_settings(command, data_given(), [])["eval"]).split == "test"
    assert eval_spec({"dataset": "c4"}).split == "validation"
    chip, _ = chip_from({}, needed=True)  # calibrate's chip without --preset: the main job's
    assert chip.to_dict() == default_chip().to_dict()
    named, _ = chip_from({"preset": "default"})  # eval/stats --preset default: the same chip
    assert named.to_dict() == chip.to_dict()
    assert chip_from({})[0] is None  # eval without --preset: no chip
    with pytest.raises(UserError, match="needs --preset"):
        chip_from({"overrides": {"eta": 1}})


# --- usage errors: one line, status 2 -----------------------------------------------------------------------------

@pytest.mark.parametrize("args, line", [
    (["eval", "--model", "olmoe-tiny", "--bogus"], "error: no such option: --bogus (see romer eval --help)"),
    (["eval", "--model"], "error: option '--model' requires an argument (see romer eval --help)"),
    (["eval", "--window", "128"], "error: missing option '--model' (see romer eval --help)"),
    (["zoo", "list", "--json"], "error: option '--json' requires an argument (see romer zoo list --help)"),
    (["calibrate", "--model", "m", "--out", "o", "--with", "replace.variant=split"],
     "error: --with is gone; use --set method.KEY=VALUE"),
    (["eval", "--model", "olmoe-tiny", "--max-chars", "100"], "error: --max-chars is gone; use --max-tokens N"),
    (["eval", "--model", "olmoe-tiny", "--set", "prog_noise_scale=3"],
     "error: --set prog_noise_scale=3: keys are dotted as in the YAML config; use --set "
     "chip.overrides.prog_noise_scale=3"),
])
def test_usage_errors_are_one_line_and_status_2(args, line):
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(line), result.stderr
    assert result.stdout == ""


def test_an_unknown_option_from_the_entry_point_is_one_line():
    result = romer("eval", "--model", "olmoe-tiny", "--bogus")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == "error: no such option: --bogus (see romer eval --help)\n"


def test_run_help_lists_every_bundled_config():
    from romer.experiment.config_file import bundled_configs

    result = runner.invoke(app, ["run", "--help"])
    assert result.exit_code == 0
    text = " ".join(result.stdout.replace("│", " ").split())
    assert "Bundled config (" + ", ".join(bundled_configs()) + ")" in text


# --- tables in a pipe ---------------------------------------------------------------------------------------------

NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?")


def source_numbers(value) -> list[float]:
    """Every number in a JSON value, also as a percentage (tables show shares and accuracies in %)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return []
    if isinstance(value, (int, float)):
        return [float(value), 100.0 * value] if math.isfinite(value) else []
    values = value.values() if isinstance(value, dict) else value
    return [n for v in values for n in source_numbers(v)]


def markdown_tables(text: str) -> list[list[list[str]]]:
    """The markdown tables of ``text`` as lists of rows of cells (header first, the rule dropped)."""
    tables, current = [], None
    for line in text.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            if current is None:
                current = []
                tables.append(current)
            if not all(set(c) <= set("-:") for c in cells):
                current.append(cells)
        else:
            current = None
    return tables


def check_whole_numbers(text: str, data, names: set[str]) -> int:
    """Every row of every table has the header's cells, and every number in a cell that is not a name is a number
    of ``data`` as shown (rounded to the digits it shows). Returns how many numbers were checked."""
    known = source_numbers(data)
    checked = 0
    tables = markdown_tables(text)
    assert tables, text
    for rows in tables:
        assert all(len(row) == len(rows[0]) for row in rows), rows
        for row in rows[1:]:
            for cell in row:
                if cell in names:
                    continue
                for token in NUMBER.findall(cell):
                    shown = float(token.replace(",", ""))
                    digits = len(token.partition(".")[2])
                    assert any(abs(shown - v) <= 0.5 * 10 ** -digits + 1e-9 for v in known), (token, cell, row)
                    checked += 1
    return checked


def test_zoo_list_in_a_pipe_keeps_every_number_whole():
    from romer.cli.zoo import zoo_entries

    result = romer("zoo", "list")
    assert result.returncode == 0, result.stderr
    entries = zoo_entries()
    scaled = [{**e, "M": [e[k] / 1e6 for k in ("parameters_total", "parameters_active") if k in e]} for e in entries]
    assert check_whole_numbers(result.stdout, scaled, {e["name"] for e in entries}) >= 5 * len(entries)


def test_the_default_jobs_report_in_a_pipe_keeps_every_number_whole():
    """The committed main-job results (results/accuracy) printed as `romer run` / `romer report` print them."""
    source = ROOT / "results" / "accuracy" / "results.json"
    script = ("import json, sys; from pathlib import Path; from types import SimpleNamespace; "
              "from romer.cli.run import _print_report; d = json.loads(Path(sys.argv[1]).read_text()); "
              "_print_report(SimpleNamespace(rows=d['rows'], config=d['config'], plots=[], "
              "title='romer report: accuracy'), Path('results/accuracy'))")
    result = subprocess.run([sys.executable, "-c", script, str(source)], cwd=ROOT, capture_output=True, text=True,
                            timeout=300, env={**os.environ, "COLUMNS": "80", "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    data = json.loads(source.read_text())
    names = {r[k] for r in data["rows"] for k in ("model", "method", "preset", "placement")}
    assert check_whole_numbers(result.stdout, data["rows"], names) > 10 * len(data["rows"])
    lines = result.stdout.splitlines()
    assert lines[0].startswith("chip: pcm×10 at t = 86400 s") and lines[1].startswith("text: bundled test")
    assert lines[2] == "romer report: accuracy (preset pcm×10, t (s) 86400, placement moe)"
    for name in {r[k] for r in data["rows"] for k in ("model", "method")}:
        assert any(f"| {name} |" in line for line in lines), name


def test_a_model_given_as_a_path_shows_as_its_folder_name():
    from romer.cli.common import model_label
    from romer.report.tables import model_name

    assert model_name("/data/models/my-moe/") == model_name("runs/my-moe") == "my-moe"
    assert model_name("olmoe-tiny") == model_label("olmoe-tiny") == "olmoe-tiny"
    assert model_label(str(ROOT / "romer")) == "romer"


# --- calibrate on one text file, and what eval says of the folder --------------------------------------------------

PASSAGE = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in "
           "want of a wife. However little known the feelings or views of such a man may be on his first entering "
           "a neighbourhood, this truth is so well fixed in the minds of the surrounding families. ")


def test_calibrate_on_a_single_text_file_and_eval_labels_the_folder(tmp_path):
    from romer.data import load_tokenizer
    from tests.tiny_models import save_tiny

    model = save_tiny("olmoe", tmp_path / "olmoe", load_tokenizer(), vocab_size=8192, num_hidden_layers=2,
                      bos_token_id=0, eos_token_id=0, pad_token_id=0)
    text = tmp_path / "mine.txt"
    text.write_text(PASSAGE * 6)
    out = tmp_path / "calibrated"
    result = runner.invoke(app, ["calibrate", "--model", str(model), "--out", str(out), "--preset", "gaussian",
                                 "--set", "chip.overrides.eta=0.2", "--calibration-dataset", "text",
                                 "--calibration-data-path", str(text), "--sequences", "2",
                                 "--set", "calibration.window=32"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "chip: gaussian (eta=0.2) at t = 86400 s, moe analog, expert mapping, seed 0"
    assert lines[1].startswith("text: text (mine.txt) test, 2 windows of 32 tokens")
    assert f"evaluate: romer eval --model {out} --dataset text --data-path {text}" in lines
    assert (f"the same chip uncalibrated: romer eval --model {model} --preset gaussian --seed 0 --chips 1 --set "
            f"chip.overrides.eta=0.2 --dataset text --data-path {text}") in lines
    assert any(line.startswith("note: calibration read the test split of text") for line in lines)
    assert json.loads((out / "plan.json").read_text())["method"]["calibration"]["split"] == "test"
    evaluated = runner.invoke(app, ["eval", "--model", str(out), "--window", "32", "--max-tokens", "300"])
    assert evaluated.exit_code == 0, evaluated.output
    shown = evaluated.stdout.splitlines()
    assert shown[0].startswith("chip: calibrated folder: recalibrate on gaussian (eta=0.2)")
    assert "calibrated: perplexity (calibrated)" in evaluated.stdout and "clean" not in evaluated.stdout
    assert str(tmp_path) not in "\n".join(l for l in shown if l.startswith("|"))  # the folder's name, not its path


def test_lm_eval_prints_no_git_error_and_starts_no_subprocess(tmp_path, monkeypatch, capfd):
    """lm-eval runs `git describe` (whose error the subprocess writes straight to file descriptor 2), torch's
    collect_env and a forked bootstrap pool (a fork seen to hang a run): romer's evaluation starts none of them."""
    import subprocess as sp

    from romer.eval.zero_shot import evaluate_tasks
    from romer.models import load_model

    model, tokenizer = load_model("olmoe-tiny")
    monkeypatch.chdir(tmp_path)
    started = []

    class NoPopen:
        def __init__(self, args, *rest, **options):
            started.append(args)
            raise RuntimeError(f"subprocess started: {args!r}")

    monkeypatch.setattr(sp, "Popen", NoPopen)
    monkeypatch.setattr("multiprocessing.Pool", NoPopen)  # lm-eval's bootstrap pool forks this process
    scores = evaluate_tasks(model, tokenizer, ["romer_cloze", "romer_nextsent"], limit=4)
    assert scores["romer_cloze"].samples == 4 and started == []
    assert "fatal" not in capfd.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["run", "--set", "models=[olmoe-tiny]", "--out", "{file}"], "--out {file} is a file; give a folder path"),
    (["run", "--set", "models=[olmoe-tiny]", "--json", "{file}/x.json"],
     "--json {file}/x.json cannot be written: {file} is a file"),
    (["eval", "--model", "olmoe-tiny", "--json", "{file}/deeper/x.json"],
     "--json {file}/deeper/x.json cannot be written: {file} is a file"),
    (["stats", "--model", "olmoe-tiny", "--json", "{folder}"], "--json {folder} is a folder; give a file path"),
])
def test_an_output_that_cannot_be_written_is_refused_before_any_work(tmp_path, args, message):
    file, folder = tmp_path / "a-file", tmp_path / "a-folder"
    file.write_text("keep me\n")
    folder.mkdir()
    args = [a.format(file=file, folder=folder) for a in args]
    result = subprocess.run([sys.executable, "-m", "romer.cli.main", *args], cwd=ROOT, capture_output=True,
                            text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [f"error: {message.format(file=file, folder=folder)}"]
    assert file.read_text() == "keep me\n" and list(folder.iterdir()) == []
