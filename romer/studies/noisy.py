"""A model measured on several chips (same preset and placement, chip seeds s … s+n−1), then restored."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import TypeVar

from torch import nn

from romer.eval import perplexity
from romer.estimators import mean_std
from romer.noise.chip import Chip, program

T = TypeVar("T")


def over_chips(model: nn.Module, chip: Chip, chips: int, measure: Callable[[nn.Module, int, Chip], T]) -> list[T]:
    """Program ``model`` onto ``chip.series(chips)`` in turn and call ``measure(model, i, chip_i)`` on each; the
    model is clean again afterwards (also when ``measure`` raises)."""
    results = []
    for i, chip_i in enumerate(chip.series(chips)):
        with program(model, chip_i):
            results.append(measure(model, i, chip_i))
    return results


def noisy_perplexity(model, tokenizer, text: str, chip: Chip, chips: int, window: int = 512, batch_size: int = 8,
                     progress: bool = False) -> dict:
    """Program the model onto ``chips`` chips in turn (seeds chip.seed …), measure PPL on each, restore.

    Returns per-chip token PPL with mean and sample standard deviation (and the means of word PPL and bits per
    byte); the model is clean again afterwards.
    """
    results = over_chips(model, chip, chips, lambda m, i, chip_i: perplexity(
        m, tokenizer, text, window=window, batch_size=batch_size, progress=progress,
        description=f"chip {i + 1}/{chips} (seed {chip_i.seed})"))
    per_chip = [r.ppl for r in results]
    ppl_mean, ppl_std = mean_std(per_chip)
    return {
        "window": window,
        "tokens": results[0].tokens,
        "preset": chip.preset.to_dict(),
        "chip": chip.to_dict(),
        "chips": chips,
        "seeds": [c.seed for c in chip.series(chips)],
        "ppl_per_chip": per_chip,
        "ppl_mean": ppl_mean,
        "ppl_std": ppl_std,
        "word_ppl_mean": statistics.fmean(r.word_ppl for r in results),
        "bits_per_byte_mean": statistics.fmean(r.bits_per_byte for r in results),
    }
