"""The rooms' import rules, read from the source with ``ast``: the CLI and the studies are imported by nothing below
them, report never imports experiment, and the results store imports neither experiment nor report."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "romer"


def imports(path: Path) -> set[str]:
    """Every module a file imports (absolute names; ``from . import x`` resolved against the file's package)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    inside = path.is_relative_to(ROOT.parent)
    package = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts[:-1]) if inside else ""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, *([base] if base else [])])
            out.add(base)
    return out


def room_of(path: Path) -> str:
    parts = path.relative_to(ROOT).parts
    return parts[0].removesuffix(".py") if len(parts) > 1 else path.stem


def importers(target: str) -> dict[str, set[str]]:
    """room → the files in it that import ``romer.<target>`` (anything under it)."""
    out: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        if any(name == f"romer.{target}" or name.startswith(f"romer.{target}.") for name in imports(path)):
            out.setdefault(room_of(path), set()).add(str(path.relative_to(ROOT)))
    return out


@pytest.mark.parametrize("room, allowed", [
    ("cli", {"cli"}),
    ("studies", {"studies", "cli"}),
    ("experiment", {"experiment", "cli", "studies", "api", "__init__"}),
])
def test_upper_rooms_are_imported_only_from_above(room, allowed):
    offenders = {r: files for r, files in importers(room).items() if r not in allowed}
    assert not offenders, f"romer.{room} imported from below: {offenders}"


@pytest.mark.parametrize("room, forbidden", [
    ("report", {"experiment", "studies", "cli"}),
    ("store", {"experiment", "report", "studies", "cli"}),
])
def test_lower_rooms_never_import_upper_ones(room, forbidden):
    for path in (ROOT / room).rglob("*.py"):
        bad = {n for n in imports(path) if any(n == f"romer.{f}" or n.startswith(f"romer.{f}.") for f in forbidden)}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_the_checker_sees_a_violation(tmp_path):
    """The rule can fail: the imports a file names are all seen, relative ones resolved."""
    assert "romer.store" in imports(ROOT / "report" / "write.py")
    assert "cli/run.py" in importers("report")["cli"]  # the CLI writes reports
    probe = tmp_path / "probe.py"
    probe.write_text("from romer.experiment.config import X\nimport romer.cli.main\n")
    assert {"romer.experiment.config", "romer.cli.main"} <= imports(probe)
