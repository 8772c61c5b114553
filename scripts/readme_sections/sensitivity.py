"""docs/chips.md's noise-sensitivity table (marker ``sensitivity``) from results/sensitivity/*.json, written by
`romer noise sensitivity --model M --json results/sensitivity/M.json` (`make sensitivity` does both steps)."""

from __future__ import annotations

import json
from pathlib import Path

from romer.report.studies import sensitivity_markdown as markdown
from romer.studies.sensitivity import LEVELS

from . import SectionError


def render(root: Path) -> str:
    results = [r for path in sorted((root / "results/sensitivity").glob("*.json")) for r in json.loads(path.read_text())]
    if not results:
        raise SectionError("no results in results/sensitivity/: run `make sensitivity`")
    first = results[0]
    text = first.get("text") or (f"bundled validation, source order, first {first['max_chars']:,} characters, "
                                 f"windows of {first['window']}, float32")  # results written before EvalSpec
    intro = (f"### Noise sensitivity ({text}; {first['chips']} chips per cell, PPL mean ± std over chips)\n"
             "Regenerate: `make sensitivity`. PCM rows use the published constants (drift compensation on, mapping "
             "per expert); `pcm ×k` scales programming and read noise by k at t = 1 day; the last two columns are "
             "the noise levels at which PPL doubles (interpolated in ln PPL).\n\n")
    return intro + markdown([{"levels": LEVELS, **r} for r in results])
