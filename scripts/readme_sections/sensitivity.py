"""docs/chips.md's noise-sensitivity table (marker ``sensitivity``) from results/sensitivity/*.json, written by
`romer noise sensitivity --model M --json results/sensitivity/M.json` (`make sensitivity` does both steps)."""

from __future__ import annotations

import json
from pathlib import Path

from romer.report.studies import sensitivity_markdown as markdown

from . import SectionError


def render(root: Path) -> str:
    results = [r for path in sorted((root / "results/sensitivity").glob("*.json")) for r in json.loads(path.read_text())]
    if not results:
        raise SectionError("no results in results/sensitivity/: run `make sensitivity`")
    first = results[0]
    intro = (f"### Noise sensitivity (validation split, first {first['max_chars']:,} characters, window "
             f"{first['window']}, {first['chips']} chips per cell, PPL mean ± std over chips)\n"
             "Regenerate: `make sensitivity`. PCM rows use the published constants (drift compensation on, mapping "
             "per expert); `pcm ×k` scales programming and read noise by k at t = 1 day; the last two columns are "
             "the noise levels at which PPL doubles (interpolated in ln PPL).\n\n")
    return intro + markdown(results)
