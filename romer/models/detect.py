"""Find the MoE layers of a model by structure, and each router's rule by probing it.

Per decoder layer (``model.model.layers[i]`` or ``model.layers[i]``):

1. **experts**: the one submodule that reads as routed experts (``romer.models.experts.read_experts``: fused
   [E, …] parameters in any orientation or gate/up arrangement, with or without biases, or a ModuleList of
   per-expert MLPs). A layer without one is dense. Its parent is the MoE **block**.
2. **router**: the block's child (not the experts) holding an [E, H] weight, own or in one sub-Linear
   (hunyuan's ``gate.wg``); a child with a ``top_k`` attribute wins a tie. Its bias (gpt_oss) and a
   ``*correction_bias`` tensor of E values (deepseek_v3, glm4_moe, dots1, ernie4_5_moe) are read with it.
3. **shared experts**: the block's other children that hold an nn.Linear (one Linear with a single output is the
   shared-expert gate, qwen2_moe), plus the decoder layer's own ``*shared*`` children (granitemoeshared).
4. **probe**: the router's ``forward`` (hooks bypassed, eval mode, the CPU generator state kept) runs once on
   seeded random hidden states. Its outputs tell the slot order (integer [T, k] indices, float [T, k] weights,
   optional float [T, E] logits) and top-k; then each candidate rule built from the router's attributes
   (``scoring_func``, ``norm_topk_prob``, ``num_group``/``n_group``, ``topk_group``, ``topk_method``,
   ``routed_scaling_factor``, phimoe's ``router_jitter_noise`` for sparsemixer; see ``romer.models.rules``) is
   run on the same logits, and the first that reproduces the router's indices and weights is the layer's rule
   (the probe runs in eval mode, so phimoe's training-only jitter and sampling never enter). A named family
   (``romer.models.families.EXPECTED_RULES``) only gets candidates of its listed kind. No match is an error
   naming what was found. On the meta device the probe reads shapes only and takes the first candidate.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from romer.models.experts import RoutedExperts, looks_like_experts, read_experts
from romer.models.families import (
    EXPECTED_RULES,
    GROUP_ATTRS,
    SCALE_ATTRS,
    SPARSEMIXER_ATTRS,
    DenseModelError,
    UnsupportedModelError,
)
from romer.models.layer import MoELayer
from romer.models.rules import SCORINGS, RoutingRule, candidate_rules, select

LAYER_PATHS = ("model.layers", "layers", "model.language_model.layers", "transformer.h")
PROBE_TOKENS = 64
NO_GROUPS = (1, 1, "max", -math.inf)


def model_type(model: nn.Module) -> str | None:
    config = getattr(model, "config", None)
    return config.get("model_type") if isinstance(config, dict) else getattr(config, "model_type", None)


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(path, the decoder layers) of a causal LM; UnsupportedModelError when there are none."""
    for path in LAYER_PATHS:
        obj = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, nn.ModuleList) and len(obj) > 0:
            return path, obj
    raise UnsupportedModelError(f"model_type {model_type(model)!r} ({type(model).__name__}): no decoder layers at "
                                f"{' or '.join(LAYER_PATHS)}")


def find_layers(model: nn.Module) -> tuple[list[MoELayer], list[tuple[int, nn.Module]]]:
    """(MoE layers, (index, MLP) of the dense layers) in layer order; DenseModelError when there are no experts,
    UnsupportedModelError for anything that looks like an MoE but cannot be read."""
    prefix, layers = decoder_layers(model)
    mtype = model_type(model)
    moe, dense, block_paths = [], [], []
    for i, layer in enumerate(layers):
        found = _experts_in(layer, f"{prefix}.{i}")
        if found is None:
            dense.append((i, layer))
            continue
        path, experts = found
        block_path = path.rpartition(".")[0]
        block_paths.append(block_path)
        moe.append(_moe_layer(mtype, i, f"{prefix}.{i}", layer, block_path, experts))
    if not moe:
        _refuse_without_experts(model, mtype, prefix, layers)
    block_path = max(set(block_paths), key=block_paths.count)
    dense_mlps = [(i, layer.get_submodule(block_path)) for i, layer in dense
                  if block_path and _has_submodule(layer, block_path)]
    return moe, dense_mlps


# --- experts and the block around them ----------------------------------------------------------------------


def _experts_in(layer: nn.Module, where: str) -> tuple[str, RoutedExperts] | None:
    found, inside = [], []
    for name, module in layer.named_modules():
        if any(name.startswith(p + ".") for p in inside):
            continue
        experts = read_experts(module, f"{where}.{name}")
        if experts is not None:
            found.append((name, experts))
            inside.append(name)
    if len(found) > 1:
        raise UnsupportedModelError(f"{where}: more than one routed-experts module: "
                                    f"{', '.join(f'{n} ({type(e.module).__name__})' for n, e in found)}")
    return found[0] if found else None


def _has_submodule(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True


def _refuse_without_experts(model: nn.Module, mtype: str | None, prefix: str, layers: nn.ModuleList) -> None:
    seen = {}
    for i, layer in enumerate(layers):
        for name, module in layer.named_modules():
            tail = name.rsplit(".", 1)[-1]
            if looks_like_experts(name, module) or tail in ("router", "gate") or hasattr(module, "top_k"):
                seen.setdefault(type(module).__name__, f"{prefix}.{i}.{name} ({type(module).__name__})")
    if seen:
        raise UnsupportedModelError(
            f"model_type {mtype!r}: unknown MoE layout: {', '.join(list(seen.values())[:4])} look like routers or "
            "experts, but no routed experts romer can read (fused gate_up_proj/down_proj [E, …] parameters or a "
            "ModuleList of gate/up/down MLPs)")
    raise DenseModelError(f"model_type {mtype!r} ({type(model).__name__}) is a dense model: no decoder layer has "
                          "routed experts; romer needs a mixture-of-experts model")


def _moe_layer(mtype: str | None, index: int, where: str, layer: nn.Module, block_path: str,
               experts: RoutedExperts) -> MoELayer:
    block = layer.get_submodule(block_path) if block_path else layer
    block_name = f"{where}.{block_path}" if block_path else where
    hidden = experts.weights(0)["gate"].shape[1]
    router_name, router, weight = _router(block, block_name, experts, hidden)
    bias = _router_bias(router, weight)
    correction = _correction_bias(router, experts.num_experts)
    shared, gate = _shared(layer, block, block_path, (router, experts.module))
    slots, top_k, rule = _probe(mtype, router, weight, bias, correction, experts, hidden,
                                f"{block_name}.{router_name}", f"{block_name}")
    return MoELayer(index=index, block=block, router=router, router_weight=weight, router_bias=bias,
                    score_correction_bias=correction, num_experts=experts.num_experts, top_k=top_k, rule=rule,
                    experts=experts, shared_experts=shared, shared_expert_gate=gate, router_output=slots,
                    name=block_name)


def _router(block: nn.Module, where: str, experts: RoutedExperts, hidden: int
            ) -> tuple[str, nn.Module, torch.Tensor]:
    shape = (experts.num_experts, hidden)
    found = []
    for name, child in block.named_children():
        if child is experts.module:
            continue
        own = getattr(child, "weight", None)
        if isinstance(own, torch.Tensor) and tuple(own.shape) == shape:
            found.append((name, child, own))
            continue
        inner = [p for p in child.parameters() if tuple(p.shape) == shape]
        if len(inner) == 1:
            found.append((name, child, inner[0]))
    if len(found) > 1:
        found = [f for f in found if isinstance(getattr(f[1], "top_k", None), int)] or found
    if len(found) != 1:
        what = ", ".join(f"{n} ({type(c).__name__})" for n, c, _ in found) or "none"
        raise UnsupportedModelError(f"{where} ({type(block).__name__}): experts {type(experts.module).__name__} "
                                    f"[E={experts.num_experts}] but not one router with an [E, H] = {list(shape)} "
                                    f"weight among its children (found {what})")
    return found[0]


def _router_bias(router: nn.Module, weight: torch.Tensor) -> torch.Tensor | None:
    owner = next((m for m in router.modules() if getattr(m, "weight", None) is weight), router)
    bias = getattr(owner, "bias", None)
    return bias if isinstance(bias, torch.Tensor) and bias.numel() == weight.shape[0] else None


def _correction_bias(router: nn.Module, num_experts: int) -> torch.Tensor | None:
    tensors = list(router.named_buffers()) + list(router.named_parameters())
    return next((t for n, t in tensors if "correction_bias" in n and t.numel() == num_experts), None)


def _shared(layer: nn.Module, block: nn.Module, block_path: str, skip: tuple[nn.Module, ...]
            ) -> tuple[tuple[nn.Module, ...], nn.Module | None]:
    shared, gates = [], []
    for _, child in block.named_children():
        if any(child is s for s in skip) or not any(isinstance(m, nn.Linear) for m in child.modules()):
            continue
        (gates if isinstance(child, nn.Linear) and child.out_features == 1 else shared).append(child)
    if block is not layer:
        shared += [child for name, child in layer.named_children()
                   if "shared" in name and name != block_path.split(".")[0]]
    if len(gates) > 1:
        shared += gates
        gates = []
    return tuple(shared), (gates[0] if gates else None)


# --- probing the router ------------------------------------------------------------------------------------


@torch.no_grad()
def _probe(mtype, router, weight, bias, correction, experts, hidden, router_where, experts_where
           ) -> tuple[tuple[str, ...], int, RoutingRule]:
    dtype = experts.weights(0)["gate"].dtype
    x = torch.randn(PROBE_TOKENS, hidden, generator=torch.Generator().manual_seed(0)).to(weight.device, dtype)
    where = f"model_type {mtype!r}: router {router_where} ({type(router).__name__})"
    was_training = router.training
    try:  # blocks flatten tokens to [T, H] before their router (gpt_oss, ernie4_5_moe softmax over dim 1)
        router.eval()
        with torch.random.fork_rng(devices=[]):
            output = router.forward(x)
    except (RuntimeError, ValueError, TypeError, IndexError) as error:
        raise UnsupportedModelError(f"{where} fails on [tokens, hidden] input: {str(error).splitlines()[0]}") from error
    finally:
        router.train(was_training)
    slots, top_k = _slots(output, experts.num_experts, where)
    declared = getattr(router, "top_k", None)
    if isinstance(declared, int) and declared != top_k:
        raise UnsupportedModelError(f"{where} has top_k {declared} but returns {top_k} experts per token")
    candidates = _candidates(mtype, router, correction is not None)
    if weight.is_meta:
        return slots, top_k, candidates[0]
    if "logits" in slots:
        z = output[slots.index("logits")].reshape(-1, experts.num_experts)
    else:
        z = F.linear(x.reshape(-1, hidden).to(weight.dtype), weight, bias)
    want_w = output[slots.index("weights")].reshape(-1, top_k)
    want_i = output[slots.index("indices")].reshape(-1, top_k)
    for rule in candidates:
        if _reproduces(rule, top_k, z, correction, want_w, want_i):
            return slots, top_k, rule
    raise UnsupportedModelError(
        f"{where} matches none of the routing rules romer knows ({'; '.join(r.describe() for r in candidates)}); "
        f"experts at {experts_where}.experts ({type(experts.module).__name__}, {experts.layout})")


def _slots(output, num_experts: int, where: str) -> tuple[tuple[str, ...], int]:
    """Names of the router's outputs: integer [T, k] → indices, float [T, k] → weights, float [T, E] → logits."""
    if not isinstance(output, (tuple, list)):
        raise UnsupportedModelError(f"{where} returns {type(output).__name__}, not a tuple with top-k indices")
    names = ["other"] * len(output)
    ints = [i for i, o in enumerate(output) if isinstance(o, torch.Tensor) and not o.is_floating_point()
            and o.numel() % PROBE_TOKENS == 0 and 0 < o.numel() // PROBE_TOKENS <= num_experts]
    if len(ints) != 1:
        raise UnsupportedModelError(f"{where} does not return one integer [tokens, k] tensor of expert indices")
    names[ints[0]] = "indices"
    top_k = output[ints[0]].numel() // PROBE_TOKENS
    floats = [i for i, o in enumerate(output) if isinstance(o, torch.Tensor) and o.is_floating_point()]
    wide = [i for i in floats if output[i].numel() == PROBE_TOKENS * num_experts]
    if wide and (top_k != num_experts or len(wide) > 1):
        names[wide[0]] = "logits"
    narrow = [i for i in floats if names[i] == "other" and output[i].numel() == PROBE_TOKENS * top_k]
    if not narrow:
        raise UnsupportedModelError(f"{where} does not return float [tokens, {top_k}] gate weights")
    names[narrow[0]] = "weights"
    return tuple(names), top_k


def _candidates(mtype: str | None, router: nn.Module, corrected: bool) -> list[RoutingRule]:
    scale = next((float(v) for v in (getattr(router, a, None) for a in SCALE_ATTRS) if v is not None), 1.0)
    declared = getattr(router, "scoring_func", None)
    if declared in SCORINGS:
        scorings = [declared]
    else:
        scorings = ["sigmoid", "softmax"] if corrected else ["softmax", "sigmoid"]
    norm = getattr(router, "norm_topk_prob", None)
    norms = [bool(norm)] if norm is not None else [False, True]
    n_group = next((int(v) for v in (getattr(router, a, None) for a in GROUP_ATTRS) if v is not None), 1)
    topk_group = int(getattr(router, "topk_group", None) or n_group)
    method = getattr(router, "topk_method", None)
    if n_group <= 1 or method == "greedy":
        groups = [NO_GROUPS]
    elif method == "group_limited_greedy":
        groups = [(n_group, topk_group, "max", 0.0)]
    elif method == "noaux_tc":
        groups = [(n_group, topk_group, "top2", -math.inf)]
    else:
        groups = [(n_group, topk_group, "top2", -math.inf), (n_group, topk_group, "max", 0.0)]
    plain = not corrected and groups == [NO_GROUPS] and "softmax" in scorings
    eps = next((float(v) for v in (getattr(router, a, None) for a in SPARSEMIXER_ATTRS)
                if isinstance(v, (int, float))), None)
    rules = candidate_rules(scorings, norms, groups, scale, topk_softmax=plain,
                            sparsemixer_eps=eps if plain else None)
    expected = EXPECTED_RULES.get(mtype)
    return [r for r in rules if (r.scoring, r.order) == expected] if expected else rules


def _reproduces(rule: RoutingRule, top_k: int, z: torch.Tensor, correction: torch.Tensor | None,
                want_w: torch.Tensor, want_i: torch.Tensor) -> bool:
    try:
        weights, indices = select(rule, top_k, z, correction_bias=correction)
    except (RuntimeError, ValueError):  # e.g. experts that do not split into the rule's groups
        return False
    got = torch.zeros(z.shape, dtype=torch.float64).scatter(1, indices.cpu(), weights.double().cpu())
    want = torch.zeros(z.shape, dtype=torch.float64).scatter(1, want_i.long().cpu(), want_w.double().cpu())
    tolerance = 1e-5 if want_w.dtype in (torch.float32, torch.float64) else 2 * torch.finfo(want_w.dtype).eps
    return bool(torch.equal(got != 0, want != 0) and torch.allclose(got, want, rtol=tolerance, atol=1e-6))
