"""One view over the MoE layers of Hugging Face causal LMs, for both expert storage layouts.

* ``fused`` (transformers 5 families): ``experts.gate_up_proj [E, 2I, H]`` (rows ``[:I]`` gate, ``[I:]`` up)
  and ``experts.down_proj [E, H, I]``.
* ``modulelist`` (remote-code models such as deepseek-moe-16b, model_type ``deepseek``): ``experts`` is an
  ``nn.ModuleList`` of MLPs, each with ``gate_proj``, ``up_proj``, ``down_proj`` ``nn.Linear``.

Expert e computes ``y = (silu(x Wg^T) * (x Wu^T)) Wd^T`` with ``Wg, Wu [I, H]`` and ``Wd [H, I]``. Everything this
module returns shares storage with the model (no copies): writing into it in place changes the model. Finding
nothing is an error, never an empty result.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from romer.errors import UserError

FUSED = "fused"
MODULELIST = "modulelist"
SCORINGS = ("softmax", "sigmoid")
# What a router's forward returns, by layout: transformers 5 routers return (logits, weights, indices); the
# remote-code DeepSeek MoEGate returns (indices, weights, aux_loss).
ROUTER_OUTPUT = MappingProxyType({
    FUSED: ("logits", "weights", "indices"),
    MODULELIST: ("indices", "weights", "aux_loss"),
})


class UnsupportedModelError(UserError):
    """The model is not an MoE family romer knows, or its layers do not have that family's structure."""


@dataclass(frozen=True)
class FamilySpec:
    """Where one model_type keeps its MoE parts: attribute names on a decoder layer and on its MoE block.

    ``scoring`` applies when the router has no ``scoring_func`` attribute; ``norm_topk_prob`` when it has no
    ``norm_topk_prob`` attribute (mixtral always renormalises; transformers' deepseek_v2 router never does).
    """

    block: str = "mlp"
    router: str = "gate"
    experts: str = "experts"
    scoring: str = "softmax"
    norm_topk_prob: bool = False
    shared_experts: tuple[str, ...] = ()
    shared_expert_gate: str | None = None
    score_correction_bias: str | None = None


_FAMILIES: Mapping[str, FamilySpec] = MappingProxyType({
    "olmoe": FamilySpec(),
    "qwen2_moe": FamilySpec(shared_experts=("shared_expert",), shared_expert_gate="shared_expert_gate"),
    "qwen3_moe": FamilySpec(),
    "mixtral": FamilySpec(norm_topk_prob=True),
    "deepseek_v2": FamilySpec(shared_experts=("shared_experts",)),
    "deepseek_v3": FamilySpec(scoring="sigmoid", shared_experts=("shared_experts",),
                              score_correction_bias="e_score_correction_bias"),
    "deepseek": FamilySpec(shared_experts=("shared_experts",)),
})
SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(_FAMILIES)

_CONFIG_ALIASES: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "num_experts": ("num_experts", "num_local_experts", "n_routed_experts"),
    "top_k": ("num_experts_per_tok", "top_k"),
    "moe_intermediate_size": ("moe_intermediate_size", "intermediate_size"),
    "n_shared_experts": ("n_shared_experts",),
    "first_k_dense_replace": ("first_k_dense_replace",),
})
_MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class RoutedExperts:
    """The routed experts of one MoE layer, in either storage layout."""

    module: nn.Module
    layout: str  # "fused" | "modulelist"
    num_experts: int

    def weights(self, e: int) -> dict[str, torch.Tensor]:
        """Expert e's ``{"gate": [I, H], "up": [I, H], "down": [H, I]}`` in nn.Linear (out, in) orientation.

        Detached views sharing storage with the model: in-place writes change the model (and bypass autograd).
        """
        e = self._check_index(e)
        if self.layout == FUSED:
            gate_up = self.module.gate_up_proj.detach()
            inter = gate_up.shape[1] // 2
            return {"gate": gate_up[e, :inter], "up": gate_up[e, inter:], "down": self.module.down_proj.detach()[e]}
        mlp = self.module[e]
        return {"gate": mlp.gate_proj.weight.detach(), "up": mlp.up_proj.weight.detach(),
                "down": mlp.down_proj.weight.detach()}

    def parameters_by_name(self) -> dict[str, nn.Parameter]:
        """The storage parameters by name relative to the experts module: ``gate_up_proj``, ``down_proj`` (fused)
        or ``{e}.gate_proj.weight`` … (modulelist); for programming whole tensors."""
        return dict(self.module.named_parameters())

    def _check_index(self, e: int) -> int:
        e = operator.index(e)
        if not 0 <= e < self.num_experts:
            raise IndexError(f"expert index {e} out of range: this layer has experts 0 … {self.num_experts - 1}")
        return e


@dataclass(frozen=True)
class MoELayer:
    """One decoder layer's MoE block: router, routed experts, shared experts and routing rule."""

    index: int
    block: nn.Module
    router: nn.Module
    router_weight: torch.Tensor
    router_bias: torch.Tensor | None
    score_correction_bias: torch.Tensor | None
    num_experts: int
    top_k: int
    scoring: str
    norm_topk_prob: bool
    routed_scaling_factor: float
    experts: RoutedExperts
    shared_experts: tuple[nn.Module, ...]
    shared_expert_gate: nn.Module | None
    router_output: tuple[str, ...] = ROUTER_OUTPUT[FUSED]

    def topk_indices(self, router_output: tuple) -> torch.Tensor:
        """The selected experts ``[tokens, top_k]`` from what ``self.router``'s forward returned (a hook's output)."""
        indices = router_output[self.router_output.index("indices")]
        return indices.reshape(-1, indices.shape[-1])


def moe_layers(model: nn.Module) -> list[MoELayer]:
    """Every MoE layer of ``model`` in layer order; UnsupportedModelError when the family is unknown or none match."""
    spec = _family(model)
    layers = [_moe_layer(i, block, spec) for i, block in _blocks(model, spec) if _is_moe_block(block, spec)]
    if not layers:
        raise UnsupportedModelError(
            f"model_type {_model_type(model)!r}: no decoder layer has an MoE block "
            f"(layers[i].{spec.block} with .{spec.router} and .{spec.experts})")
    return layers


def dense_mlp_layers(model: nn.Module) -> list[tuple[int, nn.Module]]:
    """``(layer index, MLP)`` of the decoder layers whose MLP is dense (deepseek first_k_dense_replace,
    qwen2_moe / qwen3_moe mlp_only_layers and decoder_sparse_step)."""
    spec = _family(model)
    return [(i, block) for i, block in _blocks(model, spec) if not _is_moe_block(block, spec)]


def moe_config(config: Any) -> dict[str, int | None]:
    """MoE hyper-parameters of a model config (object or mapping) under normalised names.

    ``num_experts`` and ``top_k`` are required; ``moe_intermediate_size`` falls back to ``intermediate_size``
    (olmoe, mixtral experts use it); ``n_shared_experts`` is 1 for a qwen2_moe-style single shared expert
    (``shared_expert_intermediate_size`` > 0), else 0 when absent; ``first_k_dense_replace`` 0 when absent.
    """
    out = {key: _first_set(config, names) for key, names in _CONFIG_ALIASES.items()}
    for key in ("num_experts", "top_k"):
        if out[key] is None:
            raise UnsupportedModelError(
                f"config (model_type {_get(config, 'model_type')!r}) has no {key} "
                f"(looked for {' | '.join(_CONFIG_ALIASES[key])}): not an MoE config")
    if out["n_shared_experts"] is None:
        out["n_shared_experts"] = 1 if _get(config, "shared_expert_intermediate_size") else 0
    if out["first_k_dense_replace"] is None:
        out["first_k_dense_replace"] = 0
    return out


# --- detection -------------------------------------------------------------------------------------------


def _model_type(model: nn.Module) -> str | None:
    return _get(getattr(model, "config", None), "model_type")


def _family(model: nn.Module) -> FamilySpec:
    model_type = _model_type(model)
    if model_type not in _FAMILIES:
        raise UnsupportedModelError(
            f"model_type {model_type!r} has no MoE layers romer knows; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    return _FAMILIES[model_type]


def _blocks(model: nn.Module, spec: FamilySpec) -> list[tuple[int, nn.Module]]:
    """``(i, layers[i].<spec.block>)`` for the decoder layers at ``model.model.layers`` (or ``model.layers``)."""
    inner = getattr(model, "model", model)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise UnsupportedModelError(
            f"model_type {_model_type(model)!r}: no decoder layers at model.model.layers ({type(model).__name__})")
    blocks = []
    for i, layer in enumerate(layers):
        block = getattr(layer, spec.block, None)
        if not isinstance(block, nn.Module):
            raise UnsupportedModelError(f"decoder layer {i} ({type(layer).__name__}) has no .{spec.block} module")
        blocks.append((i, block))
    return blocks


def _is_moe_block(block: nn.Module, spec: FamilySpec) -> bool:
    return hasattr(block, spec.router) and hasattr(block, spec.experts)


def _moe_layer(index: int, block: nn.Module, spec: FamilySpec) -> MoELayer:
    where = f"layer {index} ({type(block).__name__})"
    router = getattr(block, spec.router)
    experts = _routed_experts(getattr(block, spec.experts), where)
    weight = getattr(router, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise UnsupportedModelError(f"{where}: router .{spec.router} has no 2-D weight [E, H]")
    if weight.shape[0] != experts.num_experts:
        raise UnsupportedModelError(
            f"{where}: router weight has {weight.shape[0]} rows but there are {experts.num_experts} experts")
    return MoELayer(
        index=index,
        block=block,
        router=router,
        router_weight=weight,
        router_bias=_optional_tensor(router, "bias"),
        score_correction_bias=_optional_tensor(router, spec.score_correction_bias),
        num_experts=experts.num_experts,
        top_k=_top_k(router, experts.num_experts, where),
        scoring=_scoring(router, spec, where),
        norm_topk_prob=bool(getattr(router, "norm_topk_prob", spec.norm_topk_prob)),
        routed_scaling_factor=_scaling_factor(router),
        experts=experts,
        shared_experts=tuple(m for m in (getattr(block, a, None) for a in spec.shared_experts) if m is not None),
        shared_expert_gate=getattr(block, spec.shared_expert_gate) if spec.shared_expert_gate else None,
        router_output=ROUTER_OUTPUT[experts.layout],
    )


def _routed_experts(module: nn.Module, where: str) -> RoutedExperts:
    if isinstance(module, nn.ModuleList):
        _check_modulelist(module, where)
        return RoutedExperts(module, MODULELIST, len(module))
    _check_fused(module, where)
    return RoutedExperts(module, FUSED, module.gate_up_proj.shape[0])


def _check_fused(module: nn.Module, where: str) -> None:
    gate_up, down = getattr(module, "gate_up_proj", None), getattr(module, "down_proj", None)
    if not (isinstance(gate_up, torch.Tensor) and isinstance(down, torch.Tensor)):
        raise UnsupportedModelError(
            f"{where}: experts ({type(module).__name__}) are neither an nn.ModuleList nor fused gate_up_proj/down_proj")
    variant = {"is_transposed": False, "has_bias": False, "has_gate": True, "is_concatenated": True}
    odd = {k: getattr(module, k) for k, v in variant.items() if getattr(module, k, v) != v}
    if odd:
        raise UnsupportedModelError(f"{where}: fused experts variant {odd} is not supported (need {variant})")
    n, two_i, h = gate_up.shape if gate_up.dim() == 3 else (None, None, None)
    if n is None or two_i % 2 or tuple(down.shape) != (n, h, two_i // 2):
        raise UnsupportedModelError(
            f"{where}: expected gate_up_proj [E, 2I, H] and down_proj [E, H, I], got "
            f"{tuple(gate_up.shape)} and {tuple(down.shape)}")


def _check_modulelist(module: nn.ModuleList, where: str) -> None:
    if len(module) == 0:
        raise UnsupportedModelError(f"{where}: experts ModuleList is empty")
    for e, mlp in enumerate(module):
        for name in _MLP_PROJECTIONS:
            lin = getattr(mlp, name, None)
            if not isinstance(lin, nn.Linear) or lin.bias is not None:
                raise UnsupportedModelError(f"{where}: expert {e} has no bias-free nn.Linear .{name}")


def _top_k(router: nn.Module, num_experts: int, where: str) -> int:
    top_k = getattr(router, "top_k", None)
    if not isinstance(top_k, int) or not 1 <= top_k <= num_experts:
        raise UnsupportedModelError(f"{where}: router top_k {top_k!r} is not an int in 1 … {num_experts}")
    return top_k


def _scoring(router: nn.Module, spec: FamilySpec, where: str) -> str:
    scoring = getattr(router, "scoring_func", spec.scoring)
    if scoring not in SCORINGS:
        raise UnsupportedModelError(f"{where}: router scoring {scoring!r} is not one of {SCORINGS}")
    return scoring


def _scaling_factor(router: nn.Module) -> float:
    factor = getattr(router, "routed_scaling_factor", None)
    return 1.0 if factor is None else float(factor)


def _optional_tensor(module: nn.Module, name: str | None) -> torch.Tensor | None:
    value = getattr(module, name, None) if name else None
    return value if isinstance(value, torch.Tensor) else None


def _get(config: Any, key: str) -> Any:
    if config is None:
        return None
    if isinstance(config, Mapping):
        return config.get(key)
    return getattr(config, key, None)


def _first_set(config: Any, names: tuple[str, ...]) -> Any:
    return next((v for v in (_get(config, n) for n in names) if v is not None), None)
