"""`romer eval`: perplexity on a dataset and zero-shot accuracy, clean or over simulated chips."""

from __future__ import annotations

from typing import Optional

import typer

from romer.cli.common import (ALLOW_PICKLE_OPTION, DATASET_OPTION, DATA_PATH_OPTION, DEVICE_MAP_OPTION, DEVICE_OPTION,
                              DTYPE_OPTION, MAPPING_OPTION, MODEL_OPTION, PLACEMENT_OPTION, PPL_HELP, PRESET_HELP,
                              SEED_OPTION, SET_OPTION, TASKS_HELP, TASK_DATA_HELP, TRUST_REMOTE_CODE_OPTION, T_OPTION,
                              WINDOW_OPTION, check_at_least, check_window, chip_from_options, load_options,
                              user_errors)
from romer.cli.output import JSON_HELP, console, table, write_json
from romer.errors import UserError


@user_errors
def eval_command(
    model: str = MODEL_OPTION,
    dataset: str = DATASET_OPTION,
    data_path: Optional[str] = DATA_PATH_OPTION,
    split: str = typer.Option("test", help="Split of the dataset."),
    order: Optional[str] = typer.Option(None, "--order", help="Document order: shuffled (fixed seed) or source; "
                                                               "default shuffled for bundled, source otherwise."),
    ppl: str = typer.Option("windows", "--ppl", help=PPL_HELP),
    tasks: Optional[str] = typer.Option(None, "--tasks", help=TASKS_HELP),
    task_data: list[str] = typer.Option([], "--task-data", help=TASK_DATA_HELP),
    limit: Optional[int] = typer.Option(None, "--limit", help="Only the first N items of each zero-shot task."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="Only the text's first N tokens "
                                                                        "(windows convention)."),
    window: int = WINDOW_OPTION,
    batch_size: int = typer.Option(8, help="Windows per forward pass."),
    preset: Optional[str] = typer.Option(None, help=PRESET_HELP + "; without it: clean."),
    chips: int = typer.Option(5, help="Number of simulated chips (seeds SEED … SEED+CHIPS−1)."),
    seed: int = SEED_OPTION,
    t: float = T_OPTION,
    placement: str = PLACEMENT_OPTION,
    mapping: str = MAPPING_OPTION,
    settings: list[str] = SET_OPTION,
    device: str = DEVICE_OPTION,
    dtype: str = DTYPE_OPTION,
    device_map: Optional[str] = DEVICE_MAP_OPTION,
    allow_pickle: bool = ALLOW_PICKLE_OPTION,
    trust_remote_code: bool = TRUST_REMOTE_CODE_OPTION,
    json_path: Optional[str] = typer.Option(None, "--json", help=JSON_HELP),
):
    """Perplexity (token PPL, word PPL, bits per byte) and zero-shot accuracy, clean or over simulated chips."""
    from romer import load
    from romer.calibrate.folder import is_calibrated

    check_window(window)
    check_at_least("--batch-size", batch_size)
    if limit is not None:
        check_at_least("--limit", limit)
    if preset is not None and is_calibrated(model):
        raise UserError(f"{model} is a calibrated model that already holds its chip's read-back weights; "
                        "evaluate it without --preset")
    chip = None
    if preset is not None:
        check_at_least("--chips", chips)
        chip = chip_from_options(preset, placement, mapping, seed, t, settings)
    elif settings:
        raise UserError("--set needs --preset")
    from romer.eval.spec import EvalSpec
    from romer.eval.suite import measure as measure_spec, summarize

    paths = {}
    for item in task_data:
        task, sep, path = item.partition("=")
        if not sep or not task.strip() or not path.strip():
            raise UserError(f"--task-data takes TASK=PATH, got {item!r}")
        paths[task.strip()] = path.strip()
    names = tuple(t.strip() for t in (tasks or "").split(",") if t.strip())
    data = EvalSpec(dataset, data_path, split, order, max_tokens, ppl, window, batch_size, tasks=names,
                    task_data=paths, task_limit=limit)
    to_stdout = json_path == "-"
    loading = load_options(device, dtype, device_map, allow_pickle, trust_remote_code)
    lm, tokenizer = load(model, **loading)
    if chip is None:
        text = None if data.ppl == "none" else data.text(tokenizer)
        results = [measure_spec(data, lm, tokenizer, text, f"{model} · {data.label}", progress=not to_stdout)]
    else:
        from romer.studies.noisy import over_chips
        from romer.progress import Progress

        text = None if data.ppl == "none" else data.text(tokenizer)
        with Progress(f"{model} · {data.label}", chips, unit="chips", enabled=not to_stdout) as bar:
            def measure(m, i, chip_i):
                result = measure_spec(data, m, tokenizer, text, f"chip {i + 1}/{chips} (seed {chip_i.seed})",
                                      progress=not to_stdout)
                bar.advance(label=f"seed {chip_i.seed}" + ("" if result.ppl is None else f": PPL {result.ppl.ppl:.2f}"))
                return result

            results = over_chips(lm, chip, chips, measure)
    payload = {"model": model, "device": str(loading["device"]), "dtype": dtype, **data.describe(),
               **summarize(results)}
    if chip is not None:
        payload.update(preset=chip.preset.to_dict(), chip=chip.to_dict(), chips=chips,
                       seeds=[c.seed for c in chip.series(chips)])
    if write_json(json_path, payload):
        return
    title = f"{model} on {data.label}" + (f", {chip.preset.name} chips at t = {t:g} s ({chip.placement_name()})"
                                          if chip else ", clean")
    out = console()
    if data.ppl != "none":
        out.print(table(title, *ppl_table(payload, chip is not None), keys=()))
    if data.tasks:
        out.print(table(f"{model}: zero-shot accuracy (%), " + ("mean ± std over chips; per chip ± lm-eval stderr"
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
