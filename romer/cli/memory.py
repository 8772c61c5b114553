"""`romer plan-memory`: what a model folder will need in memory, from its config.json alone, and where it fits."""

from __future__ import annotations

from typing import Optional

import typer

from romer.cli.common import DTYPE_HELP, MODEL_HELP, PLACEMENT_HELP, check_at_least, check_window, user_errors
from romer.cli.output import JSON_HELP, console, table, write_json


@user_errors
def plan_memory_command(
    model: str = typer.Option(..., "--model", help=MODEL_HELP),
    dtype: str = typer.Option("float32", "--dtype", help=DTYPE_HELP),
    window: int = typer.Option(512, help="Model input length in tokens."),
    batch_size: int = typer.Option(8, help="Windows per forward pass."),
    placement: str = typer.Option("moe", help=PLACEMENT_HELP),
    json_path: Optional[str] = typer.Option(None, "--json", help=JSON_HELP),
):
    """Parameters (total / active / analog), bytes, the peak that programming, calibration and evaluation need,
    and whether it fits this machine's RAM and each visible GPU (nothing is loaded: the model is built on meta)."""
    from pathlib import Path

    from romer.models.loading import resolve_model_dir, zoo_names
    from romer.models.memory import fit_rows, plan_memory

    check_window(window)
    check_at_least("--batch-size", batch_size)
    folder = resolve_model_dir(model) if model in zoo_names() else Path(model)  # config.json is all it reads
    plan = plan_memory(folder, dtype, window, batch_size, placement)
    fits = fit_rows(plan)
    payload = {"model": model, "model_type": plan.model_type, "dtype": str(plan.dtype).removeprefix("torch."),
               "window": window, "batch_size": batch_size, "params": plan.params, "active_params": plan.active_params,
               "analog_params": plan.analog_params, "model_bytes": plan.model_bytes, "stages": plan.stages,
               "peak_bytes": plan.peak,
               "devices": [{"device": d, "needs": n, "free": f, "fits": ok} for d, n, f, ok in fits]}
    if write_json(json_path, payload):
        return
    out = console()
    out.print(table(f"{model} ({plan.model_type})", ("quantity", "value"), plan.rows()))
    out.print(table("fits?", ("device", "needs (peak + runtime)", "free", "fits"),
                    [(d, n, f, "yes" if ok else "no") for d, n, f, ok in fits]))
