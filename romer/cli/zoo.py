"""`romer zoo`: the bundled reference MoE models (list, train, card)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from romer.cli.common import (BATCH_OPTION, ORDER_OPTION, announce, eval_spec, resolve_settings,
                              user_errors)
from romer.cli.output import JSON_HELP, console, table, write_json
from romer.errors import UserError

zoo_app = typer.Typer(no_args_is_help=True, help="The bundled reference MoE models.")


def zoo_entries() -> list[dict]:
    """One dict per zoo model: its card's headline numbers, or its state when it has no card."""
    from romer.models.loading import ZOO_DIR, zoo_names

    entries = []
    for name in zoo_names():
        card_path = ZOO_DIR / name / "card.json"
        if not card_path.exists():
            trained = (ZOO_DIR / name / "model.safetensors").exists()
            entries.append({"name": name, "state": "no card" if trained else "not trained"})
            continue
        card = json.loads(card_path.read_text())
        entries.append({"name": name, "state": "ready", "class": card["class"],
                        "parameters_total": card["parameters"]["total"],
                        "parameters_active": card["parameters"]["active"], "experts": card["experts"],
                        "top_k": card["top_k"], "shared_experts": card["shared_experts"], "test_ppl": card["ppl"]})
    return entries


@zoo_app.command("list")
@user_errors
def zoo_list(json_path: Optional[str] = typer.Option(None, "--json", help=JSON_HELP)):
    """The bundled reference models with size, routing structure and clean test perplexity."""
    entries = zoo_entries()
    if write_json(json_path, entries):
        return
    rows = []
    for e in entries:
        if e["state"] != "ready":
            rows.append((e["name"], "—", "—", "—", "—", "—", e["state"]))
            continue
        rows.append((e["name"], e["class"], f"{e['parameters_total'] / 1e6:.1f}M / {e['parameters_active'] / 1e6:.1f}M",
                     e["experts"], e["top_k"], e["shared_experts"], f"{e['test_ppl']:.2f}"))
    console().print(table("romer zoo", ("name", "class", "params total / active", "experts", "top-k", "shared",
                                        "test PPL"), rows, keys=(0,)))


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
    console().print(f"{name}: {log['train_tokens']:,} tokens in {log['train_seconds'] / 60:.1f} min, "
                    f"validation PPL {final['ppl']:.2f} → {out}")


def usage_table(title: str, usage: list[dict]):
    return table(title, ("layer", "CV of f", "min f", "max f", "uniform f", "cold experts"),
                 [(row["layer"], f"{row['cv']:.3f}", f"{row['f_min']:.4f}", f"{row['f_max']:.4f}",
                   f"{row['f_uniform']:.4f}", row["cold_experts"]) for row in usage], keys=())


@zoo_app.command("card")
@user_errors
def zoo_card(
    name: str = typer.Argument(..., help="Zoo model (or folder) to describe."),
    split: Optional[str] = typer.Option(None, "--split", help="Split of the bundled corpus (default test)."),
    order: Optional[str] = ORDER_OPTION,
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="Score only the first N tokens (default: "
                                                                         "the whole split, as the shipped cards)."),
    window: Optional[int] = typer.Option(None, "--window", help="Model input length in tokens, including the BOS "
                                                                 "token (default 512)."),
    batch_size: Optional[int] = BATCH_OPTION,
    settings: list[str] = typer.Option([], "--set", help="eval.KEY=VALUE: split, order, max_tokens, window, "
                                                         "batch_size, dtype; repeatable."),
):
    """Measure a zoo model's clean test perplexity, unigram baseline and expert usage; write card.json."""
    from romer.studies.clean import clean_report, unigram_baseline
    from romer.io import write_json_atomic
    from romer.models import load_model, resolve_model_dir

    data = resolve_settings("zoo card", {"eval.split": split, "eval.order": order, "eval.max_tokens": max_tokens,
                                     "eval.window": window, "eval.batch_size": batch_size}, settings)
    spec = eval_spec(data["eval"])
    model, tokenizer = load_model(name)
    out = console()
    announce(out, "none (the clean model)", spec.label)
    card = clean_report(model, tokenizer, name, spec, progress=True)
    card["unigram_ppl"] = unigram_baseline(spec.split)
    path = write_json_atomic(resolve_model_dir(name) / "card.json", card)
    out.print(f"{name}: {spec.split} PPL {card['ppl']:.2f} (unigram {card['unigram_ppl']:.1f}) → {path}")
    out.print(usage_table(f"{name}: expert usage per MoE layer", card["usage"]))
