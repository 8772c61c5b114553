"""`romer eval`: perplexity on a corpus split, clean or over simulated chips."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from romer.cli.common import (MAPPING_HELP, MODEL_HELP, PLACEMENT_HELP, PRESET_HELP, SET_HELP, T_HELP,
                              check_at_least, check_window, chip_from_options, user_errors)
from romer.cli.output import JSON_HELP, console, table, write_json
from romer.errors import UserError


@user_errors
def eval_command(
    model: str = typer.Option(..., "--model", help=MODEL_HELP),
    split: str = typer.Option("test", help="Corpus split: train, validation or test."),
    window: int = typer.Option(512, help="Model input length in tokens, including the BOS token."),
    batch_size: int = typer.Option(8, help="Windows per forward pass."),
    preset: Optional[str] = typer.Option(None, help=PRESET_HELP + "; without it: clean."),
    chips: int = typer.Option(5, help="Number of simulated chips (seeds SEED … SEED+CHIPS−1)."),
    seed: int = typer.Option(0, help="Seed of the first chip."),
    t: float = typer.Option(86400.0, "--t", help=T_HELP),
    placement: str = typer.Option("moe", help=PLACEMENT_HELP),
    mapping: str = typer.Option("expert", help=MAPPING_HELP),
    settings: list[str] = typer.Option([], "--set", help=SET_HELP),
    json_path: Optional[str] = typer.Option(None, "--json", help=JSON_HELP),
):
    """Perplexity on a corpus split (token PPL, word PPL, bits per byte), clean or over simulated chips."""
    from romer import load
    from romer.calibrate.folder import is_calibrated
    from romer.data import load_text
    from romer.eval import perplexity

    check_window(window)
    check_at_least("--batch-size", batch_size)
    if preset is not None and is_calibrated(model):
        raise UserError(f"{model} is a calibrated model that already holds its chip's read-back weights; "
                        "evaluate it without --preset")
    text = load_text(split)
    chip = None
    if preset is not None:
        check_at_least("--chips", chips)
        chip = chip_from_options(preset, placement, mapping, seed, t, settings)
    elif settings:
        raise UserError("--set needs --preset")
    to_stdout = json_path == "-"
    lm, tokenizer = load(model)
    payload = {"model": model, "split": split, "window": window}
    title = f"{model} on {split}" + (f", {preset} chips at t = {t:g} s" if chip else ", clean")
    if chip is None:
        result = perplexity(lm, tokenizer, text, window=window, batch_size=batch_size, progress=not to_stdout,
                            description=f"{model} · {split}")
        payload.update(tokens=result.tokens, ppl=result.ppl, word_ppl=result.word_ppl,
                       bits_per_byte=result.bits_per_byte)
        shown = table(title, ("tokens", "window", "PPL", "word PPL", "bits/byte"),
                      [(result.tokens, window, f"{result.ppl:.3f}", f"{result.word_ppl:.3f}",
                        f"{result.bits_per_byte:.4f}")], keys=())
    else:
        from romer.experiment.noisy import noisy_perplexity

        noisy = noisy_perplexity(lm, tokenizer, text, chip, chips, window=window, batch_size=batch_size,
                                 progress=not to_stdout)
        payload.update(noisy, ppl=noisy["ppl_mean"])
        shown = table(title, ("tokens", "placement", "chips", "PPL mean ± std", "per chip"),
                      [(noisy["tokens"], chip.placement_name(), chips,
                        f"{noisy['ppl_mean']:.3f} ± {noisy['ppl_std']:.3f}",
                        " ".join(f"{p:.2f}" for p in noisy["ppl_per_chip"]))], keys=(1,))
    if not write_json(json_path, payload):
        console().print(shown)
