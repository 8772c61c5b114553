"""Apply a Plan: copy replica weights, program the model onto the chip, average replica pairs, keep the plan's
digital parts noise-free, and install the routing corrections. ``Applied.restore()`` undoes all of it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from romer.calibrate import replacement as rep
from romer.calibrate.plan import Plan
from romer.calibrate.routing_rule import install
from romer.models.view import moe_layers
from romer.noise.chip import Chip, program
from romer.noise.placement import NAMED_PLACEMENTS, analog_weights


@dataclass(frozen=True)
class Cost:
    """What a plan costs in hardware: the share of the chip's analog weights it keeps digital (noise-free), and
    the extra analog weights its replica arrays add (as a share of the analog weights)."""

    digital_share: float
    extra_analog_share: float


def _attention_weights(model: nn.Module, chip: Chip) -> list[torch.Tensor]:
    if "attention" not in chip.placement:
        return []
    return [w.parameter for w in analog_weights(model, frozenset({"attention"}), strict=False)]


def plan_cost(model: nn.Module, chip: Chip, plan: Plan) -> Cost:
    layers = {layer.index: layer for layer in moe_layers(model)}
    analog = sum(w.parameter.numel() for w in analog_weights(model, chip.placement,
                                                              strict=chip.placement_name() not in NAMED_PLACEMENTS))
    per_expert = {i: sum(t.numel() for t in rep.expert_views(layer.experts, 0)) for i, layer in layers.items()}
    digital = 0
    if "routed_experts" in chip.placement:
        digital += sum(per_expert[i] * len(experts) for i, experts in plan.digital_experts.items())
    if plan.digital_attention:
        digital += sum(p.numel() for p in _attention_weights(model, chip))
    extra = sum(per_expert[r.layer] * len(r.pairs) for r in plan.replacement if r.variant in ("replica", "split"))
    return Cost(digital / analog, extra / analog if "routed_experts" in chip.placement else 0.0)


class Applied:
    """A model running a plan on a chip; ``restore()`` (or leaving the ``with`` block) gives the clean model back."""

    def __init__(self, programmed, handles: list, undo: list[tuple[torch.Tensor, torch.Tensor]]):
        self._programmed, self._handles, self._undo = programmed, handles, undo

    @torch.no_grad()
    def restore(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self._programmed is not None:
            self._programmed.restore()
            self._programmed = None
        for view, original in reversed(self._undo):
            view.copy_(original)
        self._undo = []

    def __enter__(self) -> "Applied":
        return self

    def __exit__(self, *exc) -> None:
        self.restore()


@torch.no_grad()
def apply(model: nn.Module, chip: Chip | None, plan: Plan) -> Applied:
    """Run ``plan`` on ``model`` programmed onto ``chip`` (None: the weights are left as they are, e.g. a saved
    calibrated folder whose weights already hold the chip's read-back values). A plan fitted on another model is
    refused before anything changes."""
    plan.check_model(model)
    layers = {layer.index: layer for layer in moe_layers(model)}
    undo: list[tuple[torch.Tensor, torch.Tensor]] = []
    programmed = None
    try:
        if chip is not None:
            for r in plan.replacement:
                if r.variant in rep.COPYING_VARIANTS:
                    for cold, hot in r.pairs:
                        undo += rep.copy_expert(layers[r.layer].experts, hot, cold)
            keep = [(v, v.clone()) for i, es in plan.digital_experts.items() for e in es
                    for v in rep.expert_views(layers[i].experts, e)]
            if plan.digital_attention:
                keep += [(p.data, p.detach().clone()) for p in _attention_weights(model, chip)]
            programmed = program(model, chip)  # clean copies in RAM when small, else a temp file
            for r in plan.replacement:
                if r.variant == "replica":
                    for cold, hot in r.pairs:
                        rep.average_into(layers[r.layer].experts, hot, cold)
            for view, clean in keep:
                view.copy_(clean)
        handles = install(list(layers.values()), plan.router)
    except BaseException:
        Applied(programmed, [], undo).restore()
        raise
    return Applied(programmed, handles, undo)
