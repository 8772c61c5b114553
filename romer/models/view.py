"""One view over the MoE layers of Hugging Face causal LMs, whatever the family, found by structure.

``moe_layers(model)`` lists every MoE layer: its router (an [E, H] weight and a top-k rule, reproduced by
``MoELayer.rule``), its routed experts (``RoutedExperts``: fused [E, …] tensors in any orientation and gate/up
arrangement, with or without biases, or a ModuleList of per-expert MLPs; ``weights(e)`` gives (out, in) views
into the model) and its shared experts and their gate. How they are found: ``romer.models.detect``; the rules:
``romer.models.rules``; the little that structure cannot tell (each named family's expected rule, config-key
aliases): ``romer.models.families``.

Everything returned shares storage with the model (no copies): writing into it in place changes the model.
Finding nothing is an error (``UnsupportedModelError``, a ``UserError``), never an empty result.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from romer.models.detect import find_layers
from romer.models.experts import FUSED, MODULELIST, RoutedExperts
from romer.models.families import CONFIG_ALIASES, NAMED_FAMILIES, DenseModelError, UnsupportedModelError
from romer.models.layer import MoELayer
from romer.models.rules import SCORINGS, RoutingRule

SUPPORTED_MODEL_TYPES: tuple[str, ...] = NAMED_FAMILIES  # named and tested; others work when found by structure

__all__ = ["FUSED", "MODULELIST", "SCORINGS", "SUPPORTED_MODEL_TYPES", "DenseModelError", "MoELayer",
           "RoutedExperts", "RoutingRule", "UnsupportedModelError", "dense_mlp_layers", "moe_config", "moe_layers"]


def moe_layers(model: nn.Module) -> list[MoELayer]:
    """Every MoE layer of ``model`` in layer order; UnsupportedModelError (DenseModelError for a dense model)
    when there is none or one cannot be read."""
    return find_layers(model)[0]


def dense_mlp_layers(model: nn.Module) -> list[tuple[int, nn.Module]]:
    """``(layer index, MLP)`` of the decoder layers whose MLP is dense (deepseek first_k_dense_replace,
    qwen2_moe / qwen3_moe mlp_only_layers and decoder_sparse_step): the module at the path where the other
    layers keep their MoE block."""
    return find_layers(model)[1]


def moe_config(config: Any) -> dict[str, int | None]:
    """MoE hyper-parameters of a model config (object or mapping) under normalised names.

    ``num_experts`` and ``top_k`` are required; ``moe_intermediate_size`` falls back to ``intermediate_size``
    (olmoe, mixtral experts use it); ``n_shared_experts`` is 1 for a qwen2_moe-style single shared expert
    (``shared_expert_intermediate_size`` > 0), else 0 when absent; ``first_k_dense_replace`` 0 when absent.
    """
    out = {key: _first_set(config, names) for key, names in CONFIG_ALIASES.items()}
    for key in ("num_experts", "top_k"):
        if out[key] is None:
            raise UnsupportedModelError(
                f"config (model_type {_get(config, 'model_type')!r}) has no {key} "
                f"(looked for {' | '.join(CONFIG_ALIASES[key])}): not an MoE config")
    if out["n_shared_experts"] is None:
        out["n_shared_experts"] = 1 if _get(config, "shared_expert_intermediate_size") else 0
    if out["first_k_dense_replace"] is None:
        out["first_k_dense_replace"] = 0
    return out


def _get(config: Any, key: str) -> Any:
    if config is None:
        return None
    if isinstance(config, Mapping):
        return config.get(key)
    return getattr(config, key, None)


def _first_set(config: Any, names: tuple[str, ...]) -> Any:
    return next((v for v in (_get(config, n) for n in names) if v is not None), None)
