"""Per-layer expert activation counts, recorded by router forward hooks on real (non-padding) tokens."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from romer.models.view import moe_layers


@dataclass
class ExpertUsage:
    """How often each expert is in a token's top-k, per MoE layer.

    ``counts[l, e]`` is the number of real tokens whose top-k in MoE layer ``l`` contains expert ``e``;
    ``tokens`` the number of real tokens seen. Frequency f_e = counts / tokens (Σ_e f_e = top_k).
    """

    layer_indices: list[int]
    top_k: list[int]
    counts: torch.Tensor  # [layers, experts], int64
    tokens: int = 0

    @property
    def frequency(self) -> torch.Tensor:
        """f[l, e]: share of real tokens whose top-k contains expert e (0 … 1)."""
        return self.counts.double() / max(self.tokens, 1)

    def load(self) -> torch.Tensor:
        """Share of a layer's top-k slots taken by each expert (rows sum to 1)."""
        return self.counts.double() / self.counts.sum(dim=1, keepdim=True).clamp_min(1)

    def summary(self) -> list[dict]:
        """Per layer: coefficient of variation of f, min / max f, and experts below 0.1·k/E."""
        rows = []
        freq = self.frequency
        for row, layer, k in zip(freq, self.layer_indices, self.top_k):
            mean = row.mean()
            rows.append({
                "layer": layer,
                "cv": float(row.std(unbiased=False) / mean) if mean > 0 else float("nan"),
                "f_min": float(row.min()),
                "f_max": float(row.max()),
                "f_uniform": k / row.numel(),
                "cold_experts": int((row < 0.1 * k / row.numel()).sum()),
            })
        return rows


@contextmanager
def record_usage(model):
    """Count top-k activations of every router while the block runs; hooks are removed on exit or error.

    Padding is excluded using the ``attention_mask`` the model is called with (a forward pre-hook on the
    model reads it); without a mask every token counts.
    """
    layers = moe_layers(model)
    n_experts = {layer.num_experts for layer in layers}
    if len(n_experts) != 1:
        raise ValueError(f"layers have different expert counts {sorted(n_experts)}")
    usage = ExpertUsage(
        layer_indices=[layer.index for layer in layers],
        top_k=[layer.top_k for layer in layers],
        counts=torch.zeros(len(layers), n_experts.pop(), dtype=torch.int64),
    )
    state: dict[str, torch.Tensor | None] = {"mask": None}

    def read_mask(module, args, kwargs):
        mask = kwargs.get("attention_mask")
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        state["mask"] = mask.reshape(-1).bool() if mask is not None else None
        usage.tokens += int(mask.sum()) if mask is not None else input_ids.numel()

    def count(slot: int):
        def hook(module, args, output):
            topk = layers[slot].topk_indices(output)
            if state["mask"] is not None:
                topk = topk[state["mask"].to(topk.device)]
            usage.counts[slot] += torch.bincount(topk.reshape(-1).cpu(), minlength=usage.counts.shape[1])
        return hook

    handles = [model.register_forward_pre_hook(read_mask, with_kwargs=True)]
    try:
        handles += [layer.router.register_forward_hook(count(i)) for i, layer in enumerate(layers)]
        yield usage
    finally:
        for h in handles:
            h.remove()
