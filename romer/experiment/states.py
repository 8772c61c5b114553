"""Weight states of one (model, chip) pair, each set up once and shared by every method that runs on it.

A plan changes the model in two separable ways: its **weights** (replica copies programmed as their own arrays,
experts or attention kept digital) and its **routing** (hooks after the routers). ``weights_key`` names the
weight state a plan needs and ``plan_key`` the whole effective plan, both as canonical JSON, with parts that
are no-ops on the chip's placement dropped (digital attention when attention is not analog, digital experts
when the routed experts are not), so two plans with the same key give the same numbers.

``BaseState`` programs the chip once: its programmed weights are kept, so the plain chip ("noisy") can be
entered again by a copy instead of new draws, and a plan that keeps some experts digital copies only those
experts' clean matrices in and their programmed ones back out. A replica state needs other draws (the cold
slots are programmed holding the hot experts' weights), so it is set up by ``romer.calibrate.apply`` once per
distinct replacement and restored when every plan on it is done.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import torch
from torch import nn

from romer.calibrate import Applied, apply
from romer.calibrate.apply import take_off_periphery
from romer.calibrate import replacement as rep
from romer.calibrate.plan import Plan
from romer.calibrate.routing_rule import install
from romer.models.view import moe_layers
from romer.noise.chip import Chip, install_chip_io, program
from romer.noise.snr import summarize_snr, weight_snr


def effective_digital(plan: Plan, chip: Chip) -> tuple[dict, bool]:
    experts = ({str(k): sorted(v) for k, v in sorted(plan.digital_experts.items()) if v}
               if "routed_experts" in chip.placement else {})
    return experts, bool(plan.digital_attention and "attention" in chip.placement)


def _router_copies(plan: Plan, chip: Chip) -> int:
    return plan.router_copies if "router" in chip.placement else 1


def weights_key(plan: Plan, chip: Chip) -> str:
    """The weight state ``plan`` runs on: its copying replacements, router copies (where the router is analog)
    and effective digital parts (canonical JSON)."""
    experts, attention = effective_digital(plan, chip)
    copies = [r.to_dict() for r in plan.replacement if r.variant in rep.COPYING_VARIANTS]
    routers = _router_copies(plan, chip)
    return json.dumps({"copies": copies, "digital_experts": experts, "digital_attention": attention,
                       **({"router_copies": routers} if routers != 1 else {})}, sort_keys=True)


def needs_own_programming(plan: Plan, chip: Chip) -> bool:
    """Whether the plan needs draws beyond the base chip's: copying replacements (the cold slots programmed
    holding the hot experts' weights) or router copies."""
    return any(r.variant in rep.COPYING_VARIANTS for r in plan.replacement) or _router_copies(plan, chip) != 1


def plan_key(plan: Plan, chip: Chip) -> str:
    """The whole effective plan: weight state and non-identity routing fixes (canonical JSON)."""
    fixes = [f.to_dict() for f in plan.router if not f.is_identity]
    return json.dumps({"weights": json.loads(weights_key(plan, chip)), "router": fixes}, sort_keys=True)


@contextmanager
def routing(model: nn.Module, plan: Plan) -> Iterator[None]:
    """The plan's routing hooks on the model for the block (removed on exit)."""
    handles = install(moe_layers(model), plan.router)
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class BaseState:
    """The model programmed onto ``chip``, kept as a copy of the programmed weights so that it can be entered
    again without new draws. ``enter()`` / ``leave()`` switch the model between programmed and clean.
    ``snr_db``: the programmed weights' SNR per placement group (``romer.noise.snr``), dB."""

    @torch.no_grad()
    def __init__(self, model: nn.Module, chip: Chip):
        self.model, self.chip = model, chip
        with program(model, chip) as programmed:
            params = {name: model.get_parameter(name) for name in programmed.names}
            self._programmed = {name: p.detach().clone() for name, p in params.items()}
            # pooled weight SNR per placement group (router, routed_experts, …), dB: the chip's physical axis
            self.snr_db = {group: s["overall"]["snr_db"] for group, s in summarize_snr(weight_snr(programmed)).items()}
        self._params = params
        self._clean: dict[str, torch.Tensor] | None = None
        self._io = None  # the chip's IO hooks while entered (None for ideal IO)

    @torch.no_grad()
    def enter(self) -> None:
        """Write the programmed weights in (keeping the clean ones to give back) and put the chip's IO model on."""
        if self._clean is None:
            self._clean = {name: p.detach().clone() for name, p in self._params.items()}
        for name, p in self._params.items():
            p.copy_(self._programmed[name])
        if self._io is None:
            self._io = install_chip_io(self.model, self.chip)

    @torch.no_grad()
    def leave(self) -> None:
        """Take the IO model off and write the clean weights back (bit-identical)."""
        if self._io is not None:
            self._io.remove()
            self._io = None
        if self._clean is not None:
            for name, p in self._params.items():
                p.copy_(self._clean[name])
            self._clean = None

    @contextmanager
    def digital(self, plan: Plan) -> Iterator[None]:
        """Inside ``enter()``: the plan's digital experts hold their clean weights for the block, then their
        programmed ones again. (Digital attention needs nothing here: only plans whose attention is not analog
        run on the base state, see ``weights_key``.)"""
        experts, _ = effective_digital(plan, self.chip)
        self.leave()  # two copies of the analog weights: cheap next to a forward pass
        layers = {layer.index: layer for layer in moe_layers(self.model)}  # found on the clean model, no IO
        views = [v for i, es in experts.items() for e in es for v in rep.expert_views(layers[int(i)].experts, e)]
        clean = [v.clone() for v in views]
        self.enter()
        programmed = [v.clone() for v in views]
        with torch.no_grad():
            for view, value in zip(views, clean):
                view.copy_(value)
        if self._io is not None:  # digital units: no DAC and ADC in front of them
            take_off_periphery(self._io, self.model, self.chip, plan, layers)
        try:
            yield
        finally:
            with torch.no_grad():
                for view, value in zip(views, programmed):
                    view.copy_(value)
            if self._io is not None:  # the periphery on every analog matmul again
                self._io.remove()
                self._io = install_chip_io(self.model, self.chip)


def replica_weights(model: nn.Module, chip: Chip, plan: Plan) -> Applied:
    """The model programmed with the plan's replicas, router copies and digital parts, without its routing hooks
    (a new programming: the cold slots draw their own noise holding the hot experts' weights, the router copies
    theirs); ``restore()`` ends it."""
    return apply(model, chip, replace(plan, router=[]))
