"""Routed experts in every storage layout, read as per-expert (out, in) matrices that share storage with the model.

* ``fused`` (transformers 5, ``@use_experts_implementation``): ``gate_up_proj`` and ``down_proj`` are [E, …]
  parameters. Untransposed: ``gate_up_proj [E, 2I, H]``, ``down_proj [E, H, I]``; transposed
  (``is_transposed``, gpt_oss, llama4): ``[E, H, 2I]`` and ``[E, I, H]``. Gate and up are the two halves of the
  2I axis (``is_concatenated``) or interleaved along it (gate rows 0, 2, 4 …, up rows 1, 3, 5 …; gpt_oss).
  Optional biases (``has_bias``): ``gate_up_proj_bias [E, 2I]``, ``down_proj_bias [E, H]``.
* ``modulelist`` (remote-code models such as deepseek-moe-16b): an ``nn.ModuleList`` of MLPs with three
  ``nn.Linear`` projections, named ``gate_proj / up_proj / down_proj`` (or mixtral's old ``w1 / w3 / w2``).

Expert e computes ``y = down(act(gate x) * up x)`` (the activation is the module's own; gpt_oss clamps and adds
one to ``up``) with gate, up [I, H] and down [H, I] in nn.Linear (out, in) orientation. Every tensor returned
here is a detached view: writing into it in place changes the model.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
from torch import nn

from romer.models.families import UnsupportedModelError

FUSED = "fused"
MODULELIST = "modulelist"
PROJECTION_NAMES = (("gate_proj", "up_proj", "down_proj"), ("w1", "w3", "w2"))  # (gate, up, down)
_VARIANT_DEFAULTS = {"is_transposed": False, "is_concatenated": True, "has_gate": True,
                     "has_post_expert_norm": False}


@dataclass(frozen=True)
class RoutedExperts:
    """The routed experts of one MoE layer, in either storage layout (see the module docstring)."""

    module: nn.Module
    layout: str  # "fused" | "modulelist"
    num_experts: int
    is_transposed: bool = False  # fused: stored [E, in, out]
    is_concatenated: bool = True  # fused: [gate; up] halves, else interleaved rows
    has_bias: bool = False
    projections: tuple[str, str, str] = PROJECTION_NAMES[0]  # modulelist: (gate, up, down) attribute names

    def weights(self, e: int) -> dict[str, torch.Tensor]:
        """Expert e's ``{"gate": [I, H], "up": [I, H], "down": [H, I]}`` in nn.Linear (out, in) orientation.

        Detached views sharing storage with the model (strided for transposed or interleaved storage): in-place
        writes change the model (and bypass autograd).
        """
        e = self._check_index(e)
        if self.layout == FUSED:
            gate_up, down = self.module.gate_up_proj.detach()[e], self.module.down_proj.detach()[e]
            if self.is_transposed:
                gate_up, down = gate_up.T, down.T
            gate, up = self._split(gate_up)
            return {"gate": gate, "up": up, "down": down}
        mlp = self.module[e]
        return {key: getattr(mlp, name).weight.detach() for key, name in zip(("gate", "up", "down"), self.projections)}

    def biases(self, e: int) -> dict[str, torch.Tensor]:
        """Expert e's ``{"gate": [I], "up": [I], "down": [H]}`` bias views, or ``{}`` for bias-free experts."""
        e = self._check_index(e)
        if not self.has_bias:
            return {}
        if self.layout == FUSED:
            gate, up = self._split(self.module.gate_up_proj_bias.detach()[e])
            return {"gate": gate, "up": up, "down": self.module.down_proj_bias.detach()[e]}
        mlp = self.module[e]
        return {key: getattr(mlp, name).bias.detach() for key, name in zip(("gate", "up", "down"), self.projections)}

    def tensors(self, e: int) -> dict[str, torch.Tensor]:
        """Everything that defines expert e: its weight views and, when it has them, its bias views
        (``gate_bias``, ``up_bias``, ``down_bias``); copy all of them to copy the expert's function."""
        return {**self.weights(e), **{f"{k}_bias": v for k, v in self.biases(e).items()}}

    def parameters_by_name(self) -> dict[str, nn.Parameter]:
        """The weight-matrix parameters by name relative to the experts module (``gate_up_proj``, ``down_proj``
        fused, stored [E, out, in] or transposed; ``{e}.gate_proj.weight`` … modulelist); for programming whole
        tensors. Biases are not included: they stay digital (``bias_parameters_by_name``)."""
        params = dict(self.module.named_parameters())
        if self.layout == FUSED:
            return {name: params[name] for name in ("gate_up_proj", "down_proj")}
        return {f"{e}.{name}.weight": params[f"{e}.{name}.weight"]
                for e in range(self.num_experts) for name in self.projections}

    def bias_parameters_by_name(self) -> dict[str, nn.Parameter]:
        """The expert bias parameters by name (empty for bias-free experts)."""
        weights = set(self.parameters_by_name())
        return {n: p for n, p in self.module.named_parameters() if n not in weights} if self.has_bias else {}

    def _split(self, gate_up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.is_concatenated:
            inter = gate_up.shape[0] // 2
            return gate_up[:inter], gate_up[inter:]
        return gate_up[0::2], gate_up[1::2]

    def _check_index(self, e: int) -> int:
        e = operator.index(e)
        if not 0 <= e < self.num_experts:
            raise IndexError(f"expert index {e} out of range: this layer has experts 0 … {self.num_experts - 1}")
        return e


def looks_like_experts(name: str, module: nn.Module) -> bool:
    """A module that calls itself experts (by name or transformers' experts attributes), readable or not."""
    return (name.rsplit(".", 1)[-1] == "experts" or hasattr(module, "has_gate") or hasattr(module, "is_transposed"))


def read_experts(module: nn.Module, where: str) -> RoutedExperts | None:
    """``module`` as routed experts, None when it is not an experts container; UnsupportedModelError when it
    claims to be one (fused attributes, [E, …] tensors) in a variant romer cannot read."""
    if isinstance(module, nn.ModuleList):
        return _read_modulelist(module, where)
    down = getattr(module, "down_proj", None)
    if not (isinstance(down, torch.Tensor) and down.dim() == 3):
        return None
    return _read_fused(module, where)


def _read_fused(module: nn.Module, where: str) -> RoutedExperts:
    variant = {k: bool(getattr(module, k, v)) for k, v in _VARIANT_DEFAULTS.items()}
    gate_up = getattr(module, "gate_up_proj", None)
    if not variant["has_gate"] or not isinstance(gate_up, torch.Tensor):
        raise UnsupportedModelError(f"{where}: fused experts {type(module).__name__} without a gate projection "
                                    "(has_gate=False, up_proj only) are not supported")
    if variant["has_post_expert_norm"]:
        raise UnsupportedModelError(f"{where}: fused experts {type(module).__name__} with a post-expert norm "
                                    "are not supported")
    down = module.down_proj
    transposed = variant["is_transposed"]
    n, a, b = gate_up.shape if gate_up.dim() == 3 else (None, 0, 0)
    two_i, h = (b, a) if transposed else (a, b)
    want_down = (n, two_i // 2, h) if transposed else (n, h, two_i // 2)
    if n is None or two_i % 2 or tuple(down.shape) != want_down:
        raise UnsupportedModelError(
            f"{where}: fused experts {type(module).__name__} (is_transposed={transposed}) have gate_up_proj "
            f"{tuple(gate_up.shape)} and down_proj {tuple(down.shape)}, not [E, 2I, H] / [E, H, I] "
            "(or their transposes)")
    bias_gu, bias_d = getattr(module, "gate_up_proj_bias", None), getattr(module, "down_proj_bias", None)
    has_bias = bool(getattr(module, "has_bias", isinstance(bias_gu, torch.Tensor)))
    if has_bias and not (isinstance(bias_gu, torch.Tensor) and tuple(bias_gu.shape) == (n, two_i)
                         and isinstance(bias_d, torch.Tensor) and tuple(bias_d.shape) == (n, h)):
        raise UnsupportedModelError(f"{where}: fused experts {type(module).__name__} have has_bias but no "
                                    f"gate_up_proj_bias [E, 2I] and down_proj_bias [E, H]")
    return RoutedExperts(module, FUSED, n, is_transposed=transposed, is_concatenated=variant["is_concatenated"],
                         has_bias=has_bias)


def _read_modulelist(module: nn.ModuleList, where: str) -> RoutedExperts | None:
    if len(module) == 0:
        return None
    for names in PROJECTION_NAMES:
        linears = [[getattr(mlp, n, None) for n in names] for mlp in module]
        if all(isinstance(lin, nn.Linear) for row in linears for lin in row):
            biased = {lin.bias is not None for row in linears for lin in row}
            if len(biased) != 1:
                raise UnsupportedModelError(f"{where}: experts ModuleList mixes biased and bias-free projections")
            shapes = {tuple(lin.weight.shape) for row in linears for lin in row[:2]}
            if len(shapes) != 1:
                raise UnsupportedModelError(f"{where}: experts ModuleList has experts of different shapes")
            return RoutedExperts(module, MODULELIST, len(module), has_bias=biased.pop(), projections=names)
    return None
