"""The `romer` command line."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from romer.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="MoE LLMs on simulated analog CIM hardware.")
zoo_app = typer.Typer(no_args_is_help=True, help="The bundled reference MoE models.")
app.add_typer(zoo_app, name="zoo")
console = Console()


def user_errors(command):
    """Turn a user mistake into a one-line error and exit status 2 (no traceback)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from romer.models.view import UnsupportedModelError

        try:
            return command(*args, **kwargs)
        except (UserError, UnsupportedModelError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None

    return wrapper


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


@app.command("eval")
@user_errors
def eval_command(
    model: str = typer.Option(..., "--model", help="Zoo model name or a local HF folder."),
    split: str = typer.Option("test", help="Corpus split: train, validation or test."),
    window: int = typer.Option(512, help="Model input length in tokens, including the BOS token."),
    batch_size: int = typer.Option(8, help="Windows per forward pass."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the result as JSON here."),
):
    """Clean perplexity of a model on a corpus split (token PPL, word PPL, bits per byte)."""
    from romer.data import load_text
    from romer.eval import perplexity
    from romer.models import load_model

    _check_window(window)
    text = load_text(split)
    lm, tokenizer = load_model(model)
    result = perplexity(lm, tokenizer, text, window=window, batch_size=batch_size, progress=True,
                        description=f"{model} · {split}")
    table = Table(title=f"{model} on {split}")
    for column in ("tokens", "window", "PPL", "word PPL", "bits/byte"):
        table.add_column(column, justify="right")
    table.add_row(str(result.tokens), str(window), f"{result.ppl:.3f}", f"{result.word_ppl:.3f}",
                  f"{result.bits_per_byte:.4f}")
    console.print(table)
    if json_path is not None:
        from romer.io import write_json_atomic

        write_json_atomic(json_path, {"model": model, "split": split, "window": window, "tokens": result.tokens,
                                      "ppl": result.ppl, "word_ppl": result.word_ppl,
                                      "bits_per_byte": result.bits_per_byte})


@app.command("run")
@user_errors
def run_command(
    models: Optional[list[str]] = typer.Option(None, "--model", help="Models to run (default: the whole zoo)."),
    split: str = typer.Option("test", help="Corpus split to evaluate on."),
    window: int = typer.Option(512, help="Model input length in tokens, including the BOS token."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write all results as JSON here."),
):
    """The main job on the bundled default: clean perplexity and expert usage of every zoo model."""
    from romer.experiment.clean import clean_report
    from romer.models import zoo_names

    _check_window(window)
    reports = [clean_report(name, split=split, window=window, progress=True) for name in (models or zoo_names())]
    summary = Table(title=f"Clean perplexity on the {split} split (window {window})")
    for column in ("model", "class", "params total / active", "experts", "top-k", "shared", "tokens", "PPL",
                   "word PPL", "bits/byte", "mean CV of f"):
        summary.add_column(column, justify="right")
    for r in reports:
        params = r["parameters"]
        mean_cv = sum(u["cv"] for u in r["usage"]) / len(r["usage"])
        summary.add_row(r["model"], r["class"], f"{params['total'] / 1e6:.1f}M / {params['active'] / 1e6:.1f}M",
                        str(r["experts"]), str(r["top_k"]), str(r["shared_experts"]), str(r["tokens"]),
                        f"{r['ppl']:.2f}", f"{r['word_ppl']:.2f}", f"{r['bits_per_byte']:.4f}", f"{mean_cv:.3f}")
    console.print(summary)
    for r in reports:
        console.print(_usage_table(f"{r['model']}: expert usage per MoE layer (f = share of tokens)", r["usage"]))
    if json_path is not None:
        from romer.io import write_json_atomic

        write_json_atomic(json_path, reports)


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
    from romer.models import resolve_model_dir

    _check_window(window)
    card = clean_report(name, window=window, progress=True)
    card["unigram_ppl"] = unigram_baseline("test")
    path = write_json_atomic(resolve_model_dir(name) / "card.json", card)
    console.print(f"{name}: test PPL {card['ppl']:.2f} (unigram {card['unigram_ppl']:.1f}) → {path}")
    console.print(_usage_table(f"{name}: expert usage per MoE layer", card["usage"]))


if __name__ == "__main__":
    app()
