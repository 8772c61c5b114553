"""`romer eval`: perplexity on a dataset and zero-shot accuracy, clean or over simulated chips."""

from __future__ import annotations

import math

import json
from pathlib import Path
from typing import Optional

import typer

from romer.cli.common import (ALLOW_PICKLE_OPTION, BATCH_OPTION, DATASET_OPTION, DATA_PATH_OPTION, DEVICE_MAP_OPTION,
                              DEVICE_OPTION, DTYPE_OPTION, IO_OPTION, LIMIT_OPTION, MAPPING_OPTION, MAX_TOKENS_OPTION,
                              MODEL_OPTION, ORDER_OPTION, PLACEMENT_OPTION, PPL_OPTION, PRESET_HELP, SEED_OPTION,
                              SET_OPTION, SPLIT_OPTION, TASKS_OPTION, TASK_DATA_OPTION, TRUST_REMOTE_CODE_OPTION,
                              T_OPTION, WINDOW_OPTION, announce, chip_from, chip_given, chip_label, data_given,
                              check_writable, eval_spec, load_options, model_label, resolve_settings, user_errors)
from romer.cli.output import JSON_HELP, console, table, write_json
from romer.errors import UserError


def calibrated_label(folder: str) -> str:
    """What a calibrated folder holds: its method, fitted on which chip."""
    from romer.noise.chip import Chip

    plan = json.loads((Path(folder) / "plan.json").read_text())
    method = plan.get("method") or {}
    name = method.get("name") or "noisy (no plan)"
    chip_file = Path(folder) / "chip.json"
    try:
        chip = Chip.from_dict(json.loads(chip_file.read_text()) if chip_file.is_file() else plan["chip"])
        on = chip_label(chip)
    except (KeyError, TypeError, ValueError, UserError):
        on = "its chip"
    return f"calibrated folder: {name} on {on} (the chip's read-back weights)"


@user_errors
def eval_command(
    model: str = MODEL_OPTION,
    dataset: Optional[str] = DATASET_OPTION,
    data_path: Optional[str] = DATA_PATH_OPTION,
    split: Optional[str] = SPLIT_OPTION,
    order: Optional[str] = ORDER_OPTION,
    max_tokens: Optional[int] = MAX_TOKENS_OPTION,
    window: Optional[int] = WINDOW_OPTION,
    batch_size: Optional[int] = BATCH_OPTION,
    ppl: Optional[str] = PPL_OPTION,
    tasks: Optional[str] = TASKS_OPTION,
    task_data: list[str] = TASK_DATA_OPTION,
    limit: Optional[int] = LIMIT_OPTION,
    preset: Optional[str] = typer.Option(None, "--preset", help=PRESET_HELP + ". Without it: the model as it is "
                                                                           "(clean, or a calibrated folder)."),
    chips: Optional[int] = typer.Option(None, "--chips", help="Number of simulated chips, seeds SEED … "
                                                              "SEED+CHIPS−1 (default 5)."),
    seed: Optional[int] = SEED_OPTION,
    t: Optional[float] = T_OPTION,
    placement: Optional[str] = PLACEMENT_OPTION,
    mapping: Optional[str] = MAPPING_OPTION,
    io: Optional[str] = IO_OPTION,
    settings: list[str] = SET_OPTION,
    device: Optional[str] = DEVICE_OPTION,
    dtype: Optional[str] = DTYPE_OPTION,
    device_map: Optional[str] = DEVICE_MAP_OPTION,
    allow_pickle: bool = ALLOW_PICKLE_OPTION,
    trust_remote_code: bool = TRUST_REMOTE_CODE_OPTION,
    json_path: Optional[str] = typer.Option(None, "--json", help=JSON_HELP),
):
    """Perplexity (token PPL, word PPL, bits per byte) and zero-shot accuracy, clean or over simulated chips."""
    from romer import load
    from romer.calibrate.folder import is_calibrated
    from romer.eval.suite import measure, summarize

    data = resolve_settings("eval", {**chip_given(preset, chips, seed, t, placement, mapping, io),
                                     **data_given(dataset, data_path, split, order, max_tokens, window, batch_size,
                                                  ppl, tasks, task_data, limit, device, dtype)}, settings)
    chip, count = chip_from(data["chip"])
    calibrated = is_calibrated(model)
    if chip is not None and calibrated:
        raise UserError(f"{model} is a calibrated model that already holds its chip's read-back weights; "
                        "evaluate it without --preset")
    spec = eval_spec(data["eval"])
    check_writable(json_path, "--json")
    to_stdout = json_path == "-"
    loading = load_options(data["eval"], device_map, allow_pickle, trust_remote_code)
    lm, tokenizer = load(model, **loading)
    name, out = model_label(model), console()
    state = chip_label(chip, count) if chip else calibrated_label(model) if calibrated else "none (the clean model)"
    announce(out, state, spec.label, stderr=to_stdout)
    text = spec.text(tokenizer) if spec.ppl == "windows" else None
    if chip is None:
        results = [measure(spec, lm, tokenizer, text, f"{name}: perplexity", progress=not to_stdout)]
    else:
        from romer.studies.noisy import over_chips
        from romer.progress import Progress

        with Progress(name, count, unit="chips", enabled=not to_stdout) as bar:
            def on_chip(m, i, chip_i):
                result = measure(spec, m, tokenizer, text, f"chip {i + 1}/{count} (seed {chip_i.seed})",
                                 progress=not to_stdout)
                bar.advance(label=f"seed {chip_i.seed}" + ("" if result.ppl is None else
                                                           f": PPL {result.ppl.ppl:.2f}"))
                return result

            results = over_chips(lm, chip, count, on_chip)
    described = spec.describe()
    payload = {"model": model, "device": str(loading["device"]), "weights_dtype": data["eval"].get(
        "weights_dtype", "float32"), **{k: v for k, v in described.items() if k != "tokens"},
        "max_tokens": spec.max_tokens, **summarize(results)}
    if chip is not None:
        payload.update(preset=chip.preset.to_dict(), chip=chip.to_dict(), chips=count,
                       seeds=[c.seed for c in chip.series(count)])
    broken = [p for p in payload.get("ppl_per_chip", []) if not math.isfinite(p)]
    if broken:
        raise UserError(f"{len(broken)} of {len(payload['ppl_per_chip'])} perplexities are not finite ({broken[0]}): "
                        "the chip breaks the model numerically; change the noise settings")
    if write_json(json_path, payload):
        return
    how = f"mean ± std over {count} chips" if chip else "calibrated" if calibrated else "clean"
    if payload.get("ppl") is not None:
        out.print(table(f"{name}: perplexity ({how})", *ppl_table(payload, chip is not None), keys=()))
    if spec.tasks:
        out.print(table(f"{name}: zero-shot accuracy (%), " + ("mean ± std over chips; per chip ± lm-eval stderr"
                                                               if chip else "± lm-eval stderr"),
                        *task_table(payload), keys=(0,)))


def ppl_table(payload: dict, chips: bool) -> tuple[list[str], list[list[str]]]:
    columns = ["tokens", "convention", "window", "PPL" + (" mean ± std" if chips else ""), "word PPL", "bits/byte"]
    row = [str(payload["tokens"]), payload["ppl_convention"], str(payload["window"]),
           f"{payload['ppl']:.3f}" + (f" ± {payload['ppl_std']:.3f}" if chips else ""),
           f"{payload['word_ppl']:.3f}", f"{payload['bits_per_byte']:.4f}"]
    if chips:
        columns.append("per chip")
        row.append(" ".join(f"{p:.2f}" for p in payload["ppl_per_chip"]))
    return columns, [row]


def _pct(value) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def task_table(payload: dict) -> tuple[list[str], list[list[str]]]:
    rows = []
    for task, scores in payload["tasks"].items():
        for metric in ("acc", "acc_norm"):
            if metric not in scores:
                continue
            s = scores[metric]
            per_chip = " ".join(f"{_pct(v)} ± {_pct(e)}" for v, e in zip(s["per_chip"], s["stderr_per_chip"]))
            rows.append([task, metric, str(scores["samples"]), f"{_pct(s['mean'])} ± {_pct(s['std'])}", per_chip])
    return ["task", "metric", "items", "mean ± std", "per chip"], rows
