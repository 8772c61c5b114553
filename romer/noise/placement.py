"""Which weights of a model sit on analog arrays: placement groups and the named placements."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from romer.errors import UserError
from romer.models.view import dense_mlp_layers, moe_layers

PLACEMENT_GROUPS = ("attention", "router", "routed_experts", "shared_experts", "dense_mlp", "embedding", "lm_head")
NAMED_PLACEMENTS = {
    # The paper motivates CIM by the memory traffic of expert switching: the MoE blocks are analog.
    "moe": frozenset({"router", "routed_experts", "shared_experts"}),
    # The MoE blocks' experts analog, the router digital: isolates the router's own noise.
    "experts": frozenset({"routed_experts", "shared_experts"}),
    # Stress setting: every linear weight inside the decoder blocks is analog.
    "all": frozenset({"attention", "router", "routed_experts", "shared_experts", "dense_mlp"}),
}


@dataclass(frozen=True)
class AnalogWeight:
    """One weight tensor on analog arrays: its name in the model, the parameter and its placement group."""

    name: str
    parameter: nn.Parameter
    group: str


def parse_placement(spec: str | frozenset[str] | set[str]) -> frozenset[str]:
    """A named placement (``moe``, ``all``) or a comma-separated list of groups → the set of analog groups."""
    if isinstance(spec, (set, frozenset)):
        groups = frozenset(spec)
    elif spec in NAMED_PLACEMENTS:
        return NAMED_PLACEMENTS[spec]
    else:
        groups = frozenset(g.strip() for g in spec.split(",") if g.strip())
    unknown = groups - set(PLACEMENT_GROUPS)
    if unknown or not groups:
        raise UserError(
            f"bad placement {spec!r}: use {' or '.join(NAMED_PLACEMENTS)} or groups from {', '.join(PLACEMENT_GROUPS)}"
        )
    return groups


def _linear_weights(module: nn.Module, group: str, names: dict[int, str]) -> list[AnalogWeight]:
    return [AnalogWeight(names[id(m.weight)], m.weight, group) for m in module.modules() if isinstance(m, nn.Linear)]


def analog_weights(model: nn.Module, placement: frozenset[str], strict: bool = True) -> list[AnalogWeight]:
    """The weight matrices of ``model`` in the placement's groups, in a fixed order (by parameter name).

    Only weight matrices are analog; biases, norms and the router's score-correction bias stay digital.
    With ``strict``, a group that is asked for but matches no weight in this model is an error, never a silent
    no-op; named placements are not strict (``moe`` on a family without shared experts), but must match
    something.
    """
    names = {id(p): n for n, p in model.named_parameters()}
    found: dict[str, list[AnalogWeight]] = {g: [] for g in placement}

    def add(group: str, weights: list[AnalogWeight]) -> None:
        if group in found:
            found[group] += weights

    for layer in moe_layers(model):
        add("router", [AnalogWeight(names[id(layer.router_weight)], layer.router_weight, "router")])
        add("routed_experts", [AnalogWeight(names[id(p)], p, "routed_experts")
                               for p in layer.experts.parameters_by_name().values()])
        for shared in layer.shared_experts + ((layer.shared_expert_gate,) if layer.shared_expert_gate else ()):
            add("shared_experts", _linear_weights(shared, "shared_experts", names))
    for _, mlp in dense_mlp_layers(model):
        add("dense_mlp", _linear_weights(mlp, "dense_mlp", names))
    for block in _decoder_layers(model):
        add("attention", _linear_weights(block.self_attn, "attention", names))
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    add("embedding", [AnalogWeight(names[id(embedding.weight)], embedding.weight, "embedding")])
    if head is not None and head.weight is not embedding.weight:
        add("lm_head", [AnalogWeight(names[id(head.weight)], head.weight, "lm_head")])
    empty = sorted(g for g, ws in found.items() if not ws)
    if (strict and empty) or len(empty) == len(found):
        raise UserError(f"placement groups {', '.join(empty)} match no weight in {type(model).__name__}")
    return sorted((w for ws in found.values() for w in ws), key=lambda w: w.name)


def _decoder_layers(model: nn.Module) -> list[nn.Module]:
    inner = getattr(model, "model", model)
    return list(inner.layers)
