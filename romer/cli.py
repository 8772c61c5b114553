"""The `romer` command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from romer.cli_errors import user_errors
from romer.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="MoE LLMs on simulated analog CIM hardware.")
zoo_app = typer.Typer(no_args_is_help=True, help="The bundled reference MoE models.")
app.add_typer(zoo_app, name="zoo")
noise_app = typer.Typer(no_args_is_help=True, help="Analog device noise presets.")
app.add_typer(noise_app, name="noise")
console = Console()


def _register_command_modules() -> None:
    from romer.cli_calibrate import calibrate_command
    from romer.cli_experiment import report_command, run_command

    app.command("run")(run_command)
    app.command("calibrate")(calibrate_command)
    app.command("report")(report_command)
    from romer.cli_chip import chip_app

    app.add_typer(chip_app, name="chip")


def _check_window(window: int) -> None:
    if window < 2:
        raise UserError(f"--window must be at least 2 tokens, got {window}")


def _usage_table(title: str, usage: list[dict]) -> Table:
    table = Table(title=title)
    for column in ("layer", "CV of f", "min f", "max f", "uniform f", "cold experts"):
        table.add_column(column, justify="right")
    for row in usage:
        table.add_row(str(row["layer"]), f"{row['cv']:.3f}", f"{row['f_min']:.4f}", f"{row['f_max']:.4f}",
                      f"{row['f_uniform']:.4f}", str(row["cold_experts"]))
    return table


def _preset_overrides(settings: list[str]) -> dict[str, str]:
    overrides = {}
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set takes KEY=VALUE (a preset constant), got {item!r}")
        overrides[key.strip()] = value.strip()
    return overrides


def _chip(preset: str, placement: str, mapping: str, seed: int, t: float, settings: list[str]):
    """A Chip from CLI options; preset "default" is the main job's default chip (its scales unless --set)."""
    from romer.noise.chip import DEFAULT_CHIP, Chip

    overrides = _preset_overrides(settings)
    if preset == "default":
        scales = {k: v for k, v in DEFAULT_CHIP.items() if k.endswith("_scale")}
        return Chip.from_options(DEFAULT_CHIP["preset"], placement=placement, mapping=mapping, seed=seed,
                                 t_inference=t, **{**scales, **overrides})
    return Chip.from_options(preset, placement=placement, mapping=mapping, seed=seed, t_inference=t, **overrides)


@app.command("eval")
@user_errors
def eval_command(
    model: str = typer.Option(..., "--model", help="Zoo model name or a local HF folder."),
    split: str = typer.Option("test", help="Corpus split: train, validation or test."),
    window: int = typer.Option(512, help="Model input length in tokens, including the BOS token."),
    batch_size: int = typer.Option(8, help="Windows per forward pass."),
    preset: Optional[str] = typer.Option(None, help="Noise preset (pcm, hermes, reram, gaussian, gaussian-mult, or "
                                                     "default = the main job's chip); without it: clean."),
    chips: int = typer.Option(5, help="Number of simulated chips (seeds SEED … SEED+CHIPS−1)."),
    seed: int = typer.Option(0, help="Seed of the first chip."),
    t: float = typer.Option(86400.0, "--t", help="Inference time, seconds after programming."),
    placement: str = typer.Option("moe", help="Analog placement: moe, experts, all, or a comma list of groups."),
    mapping: str = typer.Option("expert", help="Mapping group: expert, channel, tile or tensor."),
    settings: list[str] = typer.Option([], "--set", help="Preset constant KEY=VALUE, e.g. prog_noise_scale=3."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the result as JSON here."),
):
    """Perplexity on a corpus split (token PPL, word PPL, bits per byte), clean or over simulated chips."""
    from romer.data import load_text
    from romer.eval import perplexity
    from romer import load
    from romer.calibrate.folder import is_calibrated

    _check_window(window)
    if preset is not None and is_calibrated(model):
        raise UserError(f"{model} is a calibrated model that already holds its chip's read-back weights; "
                        "evaluate it without --preset")
    text = load_text(split)
    chip = None
    if preset is not None:
        if chips < 1:
            raise UserError(f"--chips must be at least 1, got {chips}")
        chip = _chip(preset, placement, mapping, seed, t, settings)
    elif settings:
        raise UserError("--set needs --preset")
    lm, tokenizer = load(model)
    payload = {"model": model, "split": split, "window": window}
    table = Table(title=f"{model} on {split}" + (f", {preset} chips at t = {t:g} s" if chip else ", clean"))
    if chip is None:
        result = perplexity(lm, tokenizer, text, window=window, batch_size=batch_size, progress=True,
                            description=f"{model} · {split}")
        payload.update(tokens=result.tokens, ppl=result.ppl, word_ppl=result.word_ppl,
                       bits_per_byte=result.bits_per_byte)
        for column in ("tokens", "window", "PPL", "word PPL", "bits/byte"):
            table.add_column(column, justify="right")
        table.add_row(str(result.tokens), str(window), f"{result.ppl:.3f}", f"{result.word_ppl:.3f}",
                      f"{result.bits_per_byte:.4f}")
    else:
        from romer.experiment.noisy import noisy_perplexity

        noisy = noisy_perplexity(lm, tokenizer, text, chip, chips, window=window, batch_size=batch_size,
                                 progress=True)
        payload.update(noisy, ppl=noisy["ppl_mean"])
        for column in ("tokens", "placement", "chips", "PPL mean ± std", "per chip"):
            table.add_column(column, justify="right")
        table.add_row(str(noisy["tokens"]), chip.placement_name(), str(chips),
                      f"{noisy['ppl_mean']:.3f} ± {noisy['ppl_std']:.3f}",
                      " ".join(f"{p:.2f}" for p in noisy["ppl_per_chip"]))
    console.print(table)
    if json_path is not None:
        from romer.io import write_json_atomic

        write_json_atomic(json_path, payload)


@app.command("stats")
@user_errors
def stats_command(
    model: str = typer.Option(..., "--model", help="Zoo model name or a local HF folder."),
    preset: Optional[str] = typer.Option(None, help="Noise preset (or default); without it: clean routing only."),
    chips: int = typer.Option(5, help="Number of simulated chips."),
    seed: int = typer.Option(0, help="Seed of the first chip."),
    t: float = typer.Option(86400.0, "--t", help="Inference time, seconds after programming."),
    placement: str = typer.Option("moe", help="Analog placement: moe, experts, all, or a comma list of groups."),
    mapping: str = typer.Option("expert", help="Mapping group: expert, channel, tile or tensor."),
    settings: list[str] = typer.Option([], "--set", help="Preset constant KEY=VALUE."),
    split: str = typer.Option("validation", help="Corpus split."),
    max_chars: Optional[int] = typer.Option(None, help="Only the first N characters of the split."),
    window: int = typer.Option(512, help="Model input length in tokens, including the BOS token."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the results as JSON here."),
    plots: Optional[Path] = typer.Option(None, help="Write routing plots (PNG) into this folder."),
):
    """Per-layer routing statistics (load balance, clean-vs-noisy agreement) and oracle routing."""
    from romer.data import load_text
    from romer.experiment.routing_study import fmt, routing_study
    from romer.models import load_model
    from romer.routing import RoutingStats

    _check_window(window)
    if chips < 1:
        raise UserError(f"--chips must be at least 1, got {chips}")
    chip = _chip(preset, placement, mapping, seed, t, settings) if preset else None
    if settings and not preset:
        raise UserError("--set needs --preset")
    text = load_text(split)[:max_chars]
    lm, tokenizer = load_model(model)
    result = routing_study(lm, tokenizer, text, chip, chips=chips, window=window, progress=True)
    records = result.pop("records")
    shown = (RoutingStats.from_record(records["noisy"], reference=records["clean"]) if chip
             else RoutingStats.from_record(records["clean"]))
    rows = shown.table_rows()
    title = f"{model} on {split}: " + (f"chip seed {seed} vs clean ({chip.placement_name()})" if chip else "clean")
    table = Table(title=title)
    for column in rows[0]:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*row.values())
    console.print(table)
    if chip:
        s = result["summary"]
        console.print(f"over {chips} chips: PPL clean {result['clean_ppl']:.2f}, noisy {fmt(s['noisy_ppl'])}, "
                      f"oracle routing {fmt(s['oracle_ppl'])}; routing share of the damage "
                      f"{fmt(s['routing_share'])}; load CV {fmt(s['cv'], 3)}; Jaccard {fmt(s['jaccard'], 3)}",
                      highlight=False)
    if plots is not None:
        from romer.routing.plots import write_routing_plots

        write_routing_plots(records["clean"], records.get("noisy", records["clean"]), plots, prefix=f"{Path(model).name}_")
        console.print(f"plots in {plots}")
    if json_path is not None:
        from romer.io import write_json_atomic

        write_json_atomic(json_path, {"model": model, "split": split, "max_chars": max_chars, **result})


@zoo_app.command("list")
@user_errors
def zoo_list():
    """The bundled reference models with size, routing structure and clean test perplexity."""
    from romer.models.loading import ZOO_DIR, zoo_names

    table = Table(title="romer zoo")
    for column in ("name", "class", "params total / active", "experts", "top-k", "shared", "test PPL"):
        table.add_column(column, justify="right")
    for name in zoo_names():
        card_path = ZOO_DIR / name / "card.json"
        if not card_path.exists():
            table.add_row(name, "—", "—", "—", "—", "—", "not trained" if not (ZOO_DIR / name / "model.safetensors")
                          .exists() else "no card")
            continue
        card = json.loads(card_path.read_text())
        params = card["parameters"]
        table.add_row(name, card["class"], f"{params['total'] / 1e6:.1f}M / {params['active'] / 1e6:.1f}M",
                      str(card["experts"]), str(card["top_k"]), str(card["shared_experts"]), f"{card['ppl']:.2f}")
    console.print(table)


@zoo_app.command("train")
@user_errors
def zoo_train(
    name: str = typer.Argument(..., help="Zoo model to train (its recipe is romer/models/zoo/NAME/train.yaml)."),
    out: Optional[Path] = typer.Option(None, help="Output folder (default runs/zoo/NAME)."),
):
    """Train a reference model from its recipe: fixed seed, token budget, per-layer balancing, loss curve."""
    from romer.models.loading import ZOO_DIR, zoo_names
    from romer.models.training import train

    if name not in zoo_names():
        raise UserError(f"unknown zoo model {name!r}; choose one of {', '.join(zoo_names())}")
    out = out or Path("runs/zoo") / name
    log = train(ZOO_DIR / name / "train.yaml", out)
    final = log["validation"][-1]
    console.print(f"{name}: {log['train_tokens']:,} tokens in {log['train_seconds'] / 60:.1f} min, "
                  f"validation PPL {final['ppl']:.2f} → {out}")


@zoo_app.command("card")
@user_errors
def zoo_card(
    name: str = typer.Argument(..., help="Zoo model (or folder) to describe."),
    window: int = typer.Option(512, help="Model input length in tokens, including the BOS token."),
):
    """Measure a zoo model's clean test perplexity, unigram baseline and expert usage; write card.json."""
    from romer.experiment.clean import clean_report, unigram_baseline
    from romer.io import write_json_atomic
    from romer.models import load_model, resolve_model_dir

    _check_window(window)
    model, tokenizer = load_model(name)
    card = clean_report(model, tokenizer, name, window=window, progress=True)
    card["unigram_ppl"] = unigram_baseline("test")
    path = write_json_atomic(resolve_model_dir(name) / "card.json", card)
    console.print(f"{name}: test PPL {card['ppl']:.2f} (unigram {card['unigram_ppl']:.1f}) → {path}")
    console.print(_usage_table(f"{name}: expert usage per MoE layer", card["usage"]))


@noise_app.command("show")
@user_errors
def noise_show(
    preset: str = typer.Argument(..., help="pcm, hermes, reram, gaussian or gaussian-mult."),
    settings: list[str] = typer.Option([], "--set", help="Preset constant KEY=VALUE."),
):
    """A preset's constants and the spread of the read-back conductance σ(ĝ) at a few times."""
    from romer.noise import get_preset

    chosen = get_preset(preset, **_preset_overrides(settings))
    constants = Table(title=f"preset {chosen.name}")
    constants.add_column("constant")
    constants.add_column("value")
    for key, value in chosen.describe():
        constants.add_row(key, value)
    console.print(constants)
    times = [t for t in (0.0, 1.0, 3600.0, 86400.0, 3.15e7) if t <= chosen.max_t_inference]
    g_values = (0.01, 0.1, 0.25, 0.5, 0.75, 1.0)
    sigma = Table(title="std of read-back ĝ = g/g_max (mean in brackets), no drift compensation")
    sigma.add_column("ĝ_T", justify="right")
    for t in times:
        sigma.add_column(f"t = {t:g} s", justify="right")
    rows = chosen.sigma_table(g_values, times)
    for g in g_values:
        cells = [f"{r.std:.4f} ({r.mean:.3f})" for r in rows if r.g_target == g]
        sigma.add_row(f"{g:g}", *cells)
    console.print(sigma)


@noise_app.command("plot")
@user_errors
def noise_plot(
    preset: str = typer.Argument(..., help="pcm, hermes, reram, gaussian or gaussian-mult."),
    out: Optional[Path] = typer.Option(None, help="PNG path (default PRESET_noise.png)."),
    settings: list[str] = typer.Option([], "--set", help="Preset constant KEY=VALUE."),
):
    """Write a PNG: programming / total noise vs conductance, and drift vs time."""
    from romer.noise import get_preset
    from romer.noise.plot import plot_preset

    chosen = get_preset(preset, **_preset_overrides(settings))
    path = plot_preset(chosen, out or Path(f"{chosen.name}_noise.png"))
    console.print(f"wrote {path}")


@noise_app.command("sensitivity")
@user_errors
def noise_sensitivity(
    models: Optional[list[str]] = typer.Option(None, "--model", help="Models (default: the whole zoo)."),
    chips: int = typer.Option(3, help="Chips per setting (seeds 0 … CHIPS−1)."),
    max_chars: int = typer.Option(80_000, help="Characters of the validation split to evaluate."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write all results as JSON here."),
):
    """Validation PPL under PCM over time, PCM with scaled noise and gaussian noise, per placement."""
    from romer.experiment.sensitivity import markdown, sensitivity
    from romer.models import zoo_names

    if chips < 1:
        raise UserError(f"--chips must be at least 1, got {chips}")
    results = [sensitivity(name, chips=chips, max_chars=max_chars, progress=True) for name in models or zoo_names()]
    typer.echo(markdown(results))
    if json_path is not None:
        from romer.io import write_json_atomic

        write_json_atomic(json_path, results)


if __name__ == "__main__":
    app()


_register_command_modules()
