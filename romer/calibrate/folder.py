"""Calibrated model folders: the chip's read-back weights (replicas and digital parts included), the tokenizer,
and ``plan.json``. ``load_calibrated`` (= ``romer.load``) reloads one with its routing corrections installed.

Plain ``transformers.AutoModelForCausalLM.from_pretrained(folder)`` loads the same weights as they are: that is
the whole calibrated model when the plan does not change routing (``plan.changes_routing`` false: noisy,
prune-duplicate replacement, MaxNN); for plans with router corrections, masks or splits it misses the digital
routing stage, so use ``romer.load``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from torch import nn

from romer.calibrate.apply import apply
from romer.calibrate.plan import Plan
from romer.errors import UserError
from romer.io import write_json_atomic
from romer.models.loading import load_model
from romer.noise.chip import Chip
from romer.staging import make_staging, publish_modes

PLAN_FILE = "plan.json"
CHIP_FILE = "chip.json"  # the chip whose read-back weights the folder holds


def save_calibrated(model: nn.Module, tokenizer, chip: Chip, plan: Plan, out: str | Path) -> Path:
    """Write ``model`` running ``plan`` on ``chip`` to the folder ``out`` (built in a temporary sibling folder,
    then renamed into place, so a failure never leaves a half-written folder; staging folders a killed run left
    beside ``out`` are removed first, ``romer.staging``). ``out`` must not exist."""
    out = Path(out)
    if out.exists():
        raise UserError(f"{out} already exists; choose a new --out folder")
    staging = make_staging(out)
    try:
        with apply(model, chip, plan):
            model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        plan.save(staging / PLAN_FILE)
        write_json_atomic(staging / CHIP_FILE, chip.to_dict())
        publish_modes(staging)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def check_chip(plan: Plan, chip_file: Path) -> None:
    """Refuse a plan fitted for another chip than the one whose read-back weights the folder holds (the fitting
    chip is the folder's chip, or its seed + ``fit_seed_offset`` for a transferred plan). Folders written before
    chip.json existed are not checked."""
    if not chip_file.is_file() or not plan.chip:
        return
    try:
        held = Chip.from_dict(json.loads(chip_file.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{chip_file}: not a chip description ({type(exc).__name__})") from None
    expected = held.with_seed(held.seed + int(plan.method.get("fit_seed_offset", 0) or 0))
    if plan.method.get("fit_time") is not None:
        expected = expected.with_time(plan.method["fit_time"])
    if plan.method.get("fit_io") is not None:
        expected = expected.with_io(plan.method["fit_io"])
    if plan.chip != expected.to_dict():
        raise UserError(f"{chip_file.parent}: plan.json was fitted for another chip (seed {plan.chip.get('seed')}) "
                        f"than the weights were read back from (seed {held.seed})")


def is_calibrated(folder: str | Path) -> bool:
    return (Path(folder) / PLAN_FILE).is_file()


def load_calibrated(name_or_folder: str | Path, **options):
    """``(model, tokenizer)``; a calibrated folder comes with its plan's routing corrections installed (they stay
    for the model's lifetime). Any other model loads as ``romer.models.load_model`` does; ``options`` (dtype,
    device, allow_pickle, trust_remote_code) go to it."""
    model, tokenizer = load_model(name_or_folder, **options)
    if is_calibrated(name_or_folder):
        plan = Plan.load(Path(name_or_folder) / PLAN_FILE)
        check_chip(plan, Path(name_or_folder) / CHIP_FILE)
        model._romer_plan = apply(model, None, plan)
    return model, tokenizer
