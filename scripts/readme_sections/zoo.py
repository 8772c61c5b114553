"""docs/zoo.md's "Reference models" section (marker ``zoo``) from the zoo's card.json and training_log.json files.

Regenerate the cards first (`romer zoo card NAME` for each model; `make zoo-cards` does both steps).
"""

from __future__ import annotations

import json
from pathlib import Path

from romer.models.loading import ZOO_DIR, zoo_names

from . import SectionError

MIRRORS = {
    "olmoe-tiny": "OLMoE-1B-7B: 64 experts, top-8, no shared expert",
    "qwenmoe-tiny": "Qwen1.5-MoE-A2.7B: 60 experts, top-4, 1 sigmoid-gated shared expert",
    "deepseekmoe-tiny": "deepseek-moe-16b: 64 experts, top-6, 2 shared experts, first layer dense",
    "olmoe-deep": "OLMoE-1B-7B's depth and routing: 16 layers, 64 experts, top-8, at small width",
    "olmoe-narrow": "the depth control: olmoe-deep's width at olmoe-tiny's depth (4 layers), OLMoE's routing",
}
COUNT = {3: "Three", 4: "Four", 5: "Five"}


def _read(name: str, file: str) -> dict:
    path = ZOO_DIR / name / file
    if not path.exists():
        raise SectionError(f"no {path}: run `make zoo-cards`")
    return json.loads(path.read_text())


def _text(cards: dict) -> str:
    """The text the cards scored (``EvalSpec.label``), or the old cards' convention where a card predates it."""
    from romer.eval.spec import text_label

    labels = {text_label(c["eval"]) if "eval" in c else "bundled test, source order, whole split, windows of "
              f"{c['window']}, float32" for c in cards.values()}
    return " / ".join(sorted(labels))


def render(root: Path) -> str:
    """The section's markdown. The cards ship with the package (``ZOO_DIR``), so ``root`` is not read."""
    cards = {n: _read(n, "card.json") for n in zoo_names()}
    logs = {n: _read(n, "training_log.json") for n in zoo_names()}
    out = [
        "## Reference models",
        f"{COUNT.get(len(cards), len(cards))} small MoE models, each a real transformers class, trained by "
        "`romer zoo train NAME` from the",
        "recipe in `romer/models/zoo/NAME/train.yaml` (seed 0, AdamW, cosine schedule, bf16 autocast, a",
        "load-balancing loss **per MoE layer** plus router z-loss) on the train split, shipped as fp16 safetensors",
        "HF folders that `AutoModelForCausalLM.from_pretrained(folder)` loads. Test-split numbers: "
        f"{_text(cards)};",
        "the unigram baseline is an add-one unigram model fitted on the train split, on the same test tokens. The",
        "main result scores the first 16,384 of these tokens (same order), so its clean PPLs are lower: `romer eval",
        "--model NAME --max-tokens 16384` gives the main result's clean row.",
        "Regenerate the numbers: `make zoo-cards` (runs `romer zoo card NAME` for each model, then this table).",
        "Training time is wall-clock on the project's 2-core machine, which other jobs shared during training;",
        "val PPL is the trainer's last check on 24 validation windows (bf16 autocast), not the full split.",
        "",
        "| model | class | mirrors | params total / active | experts / top-k / shared | training tokens / time "
        "| val PPL | **test PPL** | unigram PPL | word PPL | bits/byte |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, c in cards.items():
        log = logs[name]
        p = c["parameters"]
        out.append(
            f"| `{name}` | `{c['class']}` | {MIRRORS.get(name, '')} | {p['total'] / 1e6:.1f}M / {p['active'] / 1e6:.1f}M "
            f"| {c['experts']} / {c['top_k']} / {c['shared_experts']} "
            f"| {log['train_tokens'] / 1e6:.2f}M / {log['train_seconds'] / 60:.0f} min "
            f"| {log['validation'][-1]['ppl']:.1f} | **{c['ppl']:.2f}** | {c['unigram_ppl']:.0f} "
            f"| {c['word_ppl']:.1f} | {c['bits_per_byte']:.3f} |"
        )
    out += ["", "Clean expert usage on the test split, per MoE layer (f = share of tokens whose top-k holds the expert;",
            "uniform f = k/E; cold = experts with f < 0.1·k/E):", "",
            "| model | layer | CV of f | min f | max f | uniform f | cold experts |", "|---|---|---|---|---|---|---|"]
    for name, c in cards.items():
        for u in c["usage"]:
            out.append(f"| `{name}` | {u['layer']} | {u['cv']:.3f} | {u['f_min']:.4f} | {u['f_max']:.4f} "
                       f"| {u['f_uniform']:.4f} | {u['cold_experts']} |")
    out += ["", "Training curves: `romer/models/zoo/NAME/loss_curve.png`; per-step logs: `training_log.json`.", "",
            "`deepseekmoe-tiny` is a `DeepseekV2ForCausalLM` set to deepseek-moe-16b's routing (softmax, greedy",
            "top-k without renormalisation, scaling 1.0, first layer dense). Differences from deepseek-moe-16b, a",
            "remote-code model: DeepseekV2 uses multi-head latent attention (MLA) where deepseek-moe-16b has standard",
            "multi-head attention, and it stores the 2 shared experts as one MLP of twice the width (the same",
            "function: two SwiGLU MLPs summed equal one with their hidden units concatenated)."]
    if "olmoe-deep" in cards and "olmoe-tiny" in cards:
        out += ["", _deep_note(cards)]
    return "\n".join(out)


def _ratio(usage: dict) -> float:
    return usage["f_max"] / usage["f_uniform"]


def _deep_note(cards: dict[str, dict]) -> str:
    """What sets olmoe-deep apart, from the cards and the two models' configs."""
    deep, tiny = cards["olmoe-deep"], cards["olmoe-tiny"]
    shape = {n: _read(n, "config.json") for n in ("olmoe-deep", "olmoe-tiny")}
    hottest = max(deep["usage"], key=_ratio)
    others = max(_ratio(u) for c in cards.values() for u in c["usage"] if u is not hottest)
    shipped = sum((ZOO_DIR / n / "model.safetensors").stat().st_size for n in cards) / 1e6
    return (f"`olmoe-deep` is olmoe-tiny's recipe (corpus, token budget, optimiser, per-layer balancing) at OLMoE-1B-7B's "
            f"depth, {len(deep['usage'])} MoE layers, at width {shape['olmoe-deep']['hidden_size']} (experts "
            f"{shape['olmoe-deep']['intermediate_size']} wide; olmoe-tiny: {shape['olmoe-tiny']['hidden_size']} and "
            f"{shape['olmoe-tiny']['intermediate_size']}), sized so that all shipped weights stay ≤ 120 MB (now "
            f"{shipped:.1f} MB). On the same tokens it is the weaker language model (test PPL {deep['ppl']:.2f} "
            f"against {tiny['ppl']:.2f}), and its layer {hottest['layer']} has one hot expert (f_max "
            f"{hottest['f_max']:.2f} = {_ratio(hottest):.1f}× uniform; every other layer of every zoo model stays at "
            f"≤ {others:.1f}×).")
