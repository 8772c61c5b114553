"""What every command shares: error handling (one line, no traceback unless asked) and the chip options."""

from __future__ import annotations

import functools
import os

import typer

from romer.errors import UserError

DEBUG_ENV = "ROMER_DEBUG"

PRESET_HELP = ("Noise preset: pcm, hermes, reram, gaussian, gaussian-mult, a preset file (.yaml, e.g. from "
               "`romer chip fit`), or default (the main job's chip)")
PLACEMENT_HELP = "Analog placement: moe, experts, all, or a comma list of groups."
MAPPING_HELP = "Mapping group: expert, channel, tile or tensor."
T_HELP = "Inference time, seconds after programming."
SET_HELP = "Preset constant KEY=VALUE, e.g. prog_noise_scale=3."
MODEL_HELP = "Zoo model name or a local Hugging Face folder."
DEVICE_HELP = "Where the model runs: cpu, cuda, cuda:N or auto (the first GPU if there is one, else cpu)."
DTYPE_HELP = "Weight dtype: float32, bfloat16 or float16 (noise is always computed in float32)."
DEVICE_MAP_HELP = "auto: spread a model too large for one GPU over the visible GPUs and the CPU (accelerate)."
ALLOW_PICKLE_HELP = "Also load pickled weights (pytorch_model.bin): only for checkpoints you trust."
TRUST_REMOTE_CODE_HELP = "Run the checkpoint's own modelling code (auto_map): only for checkpoints you trust."
DATASET_HELP = ("Text to score: bundled (romer's corpus), wikitext2, wikitext103, lambada, c4, or text (your own "
                "file, with --data-path); see docs/zero-shot.md.")
DATA_PATH_HELP = ("Local copy of the dataset: a file (.txt, .jsonl, .json.gz, .parquet), a folder, or a "
                  "save_to_disk folder; without it the offline Hugging Face cache is read.")
PPL_HELP = ("Perplexity convention: windows (GPTQ-style: the split as one string, non-overlapping windows) or "
            "documents (lm-eval: each document in rolling windows; word PPL = lm-eval word_perplexity).")
TASKS_HELP = ("Zero-shot tasks, comma separated: romer_cloze, romer_nextsent (bundled), arc_easy, arc_challenge, "
              "piqa, lambada_openai (with --task-data), or any lm-eval task in your offline cache.")
TASK_DATA_HELP = "Local file of a task, TASK=PATH (e.g. arc_easy=ARC-Easy-Test.jsonl); repeatable."


# Options several commands share, declared once (typer reads them as metadata; reusing one is safe).
MODEL_OPTION = typer.Option(..., "--model", help=MODEL_HELP)
SEED_OPTION = typer.Option(0, help="Seed of the (first) chip.")
T_OPTION = typer.Option(86400.0, "--t", help=T_HELP)
PLACEMENT_OPTION = typer.Option("moe", help=PLACEMENT_HELP)
MAPPING_OPTION = typer.Option("expert", help=MAPPING_HELP)
SET_OPTION = typer.Option([], "--set", help=SET_HELP)
WINDOW_OPTION = typer.Option(512, help="Model input length in tokens, including the BOS token.")
DATASET_OPTION = typer.Option("bundled", "--dataset", help=DATASET_HELP)
DATA_PATH_OPTION = typer.Option(None, "--data-path", help=DATA_PATH_HELP)
DEVICE_OPTION = typer.Option("cpu", "--device", help=DEVICE_HELP)
DTYPE_OPTION = typer.Option("float32", "--dtype", help=DTYPE_HELP)
DEVICE_MAP_OPTION = typer.Option(None, "--device-map", help=DEVICE_MAP_HELP)
ALLOW_PICKLE_OPTION = typer.Option(False, "--allow-pickle", help=ALLOW_PICKLE_HELP)
TRUST_REMOTE_CODE_OPTION = typer.Option(False, "--trust-remote-code", help=TRUST_REMOTE_CODE_HELP)

def debug_enabled() -> bool:
    """True with the environment variable ROMER_DEBUG=1, which `romer --debug …` sets for its own process
    (:func:`romer.cli.main.main`): errors show their traceback."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def user_errors(command):
    """Run a command so that no error ends in a traceback by default.

    A user mistake (UserError) is one line on stderr and exit status 2; any other error is one line naming its
    type and exit status 1 (its traceback with --debug or ROMER_DEBUG=1); Ctrl-C is exit status 130.
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
            typer.echo(f"error: {_one_line(exc)}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None
        except Exception as exc:  # noqa: BLE001 — the last line of defence: one line, traceback on request
            if debug_enabled():
                raise
            typer.echo(f"error: {type(exc).__name__}: {_one_line(exc)} (rerun with --debug for the traceback)",
                       err=True)
            raise typer.Exit(1) from None

    return wrapper


def load_options(device: str, dtype: str, device_map: str | None, allow_pickle: bool = False,
                 trust_remote_code: bool = False) -> dict:
    """The keyword arguments of ``romer.load`` / ``romer.models.load_model`` from the CLI's loading options."""
    from romer.devices import parse_device, parse_dtype

    if device_map not in (None, "auto"):
        raise UserError(f"--device-map takes auto, got {device_map!r}")
    return {"device": parse_device(device), "dtype": parse_dtype(dtype), "device_map": device_map,
            "allow_pickle": allow_pickle, "trust_remote_code": trust_remote_code}


def check_window(window: int) -> None:
    if window < 2:
        raise UserError(f"--window must be at least 2 tokens, got {window}")


def check_at_least(name: str, value: int, least: int = 1) -> None:
    if value < least:
        raise UserError(f"{name} must be at least {least}, got {value}")


def preset_overrides(settings: list[str]) -> dict[str, str]:
    """``["prog_noise_scale=3", …]`` → ``{"prog_noise_scale": "3", …}``; UserError for an item without "="."""
    overrides = {}
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set takes KEY=VALUE (a preset constant), got {item!r}")
        overrides[key.strip()] = value.strip()
    return overrides


def chip_from_options(preset: str, placement: str, mapping: str, seed: int, t: float, settings: list[str]):
    """A Chip from CLI options; preset "default" is the main job's default chip (its scales unless --set)."""
    from romer.noise.chip import DEFAULT_CHIP, Chip

    overrides = preset_overrides(settings)
    if preset == "default":
        scales = {k: v for k, v in DEFAULT_CHIP.items() if k.endswith("_scale")}
        return Chip.from_options(DEFAULT_CHIP["preset"], placement=placement, mapping=mapping, seed=seed,
                                 t_inference=t, **{**scales, **overrides})
    return Chip.from_options(preset, placement=placement, mapping=mapping, seed=seed, t_inference=t, **overrides)
