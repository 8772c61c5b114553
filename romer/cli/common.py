"""What every command shares: error handling (one line, no traceback unless asked), the chip and data options,
and the one override syntax, ``--set SECTION.KEY=VALUE`` with the experiment config's keys (docs/cli.md).

Options and ``--set`` items resolve, here and only here, into the sections of a YAML experiment config: ``chip``
(one chip: ``preset``, ``overrides.KNOB``, ``placement``, ``mapping``, ``t_inference``, ``chips``, ``seed``),
``eval`` (one :class:`romer.eval.spec.EvalSpec` plus ``device`` and ``weights_dtype``), ``calibration``
(``romer.calibrate.config.CalibrationData``) and ``method`` (one ``methods:`` entry). The options a user gives
are set first, the ``--set`` items after them (a later item wins).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import typer

from romer.errors import Terminated, UserError, interruption_exit_code

DEBUG_ENV = "ROMER_DEBUG"

PRESET_HELP = ("Noise preset: default (the main job's chip: PCM with programming and read noise ×10, t = 1 day), "
               "pcm (PCM at its published noise, ×1), hermes, reram, gaussian, gaussian-mult, or a preset file "
               "(.yaml, e.g. from `romer chip fit`)")
PLACEMENT_HELP = "Analog placement: moe, experts, all, or a comma list of groups (default moe)."
IO_HELP = ("IO model of every analog matmul (DAC, output noise, ADC, tiles): ideal (exact inputs and outputs, the "
           "default), aihwkit-default, hwa-standard, or an io file (.yaml); see docs/io.md.")
MAPPING_HELP = "Mapping group: expert, channel, tile or tensor (default expert)."
T_HELP = "Inference time, seconds after programming (default 86400: one day)."
MODEL_HELP = "Zoo model name or a local Hugging Face folder."
DEVICE_HELP = "Where the model runs: cpu, cuda, cuda:N or auto (the first GPU if there is one, else cpu)."
DTYPE_HELP = ("Weight dtype (eval.weights_dtype): float32, bfloat16 or float16 (noise is always computed in float32; "
              "--set eval.dtype=bfloat16 scores under bf16 autocast instead).")
DEVICE_MAP_HELP = "auto: spread a model too large for one GPU over the visible GPUs and the CPU (accelerate)."
ALLOW_PICKLE_HELP = "Also load pickled weights (pytorch_model.bin): only for checkpoints you trust."
TRUST_REMOTE_CODE_HELP = "Run the checkpoint's own modelling code (auto_map): only for checkpoints you trust."
DATASET_HELP = ("Text to score: bundled (romer's corpus, the default), wikitext2, wikitext103, lambada, c4, or text "
                "(your own file, with --data-path); see docs/zero-shot.md.")
DATA_PATH_HELP = ("Local copy of the dataset: a file (.txt, .jsonl, .json.gz, .parquet), a folder, or a "
                  "save_to_disk folder; without it the offline Hugging Face cache is read.")
SPLIT_HELP = "Split of the dataset (default test; c4: validation; a text file has only test)."
ORDER_HELP = ("Document order: shuffled (a fixed shuffle, so a prefix mixes the sources; the default for bundled) or "
              "source (the file's order, as published WikiText numbers; the default for every other dataset).")
MAX_TOKENS_HELP = "Score only the first N tokens of the text (default: the whole split)."
WINDOW_HELP = "Model input length in tokens, including the BOS token (default 512)."
BATCH_HELP = "Windows per forward pass (default 8)."
PPL_HELP = ("Perplexity convention: windows (GPTQ-style: the split as one string, non-overlapping windows; the "
            "default), documents (lm-eval: each document in rolling windows; word PPL = lm-eval word_perplexity), or "
            "none (zero-shot tasks only).")
TASKS_HELP = ("Zero-shot tasks, comma separated: romer_cloze, romer_nextsent (bundled), arc_easy, arc_challenge, "
              "piqa, lambada_openai (with --task-data), or any lm-eval task in your offline cache.")
TASK_DATA_HELP = "Local file of a task, TASK=PATH (e.g. arc_easy=ARC-Easy-Test.jsonl); repeatable."
LIMIT_HELP = "Only the first N items of each zero-shot task (eval.task_limit)."

# --set: per section, the keys a command may set (None: any key below it, checked by what reads it)
CHIP_KEYS = ("preset", "overrides", "placement", "mapping", "t_inference", "chips", "seed", "io")
EVAL_KEYS = ("dataset", "data_path", "split", "order", "max_tokens", "ppl", "window", "batch_size", "dtype", "tasks",
             "task_data", "task_limit", "device", "weights_dtype")
TEXT_KEYS = ("dataset", "data_path", "split", "order", "max_tokens", "window", "batch_size", "device", "weights_dtype")
CALIBRATION_KEYS = ("sequences", "window", "dataset", "data_path", "split", "batch_size", "seed")
LOADING_KEYS = ("device", "weights_dtype")
KEY_SPACES: dict[str, dict[str, tuple[str, ...] | None]] = {
    "eval": {"chip": CHIP_KEYS, "eval": EVAL_KEYS},
    "stats": {"chip": CHIP_KEYS, "eval": TEXT_KEYS},
    "calibrate": {"chip": tuple(k for k in CHIP_KEYS if k != "chips"), "calibration": CALIBRATION_KEYS,
                  "method": None, "eval": LOADING_KEYS},
    "noise show": {"chip": ("overrides",)},
    "noise plot": {"chip": ("overrides",)},
    "noise sensitivity": {"eval": ("split", "order", "max_tokens", "window")},
    "zoo card": {"eval": ("split", "order", "max_tokens", "window", "batch_size", "dtype")},
}
INTEGER_KEYS = {"max_tokens", "window", "batch_size", "task_limit", "chips", "seed", "sequences"}
SET_HELP = ("SECTION.KEY=VALUE (a YAML value) with the experiment config's keys, after the options; repeatable. "
            "chip.overrides.KNOB sets a preset constant (e.g. chip.overrides.prog_noise_scale=3); also "
            "chip.preset/placement/mapping/t_inference/chips/seed/io and eval.KEY (dataset, data_path, split, order, "
            "max_tokens, ppl, window, batch_size, dtype, tasks, task_data, task_limit, device, weights_dtype). "
            "See docs/cli.md.")
NOISE_SET_HELP = "chip.overrides.KNOB=VALUE: a preset constant, e.g. chip.overrides.prog_noise_scale=3; repeatable."

# Options several commands share, declared once (typer reads them as metadata; reusing one is safe). Every
# data and chip option defaults to None, "not given": the defaults are filled where the sections are read.
MODEL_OPTION = typer.Option(..., "--model", help=MODEL_HELP)
SEED_OPTION = typer.Option(None, "--seed", help="Seed of the (first) chip (default 0).")
T_OPTION = typer.Option(None, "--t", help=T_HELP)
PLACEMENT_OPTION = typer.Option(None, "--placement", help=PLACEMENT_HELP)
MAPPING_OPTION = typer.Option(None, "--mapping", help=MAPPING_HELP)
IO_OPTION = typer.Option(None, "--io", help=IO_HELP)
SET_OPTION = typer.Option([], "--set", help=SET_HELP)
DATASET_OPTION = typer.Option(None, "--dataset", help=DATASET_HELP)
DATA_PATH_OPTION = typer.Option(None, "--data-path", help=DATA_PATH_HELP)
SPLIT_OPTION = typer.Option(None, "--split", help=SPLIT_HELP)
ORDER_OPTION = typer.Option(None, "--order", help=ORDER_HELP)
MAX_TOKENS_OPTION = typer.Option(None, "--max-tokens", help=MAX_TOKENS_HELP)
WINDOW_OPTION = typer.Option(None, "--window", help=WINDOW_HELP)
BATCH_OPTION = typer.Option(None, "--batch-size", help=BATCH_HELP)
PPL_OPTION = typer.Option(None, "--ppl", help=PPL_HELP)
TASKS_OPTION = typer.Option(None, "--tasks", help=TASKS_HELP)
TASK_DATA_OPTION = typer.Option([], "--task-data", help=TASK_DATA_HELP)
LIMIT_OPTION = typer.Option(None, "--limit", help=LIMIT_HELP)
DEVICE_OPTION = typer.Option(None, "--device", help=DEVICE_HELP + " Default cpu.")
DTYPE_OPTION = typer.Option(None, "--dtype", help=DTYPE_HELP)
DEVICE_MAP_OPTION = typer.Option(None, "--device-map", help=DEVICE_MAP_HELP)
ALLOW_PICKLE_OPTION = typer.Option(False, "--allow-pickle", help=ALLOW_PICKLE_HELP)
TRUST_REMOTE_CODE_OPTION = typer.Option(False, "--trust-remote-code", help=TRUST_REMOTE_CODE_HELP)

# Options that are gone: a usage error naming them says what replaced them (romer.cli.main).
REPLACED_OPTIONS = {"--with": "--set method.KEY=VALUE (e.g. --set method.replace.variant=split)",
                    "--max-chars": "--max-tokens N (the text's first N tokens)"}


def debug_enabled() -> bool:
    """True with the environment variable ROMER_DEBUG=1, which `romer --debug …` sets for its own process
    (:func:`romer.cli.main.main`): errors show their traceback."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def user_errors(command):
    """Run a command so that no error ends in a traceback by default.

    A user mistake (UserError) is one line on stderr and exit status 2; any other error is one line naming its
    type and exit status 1 (its traceback with --debug or ROMER_DEBUG=1); Ctrl-C is exit status 130, SIGTERM 143
    and SIGHUP 129 (``romer.errors.Terminated``).
    """

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except typer.Exit:
            raise
        except UserError as exc:
            if debug_enabled():
                raise
            typer.echo(f"error: {one_line(exc)}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt as exc:
            typer.echo("interrupted" + (f" by {exc.signal_name}" if isinstance(exc, Terminated) else ""), err=True)
            raise typer.Exit(interruption_exit_code(exc)) from None
        except Exception as exc:  # noqa: BLE001 — the last line of defence: one line, traceback on request
            if debug_enabled():
                raise
            typer.echo(f"error: {type(exc).__name__}: {one_line(exc)} (rerun with --debug for the traceback)",
                       err=True)
            raise typer.Exit(1) from None

    return wrapper


def check_window(window: int) -> None:
    if window < 2:
        raise UserError(f"--window must be at least 2 tokens, got {window}")


def check_at_least(name: str, value: int, least: int = 1) -> None:
    if value < least:
        raise UserError(f"{name} must be at least {least}, got {value}")


# --- the one override syntax ------------------------------------------------------------------------------------

def _suggestion(key: str, space: dict) -> str:
    """The dotted form of an undotted ``--set KEY``: the section that has the key, a preset constant under
    chip.overrides, else a method option."""
    import dataclasses

    from romer.noise.registry import PRESETS

    for section, keys in space.items():
        if keys is not None and key in keys and key != "overrides":
            return f"{section}.{key}"
    knobs = {f.name for cls in PRESETS.values() for f in dataclasses.fields(cls)}
    if key in knobs or "method" not in space:
        return f"chip.overrides.{key}"
    return f"method.{key}"


def _check_item(item: str, command: str) -> None:
    space = KEY_SPACES[command]
    key, sep, value = item.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise UserError(f"--set takes SECTION.KEY=VALUE, got {item!r}")
    if len(parts) == 1:
        raise UserError(f"--set {item}: keys are dotted as in the YAML config; use --set "
                        f"{_suggestion(parts[0], space)}={value.strip()}")
    section, name = parts[0], parts[1]
    sections = ", ".join(f"{s}.*" for s in space)
    if section not in space:
        hint = ""
        if "chip" in space and section in CHIP_KEYS:
            hint = f"; use --set chip.{key.strip()}={value.strip()}"
        elif "method" in space:
            hint = f"; a method option is --set method.{key.strip()}={value.strip()}"
        raise UserError(f"--set {item}: romer {command} takes {sections}, not {section}.*{hint}")
    keys = space[section]
    if keys is not None and name not in keys:
        raise UserError(f"--set {item}: unknown key {section}.{name}; {section} takes {', '.join(keys)}")
    if len(parts) > 2 and not (section in ("method",) or (section, name) in (("chip", "overrides"),
                                                                              ("eval", "task_data"))):
        raise UserError(f"--set {item}: {section}.{name} takes one value, not {section}.{name}.{parts[2]}")


def resolve_settings(command: str, given: dict[str, Any], items: list[str]) -> dict[str, dict]:
    """The sections of ``command``'s key space (:data:`KEY_SPACES`) from the options a user gave (dotted key →
    value; None: not given) and the ``--set`` items, applied in order after them; values of known integer keys
    are checked to be integers."""
    from romer.experiment.config_file import apply_override

    data: dict[str, dict] = {section: {} for section in KEY_SPACES[command]}
    for key, value in given.items():
        if value is not None:
            section, _, name = key.partition(".")
            data[section][name] = value
    for item in items:
        _check_item(item, command)
        apply_override(data, item)
    for section, values in data.items():
        for name, value in values.items():
            if name in INTEGER_KEYS and section != "method" and value is not None and (
                    isinstance(value, bool) or not isinstance(value, int)):
                raise UserError(f"{section}.{name} takes a whole number, got {value!r}")
    return data


# --- the chip ---------------------------------------------------------------------------------------------------

def chip_from(section: dict, needed: bool = False):
    """``(Chip or None, chip count)`` from a ``chip`` section; no preset and not ``needed``: no chip (clean), and
    a preset constant (chip.overrides) is an error. Preset ``default`` is the main job's chip
    (``romer.noise.chip.DEFAULT_CHIP``), its noise scales under any ``overrides``."""
    from romer.noise.chip import DEFAULT_CHIP, Chip
    from romer.noise.io import get_io

    section = dict(section)
    chips = section.pop("chips", 5)
    check_at_least("--chips", chips)
    preset = section.pop("preset", "default" if needed else None)
    if preset is None:
        stray = sorted(k for k in section if k in ("overrides", "io"))
        if stray:
            raise UserError(f"chip.{stray[0]} (--set) needs --preset (or --set chip.preset=NAME)")
        return None, chips
    overrides = section.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise UserError(f"chip.overrides takes KNOB: VALUE pairs, got {overrides!r}")
    preset = preset_from(str(preset), overrides)
    t = section.get("t_inference", DEFAULT_CHIP["t_inference"])
    if not isinstance(t, (int, float)) or isinstance(t, bool):
        raise UserError(f"chip.t_inference (--t) takes seconds, got {t!r}")
    options = dict(placement=section.get("placement", DEFAULT_CHIP["placement"]),
                   mapping=section.get("mapping", DEFAULT_CHIP["mapping"]), seed=section.get("seed", 0),
                   t_inference=float(t), io=get_io(section.get("io")))
    return Chip(preset, **options), chips


def preset_from(name: str, overrides: dict | None = None):
    """A noise preset by name or file, its constants overridden; ``default`` is the main job's chip's preset (PCM
    with its noise scales, ``romer.noise.chip.DEFAULT_CHIP``)."""
    from romer.noise.chip import DEFAULT_CHIP
    from romer.noise.registry import get_preset

    overrides = overrides or {}
    if name == "default":
        scales = {k: v for k, v in DEFAULT_CHIP.items() if k.endswith("_scale")}
        return get_preset(DEFAULT_CHIP["preset"], **{**scales, **overrides})
    return get_preset(name, **overrides)


def chip_given(preset=None, chips=None, seed=None, t=None, placement=None, mapping=None, io=None) -> dict[str, Any]:
    """The chip options a user gave, as ``chip.KEY`` entries for :func:`resolve_settings`."""
    return {"chip.preset": preset, "chip.chips": chips, "chip.seed": seed, "chip.t_inference": t,
            "chip.placement": placement, "chip.mapping": mapping, "chip.io": io}


def preset_label(preset) -> str:
    """A preset's name with the constants it sets away from the preset's own defaults, e.g.
    ``pcm (prog_noise_scale=10, read_noise_scale=10)``."""
    try:
        base = type(preset)().to_dict()
    except Exception:  # noqa: BLE001 — a measured preset has no defaults to compare with
        return preset.name
    knobs = {k: v for k, v in preset.to_dict().items() if k != "name" and base.get(k) != v}
    text = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in knobs.items())
    return f"{preset.name} ({text})" if text else preset.name


def chip_label(chip, chips: int = 1) -> str:
    """One line naming the chip(s): preset, time, placement, mapping, seeds."""
    seeds = f"seed {chip.seed}" if chips == 1 else f"seeds {chip.seed}…{chip.seed + chips - 1}"
    io = "" if chip.io.is_ideal else f", io {chip.io.name}"
    return (f"{preset_label(chip.preset)} at t = {chip.t_inference:g} s, {chip.placement_name()} analog, "
            f"{chip.mapping} mapping{io}, {seeds}")


# --- the text ---------------------------------------------------------------------------------------------------

def data_given(dataset=None, data_path=None, split=None, order=None, max_tokens=None, window=None, batch_size=None,
               ppl=None, tasks=None, task_data=(), limit=None, device=None, dtype=None) -> dict[str, Any]:
    """The data and loading options a user gave, as ``eval.KEY`` entries for :func:`resolve_settings`."""
    return {"eval.dataset": dataset, "eval.data_path": data_path, "eval.split": split, "eval.order": order,
            "eval.max_tokens": max_tokens, "eval.window": window, "eval.batch_size": batch_size, "eval.ppl": ppl,
            "eval.tasks": tasks, "eval.task_data": list(task_data) or None, "eval.task_limit": limit,
            "eval.device": device, "eval.weights_dtype": dtype}


def task_data_paths(value) -> dict[str, str]:
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    paths = {}
    for item in [value] if isinstance(value, str) else value or ():
        task, sep, path = str(item).partition("=")
        if not sep or not task.strip() or not path.strip():
            raise UserError(f"--task-data takes TASK=PATH, got {item!r}")
        paths[task.strip()] = path.strip()
    return paths


def eval_spec(section: dict, **defaults):
    """The one :class:`romer.eval.spec.EvalSpec` of an ``eval`` section (``defaults`` under it; the split
    defaults to the dataset's evaluation split: test, c4 validation); device and weights_dtype are not part of it."""
    from romer.data.datasets import dataset_info
    from romer.eval.spec import EvalSpec

    values = {**defaults, **{k: v for k, v in section.items() if k not in LOADING_KEYS}}
    if "window" in values:
        check_window(values["window"])
    for name, option in (("batch_size", "--batch-size"), ("task_limit", "--limit")):
        if values.get(name) is not None:
            check_at_least(option, values[name])
    values.setdefault("split", dataset_info(values.get("dataset", "bundled")).eval_split)
    tasks = values.get("tasks") or ()
    values["tasks"] = tuple(t.strip() for t in tasks.split(",") if t.strip()) if isinstance(tasks, str) else \
        tuple(tasks)
    values["task_data"] = task_data_paths(values.get("task_data"))
    return EvalSpec(**values)


def load_options(section: dict, device_map: str | None = None, allow_pickle: bool = False,
                 trust_remote_code: bool = False) -> dict:
    """The keyword arguments of ``romer.load`` / ``romer.models.load_model`` from an ``eval`` section's device and
    weights_dtype and the loading options."""
    from romer.devices import parse_device, parse_dtype

    if device_map not in (None, "auto"):
        raise UserError(f"--device-map takes auto, got {device_map!r}")
    return {"device": parse_device(section.get("device", "cpu")),
            "dtype": parse_dtype(section.get("weights_dtype", "float32")), "device_map": device_map,
            "allow_pickle": allow_pickle, "trust_remote_code": trust_remote_code}


def model_label(model: str) -> str:
    """How a model shows in tables: a zoo name as it is, a folder by its name."""
    path = Path(model)
    if len(path.parts) > 1 or path.is_dir():
        return path.resolve().name or model
    return model


def announce(out, chip: str | None, text: str | None, stderr: bool = False) -> None:
    """Print, once and before any result, the chip and the text a command used (stderr when stdout holds JSON)."""
    lines = [*([f"chip: {chip}"] if chip else []), *([f"text: {text}"] if text else [])]
    for line in lines:
        if stderr:
            typer.echo(line, err=True)
        else:
            out.print(line, highlight=False, markup=False)


def check_writable(path: str | Path | None, option: str, folder: bool = False) -> None:
    """Refuse, before any work, an output that cannot be written: a folder option naming a file, a file option
    naming a folder, or a place under a file or an unwritable folder. ``-`` (stdout) and None pass."""
    if path is None or str(path) == "-":
        return
    target = Path(path).expanduser()
    if target.is_symlink() and not target.exists():
        raise UserError(f"{option} {target} is a link to {os.readlink(target)}, which does not exist")
    if target.exists() and folder != target.is_dir():
        raise UserError(f"{option} {target} is {'a file' if folder else 'a folder'}; give a "
                        f"{'folder' if folder else 'file'} path")
    existing = target if folder and target.exists() else target.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{option} {target} cannot be written: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{option} {target} cannot be written: {existing} is not writable")
