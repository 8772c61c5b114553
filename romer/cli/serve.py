"""`romer serve`: score a text stream on a simulated chip with a streaming routing monitor that refits P1 from the
served tokens, and print the monitor's log (one line per step)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import typer

from romer.cli.common import (MODEL_OPTION, PLACEMENT_OPTION, PRESET_HELP, SEED_OPTION, T_OPTION, chip_from,
                              chip_label, check_writable, user_errors)
from romer.cli.output import console
from romer.errors import UserError


def log_line(entry) -> str:
    """One step of the monitor's log: tokens served, the step's PPL, mean load CV and cold experts over layers,
    the largest logit drift, and the refit it triggered."""
    layers = entry.layers
    cv = sum(l.cv for l in layers) / max(len(layers), 1)
    cold = sum(l.cold for l in layers)
    scored = entry.extra.get("scored")
    ppl = f"{math.exp(entry.extra['nll'] / scored):9.3f}" if scored else "        -"
    return (f"step {entry.window:4d}  served {entry.served:7d}  ppl {ppl}  cv {cv:.3f}  cold {cold:3d}  "
            f"drift {entry.drift:.3f}{'  refit (' + entry.refit + ')' if entry.refit else ''}")


@user_errors
def serve_command(
    model: str = MODEL_OPTION,
    preset: str = typer.Option("default", "--preset", help=PRESET_HELP),
    seed: Optional[int] = SEED_OPTION,
    t: Optional[float] = T_OPTION,
    placement: Optional[str] = PLACEMENT_OPTION,
    refit_every: int = typer.Option(0, "--refit-every", help="Refit P1 after every N served tokens (0: never on a "
                                                             "schedule)."),
    drift_threshold: Optional[float] = typer.Option(None, "--drift-threshold",
                                                    help="Also refit when a layer's logit drift passes this."),
    min_tokens: int = typer.Option(256, "--min-tokens", help="No refit from fewer sketched tokens (default 256)."),
    plan: Optional[Path] = typer.Option(None, "--plan", help="Start from this plan.json (default: no correction)."),
    split: str = typer.Option("validation", "--split", help="Split of the bundled text to serve."),
    max_tokens: int = typer.Option(4096, "--max-tokens", help="Serve the first N tokens (default 4096)."),
    window: int = typer.Option(512, "--window", help="Model input length in tokens (default 512)."),
    step: int = typer.Option(1, "--step", help="Windows per monitored step (default 1)."),
    reference_windows: int = typer.Option(4, "--reference-windows",
                                          help="Train-split windows the clean reference percentiles are read on."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the log as JSON to this file."),
):
    """Serve a text stream through a monitored chip: each step is scored, then logged, then P1 may be refitted."""
    import romer
    from romer.calibrate.plan import Plan
    from romer.io import write_json_atomic

    if step < 1 or max_tokens < 1 or reference_windows < 1:
        raise UserError("--step, --max-tokens and --reference-windows take positive counts")
    check_writable(json_out, "--json")
    chip, _ = chip_from({"preset": preset, **({"seed": seed} if seed is not None else {}),
                         **({"t_inference": t} if t is not None else {}),
                         **({"placement": placement} if placement is not None else {})}, needed=True)
    start = Plan.load(plan) if plan is not None else None
    loaded, tokenizer = romer.load(model)
    out = console()
    out.print(f"chip: {chip_label(chip)}", highlight=False, markup=False)
    served = romer.serve(loaded, tokenizer, chip, plan=start, step=step, split=split, max_tokens=max_tokens,
                         window=window, monitor={"refit_every": refit_every, "drift_threshold": drift_threshold,
                                  "min_tokens": min_tokens},
                         reference={"sequences": reference_windows, "window": window})
    for entry in served.log:
        out.print(log_line(entry), highlight=False, markup=False)
    refits = sum(1 for e in served.log if e.refit)
    out.print(f"served {served.tokens} tokens: PPL {served.ppl:.3f}, {refits} refits", highlight=False,
                  markup=False)
    if json_out is not None:
        write_json_atomic(json_out, served.to_dict())
