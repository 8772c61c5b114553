"""Regenerate the generated sections of README.md and docs/*.md from the numbers the project wrote.

    python scripts/update_readme.py SECTION [SECTION ...]     # or: all

Sections (markers ``<!-- NAME:begin -->`` … ``<!-- NAME:end -->``; each lives in exactly one page):
    key-result   README.md            main result's key rows + regime headline  (`make main-result`, `make regime-map`)
    zoo          docs/zoo.md          reference models, from the zoo's cards     (`make zoo-cards`)
    sensitivity  docs/chips.md        noise sensitivity, results/sensitivity/    (`make sensitivity`)
    routing      docs/routing.md      routing findings, results/routing/         (`make routing-study`)
    main-result  docs/results.md      main result, results/accuracy*/, main/     (`make main-result`)
    ablations    docs/results.md      ablations, results/<config>/               (`make ablations`)
    regime       docs/regime-map.md   when ROMER helps, results/regime-map/      (`make regime-map`)
    replacement  docs/regime-map.md   replica vs split, results/regime-replacement/ (`make replacement-study`)
    depth        docs/regime-map.md   depth vs width, results/regime-depth/      (`make replacement-study`)

Written by other scripts (listed in :data:`WRITTEN_ELSEWHERE`, so that every generated section has one known
page): ``run-time`` in docs/experiments.md (``scripts/time_run.py --update-readme``) and ``forward-throughput``,
``program-speed``, ``real-size``, ``io-overhead`` in benchmarks/README.md (``benchmarks/*.py --update-readme``),
``gpu-check`` in docs/gpu.md (``benchmarks/gpu_check.py --update-docs``).

Every requested section is rendered, and every page checked for its markers, before any page is touched, so a
section whose inputs or markers are missing writes nothing; each section is then rewritten in its page by
``romer.io.replace_between_markers`` (atomic, exactly one marker pair).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, NamedTuple

from readme_sections import SectionError, regime, replacement, results, routing, sensitivity, zoo
from romer.io import replace_between_markers

ROOT = Path(__file__).resolve().parents[1]


class Section(NamedTuple):
    page: str  # the file holding the section's markers, relative to the repository root
    render: Callable[[Path], str]  # root → the markdown between the markers


SECTIONS = {
    "key-result": Section("README.md", results.render_key),
    "zoo": Section("docs/zoo.md", zoo.render),
    "sensitivity": Section("docs/chips.md", sensitivity.render),
    "routing": Section("docs/routing.md", routing.render),
    "main-result": Section("docs/results.md", results.render_main),
    "ablations": Section("docs/results.md", results.render_ablations),
    "regime": Section("docs/regime-map.md", regime.render),
    "replacement": Section("docs/regime-map.md", replacement.render_replacement),
    "depth": Section("docs/regime-map.md", replacement.render_depth),
}
# Sections other scripts write: name → (page, writer).
WRITTEN_ELSEWHERE = {
    "run-time": ("docs/experiments.md", "scripts/time_run.py"),
    "forward-throughput": ("benchmarks/README.md", "benchmarks/forward_throughput.py"),
    "program-speed": ("benchmarks/README.md", "benchmarks/program_speed.py"),
    "real-size": ("benchmarks/README.md", "benchmarks/real_size.py"),
    "gpu-check": ("docs/gpu.md", "benchmarks/gpu_check.py"),
    "in-service": ("docs/in-service.md", "scripts/in_service.py"),
    "io-overhead": ("benchmarks/README.md", "benchmarks/io_overhead.py"),
}


def page(name: str, root: Path = ROOT) -> Path:
    """The file that holds section ``name``'s markers."""
    relative = SECTIONS[name].page if name in SECTIONS else WRITTEN_ELSEWHERE[name][0]
    return root / relative


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def check_markers(path: Path, names) -> None:
    """Refuse (ValueError naming the marker) unless ``path`` holds exactly one marker pair of each section."""
    content = path.read_text(encoding="utf-8")
    for name in names:
        begin, end = markers(name)
        if content.count(begin) != 1 or content.count(end) != 1:
            raise ValueError(f"{path}: expected exactly one {begin!r} and one {end!r}")


def write_sections(path: Path, texts: dict[str, str]) -> None:
    """Replace each named section of the page ``path`` with its text; the rest of the file is kept byte for byte."""
    for name, text in texts.items():
        replace_between_markers(path, *markers(name), text)


def main(argv: list[str] | None = None, root: Path = ROOT) -> int:
    parser = argparse.ArgumentParser(description="Regenerate the generated sections of README.md and docs/*.md.")
    parser.add_argument("sections", nargs="+", metavar="SECTION", choices=[*SECTIONS, "all"],
                        help=f"one of {', '.join(SECTIONS)}, or all")
    args = parser.parse_args(argv)
    names = list(SECTIONS) if "all" in args.sections else list(dict.fromkeys(args.sections))
    try:
        texts = {name: SECTIONS[name].render(root) for name in names}
        by_page: dict[Path, dict[str, str]] = {}
        for name, text in texts.items():
            by_page.setdefault(page(name, root), {})[name] = text
        for path, page_texts in by_page.items():  # every page checked before any is written
            check_markers(path, page_texts)
        for path, page_texts in by_page.items():
            write_sections(path, page_texts)
    except (SectionError, ValueError, OSError) as e:
        print(f"update_readme: {e}", file=sys.stderr)
        return 1
    for path, page_texts in by_page.items():
        print(f"updated {path.relative_to(root)}: {', '.join(page_texts)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
