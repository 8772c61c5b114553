"""Render README's noise-sensitivity table from results/sensitivity/*.json (written by
`romer noise sensitivity --model M --json results/sensitivity/M.json`; `make sensitivity` does both steps)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from romer.experiment.sensitivity import markdown
from romer.io import replace_between_markers

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- sensitivity:begin -->", "<!-- sensitivity:end -->"


def main() -> int:
    results = [r for path in sorted((ROOT / "results/sensitivity").glob("*.json")) for r in json.loads(path.read_text())]
    if not results:
        print("no results in results/sensitivity/: run `make sensitivity`", file=sys.stderr)
        return 1
    first = results[0]
    intro = (f"### Noise sensitivity (validation split, first {first['max_chars']:,} characters, window "
             f"{first['window']}, {first['chips']} chips per cell, PPL mean ± std over chips)\n"
             "Regenerate: `make sensitivity`. PCM rows use the published constants (drift compensation on, mapping "
             "per expert); `pcm ×k` scales programming and read noise by k at t = 1 day; the last two columns are "
             "the noise levels at which PPL doubles (interpolated in ln PPL).\n\n")
    replace_between_markers(ROOT / "README.md", BEGIN, END, intro + markdown(results))
    print("updated README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
