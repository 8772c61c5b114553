"""Regenerate README.md's generated sections from the numbers the project wrote.

    python scripts/update_readme.py SECTION [SECTION ...]     # or: all

Sections (README markers ``<!-- NAME:begin -->`` … ``<!-- NAME:end -->``):
    zoo          reference models, from the zoo's cards            (`make zoo-cards`)
    sensitivity  noise sensitivity, from results/sensitivity/      (`make sensitivity`)
    routing      routing findings, from results/routing/           (`make routing-study`)
    main-result  main result, from results/main/                   (`make main-result`)
    ablations    ablations, from results/<config>/                 (`make ablations`)
    regime       when ROMER helps, from results/regime-map/        (`make regime-map`)

Every requested section is rendered before README.md is touched, so a section whose inputs are missing writes
nothing; each section is then rewritten by ``romer.io.replace_between_markers`` (atomic, exactly one marker pair).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from readme_sections import SectionError, regime, results, routing, sensitivity, zoo
from romer.io import replace_between_markers

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = {
    "zoo": zoo.render,
    "sensitivity": sensitivity.render,
    "routing": routing.render,
    "main-result": results.render_main,
    "ablations": results.render_ablations,
    "regime": regime.render,
}


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def write_sections(readme: Path, texts: dict[str, str]) -> None:
    """Replace each named section of ``readme`` with its text; the rest of the file is kept byte for byte."""
    for name, text in texts.items():
        replace_between_markers(readme, *markers(name), text)


def main(argv: list[str] | None = None, root: Path = ROOT) -> int:
    parser = argparse.ArgumentParser(description="Regenerate README.md's generated sections.")
    parser.add_argument("sections", nargs="+", metavar="SECTION", choices=[*SECTIONS, "all"],
                        help=f"one of {', '.join(SECTIONS)}, or all")
    args = parser.parse_args(argv)
    names = list(SECTIONS) if "all" in args.sections else list(dict.fromkeys(args.sections))
    readme = root / "README.md"
    try:
        write_sections(readme, {name: SECTIONS[name](root) for name in names})
    except (SectionError, ValueError, OSError) as e:
        print(f"update_readme: {e}", file=sys.stderr)
        return 1
    print(f"updated {readme}: {', '.join(names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
