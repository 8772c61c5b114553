"""The setup line every results table carries: how its numbers were made, read from what the store recorded.

A table without its setup cannot be compared with another: the same model scores different PPLs in float32 and
under bf16 autocast, on other tokens, or with another estimator. ``setup_line`` states the evaluation precision and
device, the torch and transformers versions the trials ran with, the scored text, the chips and the estimator.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from romer.eval.spec import settings_label

ESTIMATOR_SHORT = "paired by chip (mean of per-chip figures, 95 % Student-t interval)"


def _chips(rows: Sequence[Mapping]) -> str:
    """``5 chips (seeds 0–4)``; several chip counts joined with ``/`` (``3/5 chips``)."""
    counts = sorted({r["chips"] for r in rows if r.get("chips")})
    seeds = sorted({s for r in rows for s in r.get("seeds") or ()})
    if not counts:
        return "chips unknown"
    span = "" if not seeds else (f" (seed {seeds[0]})" if len(seeds) == 1 else f" (seeds {seeds[0]}–{seeds[-1]})")
    return f"{'/'.join(map(str, counts))} chip{'s' if counts != [1] else ''}{span}"


def setup_line(config: Mapping | None, versions: Mapping, rows: Sequence[Mapping]) -> str:
    """``Setup: bundled test, shuffled order, first 16,384 tokens, windows of 512, float32 on cpu · torch 2.13.0+cpu ·
    transformers 5.25.0 · 5 chips (seeds 0–4) · reductions paired by chip (…)``.

    config: the experiment config as stored (its ``eval`` section; None for a store without one); versions: library
    → version string as the trials recorded them; rows: the aggregated rows the table shows (chips and seeds)."""
    settings = dict((config or {}).get("eval") or {})
    tokens = {r["tokens"] for r in rows if r.get("tokens")}
    if config is None and len(tokens) == 1:  # a report without its config: the rows say how many tokens
        settings["max_tokens"] = tokens.pop()
    dtype, weights = settings.get("dtype", "float32"), settings.get("weights_dtype")
    text = (f"{settings_label(settings)} on {settings.get('device', 'cpu')}"
            + ("" if weights in (None, dtype) else f" (weights {weights})"))
    libraries = " · ".join(f"{name} {versions[name]}" for name in ("torch", "transformers") if name in versions)
    parts = [text, libraries, _chips(rows), f"reductions {ESTIMATOR_SHORT}"]
    return "Setup: " + " · ".join(p for p in parts if p) + "."
