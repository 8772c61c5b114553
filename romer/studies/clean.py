"""The clean baseline of a model: perplexity on a corpus split and its experts' usage, in one pass."""

from __future__ import annotations

import torch

from romer.data import load_text
from romer.eval.spec import EvalSpec
from romer.models.view import moe_config, moe_layers
from romer.routing import record_routing


def parameter_counts(model) -> dict:
    """Total parameters, and parameters active per token (routed experts count k/E of their weights)."""
    total = sum(p.numel() for p in model.parameters())
    inactive = 0.0
    for layer in moe_layers(model):
        routed = sum(p.numel() for p in layer.experts.parameters_by_name().values())
        inactive += routed * (1 - layer.top_k / layer.num_experts)
    return {"total": total, "active": int(round(total - inactive))}


def model_facts(model) -> dict:
    """Architecture facts for tables: class, MoE layer count, experts, top-k, shared experts."""
    layers = moe_layers(model)
    first = layers[0]
    return {
        "class": type(model).__name__,
        "layers": model.config.num_hidden_layers,
        "moe_layers": len(layers),
        "experts": first.num_experts,
        "top_k": first.top_k,
        "scoring": first.scoring,
        "shared_experts": moe_config(model.config)["n_shared_experts"],
        "parameters": parameter_counts(model),
    }


def clean_report(model, tokenizer, label: str, spec: EvalSpec = EvalSpec(), progress: bool = False) -> dict:
    """Clean perplexity (token, word, bits/byte) and per-layer expert usage of one model on ``spec``'s text (by
    default the whole bundled test split, in the spec's shuffled order)."""
    with record_routing(model) as record:
        result = spec.perplexity(model, tokenizer, progress=progress, description=f"{label} · {spec.split}")
    return {
        "model": label,
        "split": spec.split,
        "eval": spec.describe(),
        **model_facts(model),
        **result.to_dict(),
        "usage": record.usage().summary(),
        "torch": torch.__version__,
    }


def unigram_baseline(split: str = "test") -> float:
    """Token PPL of an add-one unigram model fitted on the train split, on ``split`` (shipped tokenizer)."""
    from romer.data import load_tokenizer
    from romer.eval import unigram_perplexity

    tokenizer = load_tokenizer()
    encode = tokenizer.backend_tokenizer.encode
    train_ids = encode(load_text("train"), add_special_tokens=False).ids
    test_ids = encode(load_text(split), add_special_tokens=False).ids
    return unigram_perplexity(train_ids, test_ids, len(tokenizer))
