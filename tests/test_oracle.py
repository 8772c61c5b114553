"""Oracle routing: without noise it is the plain model exactly; under a chip the experts get the clean top-k and
gate weights; a block that does not route with the router's output is refused."""

import copy
import types
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from romer.eval import perplexity
from romer.models.view import moe_layers
from romer.noise.chip import Chip, program
from romer.routing import OracleRoutingError, capture_routing, oracle_perplexity, oracle_routing, routing_damage_share
from tests.test_model_view import DeepseekMoE
from tests.test_routing_recorder import TEXT, CharTokenizer
from tests.tiny_models import tiny

TOK = CharTokenizer()
WINDOW, BATCH = 24, 3
CHIP = Chip.from_options("gaussian", eta=0.3, placement="moe")


@pytest.fixture(scope="module", params=["olmoe", "qwen2_moe", "deepseek_v2"])
def model(request):
    return tiny(request.param)


@pytest.fixture(scope="module")
def captured(model):
    return capture_routing(model, TOK, TEXT, WINDOW, BATCH)


def experts_input(model):
    """Pre-hooks on every experts module: per layer slot, the (top_k_index, top_k_weights) it is called with."""
    seen = {}
    handles = []
    for slot, layer in enumerate(moe_layers(model)):
        def hook(module, args, slot=slot):
            seen.setdefault(slot, []).append((args[1].detach().clone(), args[2].detach().clone()))
        handles.append(layer.experts.module.register_forward_pre_hook(hook))
    return seen, handles


def test_without_noise_oracle_is_the_plain_model(model, captured):
    plain = perplexity(model, TOK, TEXT, window=WINDOW, batch_size=BATCH)
    assert captured.clean.nll_sum == plain.nll_sum and captured.clean.tokens == plain.tokens
    oracle = oracle_perplexity(model, TOK, TEXT, captured, WINDOW, BATCH)
    assert oracle.nll_sum == plain.nll_sum and oracle.ppl == plain.ppl
    windows = -(-len(TEXT) // (WINDOW - 1))  # one character per token
    assert len(captured.batches) == len(captured.input_ids) == -(-windows // BATCH)
    assert not any(l.router._forward_hooks for l in moe_layers(model))


def test_under_noise_the_experts_get_the_clean_routing(model, captured):
    with program(model, CHIP):
        seen, handles = experts_input(model)
        try:
            noisy = perplexity(model, TOK, TEXT, window=WINDOW, batch_size=BATCH)
            noisy_seen = {k: list(v) for k, v in seen.items()}
            seen.clear()
            oracle = oracle_perplexity(model, TOK, TEXT, captured)
        finally:
            for h in handles:
                h.remove()
    changed = 0
    for slot in range(len(moe_layers(model))):
        for b, batch in enumerate(captured.batches):
            clean = batch[slot]
            index, weights = seen[slot][b]
            assert torch.equal(index, clean.indices.to(clean.index_dtype)) and index.dtype == torch.int64
            assert torch.equal(weights, clean.weights)
            changed += not torch.equal(noisy_seen[slot][b][0].sort(-1).values, index.sort(-1).values)
    assert changed > 0  # the noise did change routing, so the replacement mattered
    assert oracle.ppl not in (noisy.ppl, captured.clean.ppl)  # noisy experts, clean routing: a third number
    assert not any(l.router._forward_hooks for l in moe_layers(model))


def test_oracle_routing_report(model, captured):
    result = oracle_routing(model, TOK, TEXT, CHIP, captured=captured)
    assert result.clean is captured.clean
    share = result.to_dict()["routing_share"]
    assert share == pytest.approx((result.noisy.ppl - result.oracle.ppl) / (result.noisy.ppl - result.clean.ppl))
    assert not hasattr(model, "_romer_programmed_chip")  # restored
    assert perplexity(model, TOK, TEXT, window=WINDOW, batch_size=BATCH).nll_sum == captured.clean.nll_sum


def test_routing_damage_share():
    assert routing_damage_share(10.0, 14.0, 11.0) == 0.75
    assert routing_damage_share(10.0, 14.0, 14.0) == 0.0


def test_other_windows_are_refused(model, captured):
    with pytest.raises(OracleRoutingError, match="input ids"):
        oracle_perplexity(model, TOK, TEXT[::-1], captured)
    with pytest.raises(OracleRoutingError, match="window"):
        oracle_perplexity(model, TOK, TEXT, captured, window=WINDOW + 1)
    with pytest.raises(OracleRoutingError):
        oracle_perplexity(model, TOK, TEXT + TEXT, captured)
    assert not model._forward_pre_hooks and not any(l.router._forward_hooks for l in moe_layers(model))


def test_a_block_that_recomputes_routing_is_refused():
    model = tiny("olmoe")
    block = moe_layers(model)[1].block

    def recomputing_forward(self, hidden_states):  # ignores the router's weights and indices
        b, s, h = hidden_states.shape
        flat = hidden_states.view(-1, h)
        logits, _, _ = self.gate(flat)
        weights, index = torch.topk(logits.softmax(-1), self.gate.top_k, dim=-1)
        return self.experts(flat, index, weights).reshape(b, s, h)

    block.forward = types.MethodType(recomputing_forward, block)
    captured = capture_routing(model, TOK, TEXT, WINDOW, BATCH)
    with program(model, CHIP):
        with pytest.raises(OracleRoutingError, match="layer 1 .*recomputes routing"):
            oracle_perplexity(model, TOK, TEXT, captured)
    assert not any(l.router._forward_hooks or l.experts.module._forward_pre_hooks for l in moe_layers(model))


# --- ModuleList layout (remote-code deepseek): MoEGate returns (indices, weights, aux_loss) ------------------


class FakeDeepseekLM(nn.Module):
    """Embedding → 2 MoE layers with ModuleList experts (the test_model_view fake) → head."""

    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(model_type="deepseek", hidden_size=32, n_routed_experts=8,
                                      num_experts_per_tok=2, moe_intermediate_size=16, n_shared_experts=1,
                                      scoring_func="softmax", norm_topk_prob=False)
        self.embed = nn.Embedding(64, 32)
        self.model = nn.Module()
        self.model.layers = nn.ModuleList(nn.Module() for _ in range(2))
        for layer in self.model.layers:
            layer.mlp = DeepseekMoE(self.config)
        self.head = nn.Linear(32, 64)

    def forward(self, input_ids=None, attention_mask=None):
        x = self.embed(input_ids)
        for layer in self.model.layers:
            x = x + layer.mlp(x)
        return SimpleNamespace(logits=self.head(x))


def test_modulelist_layout():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = FakeDeepseekLM().eval()
    captured = capture_routing(model, TOK, TEXT, WINDOW, BATCH)
    assert oracle_perplexity(model, TOK, TEXT, captured).nll_sum == captured.clean.nll_sum
    clean = copy.deepcopy(model.state_dict())
    with torch.no_grad():
        for layer in moe_layers(model):
            layer.router_weight.add_(torch.randn_like(layer.router_weight))
    noisy = perplexity(model, TOK, TEXT, window=WINDOW, batch_size=BATCH)
    oracle = oracle_perplexity(model, TOK, TEXT, captured)
    assert noisy.nll_sum != captured.clean.nll_sum
    assert oracle.nll_sum == captured.clean.nll_sum  # only the router was noisy, and its decisions were replaced
    # a block that routes on its own is caught by the rows-per-expert check
    block = model.model.layers[0].mlp

    def own_routing(self, x):
        flat = x.reshape(-1, x.shape[-1])
        self.gate(x)
        idx = torch.topk(F.linear(flat, self.gate.weight), 2, dim=-1).indices
        out = torch.zeros_like(flat)
        for e in idx.unique().tolist():
            rows = (idx == e).any(-1)
            out[rows] += self.experts[e](flat[rows])
        return out.reshape(x.shape)

    block.forward = types.MethodType(own_routing, block)
    with pytest.raises(OracleRoutingError, match="rows per expert"):
        oracle_perplexity(model, TOK, TEXT, captured)
    model.load_state_dict(clean)


def test_oracle_in_some_layers_only(model, captured):
    """Replaying one layer's clean routing: that layer's experts get the clean top-k, the others the chip's own
    routing (as without any oracle); an unknown layer is refused."""
    layers = moe_layers(model)
    first = layers[0].index
    with program(model, CHIP):
        seen, handles = experts_input(model)
        try:
            oracle_perplexity(model, TOK, TEXT, captured, layers=(first,))
        finally:
            for h in handles:
                h.remove()
        with pytest.raises(OracleRoutingError, match="not MoE layers"):
            oracle_perplexity(model, TOK, TEXT, captured, layers=(99,))
    for b, batch in enumerate(captured.batches):
        assert torch.equal(seen[0][b][0], batch[0].indices.to(batch[0].index_dtype))
    if len(layers) > 1:  # a later layer routes on its own noisy logits: not the clean routing everywhere
        later = [not torch.equal(seen[1][b][0], batch[1].indices.to(batch[1].index_dtype))
                 for b, batch in enumerate(captured.batches)]
        assert any(later)
    assert not any(l.router._forward_hooks for l in moe_layers(model))
