"""Expert usage from the routing recorder: exact counts, padding excluded, hooks always removed, golden summaries."""

import math

import pytest
import torch

from romer.models.view import moe_layers
from romer.routing import ExpertUsage, record_routing
from tests.tiny_models import tiny

GEN = torch.Generator().manual_seed(7)
IDS = torch.randint(1, 64, (3, 9), generator=GEN)


@pytest.fixture(scope="module", params=["olmoe", "qwen2_moe", "deepseek_v2"])
def model(request):
    return tiny(request.param)


def manual_counts(model, input_ids):
    """Reference: read every router's top-k with plain hooks and count with Python loops."""
    layers = moe_layers(model)
    seen = []
    handles = [l.router.register_forward_hook(lambda m, a, out, l=l: seen.append(l.topk_indices(out))) for l in layers]
    model(input_ids=input_ids)
    for h in handles:
        h.remove()
    counts = torch.zeros(len(layers), layers[0].num_experts, dtype=torch.int64)
    for slot, topk in enumerate(seen):
        for row in topk.tolist():
            for e in row:
                counts[slot, e] += 1
    return counts


def test_counts_match_the_routers_top_k(model):
    with torch.no_grad(), record_routing(model) as record:
        model(input_ids=IDS)
    usage = record.usage()
    assert usage.tokens == IDS.numel()
    assert torch.equal(usage.counts, manual_counts(model, IDS))
    assert torch.allclose(usage.frequency.sum(dim=1), torch.tensor([float(k) for k in usage.top_k], dtype=torch.double))


def test_padding_is_not_counted(model):
    # right padding: the real tokens' routing is unchanged, the padded positions must not count
    padded = torch.cat([IDS[:1], torch.zeros(1, 4, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(1, 9), torch.zeros(1, 4)], dim=1).long()
    with torch.no_grad(), record_routing(model) as record:
        model(input_ids=padded, attention_mask=mask)
    usage = record.usage()
    assert usage.tokens == 9
    assert torch.equal(usage.counts, manual_counts(model, IDS[:1]))


def test_batches_add_up(model):
    with torch.no_grad(), record_routing(model) as record:
        model(input_ids=IDS)
    whole = record.usage()
    with torch.no_grad(), record_routing(model) as record:
        for row in IDS:
            model(input_ids=row[None])
    parts = record.usage()
    assert torch.equal(whole.counts, parts.counts) and whole.tokens == parts.tokens


def test_hooks_are_removed_after_an_error(model):
    with pytest.raises(RuntimeError, match="boom"):
        with record_routing(model):
            raise RuntimeError("boom")
    assert not model._forward_pre_hooks
    assert all(not layer.router._forward_hooks for layer in moe_layers(model))


def test_summary_golden_values():
    # uniform: 4 experts, top-1, 8 tokens, 2 each → f = 1/4 each, CV 0, nobody cold
    uniform = ExpertUsage(layer_indices=[0], top_k=[1], counts=torch.tensor([[2, 2, 2, 2]]), tokens=8).summary()[0]
    assert uniform["cv"] == 0 and uniform["f_min"] == uniform["f_max"] == 0.25 and uniform["cold_experts"] == 0
    # one-hot: f = (1, 0, 0, 0), mean 1/4, std = sqrt((3/4)² + 3·(1/4)²)/2 = sqrt(3)/4 → CV = sqrt(3)
    one_hot = ExpertUsage(layer_indices=[3], top_k=[1], counts=torch.tensor([[4, 0, 0, 0]]), tokens=4).summary()[0]
    assert one_hot["layer"] == 3
    assert one_hot["cv"] == pytest.approx(math.sqrt(3))
    assert (one_hot["f_min"], one_hot["f_max"], one_hot["f_uniform"], one_hot["cold_experts"]) == (0, 1, 0.25, 3)
