"""`romer calibrate`: fit a calibration plan for one chip and write the calibrated model folder + plan.json."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Optional

import typer

from romer.cli.common import (DEVICE_OPTION, DTYPE_OPTION, MAPPING_OPTION, MODEL_OPTION, PLACEMENT_OPTION,
                              PRESET_HELP, SEED_OPTION, T_OPTION, announce, chip_from, chip_given, chip_label,
                              check_writable, load_options, resolve_settings, user_errors)
from romer.cli.output import console, table
from romer.methods import plan_kinds
from romer.errors import UserError

METHOD_KINDS = (*plan_kinds(), "noisy")  # noisy: the empty plan (the chip as programmed)
CALIBRATE_SET_HELP = ("SECTION.KEY=VALUE (a YAML value) with the experiment config's keys, after the options; "
                      "repeatable. method.KEY: an option of the method as in a `methods:` entry (e.g. "
                      "method.replace.variant=split, method.recalibrate.percentiles=[10,90]); calibration.KEY: "
                      "sequences, window, dataset, data_path, split, batch_size, seed; chip.overrides.KNOB: a preset "
                      "constant (e.g. chip.overrides.prog_noise_scale=3); chip.preset/placement/mapping/t_inference/"
                      "seed; eval.device, eval.weights_dtype. See docs/cli.md.")


def calibration_split(section: dict) -> dict:
    """The calibration section with its split filled in: train where the dataset has one, else its only split
    (a text file, lambada, c4), so one file is enough to calibrate on."""
    from romer.data.datasets import dataset_info

    if "split" in section:
        return section
    info = dataset_info(section.get("dataset", "bundled"))
    return {**section, "split": "train" if "train" in info.splits else info.eval_split}


def method_from(data: dict):
    """The MethodConfig of a calibrate command's ``method`` section (kind default recalibrate, name = kind) with the
    ``calibration`` section under its own ``method.calibration`` keys; UserError naming the bad key."""
    from pydantic import ValidationError

    from romer.calibrate.config import MethodConfig

    payload = dict(data.get("method") or {})
    kind = payload.setdefault("kind", "recalibrate")
    if kind not in METHOD_KINDS:
        raise UserError(f"unknown --method {kind!r}; choose one of {', '.join(METHOD_KINDS)}")
    payload.setdefault("name", kind)
    own = payload.get("calibration") or {}
    if not isinstance(own, dict):
        raise UserError(f"method.calibration takes KEY: VALUE pairs, got {own!r}")
    payload["calibration"] = calibration_split({**data.get("calibration", {}), **own})
    try:
        return MethodConfig.model_validate(payload)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"]) or "method"
        raise UserError(f"--method {kind}: {where}: {error['msg']}") from None


def calibration_label(data) -> str:
    """One line naming the calibration text (``romer.calibrate.config.CalibrationData``)."""
    name = data.dataset if data.data_path is None else f"{data.dataset} ({Path(data.data_path).name})"
    return (f"{name} {data.split}, {data.sequences} windows of {data.window} tokens (documents in a shuffled order, "
            f"seed {data.seed})")


def too_short(tokenizer, data) -> str | None:
    """None when the calibration text holds the windows asked for; else one line: the tokens the windows need, the
    tokens the text has, and what would fit."""
    from romer.data import load_dataset_documents

    need = data.sequences * (data.window - 1)
    have = 0
    for document in load_dataset_documents(data.dataset, data.data_path, data.split):
        have += len(tokenizer(document + "\n\n", add_special_tokens=False)["input_ids"])
        if have >= need:
            return None
    name = data.dataset if data.data_path is None else f"{data.dataset} ({data.data_path})"
    fits, longest = have // (data.window - 1), have // data.sequences + 1
    options = [f"{fits} windows of {data.window} tokens (--sequences {fits})"] if fits >= 1 else []
    if longest >= 2:
        options.append(f"{data.sequences} windows of {longest} tokens (--set calibration.window={longest})")
    hint = "; it fits " + " or ".join(options) if options else "; too short for even one window: give a longer text"
    return (f"calibration text too short: the {data.split} split of {name} has {have:,} tokens, fewer than the "
            f"{need:,} that {data.sequences} windows of {data.window} tokens need ({data.sequences} × "
            f"{data.window - 1} text tokens, each window starting with BOS){hint}")


def next_commands(model: str, out: Path, data: dict, chip, config, changes_routing: bool) -> list[str]:
    """What to run next: the calibrated folder, and the same chip uncalibrated, both on the calibration dataset's
    evaluation text (its dataset options kept)."""
    from romer.data.datasets import dataset_info
    from romer.noise.chip import DEFAULT_CHIP

    calibration = config.calibration
    text = [] if calibration.dataset == "bundled" else ["--dataset", calibration.dataset]
    if calibration.data_path is not None:
        text += ["--data-path", calibration.data_path]
    section = data["chip"]
    same = ["--preset", str(section.get("preset", "default")), "--seed", str(chip.seed), "--chips", "1"]
    for key, option in (("t_inference", "--t"), ("placement", "--placement"), ("mapping", "--mapping")):
        if key in section and section[key] != DEFAULT_CHIP[key]:
            same += [option, f"{section[key]:g}" if key == "t_inference" else str(section[key])]
    for knob, value in (section.get("overrides") or {}).items():
        same += ["--set", f"chip.overrides.{knob}={value}"]
    routing = "needs romer.load (digital routing corrections)" if changes_routing else "loads in plain transformers"
    lines = [f"wrote {out} ({routing})",
             "evaluate: " + shlex.join(["romer", "eval", "--model", str(out), *text]),
             "the same chip uncalibrated: " + shlex.join(["romer", "eval", "--model", model, *same, *text])]
    if calibration.split == dataset_info(calibration.dataset).eval_split:
        lines.append(f"note: calibration read the {calibration.split} split of {calibration.dataset}, the split eval "
                     "scores: evaluate on other text (--data-path) for a fair number")
    return lines


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
    method: Optional[str] = typer.Option(None, "--method", help=f"One of {', '.join(METHOD_KINDS)} (default "
                                         "recalibrate, P1: README, \"When ROMER helps\", the recommendation); "
                                         "method.kind."),
    sequences: Optional[int] = typer.Option(None, "--sequences", help="Calibration windows (default 64); "
                                                                      "calibration.sequences."),
    calibration_dataset: Optional[str] = typer.Option(None, "--calibration-dataset", help=(
        "Text to calibrate on: bundled (the default), wikitext2, wikitext103, lambada, c4, or text (your own file, "
        "with --calibration-data-path); calibration.dataset.")),
    calibration_data_path: Optional[str] = typer.Option(None, "--calibration-data-path", help=(
        "Local copy of the calibration dataset (a file or folder); calibration.data_path.")),
    calibration_split: Optional[str] = typer.Option(None, "--calibration-split", help=(
        "Split to calibrate on (default train; a dataset without one, e.g. a text file: its only split); "
        "calibration.split.")),
    preset: Optional[str] = typer.Option(None, "--preset", help=PRESET_HELP + ". Default: default."),
    seed: Optional[int] = SEED_OPTION,
    t: Optional[float] = T_OPTION,
    placement: Optional[str] = PLACEMENT_OPTION,
    mapping: Optional[str] = MAPPING_OPTION,
    settings: list[str] = typer.Option([], "--set", help=CALIBRATE_SET_HELP),
    device: Optional[str] = DEVICE_OPTION,
    dtype: Optional[str] = DTYPE_OPTION,
):
    """Fit a plan on calibration text run through the chip-programmed model; write the calibrated model folder
    (the chip's read-back weights with the plan applied) and plan.json. Evaluate it with `romer eval --model OUT`."""
    from romer.calibrate import Calibrator
    from romer.calibrate.folder import save_calibrated
    from romer.models import load_model, resolve_model_dir
    from romer.models.memory import check_fits
    from romer.staging import remove_stale

    given = {**chip_given(preset, None, seed, t, placement, mapping), "method.kind": method,
             "calibration.sequences": sequences, "calibration.dataset": calibration_dataset,
             "calibration.data_path": calibration_data_path, "calibration.split": calibration_split,
             "eval.device": device, "eval.weights_dtype": dtype}
    data = resolve_settings("calibrate", given, settings)
    config = method_from(data)
    if out.exists():
        raise UserError(f"{out} already exists; choose a new --out folder")
    check_writable(out, "--out", folder=True)  # before the work, not after it
    remove_stale(out)  # staging folders an earlier, killed calibrate to the same place left beside it
    chip, _ = chip_from(data["chip"], needed=True)
    loading = load_options(data["eval"])
    target, weights_dtype = loading["device"], loading["dtype"]
    check_fits(resolve_model_dir(model), str(target), weights_dtype, config.calibration.window,
               config.calibration.batch_size, chip.placement_name())  # refuse before loading a model that cannot fit
    lm, tokenizer = load_model(model, dtype=weights_dtype, device=target)
    calibrator = Calibrator(config)
    out_console = console()
    announce(out_console, chip_label(chip), calibration_label(config.calibration) if config.observes else None)
    if config.observes:
        out_console.print(f"fitting {config.name} on {config.calibration.sequences} calibration windows")
    try:
        windows = calibrator.windows(tokenizer) if config.observes else None
    except UserError:
        shortfall = too_short(tokenizer, config.calibration)  # the same count, now with what would fit
        if shortfall is None:
            raise
        raise UserError(shortfall) from None
    plan = calibrator.fit(lm, windows, chip) if config.needs_fit else None
    if plan is None:
        from romer.calibrate import Plan

        plan = Plan.none(chip)
        plan.method = config.model_dump(mode="json")
    plan.model["source"] = model
    save_calibrated(lm, tokenizer, chip, plan, out)
    if plan.router or plan.replacement or plan.digital_experts:
        out_console.print(_plan_table(plan, plan.model.get("moe_layers", [])))
    for line in next_commands(model, out, data, chip, config, plan.changes_routing):
        out_console.print(line, highlight=False, markup=False)
