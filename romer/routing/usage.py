"""Per-layer expert activation counts and their load-balance summary (filled by ``record_routing``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


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
