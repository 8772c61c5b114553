"""scripts/gpu_tree.py: the scratch branch for a lent GPU machine holds HEAD without the zoo weights (or with the
ones kept) plus the wheels, stays under the size limit, and leaves the working tree and HEAD alone."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.test_gpu_check import load_script

ROOT = Path(__file__).resolve().parents[1]
MIB = 2**20


@pytest.fixture(scope="module")
def gpu_tree():
    return load_script("scripts/gpu_tree.py")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def repo(tmp_path):
    """A repository shaped like romer's: code, two zoo models' weights (ignored, added with -f), a wheel folder."""
    repo = tmp_path / "repo"
    (repo / "romer" / "models" / "zoo" / "a").mkdir(parents=True)
    (repo / "romer" / "models" / "zoo" / "b").mkdir(parents=True)
    (repo / "romer" / "code.py").write_text("x = 1\n")
    (repo / "romer" / "models" / "zoo" / "a" / "config.json").write_text("{}\n")
    (repo / "romer" / "models" / "zoo" / "a" / "model.safetensors").write_bytes(b"\1" * 3000)
    (repo / "romer" / "models" / "zoo" / "b" / "model.safetensors").write_bytes(b"\2" * 5000)
    (repo / ".gitignore").write_text("romer/models/zoo/*/model.safetensors\n")
    git(repo.parent, "init", "-q", "-b", "main", str(repo))
    git(repo, "add", ".")
    git(repo, "add", "-f", "romer/models/zoo/a/model.safetensors", "romer/models/zoo/b/model.safetensors")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "pydantic-2.0-py3-none-any.whl").write_bytes(b"\3" * 700)
    return repo, wheels


def tree_files(repo: Path, ref: str) -> dict[str, int]:
    rows = [line.split(maxsplit=4) for line in git(repo, "ls-tree", "-r", "-l", ref).splitlines()]
    return {row[4]: int(row[3]) for row in rows}


def test_the_branch_drops_the_weights_and_carries_the_wheels(gpu_tree, repo):
    repo, wheels = repo
    head, status = git(repo, "rev-parse", "HEAD"), git(repo, "status", "--porcelain")
    assert gpu_tree.main(["--repo", str(repo), "--wheels", str(wheels), "--branch", "gpu"]) == 0
    files = tree_files(repo, "gpu")
    assert set(files) == {".gitignore", "romer/code.py", "romer/models/zoo/a/config.json",
                          "gpu-wheels/pydantic-2.0-py3-none-any.whl"}
    assert files["gpu-wheels/pydantic-2.0-py3-none-any.whl"] == 700
    assert git(repo, "rev-parse", "gpu^") == head  # on top of HEAD
    assert git(repo, "rev-parse", "HEAD") == head and git(repo, "status", "--porcelain") == status
    assert (repo / "romer" / "models" / "zoo" / "b" / "model.safetensors").stat().st_size == 5000


def test_a_kept_model_travels_and_the_size_counts_every_file(gpu_tree, repo):
    repo, wheels = repo
    done = gpu_tree.write_branch(repo, "gpu", keep=("b",), wheels=sorted(wheels.glob("*.whl")))
    files = tree_files(repo, "gpu")
    assert "romer/models/zoo/b/model.safetensors" in files and "romer/models/zoo/a/model.safetensors" not in files
    assert done["bytes"] == sum(files.values()) == 5000 + 700 + len("x = 1\n") + len("{}\n") + \
        len("romer/models/zoo/*/model.safetensors\n")
    assert done["removed"] == ["romer/models/zoo/a/model.safetensors"]


def test_a_tree_over_the_limit_writes_no_branch(gpu_tree, repo, capsys):
    repo, _ = repo
    limit = 4000 / MIB  # model b alone is 5,000 bytes
    assert gpu_tree.main(["--repo", str(repo), "--keep-model", "b", "--limit-mib", str(limit), "--branch", "gpu"]) == 2
    assert "over the" in capsys.readouterr().err
    assert git(repo, "branch", "--list", "gpu") == ""


def test_an_unknown_model_to_keep_is_one_line(gpu_tree, repo, capsys):
    repo, _ = repo
    assert gpu_tree.main(["--repo", str(repo), "--keep-model", "nope", "--branch", "gpu"]) == 2
    assert capsys.readouterr().err.strip() == "error: no zoo weights to keep at romer/models/zoo/nope/model.safetensors"


def test_this_repository_travels_with_one_zoo_model_and_the_wheels(gpu_tree):
    """romer's own HEAD without its zoo weights, one zoo model kept (the GPU check's default job) and 4 MiB for
    the wheels (pydantic-core is ≈ 2.2 MB) fit the device tool's 64 MiB."""
    _, size, removed = gpu_tree.build_tree(ROOT, keep=("olmoe-tiny",))
    assert removed and all(path.endswith("model.safetensors") for path in removed)
    assert size + 4 * MIB <= 64 * MIB, f"{size / MIB:.1f} MiB"
