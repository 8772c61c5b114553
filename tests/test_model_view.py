"""The MoE view over tiny random models of every named family, and a synthetic deepseek-moe-16b tree."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from tests.tiny_models import CONFIGS, H, K, NAMES, VOCAB, E, tiny

from romer.models.view import (
    SUPPORTED_MODEL_TYPES,
    DenseModelError,
    MoELayer,
    RoutingRule,
    UnsupportedModelError,
    dense_mlp_layers,
    moe_config,
    moe_layers,
)

# family: (MoE layer indices, shared experts, shared gate, routing rule, router bias, experts (transposed,
# concatenated, biased)) — the rules as read in transformers 5.24's modeling code and the tiny configs
SOFTMAX, GROUPS = RoutingRule(), dict(n_group=4, topk_group=2)
PLAIN = (False, True, False)
EXPECTED = {
    "olmoe": ([0, 1, 2], 0, False, SOFTMAX, False, PLAIN),
    "qwen2_moe": ([0, 1, 2], 1, True, SOFTMAX, False, PLAIN),
    "qwen3_moe": ([0, 1, 2], 0, False, RoutingRule(norm_topk_prob=True), False, PLAIN),
    "mixtral": ([0, 1, 2], 0, False, RoutingRule(norm_topk_prob=True), False, PLAIN),
    "deepseek_v2": ([1, 2], 1, False, SOFTMAX, False, PLAIN),
    "deepseek_v3": ([1, 2], 1, False, RoutingRule(scoring="sigmoid", norm_topk_prob=True, routed_scaling_factor=2.5,
                                                  group_score="top2", **GROUPS), False, PLAIN),
    "gpt_oss": ([0, 1, 2], 0, False, RoutingRule(order="topk_softmax"), True, (True, False, True)),
    "phimoe": ([0, 1, 2], 0, False, RoutingRule(order="sparsemixer", jitter_eps=0.3), False, PLAIN),
    "deepseek_v2-group": ([1, 2], 1, False, RoutingRule(routed_scaling_factor=1.5, masked_fill=0.0, n_group=4, topk_group=1),
                          False, PLAIN),
    "deepseek_v3-greedy": ([1, 2], 1, False, RoutingRule(scoring="sigmoid", norm_topk_prob=True,
                                                         routed_scaling_factor=2.5), False, PLAIN),
}


@pytest.fixture(scope="module", params=NAMES)
def family(request):
    return request.param, tiny(request.param)


def tokens(n: int = 10) -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, n), generator=torch.Generator().manual_seed(1))


def inside(view: torch.Tensor, param: torch.Tensor) -> bool:
    start = param.data_ptr()
    return start <= view.data_ptr() < start + param.numel() * param.element_size()


def expert_by_hand(w: dict[str, torch.Tensor], x: torch.Tensor, module: nn.Module | None = None,
                   b: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """y = down(act(gate x) · up x) from the (out, in) views; a fused module's own gate function when given
    (gpt_oss clamps and adds one), fed its own storage order (concatenated halves or interleaved)."""
    b = b or {}
    gate, up = x @ w["gate"].T + b.get("gate", 0), x @ w["up"].T + b.get("up", 0)
    if module is None:
        hidden = F.silu(gate) * up
    elif module.is_concatenated:
        hidden = module._apply_gate(torch.cat([gate, up], dim=-1))
    else:
        hidden = module._apply_gate(torch.stack([gate, up], dim=-1).flatten(-2))
    return hidden @ w["down"].T + b.get("down", 0)


def test_named_families_listed():
    assert set(CONFIGS) | {"deepseek"} == set(SUPPORTED_MODEL_TYPES)


def test_layers_found(family):
    name, model = family
    indices, n_shared, has_gate, rule, router_bias, (transposed, concatenated, biased) = EXPECTED[name]
    layers = moe_layers(model)
    assert [layer.index for layer in layers] == indices
    for layer in layers:
        assert layer.block is model.model.layers[layer.index].mlp and layer.name == f"model.layers.{layer.index}.mlp"
        assert (layer.num_experts, layer.top_k, layer.experts.num_experts) == (E, K, E)
        assert layer.experts.layout == "fused" and layer.rule == rule
        assert (layer.experts.is_transposed, layer.experts.is_concatenated, layer.experts.has_bias) == (
            transposed, concatenated, biased)
        assert len(layer.shared_experts) == n_shared and (layer.shared_expert_gate is not None) == has_gate
        assert layer.router_weight.shape == (E, H) and (layer.router_bias is not None) == router_bias
        assert (layer.score_correction_bias is not None) == name.startswith("deepseek_v3")
        assert set(layer.experts.parameters_by_name()) == {"gate_up_proj", "down_proj"}
        assert set(layer.experts.bias_parameters_by_name()) == (
            {"gate_up_proj_bias", "down_proj_bias"} if biased else set())
        assert layer.router_output == ("logits", "weights", "indices")
    dense = dense_mlp_layers(model)
    assert [i for i, _ in dense] == sorted(set(range(3)) - set(indices))
    assert all(mlp is model.model.layers[i].mlp for i, mlp in dense)


def test_qwen2_mlp_only_layers_are_dense():
    model = tiny("qwen2_moe", mlp_only_layers=[1])
    assert [layer.index for layer in moe_layers(model)] == [0, 2]
    assert [i for i, _ in dense_mlp_layers(model)] == [1]


def test_weights_are_views_and_match_the_family(family):
    _, model = family
    layer = moe_layers(model)[-1]
    params = layer.experts.parameters_by_name()
    x = torch.randn(5, H, generator=torch.Generator().manual_seed(2))
    e = 3
    params.update(layer.experts.bias_parameters_by_name())
    w, b = layer.experts.weights(e), layer.experts.biases(e)
    inter = moe_config(model.config)["moe_intermediate_size"]
    assert w["gate"].shape == w["up"].shape == (inter, H) and w["down"].shape == (H, inter)
    assert inside(w["gate"], params["gate_up_proj"]) and inside(w["up"], params["gate_up_proj"])
    assert inside(w["down"], params["down_proj"])
    assert all(inside(v, params[f"{'gate_up' if k != 'down' else 'down'}_proj_bias"]) for k, v in b.items())
    assert set(layer.experts.tensors(e)) == {"gate", "up", "down"} | {f"{k}_bias" for k in b}
    with torch.no_grad():
        own = layer.experts.module(x, torch.full((5, 1), e), torch.ones(5, 1))
        torch.testing.assert_close(expert_by_hand(w, x, layer.experts.module, b), own, rtol=1e-5, atol=1e-6)
        saved = {k: v.clone() for k, v in params.items()}
        try:
            for view in layer.experts.tensors(e).values():
                view.zero_()
            assert all(p[e].abs().sum() == 0 for p in params.values())
            assert params["gate_up_proj"][e - 1].abs().sum() > 0
            assert layer.experts.module(x, torch.full((5, 1), e), torch.ones(5, 1)).abs().sum() == 0
        finally:
            for name, value in saved.items():
                params[name].copy_(value)


def test_expert_index_out_of_range(family):
    experts = moe_layers(family[1])[0].experts
    for bad in (E, -1):
        with pytest.raises(IndexError, match="out of range"):
            experts.weights(bad)


def test_router_hook_sees_topk_indices(family):
    _, model = family
    layers = moe_layers(model)
    seen: list[torch.Tensor] = []
    handles = [layer.router.register_forward_hook(lambda m, a, out, l=layer: seen.append(l.topk_indices(out)))
               for layer in layers]
    try:
        with torch.no_grad():
            model(tokens(10))
    finally:
        for h in handles:
            h.remove()
    assert len(seen) == len(layers)
    for indices in seen:
        assert indices.shape == (20, K) and indices.dtype == torch.int64
        assert 0 <= int(indices.min()) and int(indices.max()) < E


# --- a synthetic deepseek-moe-16b tree (remote code: ModuleList experts, MoEGate) ---------------------------


class MLP(nn.Module):
    def __init__(self, hidden: int, inter: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, inter, bias=False)
        self.up_proj = nn.Linear(hidden, inter, bias=False)
        self.down_proj = nn.Linear(inter, hidden, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class MoEGate(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.top_k, self.n_routed_experts = cfg.num_experts_per_tok, cfg.n_routed_experts
        self.scoring_func, self.norm_topk_prob = cfg.scoring_func, cfg.norm_topk_prob
        self.weight = nn.Parameter(torch.randn(cfg.n_routed_experts, cfg.hidden_size))

    def forward(self, hidden_states):
        scores = F.linear(hidden_states.reshape(-1, hidden_states.shape[-1]), self.weight).softmax(dim=-1)
        topk_weight, topk_idx = torch.topk(scores, k=self.top_k, dim=-1, sorted=False)
        return topk_idx, topk_weight, None


class DeepseekMoE(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        inter = cfg.moe_intermediate_size
        self.experts = nn.ModuleList(MLP(cfg.hidden_size, inter) for _ in range(cfg.n_routed_experts))
        self.gate = MoEGate(cfg)
        self.shared_experts = MLP(cfg.hidden_size, cfg.moe_intermediate_size * cfg.n_shared_experts)

    def forward(self, x):
        idx, weight, _ = self.gate(x)
        flat = x.reshape(-1, x.shape[-1])
        out = torch.zeros_like(flat)
        for slot in range(idx.shape[1]):
            for e in idx[:, slot].unique().tolist():
                rows = idx[:, slot] == e
                out[rows] += weight[rows, slot, None] * self.experts[e](flat[rows])
        return out.reshape(x.shape) + self.shared_experts(x)


class DeepseekForCausalLM(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        layers = nn.ModuleList(nn.Module() for _ in range(cfg.num_hidden_layers))
        for i, layer in enumerate(layers):
            layer.mlp = DeepseekMoE(cfg) if i >= cfg.first_k_dense_replace else MLP(cfg.hidden_size, 48)
        self.model = nn.Module()
        self.model.layers = layers

    def forward(self, x):
        for layer in self.model.layers:
            x = x + layer.mlp(x)
        return x


@pytest.fixture(scope="module")
def deepseek():
    torch.manual_seed(0)
    cfg = SimpleNamespace(model_type="deepseek", hidden_size=H, num_hidden_layers=3, n_routed_experts=E,
                          num_experts_per_tok=K, moe_intermediate_size=16, n_shared_experts=2,
                          first_k_dense_replace=1, scoring_func="softmax", norm_topk_prob=False)
    return DeepseekForCausalLM(cfg).eval()


def test_modulelist_layout(deepseek):
    layers = moe_layers(deepseek)
    assert [layer.index for layer in layers] == [1, 2]
    assert [i for i, _ in dense_mlp_layers(deepseek)] == [0]
    layer = layers[0]
    assert (layer.experts.layout, layer.num_experts, layer.top_k, layer.scoring) == ("modulelist", E, K, "softmax")
    assert layer.shared_experts == (layer.block.shared_experts,) and layer.shared_expert_gate is None
    assert layer.router is layer.block.gate and layer.router_weight is layer.block.gate.weight
    e = 5
    w = layer.experts.weights(e)
    mlp = layer.block.experts[e]
    for key, lin in (("gate", mlp.gate_proj), ("up", mlp.up_proj), ("down", mlp.down_proj)):
        assert w[key].data_ptr() == lin.weight.data_ptr() and w[key].shape == lin.weight.shape
    x = torch.randn(4, H)
    with torch.no_grad():
        torch.testing.assert_close(expert_by_hand(w, x), mlp(x))
    assert len(layer.experts.parameters_by_name()) == 3 * E
    with pytest.raises(IndexError):
        layer.experts.weights(E)


def test_modulelist_router_hook(deepseek):
    layers = moe_layers(deepseek)
    seen = []
    handles = [l.router.register_forward_hook(lambda m, a, out, l=l: seen.append(l.topk_indices(out))) for l in layers]
    try:
        with torch.no_grad():
            deepseek(torch.randn(2, 6, H))
    finally:
        for h in handles:
            h.remove()
    assert [s.shape for s in seen] == [(12, K)] * 2


# --- errors and config aliases ------------------------------------------------------------------------------


def test_dense_model_is_refused_in_one_line():
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=H, intermediate_size=48, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=4))
    for fn in (moe_layers, dense_mlp_layers):
        with pytest.raises(DenseModelError) as info:
            fn(llama)
        assert isinstance(info.value, ValueError) and str(info.value) == (
            "model_type 'llama' (LlamaForCausalLM) is a dense model: no decoder layer has routed experts; "
            "romer needs a mixture-of-experts model")


def test_known_type_without_moe_layers_raises(deepseek):
    all_dense = DeepseekForCausalLM(SimpleNamespace(**{**vars(deepseek.config), "first_k_dense_replace": 3}))
    with pytest.raises(DenseModelError, match="'deepseek' .* is a dense model"):
        moe_layers(all_dense)


def test_moe_config_aliases():
    assert moe_config({"num_local_experts": 8, "num_experts_per_tok": 2, "intermediate_size": 64}) == {
        "num_experts": 8, "top_k": 2, "moe_intermediate_size": 64, "n_shared_experts": 0, "first_k_dense_replace": 0}
    ds = moe_config({"n_routed_experts": 64, "top_k": 6, "moe_intermediate_size": 1408, "intermediate_size": 10944,
                     "n_shared_experts": 2, "first_k_dense_replace": 1})
    assert ds == {"num_experts": 64, "top_k": 6, "moe_intermediate_size": 1408, "n_shared_experts": 2,
                  "first_k_dense_replace": 1}
    qwen = moe_config(tiny("qwen2_moe").config)
    assert [qwen[k] for k in ("num_experts", "top_k", "moe_intermediate_size", "n_shared_experts")] == [E, K, 16, 1]
    with pytest.raises(UnsupportedModelError, match="num_experts"):
        moe_config(LlamaConfig())


def test_layer_is_frozen(family):
    layer: MoELayer = moe_layers(family[1])[0]
    with pytest.raises(AttributeError):
        layer.top_k = 3
