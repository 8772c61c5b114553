"""A scratch branch small enough for a lent GPU machine (at most 64 MiB of working tree travels there): HEAD's
tree without the zoo weights (``--keep-model NAME`` keeps some), plus the wheels romer needs beyond the GPU
image (pydantic, its compiled core and two pure dependencies) under ``gpu-wheels/``. Nothing is checked out and the working
tree is not touched: the branch is written with git's plumbing from a temporary index.

    python scripts/gpu_tree.py --download-wheels              # once: the wheels, into .gpu-wheels/ (ignored)
    python scripts/gpu_tree.py --wheels .gpu-wheels [--keep-model olmoe-tiny] [--branch gpu-check]

Then, in the checkout the device tool sends: ``git switch gpu-check``, the run (docs/gpu.md gives the command),
``git switch -``. The branch holds HEAD's commit, so commit first. A tree over ``--limit-mib`` (default 64) is
refused (exit 2) and no branch is written.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = "romer/models/zoo/*/model.safetensors"
WHEEL_DIR = ".gpu-wheels"  # where --download-wheels puts them here (ignored by git)
TREE_WHEELS = "gpu-wheels"  # where the branch holds them (another name: switching back never deletes the download)
# romer's needs that the GPU image lacks (its other needs are there: torch, transformers, accelerate, typer, rich,
# safetensors, matplotlib, pyyaml, numpy); versions are the ones installed here, where romer's tests pass
WHEELS = ("pydantic", "pydantic-core", "annotated-types", "typing-inspection")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
MIB = 2**20


class TreeError(Exception):
    """One line for the user; exit 2."""


def git(repo: Path, *args: str, env: dict | None = None, data: bytes | None = None) -> str:
    done = subprocess.run(["git", "-C", str(repo), *args], input=data, capture_output=True,
                          env={**os.environ, **(env or {})})
    if done.returncode != 0:
        raise TreeError(f"git {' '.join(args)}: {done.stderr.decode().strip()}")
    return done.stdout.decode()


def build_tree(repo: Path, keep: tuple[str, ...] = (), wheels: list[Path] = ()) -> tuple[str, int, list[str]]:
    """(tree id, bytes of its files, removed paths): HEAD's tree less the zoo weights not kept, plus ``wheels``."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        git(repo, "read-tree", "HEAD", env=env)
        weights = git(repo, "ls-files", "--", WEIGHTS, env=env).split()
        kept = {f"romer/models/zoo/{name}/model.safetensors" for name in keep}
        unknown = kept - set(weights)
        if unknown:
            raise TreeError(f"no zoo weights to keep at {', '.join(sorted(unknown))}")
        removed = [path for path in weights if path not in kept]
        if removed:
            git(repo, "update-index", "--force-remove", "--", *removed, env=env)
        for wheel in wheels:
            blob = git(repo, "hash-object", "-w", "--", str(wheel)).strip()
            git(repo, "update-index", "--add", "--cacheinfo", f"100644,{blob},{TREE_WHEELS}/{wheel.name}", env=env)
        tree = git(repo, "write-tree", env=env).strip()
    size = sum(int(line.split()[3]) for line in git(repo, "ls-tree", "-r", "-l", tree).splitlines())
    return tree, size, removed


def write_branch(repo: Path, branch: str, keep: tuple[str, ...] = (), wheels: list[Path] = (),
                 limit_mib: float = 64) -> dict:
    """Write ``branch`` (a commit on top of HEAD holding the small tree); refuse a tree over the limit."""
    if git(repo, "symbolic-ref", "-q", "HEAD").strip() == f"refs/heads/{branch}":
        raise TreeError(f"{branch} is checked out here; switch back to the branch it is built from first")
    tree, size, removed = build_tree(repo, keep, wheels)
    if size > limit_mib * MIB:
        raise TreeError(f"the tree holds {size / MIB:.1f} MiB, over the {limit_mib:g} MiB limit: keep fewer zoo "
                        "models")
    message = (f"scratch tree for a GPU machine: HEAD without {len(removed)} zoo weight file(s)"
               f"{', with ' + str(len(wheels)) + ' wheel(s) in ' + TREE_WHEELS if wheels else ''} "
               "(scripts/gpu_tree.py; never merge)")
    commit = git(repo, "commit-tree", tree, "-p", "HEAD", "-m", message).strip()
    git(repo, "update-ref", f"refs/heads/{branch}", commit)
    return {"branch": branch, "commit": commit, "bytes": size, "removed": removed,
            "wheels": [w.name for w in wheels]}


def download_wheels(dest: Path) -> list[Path]:
    """pip download of ``WHEELS`` at the versions installed here, for CPython 3.12 on x86-64 Linux (the image)."""
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in WHEELS]
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", *platforms, "-d", str(dest), *pins],
                   check=True)
    return sorted(dest.glob("*.whl"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=ROOT, help=argparse.SUPPRESS)
    parser.add_argument("--branch", default="gpu-check")
    parser.add_argument("--keep-model", action="append", default=[], metavar="NAME",
                        help="a zoo model whose weights travel too (the default job runs on the ones there)")
    parser.add_argument("--wheels", type=Path, help=f"a folder of wheels to add under {TREE_WHEELS}/")
    parser.add_argument("--download-wheels", action="store_true", help=f"download the wheels into {WHEEL_DIR}/")
    parser.add_argument("--limit-mib", type=float, default=64)
    args = parser.parse_args(argv)
    try:
        if args.download_wheels:
            found = download_wheels(args.repo / WHEEL_DIR)
            print(f"{len(found)} wheels in {args.repo / WHEEL_DIR}: {', '.join(w.name for w in found)}")
            return 0
        wheels = sorted(args.wheels.glob("*.whl")) if args.wheels else []
        if args.wheels and not wheels:
            raise TreeError(f"no .whl files in {args.wheels}")
        done = write_branch(args.repo, args.branch, tuple(args.keep_model), wheels, args.limit_mib)
    except TreeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"branch {done['branch']} ({done['commit'][:12]}): {done['bytes'] / MIB:.1f} MiB, "
          f"{len(done['removed'])} zoo weight file(s) left out, {len(done['wheels'])} wheel(s) in {TREE_WHEELS}/")
    print(f"next, in the checkout the device tool sends: git switch {done['branch']}; the run (docs/gpu.md); "
          "git switch -")
    return 0


if __name__ == "__main__":
    sys.exit(main())
