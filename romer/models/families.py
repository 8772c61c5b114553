"""What structure cannot tell about an MoE family: its expected routing rule, and the config keys of its
MoE hyper-parameters. Everything else (where routers, experts and shared experts live, their storage layout,
the router's output order and its actual rule) is found from the model itself (``romer.models.detect``).

The expected rule of a named family orders the candidates ``detect`` tries against the router and is checked:
a named family whose router no longer behaves as listed here (a changed transformers version) is refused
rather than silently re-derived. A family not listed here works when its router matches one of the generic
candidate rules on a probe.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from romer.errors import UserError


class UnsupportedModelError(UserError):
    """The model is not an MoE romer can read: dense, an unknown layout, or a router with an unknown rule."""


class DenseModelError(UnsupportedModelError):
    """The model has no routed experts at all."""


# model_type → (scoring, order) its router must follow; "deepseek" is the remote-code DeepSeek-MoE layout.
EXPECTED_RULES: Mapping[str, tuple[str, str]] = MappingProxyType({
    "olmoe": ("softmax", "score_topk"),
    "qwen2_moe": ("softmax", "score_topk"),
    "qwen3_moe": ("softmax", "score_topk"),
    "mixtral": ("softmax", "score_topk"),
    "deepseek": ("softmax", "score_topk"),
    "deepseek_v2": ("softmax", "score_topk"),
    "deepseek_v3": ("sigmoid", "score_topk"),
    "gpt_oss": ("softmax", "topk_softmax"),
    "phimoe": ("softmax", "sparsemixer"),
})
NAMED_FAMILIES: tuple[str, ...] = tuple(EXPECTED_RULES)

CONFIG_ALIASES: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "num_experts": ("num_experts", "num_local_experts", "n_routed_experts"),
    "top_k": ("num_experts_per_tok", "top_k", "moe_topk"),
    "moe_intermediate_size": ("moe_intermediate_size", "intermediate_size"),
    "n_shared_experts": ("n_shared_experts",),
    "first_k_dense_replace": ("first_k_dense_replace",),
})

# Router attributes read for the rule (transformers 5 routers and the remote-code MoEGate).
GROUP_ATTRS = ("num_group", "n_group")
SCALE_ATTRS = ("routed_scaling_factor",)
SPARSEMIXER_ATTRS = ("router_jitter_noise",)  # phimoe's ε: a router with it also gets a sparsemixer candidate
