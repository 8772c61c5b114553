"""Calibration tokens: full windows from a corpus split (disjoint from evaluation), and running them through a model."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from romer.calibrate.config import CalibrationData
from romer.data import load_dataset_documents
from romer.devices import release_free_memory
from romer.errors import UserError
from romer.eval.perplexity import check_context
from romer.models.view import moe_layers
from romer.routing.recorder import router_logits


def calibration_windows(tokenizer, data: CalibrationData) -> torch.Tensor:
    """``[sequences, window]`` int64: BOS + (window − 1) tokens each, cut from the split's documents taken in a
    seeded random order (so the windows mix the corpus's sources), joined with blank lines as ``load_text`` does."""
    documents = load_dataset_documents(data.dataset, data.data_path, data.split)
    order = torch.randperm(len(documents), generator=torch.Generator().manual_seed(data.seed)).tolist()
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if bos is None:
        raise UserError("tokenizer has neither a BOS nor an EOS token to start each calibration window with")
    need = data.sequences * (data.window - 1)
    ids: list[int] = []
    for i in order:
        ids += tokenizer(documents[i] + "\n\n", add_special_tokens=False)["input_ids"]
        if len(ids) >= need:
            break
    if len(ids) < need:
        raise UserError(f"the {data.split} split of {data.dataset} has {len(ids)} tokens, fewer than the {need} that "
                        f"{data.sequences} calibration windows of {data.window} need")
    body = torch.tensor(ids[:need], dtype=torch.long).view(data.sequences, data.window - 1)
    return torch.cat([torch.full((data.sequences, 1), bos, dtype=torch.long), body], dim=1)


@torch.no_grad()
def run_windows(model: nn.Module, windows: torch.Tensor, batch_size: int) -> None:
    """Forward every window (no padding: all windows have the same length) through the decoder only (routing
    does not depend on the LM head, which costs as much as the rest of a small model); outputs are discarded."""
    check_context(model, windows.shape[1])
    device = next(model.parameters()).device
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    for start in range(0, windows.shape[0], batch_size):
        decoder(input_ids=windows[start:start + batch_size].to(device))
    release_free_memory()


@contextmanager
def capture_logits(model: nn.Module, max_tokens: int = 16384) -> Iterator[dict[int, list[torch.Tensor]]]:
    """Keep the first ``max_tokens`` router-logit rows [tokens, E] of every MoE layer (float32, CPU), by layer."""
    layers = moe_layers(model)
    kept: dict[int, list[torch.Tensor]] = {layer.index: [] for layer in layers}

    def hook_for(layer):
        def hook(module, args, output):
            have = sum(t.shape[0] for t in kept[layer.index])
            if have < max_tokens:
                kept[layer.index].append(router_logits(layer, args, output)[: max_tokens - have].float().cpu())
        return hook

    handles = [layer.router.register_forward_hook(hook_for(layer)) for layer in layers]
    try:
        yield kept
    finally:
        for h in handles:
            h.remove()
