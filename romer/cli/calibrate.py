"""`romer calibrate`: fit a calibration plan for one chip and write the calibrated model folder + plan.json."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
import yaml

from romer.cli.common import (DEVICE_OPTION, DTYPE_OPTION, MAPPING_OPTION, MODEL_OPTION, PLACEMENT_OPTION,
                              SEED_OPTION, SET_OPTION, T_OPTION, chip_from_options, user_errors)
from romer.cli.output import console, table
from romer.errors import UserError

METHOD_KINDS = ("romer", "replace", "recalibrate", "maxnn", "balance", "copies", "noisy")


def method_from_options(kind: str, options: list[str], sequences: int | None):
    """A MethodConfig of ``kind`` with dotted ``key=value`` overrides (values parsed as YAML scalars)."""
    from pydantic import ValidationError

    from romer.calibrate.config import MethodConfig

    if kind not in METHOD_KINDS:
        raise UserError(f"unknown --method {kind!r}; choose one of {', '.join(METHOD_KINDS)}")
    payload: dict = {"name": kind, "kind": kind}
    for item in options:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--with takes KEY=VALUE (e.g. replace.variant=split), got {item!r}")
        *parents, leaf = key.strip().split(".")
        node = payload
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"--with {key}: {part} is not a section")
        node[leaf] = yaml.safe_load(value)
    if sequences is not None:
        payload.setdefault("calibration", {})["sequences"] = sequences
    try:
        return MethodConfig.model_validate(payload)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"]) or "method"
        raise UserError(f"--method {kind}: {where}: {error['msg']}") from None


def _plan_table(plan, layers):
    fixes = {f.layer: f for f in plan.router}
    replaced = {r.layer: r for r in plan.replacement}

    def span(values) -> str:
        return "—" if not values else f"{min(values):.3f} … {max(values):.3f}"

    rows = []
    for i, layer in enumerate(layers):
        fix, rep = fixes.get(layer), replaced.get(layer)
        rows.append((layer, " ".join(f"{c}←{h}" for c, h in rep.pairs) if rep else "—",
                     span(fix.scale if fix else None), span(fix.offset if fix else None),
                     " ".join(map(str, plan.digital_experts.get(layer, []))) or "—",
                     f"{plan.stats['cv_noisy'][i]:.3f}" if "cv_noisy" in plan.stats else "—"))
    return table("plan per MoE layer", ("layer", "replaced (cold ← hot)", "scale min … max", "offset min … max",
                                        "digital experts", "CV noisy (calib.)"), rows, keys=(0,))


@user_errors
def calibrate_command(
    model: str = MODEL_OPTION,
    out: Path = typer.Option(..., "--out", help="New folder for the calibrated model and plan.json."),
    method: str = typer.Option("recalibrate", "--method", help=f"One of {', '.join(METHOD_KINDS)} (default "
                               "recalibrate, P1: README, \"When ROMER helps\", the recommendation)."),
    options: list[str] = typer.Option([], "--with", help="Method option KEY=VALUE, e.g. replace.variant=split, "
                                                         "recalibrate.percentiles=[10,90]."),
    sequences: Optional[int] = typer.Option(None, help="Calibration windows from the train split (default 64)."),
    preset: str = typer.Option("default", help="Noise preset name, a fitted preset YAML, or default (main chip)."),
    seed: int = SEED_OPTION,
    t: float = T_OPTION,
    placement: str = PLACEMENT_OPTION,
    mapping: str = MAPPING_OPTION,
    settings: list[str] = SET_OPTION,
    device: str = DEVICE_OPTION,
    dtype: str = DTYPE_OPTION,
):
    """Fit a plan on calibration text run through the chip-programmed model; write the calibrated model folder
    (the chip's read-back weights with the plan applied) and plan.json. Evaluate it with `romer eval --model OUT`."""
    from romer.calibrate import Calibrator
    from romer.calibrate.folder import save_calibrated
    from romer.devices import parse_device, parse_dtype
    from romer.models import load_model, resolve_model_dir
    from romer.models.memory import check_fits

    config = method_from_options(method, options, sequences)
    if out.exists():
        raise UserError(f"{out} already exists; choose a new --out folder")
    chip = chip_from_options(preset, placement, mapping, seed, t, settings)
    target, weights_dtype = parse_device(device), parse_dtype(dtype)
    check_fits(resolve_model_dir(model), str(target), weights_dtype, config.calibration.window,
               config.calibration.batch_size, placement)  # refuse before loading a model that cannot fit
    lm, tokenizer = load_model(model, dtype=weights_dtype, device=target)
    calibrator = Calibrator(config)
    out_console = console()
    if config.observes:
        out_console.print(f"fitting {config.name} on {config.calibration.sequences} calibration windows")
    windows = calibrator.windows(tokenizer) if config.observes else None
    plan = calibrator.fit(lm, windows, chip) if config.needs_fit else None
    if plan is None:
        from romer.calibrate import Plan

        plan = Plan.none(chip)
        plan.method = config.model_dump(mode="json")
    plan.model["source"] = model
    save_calibrated(lm, tokenizer, chip, plan, out)
    if plan.router or plan.replacement or plan.digital_experts:
        out_console.print(_plan_table(plan, plan.model.get("moe_layers", [])))
    routing = "needs romer.load (digital routing corrections)" if plan.changes_routing else "loads in plain transformers"
    out_console.print(f"wrote {out} ({routing}); evaluate: romer eval --model {out}")
