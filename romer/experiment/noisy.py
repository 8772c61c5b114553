"""Perplexity of a model programmed onto several chips (same preset and placement, chip seeds s … s+n−1)."""

from __future__ import annotations

import statistics

from romer.eval import perplexity
from romer.noise.chip import Chip, program


def noisy_perplexity(model, tokenizer, text: str, chip: Chip, chips: int, window: int = 512, batch_size: int = 8,
                     progress: bool = False) -> dict:
    """Program the model onto ``chips`` chips in turn (seeds chip.seed …), measure PPL on each, restore.

    Returns per-chip token PPL with mean and sample standard deviation (and the means of word PPL and bits per
    byte); the model is clean again afterwards.
    """
    results = []
    series = chip.series(chips)
    for i, chip_i in enumerate(series):
        with program(model, chip_i):
            results.append(perplexity(model, tokenizer, text, window=window, batch_size=batch_size,
                                      progress=progress, description=f"chip {i + 1}/{chips} (seed {chip_i.seed})"))
    per_chip = [r.ppl for r in results]
    return {
        "window": window,
        "tokens": results[0].tokens,
        "preset": chip.preset.to_dict(),
        "chip": chip.to_dict(),
        "chips": chips,
        "seeds": [c.seed for c in series],
        "ppl_per_chip": per_chip,
        "ppl_mean": statistics.fmean(per_chip),
        "ppl_std": statistics.stdev(per_chip) if chips > 1 else 0.0,
        "word_ppl_mean": statistics.fmean(r.word_ppl for r in results),
        "bits_per_byte_mean": statistics.fmean(r.bits_per_byte for r in results),
    }
