"""Expert replacement (ROMER step 1): choose cold slots and hot sources per layer, and the weight surgery.

Variants (our reading of the paper): ``replica`` — the hot expert's clean weights are written into the cold
slot, which is programmed as its own array (fresh noise); the two arrays are driven in parallel and their outputs
averaged per matrix (½(W_h + W_l) x, i.e. conductance averaging of two independent draws), and the cold slot's router
row can no longer win. ``split`` — same copy, the hot expert's tokens alternate between the two arrays.
``redirect`` — no copy; the cold slots are masked, their tokens go to the next-best expert.
``prune-duplicate`` — the copy only: tokens that still pick the cold slot get the hot expert's function.
Shared experts are never touched (they are not routed).
"""

from __future__ import annotations

import torch

from romer.calibrate.config import ReplaceConfig
from romer.errors import UserError
from romer.models.view import RoutedExperts

MASKING_VARIANTS = ("replica", "redirect")
COPYING_VARIANTS = ("replica", "split", "prune-duplicate")


def replacement_count(frequency: torch.Tensor, top_k: int, config: ReplaceConfig) -> int:
    """r for one layer: ``count``; else the slots with f_e < τ·k/E; else round(ratio·E), at least 1."""
    num_experts = frequency.numel()
    if config.count is not None:
        return config.count
    if config.threshold is not None:
        return int((frequency < config.threshold * top_k / num_experts).sum())
    return max(1, round(config.ratio * num_experts))


def check_count(r: int, num_experts: int, top_k: int, variant: str, layer: int) -> None:
    """Refuse settings that need more slots than exist or leave fewer selectable experts than top-k."""
    if 2 * r > num_experts:
        raise UserError(f"layer {layer}: replacing {r} of {num_experts} experts needs {r} cold and {r} distinct "
                        f"hot experts (at most {num_experts // 2})")
    if variant in MASKING_VARIANTS and num_experts - r < top_k:
        raise UserError(f"layer {layer}: replacing {r} of {num_experts} experts with variant {variant!r} leaves "
                        f"{num_experts - r} selectable experts, fewer than top-k = {top_k}")


def choose_pairs(frequency: torch.Tensor, r: int, select: str, generator: torch.Generator | None = None
                 ) -> list[tuple[int, int]]:
    """(cold slot, hot source) pairs: the coldest slot gets the hottest expert, and so on (ties: lower index
    first). ``select="random"`` draws r slots and r other sources uniformly (the control; needs ``generator``)."""
    if r == 0:
        return []
    if select == "random":
        if generator is None:
            raise ValueError("random replacement needs a generator")
        perm = torch.randperm(frequency.numel(), generator=generator)
        return [(int(c), int(h)) for c, h in zip(perm[:r], perm[r:2 * r])]
    order = torch.argsort(frequency.double(), stable=True)  # ascending, ties by index
    cold = order[:r].tolist()
    hot = torch.argsort(-frequency.double(), stable=True).tolist()
    hot = [e for e in hot if e not in cold][:r]
    return list(zip(cold, hot))


def expert_views(experts: RoutedExperts, e: int) -> list[torch.Tensor]:
    """Expert e's weight matrices as views into the model (gate, up, down)."""
    w = experts.weights(e)
    return [w["gate"], w["up"], w["down"]]


@torch.no_grad()
def copy_expert(experts: RoutedExperts, source: int, target: int, undo: bool = True
                ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Write expert ``source``'s weights (and biases, where the experts have them: gpt_oss) into slot ``target``;
    returns (view, original) pairs to undo it (none with ``undo=False``: the caller saved the slot itself)."""
    saved = []
    for src, dst in zip(experts.tensors(source).values(), experts.tensors(target).values()):
        if undo:
            saved.append((dst, dst.clone()))
        dst.copy_(src)
    return saved


@torch.no_grad()
def average_into(experts: RoutedExperts, hot: int, replica: int) -> None:
    """Slot ``hot`` ← ½(hot + replica), matrix by matrix (the pair read as one averaged array; digital biases,
    equal in both after the copy, stay as they are)."""
    for h, r in zip(expert_views(experts, hot), expert_views(experts, replica)):
        h.copy_((h.float() + r.float()).mul_(0.5).to(h.dtype))
