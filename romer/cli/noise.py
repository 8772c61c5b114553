"""`romer noise`: the analog device presets (show, plot) and the zoo's noise sensitivity."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from romer.cli.common import (IO_OPTION, NOISE_SET_HELP, ORDER_OPTION, announce, check_at_least, eval_spec,
                              preset_from, preset_label, resolve_settings, user_errors)
from romer.cli.output import JSON_HELP, console, table, write_json

noise_app = typer.Typer(no_args_is_help=True, help="Analog device noise presets.")
PRESET_ARG_HELP = ("default (the main job's chip: PCM ×10), pcm (×1), hermes, reram, gaussian, gaussian-mult, or a "
                   "preset file (.yaml).")
SHOW_TIMES_S = (0.0, 1.0, 3600.0, 86400.0, 3.15e7)
SHOW_LEVELS = (0.01, 0.1, 0.25, 0.5, 0.75, 1.0)


@noise_app.command("show")
@user_errors
def noise_show(
    preset: str = typer.Argument(..., help=PRESET_ARG_HELP),
    settings: list[str] = typer.Option([], "--set", help=NOISE_SET_HELP),
    io: Optional[str] = IO_OPTION,
    json_path: Optional[str] = typer.Option(None, "--json", help=JSON_HELP),
):
    """A preset's constants, the spread of the read-back conductance σ(ĝ) at a few times, and the IO model."""
    from romer.noise.io import get_io

    chosen = preset_from(preset, resolve_settings("noise show", {}, settings)["chip"].get("overrides"))
    periphery = get_io(io)
    times = [t for t in SHOW_TIMES_S if t <= chosen.max_t_inference]
    rows = chosen.sigma_table(SHOW_LEVELS, times)
    constants = chosen.describe()
    payload = {"preset": chosen.name, "settings": chosen.to_dict(), "constants": dict(constants),
               "sigma": [row._asdict() for row in rows], "io": periphery.to_dict()}
    if write_json(json_path, payload):
        return
    out = console()
    announce(out, preset_label(chosen), None)
    out.print(table(f"preset {chosen.name}", ("constant", "value"), constants, keys=(0,), right=()))
    cells = [[f"{g:g}", *(f"{r.std:.4f} ({r.mean:.3f})" for r in rows if r.g_target == g)] for g in SHOW_LEVELS]
    out.print(table("std of read-back ĝ = g/g_max (mean in brackets), no drift compensation",
                    ("ĝ_T", *(f"t = {t:g} s" for t in times)), cells, keys=()))
    out.print(table(f"io {periphery.name}: the periphery of every analog matmul", ("part", "value"),
                    periphery.describe(), keys=(0,), right=()))


@noise_app.command("plot")
@user_errors
def noise_plot(
    preset: str = typer.Argument(..., help=PRESET_ARG_HELP),
    out: Optional[Path] = typer.Option(None, help="PNG path (default PRESET_noise.png)."),
    settings: list[str] = typer.Option([], "--set", help=NOISE_SET_HELP),
):
    """Write a PNG: programming / total noise vs conductance, and drift vs time."""
    from romer.noise.plot import plot_preset

    chosen = preset_from(preset, resolve_settings("noise plot", {}, settings)["chip"].get("overrides"))
    path = plot_preset(chosen, out or Path(f"{chosen.name}_noise.png"))
    console().print(f"wrote {path}")


@noise_app.command("sensitivity")
@user_errors
def noise_sensitivity(
    models: Optional[list[str]] = typer.Option(None, "--model", help="Models (default: the whole zoo)."),
    chips: int = typer.Option(3, help="Chips per setting (seeds 0 … CHIPS−1)."),
    split: Optional[str] = typer.Option(None, "--split", help="Split of the bundled corpus (default validation: the "
                                                              "default chip was chosen on it, test stays untouched)."),
    order: Optional[str] = ORDER_OPTION,
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="Score the text's first N tokens (default "
                                                                        "16384)."),
    window: Optional[int] = typer.Option(None, "--window", help="Model input length in tokens (default 512)."),
    io: Optional[str] = IO_OPTION,
    settings: list[str] = typer.Option([], "--set", help="eval.KEY=VALUE: split, order, max_tokens, window; "
                                                         "repeatable."),
    json_path: Optional[str] = typer.Option(None, "--json", help=JSON_HELP),
):
    """Validation PPL under PCM over time, PCM with scaled noise and gaussian noise, per placement."""
    from romer.models import zoo_names
    from romer.noise.io import get_io
    from romer.report.studies import sensitivity_markdown
    from romer.studies.sensitivity import SENSITIVITY_SPEC, sensitivity

    check_at_least("--chips", chips)
    data = resolve_settings("noise sensitivity", {"eval.split": split, "eval.order": order,
                                                  "eval.max_tokens": max_tokens, "eval.window": window}, settings)
    spec = eval_spec(data["eval"], split=SENSITIVITY_SPEC.split, max_tokens=SENSITIVITY_SPEC.max_tokens)
    periphery = get_io(io)
    to_stdout = json_path == "-"
    announce(console(), "PCM over time and noise scale, gaussian η; moe and all placements"
             + ("" if periphery.is_ideal else f"; io {periphery.name}"), spec.label, stderr=to_stdout)
    results = [sensitivity(name, chips=chips, spec=spec, progress=not to_stdout, io=periphery)
               for name in models or zoo_names()]
    if not write_json(json_path, results):
        typer.echo(sensitivity_markdown(results))
