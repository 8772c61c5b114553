"""`romer run` (an experiment config → results store → report) and `romer report` (a store → report)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import json

import typer
from typer.core import TyperCommand

from romer.cli.common import (BATCH_OPTION, DATASET_OPTION, DATA_PATH_OPTION, LIMIT_OPTION, MAX_TOKENS_OPTION,
                              ORDER_OPTION, SPLIT_OPTION, TASKS_OPTION, TASK_DATA_OPTION, WINDOW_OPTION,
                              announce, check_writable, data_given, task_data_paths, user_errors)
from romer.cli.output import console, table
from romer.errors import UserError, interruption_exit_code

CONFIG_HELP = "Bundled config ({}) or a YAML file; without it: default."


class RunCommand(TyperCommand):
    """`romer run`, whose help lists the bundled configs (read when the help is shown, so that importing the CLI
    stays light)."""

    def format_help(self, ctx, formatter):
        from romer.experiment.config_file import bundled_configs

        for param in self.params:
            if param.name == "config":
                param.help = CONFIG_HELP.format(", ".join(bundled_configs()))
        return super().format_help(ctx, formatter)


def results_table(rows: list[dict], title: str):
    """The aggregated rows as a terminal table (the markdown table's cells, without the 95 % interval and the
    zero-shot columns, which :func:`accuracy_table` shows); preset, t and placement go into the title when they
    take one value only. Model, preset and method names are never cut; on a terminal the numeric columns fold, in a
    pipe the rows are markdown and nothing folds (``romer.cli.output``)."""
    from romer.report.tables import HEADER, cells

    constant = {i for i in (1, 2, 3) if len({cells(r)[i] for r in rows}) == 1}
    shown = [i for i in range(len(HEADER)) if i not in constant and HEADER[i] != "95 % interval"]
    if rows and constant:
        title += " (" + ", ".join(f"{HEADER[i]} {cells(rows[0])[i]}" for i in sorted(constant)) + ")"
    keys = [j for j, i in enumerate(shown) if HEADER[i] in ("model", "preset", "method")]
    right = [j for j, i in enumerate(shown) if i >= 5]
    return table(title, [HEADER[i] for i in shown], [[cells(r)[i] for i in shown] for r in rows],
                 keys=keys, right=right)


def accuracy_table(rows: list[dict]):
    """Zero-shot accuracy (%) per model and method, mean ± std over chips; None when no row has any."""
    from romer.report.tables import accuracy_keys, cells

    accuracy = accuracy_keys(rows)
    if not accuracy:
        return None
    n = len(cells(rows[0]))
    return table("zero-shot accuracy (%), mean ± std over chips", ["model", "method", *accuracy],
                 [[cells(r)[0], r["method"], *cells(r, accuracy)[n:]] for r in rows], keys=(0, 1))


def _check_models(models: list[str], window: int, batch_size: int, device: str = "cpu",
                  dtype: str = "float32") -> None:
    """Refuse, before any work starts, a model that is neither a trained zoo model nor a local folder, or one that
    cannot fit the device the runner evaluates it on (``eval.device``, ``eval.weights_dtype``)."""
    from romer.devices import parse_device
    from romer.models import resolve_model_dir
    from romer.models.memory import check_fits

    for name in models:
        check_fits(resolve_model_dir(name), str(parse_device(device)), dtype, window, batch_size)


def setting_lines(config: dict | None) -> tuple[str | None, str | None]:
    """(the chips, the text) of an experiment config's dict (``ExperimentConfig.model_dump`` or a stored one)."""
    if not config:
        return None, None
    from romer.eval.spec import EvalSpec, text_label
    from romer.noise.registry import noise_label

    c = config["chip"]
    presets = ", ".join(noise_label(p["preset"], p.get("overrides") or {}, p.get("label")) for p in c["presets"])
    times = ", ".join(f"{t:g}" for t in c["t_inference"])
    chips = (f"{presets} at t = {times} s, {' and '.join(c['placements'])} analog, {c['mapping']} mapping, seeds "
             f"{c['seed']}…{c['seed'] + c['chips'] - 1}")
    e = config["eval"]
    try:
        text = EvalSpec.from_dict(e).label
    except (UserError, TypeError):  # a stored config whose data file is not on this machine
        order = e.get("order") or ("shuffled" if e.get("dataset", "bundled") == "bundled" else "source")
        text = text_label({**e, "order": order, "tokens": e.get("max_tokens"), "ppl_convention": e.get("ppl") or "windows"})
    return chips, text


def _print_report(report, out: Path) -> None:
    from romer.report.tables import ESTIMATOR_LINE

    output = console()
    announce(output, *setting_lines(report.config))
    output.print(results_table(report.rows, report.title))
    output.print(ESTIMATOR_LINE, highlight=False)
    accuracy = accuracy_table(report.rows)
    if accuracy is not None:
        output.print(accuracy)
    output.print(f"report: {out / 'report.html'} (tables: results.md, results.csv, results.json; "
                 f"{len(report.plots)} plots in {out / 'plots'})", highlight=False)


def run_overrides(given: dict, settings: list[str], full: bool) -> list[str]:
    """The config overrides of `romer run`'s options (``SECTION.KEY`` → value, None: not given) followed by the
    ``--set`` items; ``--full`` is ``eval.max_tokens=null``."""
    if full and given.get("eval.max_tokens") is not None:
        raise UserError("--full scores the whole split: leave out --max-tokens")
    items = ["eval.max_tokens=null"] if full else []
    for key, value in given.items():
        if key == "eval.tasks" and isinstance(value, str):
            value = [t.strip() for t in value.split(",") if t.strip()]
        if key == "eval.task_data" and value is not None:
            value = task_data_paths(value)
        if value is not None:
            items.append(f"{key}={json.dumps(value)}")
    return [*items, *settings]


@user_errors
def run_command(
    config: Optional[str] = typer.Argument(None, help=CONFIG_HELP.format("default, accuracy, main, ablations, …")),
    settings: list[str] = typer.Option([], "--set", help="Config override SECTION.KEY=VALUE (a YAML value), after "
                                                          "the options; e.g. chip.chips=2, models=[olmoe-tiny], "
                                                          "chip.presets=[{preset: pcm, overrides: "
                                                          "{prog_noise_scale: 3}}]. See docs/cli.md."),
    full: bool = typer.Option(False, "--full", help="Evaluate on the whole split (eval.max_tokens = null)."),
    dataset: Optional[str] = DATASET_OPTION,
    data_path: Optional[str] = DATA_PATH_OPTION,
    split: Optional[str] = SPLIT_OPTION,
    order: Optional[str] = ORDER_OPTION,
    max_tokens: Optional[int] = MAX_TOKENS_OPTION,
    window: Optional[int] = WINDOW_OPTION,
    batch_size: Optional[int] = BATCH_OPTION,
    tasks: Optional[str] = TASKS_OPTION,
    task_data: list[str] = TASK_DATA_OPTION,
    limit: Optional[int] = LIMIT_OPTION,
    calibration_dataset: Optional[str] = typer.Option(None, "--calibration-dataset", help=(
        "Text to calibrate on (calibration.dataset); default: the config's.")),
    calibration_data_path: Optional[str] = typer.Option(None, "--calibration-data-path", help=(
        "Local copy of the calibration dataset (calibration.data_path).")),
    calibration_split: Optional[str] = typer.Option(None, "--calibration-split", help=(
        "Split to calibrate on (calibration.split); default: the config's.")),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default runs/CONFIG-NAME)."),
    store: Optional[Path] = typer.Option(None, "--store", help="Results store (default OUT/results.sqlite); "
                                                               "trials already in it are skipped."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the results JSON here."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:N or auto (sets eval.device)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="Weight dtype float32, bfloat16 or float16 (sets "
                                                               "eval.weights_dtype)."),
    backend: Optional[str] = typer.Option(None, "--backend", help="local or ray (default: the config's run.backend)."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (default: a local cluster)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Ray workers (default: the config's run.workers)."),
    evaluator: Optional[str] = typer.Option(None, "--evaluator", hidden=True,
                                            help="module:callable scoring a trial group (tests)."),
):
    """Run an experiment (models × presets × placements × t × chips × methods), resumably: every trial is stored
    as soon as it is done and a rerun skips stored trials; then write the report (tables, plots, HTML)."""
    from romer.experiment.config_file import load_config
    from romer.experiment.runner import run_experiment
    from romer.store import ResultsStore
    from romer.io import write_text_atomic
    from romer.report import write_report
    from romer.report.tables import to_json

    given = {**data_given(dataset, data_path, split, order, max_tokens, window, batch_size, None, tasks, task_data,
                          limit, device, dtype),
             "calibration.dataset": calibration_dataset, "calibration.data_path": calibration_data_path,
             "calibration.split": calibration_split}
    cfg = load_config(config or "default", run_overrides(given, settings, full))
    backend = backend or cfg.run.backend
    if backend not in ("local", "ray"):
        raise UserError(f"--backend must be local or ray, got {backend!r}")
    if workers is not None and workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    out = out or Path(cfg.run.out or Path("runs") / cfg.name)
    store = store or Path(cfg.run.store or out / "results.sqlite")
    check_writable(out, "--out", folder=True)  # before any work, not after it
    check_writable(store, "--store")
    check_writable(json_path, "--json")
    if evaluator is None:
        _check_models(cfg.models, cfg.eval.window, cfg.eval.batch_size, cfg.eval.device, cfg.eval.weights_dtype)
    chips = len(cfg.groups()) // len(cfg.models)
    announce(console(), *setting_lines(cfg.model_dump(mode="json")))
    console().print(f"{cfg.name}: {cfg.trial_count()} trials ({len(cfg.models)} models × {chips} chips × "
                  f"{len(cfg.methods)} methods), config {cfg.config_hash[:12]}, store {store}", highlight=False)
    try:
        summary = run_experiment(cfg, store, evaluator=evaluator, backend=backend,
                                 address=address or cfg.run.address, workers=workers or cfg.run.workers)
    except KeyboardInterrupt as exc:
        with ResultsStore(store) as opened:
            done = opened.count(cfg.config_hash)
        console().print(f"interrupted: {done} of {cfg.trial_count()} trials are stored in {store}; run the same "
                      "command again to continue", highlight=False)
        raise typer.Exit(interruption_exit_code(exc)) from None
    elsewhere = f", {summary.elsewhere} stored by another process" if summary.elsewhere else ""
    console().print(f"{summary.computed} trials computed, {summary.skipped} already stored{elsewhere}, "
                  f"{summary.seconds:.1f} s", highlight=False)
    report = write_report(store, out, cfg.config_hash)
    _print_report(report, out)
    if json_path is not None:
        write_text_atomic(json_path, to_json(report.rows, report.config, report.config_hash, report.git,
                                             report.versions))


@user_errors
def report_command(
    store: Path = typer.Argument(..., help="A results store (results.sqlite) or the run folder holding it."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: the store's folder)."),
    config_hash: Optional[str] = typer.Option(None, "--config", help="Config hash to report (default: the config "
                                                                     "of the latest stored trial)."),
):
    """Tables (markdown, CSV, JSON), plots (PNG) and one HTML page from a results store alone."""
    from romer.report import resolve_store, write_report

    path = resolve_store(store)
    out = out or path.parent
    check_writable(out, "--out", folder=True)
    report = write_report(path, out, config_hash)
    _print_report(report, out)
