"""Apply a Plan: copy replica weights, program the model onto the chip, average replica pairs and router copies,
keep the plan's digital parts noise-free, and install the routing corrections. ``Applied.restore()`` undoes all
of it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from romer.calibrate import replacement as rep
from romer.calibrate.plan import Plan
from romer.calibrate.routing_rule import install
from romer.models.experts import FUSED
from romer.models.view import moe_layers
from romer.noise.chip import Chip, Programmed, program, program_copy, store_for
from romer.noise.placement import analog_weights


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


def take_off_periphery(hooks, model: nn.Module, chip: Chip, plan: Plan, layers: dict) -> None:
    """The plan's digital parts (MaxNN's experts and attention) multiplied without the chip's IO periphery
    (``IOHooks.keep_digital``): they are digital units, not arrays behind a DAC and an ADC. ``layers``: MoE layer
    index → ``MoELayer``, found before programming (finding them probes the routers, which IO would distort)."""
    digital = set(map(id, _attention_weights(model, chip))) if plan.digital_attention else set()
    fused = {}
    for i, experts in plan.digital_experts.items():
        routed = layers[int(i)].experts
        if routed.layout == FUSED:
            fused[routed.module] = experts
        else:
            digital |= {id(getattr(routed.module[e], name).weight) for e in experts for name in routed.projections}
    linears = [m for m in model.modules() if isinstance(m, nn.Linear) and id(m.weight) in digital]
    hooks.keep_digital(linears, fused)


def plan_cost(model: nn.Module, chip: Chip, plan: Plan) -> Cost:
    layers = {layer.index: layer for layer in moe_layers(model)}
    weights = chip.analog_weights(model)
    analog = sum(w.parameter.numel() for w in weights)
    per_expert = {i: sum(t.numel() for t in rep.expert_views(layer.experts, 0)) for i, layer in layers.items()}
    digital = 0
    if "routed_experts" in chip.placement:
        digital += sum(per_expert[i] * len(experts) for i, experts in plan.digital_experts.items())
    if plan.digital_attention:
        digital += sum(p.numel() for p in _attention_weights(model, chip))
    extra = (sum(per_expert[r.layer] * len(r.pairs) for r in plan.replacement if r.variant in ("replica", "split"))
             if "routed_experts" in chip.placement else 0)
    extra += (plan.router_copies - 1) * sum(w.parameter.numel() for w in weights if w.group == "router")
    return Cost(digital / analog, extra / analog)


@torch.no_grad()
def average_router_copies(model: nn.Module, programmed: Programmed, copies: int) -> None:
    """Each analog router of the programmed model ← the mean of ``copies`` arrays holding its clean weights: the
    one programmed into the model and copies − 1 more, each with its own draws (``program_copy``)."""
    chip = programmed.chip
    for w in chip.analog_weights(model):
        if w.group != "router":
            continue
        clean = programmed.clean(w.name).to(w.parameter.device)
        total = w.parameter.detach().float()
        for copy in range(1, copies):
            total += program_copy(clean, chip, w.name, copy).float()
        w.parameter.detach().copy_(total.div_(copies).to(w.parameter.dtype))


UNDO_MEMORY_LIMIT = 64 << 20  # saved weights in RAM up to 64 MiB, else a temp file (a 7B plan saves ~0.8 GB)


class Saved:
    """Views into the model saved before they are overwritten, in a clean store (RAM when small, else an
    anonymous temp file: a real-size plan's replica slots would otherwise cost a copy of them in memory);
    ``restore()`` writes them back, last saved first, and frees the store."""

    def __init__(self, views: list[torch.Tensor]):
        self._views = views
        self._store = store_for(sum(v.numel() * v.element_size() for v in views), limit=UNDO_MEMORY_LIMIT)
        for i, view in enumerate(views):
            self._store.put(str(i), view)

    @torch.no_grad()
    def restore(self) -> None:
        for i in reversed(range(len(self._views))):
            self._store.restore_into(str(i), self._views[i])
        self.close()

    def close(self) -> None:
        """Free the saved copies without writing them back."""
        self._views = []
        self._store.close()


class Applied:
    """A model running a plan on a chip; ``restore()`` (or leaving the ``with`` block) gives the clean model back."""

    def __init__(self, programmed, handles: list, undo: Saved | None):
        self._programmed, self._handles, self._undo = programmed, handles, undo

    @torch.no_grad()
    def restore(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self._programmed is not None:
            self._programmed.restore()
            self._programmed = None
        if self._undo is not None:
            self._undo.restore()
            self._undo = None

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
    undo, keep, programmed = None, None, None
    try:
        if chip is not None:
            copies = [(layers[r.layer].experts, hot, cold) for r in plan.replacement
                      if r.variant in rep.COPYING_VARIANTS for cold, hot in r.pairs]
            undo = Saved([t for experts, _, cold in copies for t in experts.tensors(cold).values()])
            for experts, hot, cold in copies:
                rep.copy_expert(experts, hot, cold, undo=False)
            keep = Saved([v for i, es in plan.digital_experts.items() for e in es
                          for v in rep.expert_views(layers[i].experts, e)]
                         + ([p.detach() for p in _attention_weights(model, chip)] if plan.digital_attention else []))
            programmed = program(model, chip)  # clean copies in RAM when small, else a temp file
            if plan.router_copies > 1:
                average_router_copies(model, programmed, plan.router_copies)
            for r in plan.replacement:
                if r.variant == "replica":
                    for cold, hot in r.pairs:
                        rep.average_into(layers[r.layer].experts, hot, cold)
            keep.restore()  # the plan's digital weights read back clean
            if programmed.io_hooks is not None:  # ... and are multiplied without the chip's periphery
                take_off_periphery(programmed.io_hooks, model, chip, plan, layers)
        handles = install(list(layers.values()), plan.router)
    except BaseException:
        if keep is not None:
            keep.close()  # never written back here: programming restores what it perturbed
        Applied(programmed, [], undo).restore()
        raise
    return Applied(programmed, handles, undo)
