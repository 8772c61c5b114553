"""A Plan: everything a calibration decided for one chip, as JSON-serialisable data.

``apply(model, chip, plan)`` (romer.calibrate.apply) turns it into a calibrated model; a plan saved and loaded
again applies to identical outputs (floats are stored as JSON numbers, which round-trip exactly).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from romer.calibrate.routing_rule import APPLY_TO, RouterFix
from romer.errors import UserError
from romer.io import write_json_atomic
from romer.models.view import moe_layers

PLAN_VERSION = 1


SUMMARY_KEYS = ("model_type", "moe_layers", "num_experts", "top_k")


def model_summary(model: nn.Module) -> dict:
    """What a plan must match: the model type and its MoE layers' indices, expert counts and top-k."""
    layers = moe_layers(model)
    return {"model_type": getattr(model.config, "model_type", None), "moe_layers": [l.index for l in layers],
            "num_experts": [l.num_experts for l in layers], "top_k": [l.top_k for l in layers]}


@dataclass
class Replacement:
    """One layer's replaced slots: ``pairs`` of (cold slot, hot source expert), all with one variant."""

    layer: int
    variant: str
    pairs: list[tuple[int, int]]

    def to_dict(self) -> dict:
        return {"layer": self.layer, "variant": self.variant, "pairs": [list(p) for p in self.pairs]}


@dataclass
class Plan:
    method: dict
    chip: dict
    model: dict
    replacement: list[Replacement] = field(default_factory=list)
    router: list[RouterFix] = field(default_factory=list)
    digital_experts: dict[int, list[int]] = field(default_factory=dict)  # layer → experts kept digital
    digital_attention: bool = False
    router_copies: int = 1  # analog arrays per router, averaged (1: the router as programmed)
    stats: dict = field(default_factory=dict)

    @classmethod
    def none(cls, chip=None) -> "Plan":
        """The plan that changes nothing: the model exactly as programmed on the chip ("noisy")."""
        return cls(method={}, chip={} if chip is None else chip.to_dict(), model={})

    def to_dict(self) -> dict:
        return {"version": PLAN_VERSION, "method": self.method, "chip": self.chip, "model": self.model,
                "replacement": [r.to_dict() for r in self.replacement],
                "router": [f.to_dict() for f in self.router if not f.is_identity],
                "digital_experts": {str(k): v for k, v in sorted(self.digital_experts.items())},
                "digital_attention": self.digital_attention,
                **({"router_copies": self.router_copies} if self.router_copies != 1 else {}), "stats": self.stats}

    @classmethod
    def from_dict(cls, data: dict) -> "Plan":
        if not isinstance(data, dict) or data.get("version") != PLAN_VERSION:
            raise UserError(f"not a romer plan (version {PLAN_VERSION}): missing or wrong 'version'")
        try:
            return cls(method=data["method"], chip=data["chip"], model=data["model"],
                       replacement=[Replacement(r["layer"], r["variant"], [tuple(p) for p in r["pairs"]])
                                    for r in data["replacement"]],
                       router=[RouterFix.from_dict(f) for f in data["router"]],
                       digital_experts={int(k): list(v) for k, v in data["digital_experts"].items()},
                       digital_attention=bool(data["digital_attention"]),
                       router_copies=int(data.get("router_copies", 1)), stats=data.get("stats", {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"malformed plan: {type(exc).__name__}: {exc}") from None

    def save(self, path: str | Path) -> None:
        write_json_atomic(Path(path), self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "Plan":
        path = Path(path)
        if not path.is_file():
            raise UserError(f"no plan file at {path}")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{path} is not JSON: {exc}") from None
        return cls.from_dict(data)

    def check_model(self, model: nn.Module) -> None:
        """Refuse a plan fitted on another model (type, MoE layers, experts or top-k differ); a plan that records
        no model (``Plan.none``) fits any."""
        recorded = {k: self.model[k] for k in SUMMARY_KEYS if k in self.model}
        if not recorded:
            return
        actual = model_summary(model)
        wrong = [k for k in recorded if recorded[k] != actual[k]]
        if wrong:
            k = wrong[0]
            raise UserError(f"the plan was fitted on another model: its {k} is {recorded[k]}, this model's is "
                            f"{actual[k]}")
        self.check_contents(dict(zip(actual["moe_layers"], actual["num_experts"])))

    def check_contents(self, experts: dict[int, int]) -> None:
        """Refuse a plan whose numbers cannot be right for a model with ``experts[layer]`` experts per MoE layer:
        an unknown layer, a vector of the wrong length, a NaN or ±∞, an expert index out of range, an unknown
        ``apply_to`` or replacement variant (UserError, before anything changes)."""
        from romer.calibrate.config import VARIANTS

        def fail(where: str, what: str):
            raise UserError(f"plan {where}: {what}")

        def layer_experts(layer, where: str) -> int:
            if layer not in experts:
                fail(where, f"layer {layer} is not a MoE layer of this model ({sorted(experts)})")
            return experts[layer]

        def check_indices(values, count: int, where: str) -> None:
            bad = [v for v in values if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < count]
            if bad:
                fail(where, f"expert index {bad[0]!r} is not in 0 … {count - 1}")

        for fix in self.router:
            where = f"router fix of layer {fix.layer}"
            count = layer_experts(fix.layer, where)
            if fix.apply_to not in APPLY_TO:
                fail(where, f"apply_to {fix.apply_to!r} is not one of {', '.join(APPLY_TO)}")
            for name in ("scale", "offset", "selection_bias"):
                vector = getattr(fix, name)
                if vector is None:
                    continue
                if not isinstance(vector, list) or len(vector) != count:
                    fail(where, f"{name} has {len(vector) if isinstance(vector, list) else 'no'} values, the layer "
                                f"has {count} experts")
                if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                           for v in vector):
                    fail(where, f"{name} holds a value that is not a finite number")
            for name in ("token_p", "token_scale"):
                value = getattr(fix, name)
                if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value)):
                    fail(where, f"{name} {value!r} is not a finite number")
            check_indices(fix.masked, count, where)
            check_indices([e for pair in fix.split for e in pair], count, where)
        for r in self.replacement:
            where = f"replacement of layer {r.layer}"
            count = layer_experts(r.layer, where)
            if r.variant not in VARIANTS:
                fail(where, f"unknown variant {r.variant!r}")
            check_indices([e for pair in r.pairs for e in pair], count, where)
        for layer, chosen in self.digital_experts.items():
            check_indices(chosen, layer_experts(layer, f"digital experts of layer {layer}"),
                          f"digital experts of layer {layer}")
        if not isinstance(self.router_copies, int) or self.router_copies < 1:
            fail("router_copies", f"{self.router_copies!r} is not a positive count")

    @property
    def changes_routing(self) -> bool:
        """Whether applying the plan needs the routing hook (romer.load), not just the stored weights."""
        return any(not f.is_identity for f in self.router)
