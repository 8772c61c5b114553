"""The house: no import circles, the CLI imported by nothing below it, output readable in a pipe at 80 columns,
progress lines off a terminal, and one-line errors unless --debug."""

import ast
import re
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from romer.progress import Progress, format_seconds

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "romer"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """romer module → the romer modules it imports (anywhere in the file, lazy imports included)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
                found = [base, *(f"{base}.{a.name}" for a in node.names)]
            else:
                continue
            for target in found:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                # an edge into one's own package __init__ (a re-export) is not a circle
                if target and target != name and not name.startswith(target + "."):
                    targets.add(target)
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_planted_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_romer_has_no_import_circle():
    assert cycles(import_graph()) == []


def test_only_the_cli_imports_the_cli():
    importers = {m for m, targets in import_graph().items() if any(t.startswith("romer.cli") for t in targets)}
    assert importers and all(m.startswith("romer.cli") for m in importers)
    # and within the CLI, only the entry point imports the command modules
    commands = {"romer.cli.eval", "romer.cli.stats", "romer.cli.calibrate", "romer.cli.run", "romer.cli.zoo",
                "romer.cli.noise", "romer.cli.chip"}
    graph = import_graph()
    assert {m for m in graph if graph[m] & commands} == {"romer.cli.main"}


def test_no_module_is_over_420_lines():
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 420}
    assert long == {}


# --- progress --------------------------------------------------------------------------------------------------

def test_format_seconds():
    assert format_seconds(7.25) == "7.2 s"
    assert format_seconds(75.2) == "1 min 15 s"
    assert format_seconds(3725) == "1 h 02 min"


class Pipe(io.StringIO):
    def isatty(self):
        return False


def test_progress_prints_a_line_per_unit_with_elapsed_and_eta_off_a_terminal():
    out = Pipe()
    with Progress("job", 4, unit="trials", stream=out) as bar:
        bar.advance(label="first")
        bar.advance()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("job: 1/4 trials (25 %) · first · ") and "elapsed · ETA" in lines[0]
    # after 2 units in 10 s, 2 units are left: ETA 10 s
    assert bar.line(None, 10.0) == "job: 2/4 trials (50 %) · 10.0 s elapsed · ETA 10.0 s"


def test_progress_throttles_lines_but_always_reports_the_last_unit():
    out = Pipe()
    with Progress("job", 3, stream=out, min_interval_s=3600) as bar:
        for _ in range(3):
            bar.advance()
    lines = out.getvalue().splitlines()
    assert [line.split(" · ")[0] for line in lines] == ["job: 1/3 steps (33 %)", "job: 3/3 steps (100 %)"]
    assert "ETA" not in lines[-1]


def test_disabled_progress_prints_nothing():
    out = Pipe()
    with Progress("job", 2, stream=out, enabled=False) as bar:
        bar.advance()
    assert out.getvalue() == ""


# --- the command line, as a user runs it (a pipe, 80 columns) ---------------------------------------------------

def romer(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The installed entry point with stdout a pipe at 80 columns."""
    command = [sys.executable, "-c", "from romer.cli.main import main; main()", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "80", **(env or {})})


def test_zoo_list_in_a_pipe_keeps_every_model_name_whole():
    from romer.models import zoo_names

    result = romer("zoo", "list")
    assert result.returncode == 0, result.stderr
    assert max(len(line) for line in result.stdout.splitlines()) <= 80
    for name in zoo_names():
        assert name in result.stdout


def test_zoo_list_json_is_parseable():
    import json

    from romer.models import zoo_names

    result = romer("zoo", "list", "--json", "-")
    assert result.returncode == 0, result.stderr
    assert [entry["name"] for entry in json.loads(result.stdout)] == zoo_names()


def test_noise_show_json_holds_the_sigma_table():
    import json

    result = romer("noise", "show", "gaussian", "--set", "chip.overrides.eta=0.1", "--json", "-")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    # gaussian: σ of the normalised weight is η at every level and time (additive noise)
    assert payload["preset"] == "gaussian" and {row["std"] for row in payload["sigma"]} == {0.1}


def test_run_in_a_pipe_reports_progress_and_keeps_names_whole(tmp_path):
    methods = "methods=[clean, noisy, romer, maxnn-12.5%, {name: maxnn-12.5% experts, kind: maxnn, maxnn: {attention: false}}]"
    result = romer("run", "default", "--set", "models=[deepseekmoe-tiny, qwenmoe-tiny]", "--set", "chip.chips=2",
                   "--set", methods, "--out", str(tmp_path / "run"),
                   "--evaluator", "tests.test_experiment_runner:fake_evaluator")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    progress = [line for line in lines if re.match(r"default: \d+/20 trials \(", line)]
    assert len(progress) == 20 and progress[-1].startswith("default: 20/20 trials (100 %)")
    assert all("elapsed" in line for line in progress) and "ETA" in progress[0]
    table = [line for line in lines if line.startswith("|")]  # off a terminal: markdown rows, one line each
    blocks = "\n".join(line if line.startswith("|") else "" for line in lines).split("\n\n")
    for block in filter(None, (b.strip() for b in blocks)):  # every row of a table has its header's cells
        assert len({row.count("|") for row in block.splitlines()}) == 1, block
    for name in ("deepseekmoe-tiny", "qwenmoe-tiny", "maxnn-12.5% experts", "romer"):
        assert any(f"| {name} |" in line for line in table), name


# --- errors ----------------------------------------------------------------------------------------------------

def corrupt_model(tmp_path: Path) -> Path:
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "olmoe", "architectures": ["OlmoeForCausalLM"]}')
    (folder / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    return folder


@pytest.mark.parametrize("args", [["eval", "--model", "no-such-model"],
                                  ["noise", "show", "flash"],
                                  ["eval", "--model", "olmoe-tiny", "--window", "1"]])
def test_user_errors_are_one_line_and_exit_2(args):
    result = romer(*args)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr + result.stdout


def test_a_corrupt_checkpoint_is_one_line_and_a_traceback_only_with_debug(tmp_path):
    folder = corrupt_model(tmp_path)
    result = romer("eval", "--model", str(folder))
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error: ")
    assert "Traceback" not in result.stderr + result.stdout
    debug = romer("--debug", "eval", "--model", str(folder))
    assert debug.returncode != 0 and "Traceback" in debug.stderr
    from typer.testing import CliRunner  # the environment variable alone, in this process: the error propagates

    from romer.cli.main import app

    env = CliRunner().invoke(app, ["eval", "--model", str(folder)], env={"ROMER_DEBUG": "1"})
    assert env.exit_code != 0 and env.exception is not None and not isinstance(env.exception, SystemExit)
