"""record_routing: exactly the real tokens, the model's own top-k and gate weights, bounded streamed percentiles,
hooks always removed, and the same record whether a text comes in one batch or many."""

import math

import pytest
import torch

from romer.eval import perplexity
from romer.models.view import moe_layers
from romer.routing import LogitSketch, RoutingRecord, RoutingStats, record_routing
from romer.routing.recorder import sort_by_weight
from tests.tiny_models import tiny

GEN = torch.Generator().manual_seed(11)
IDS = torch.randint(1, 63, (3, 9), generator=GEN)
TEXT = "".join(chr(ord("a") + int(i) % 26) + (" " if int(i) % 5 == 0 else "") for i in torch.randint(0, 60, (150,),
                                                                                                    generator=GEN))


class CharTokenizer:
    """ids 1 … 62 from characters; 0 is BOS, 63 is PAD; no backend_tokenizer, so perplexity() calls it."""

    bos_token_id = eos_token_id = 0
    pad_token_id = 63

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [1 + ord(c) % 62 for c in text]}


@pytest.fixture(scope="module", params=["olmoe", "qwen2_moe", "deepseek_v2"])
def model(request):
    return tiny(request.param)


def reference(model, **inputs):
    """Plain router hooks on one forward call: per layer (indices, weights, logits) of every token."""
    layers = moe_layers(model)
    seen = {}

    def grab(slot):
        def hook(module, args, out):
            seen[slot] = tuple(t.detach().reshape(-1, t.shape[-1]) for t in out)
        return hook

    handles = [l.router.register_forward_hook(grab(i)) for i, l in enumerate(layers)]
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        for h in handles:
            h.remove()
    return [(seen[i][2], seen[i][1], seen[i][0]) for i in range(len(layers))]


def test_record_matches_the_routers_output(model):
    with torch.no_grad(), record_routing(model, keep_topk=True) as rec:
        model(input_ids=IDS)
    assert isinstance(rec, RoutingRecord) and rec.forward_calls == 1 and rec.tokens == IDS.numel()
    for layer, (idx, w, logits) in zip(rec.layers, reference(model, input_ids=IDS)):
        counts = torch.zeros(layer.num_experts, dtype=torch.long)
        mass = torch.zeros(layer.num_experts, dtype=torch.float64)
        for row, wrow in zip(idx.tolist(), w.double().tolist()):
            for e, g in zip(row, wrow):
                counts[e] += 1
                mass[e] += g
        assert torch.equal(layer.counts, counts)
        torch.testing.assert_close(layer.mass, mass, rtol=1e-9, atol=1e-9)
        assert layer.mass.sum() == pytest.approx(float(w.double().sum()), rel=1e-9)
        topk = layer.topk
        assert topk.dtype == torch.uint8 and topk.shape == idx.shape
        # the same sets, sorted by gate weight: column 0 is the expert with the largest weight
        assert torch.equal(topk.long().sort(1).values, idx.sort(1).values)
        assert torch.equal(topk[:, 0].long(), idx.gather(1, w.argmax(1, keepdim=True))[:, 0])
        assert layer.percentiles().shape == (layer.num_experts, 5)


def test_topk_is_kept_sorted_by_gate_weight(model):
    # routers may return top-k unsorted (deepseek_v2 uses sorted=False): reverse the columns before the recorder
    reverse = [l.router.register_forward_hook(lambda m, a, out: (out[0], out[1].flip(-1), out[2].flip(-1)))
               for l in moe_layers(model)]
    try:
        with torch.no_grad(), record_routing(model, keep_topk=True) as rec:
            model(input_ids=IDS)
    finally:
        for h in reverse:
            h.remove()
    for layer, (idx, w, _) in zip(rec.layers, reference(model, input_ids=IDS)):
        assert torch.equal(layer.topk.long(), idx.gather(1, w.argsort(1, descending=True)))
    # equal weights: the lower expert index first
    idx = torch.tensor([[5, 2, 7], [1, 0, 3]])
    w = torch.tensor([[0.2, 0.2, 0.6], [0.1, 0.5, 0.4]])
    assert sort_by_weight(idx, w).tolist() == [[7, 2, 5], [0, 3, 1]]


def test_hooks_see_the_batch_minus_padding(model):
    # right padding: the real tokens' routing equals the unpadded run; the padded positions must not count
    padded = torch.cat([IDS[:2], torch.full((2, 5), 63)], dim=1)
    mask = torch.cat([torch.ones(2, 9), torch.zeros(2, 5)], dim=1).long()
    mask[1, 6:] = 0  # the second row has only 6 real tokens
    with torch.no_grad(), record_routing(model, keep_topk=True) as rec:
        model(input_ids=padded, attention_mask=mask)
    real = mask.reshape(-1).bool()
    assert rec.tokens == int(mask.sum()) == 15
    for layer, (idx, w, logits) in zip(rec.layers, reference(model, input_ids=padded, attention_mask=mask)):
        assert layer.tokens == 15 and layer.logits.count.tolist() == [15] * layer.num_experts
        assert torch.equal(layer.topk.long().sort(1).values, idx[real].sort(1).values)
        assert torch.equal(layer.counts, torch.bincount(idx[real].reshape(-1), minlength=layer.num_experts))
        assert float(layer.logits.max.max()) == float(logits[real].max())
        assert float(layer.logits.min.min()) == float(logits[real].min())
    # positionally passed mask too
    with torch.no_grad(), record_routing(model) as positional:
        model(padded, mask)
    assert positional.tokens == 15 and torch.equal(positional.layers[0].counts, rec.layers[0].counts)
    # and the unpadded first row alone routes its 9 tokens the same way as in the padded batch
    with torch.no_grad(), record_routing(model, keep_topk=True) as alone:
        model(input_ids=IDS[:1])
    for a, b in zip(alone.layers, rec.layers):
        assert torch.equal(a.topk.long().sort(1).values, b.topk[:9].long().sort(1).values)


def test_hooks_are_removed_after_an_error(model):
    routers = [layer.router for layer in moe_layers(model)]
    with pytest.raises(RuntimeError, match="boom"):
        with record_routing(model, keep_topk=True):
            raise RuntimeError("boom")
    with pytest.raises(ValueError, match="attention_mask"):  # an error inside a hook, mid-forward
        with torch.no_grad(), record_routing(model):
            model(input_ids=IDS, attention_mask=torch.ones(3, 1, 9, 9))
    assert not model._forward_pre_hooks and not model._forward_hooks
    assert all(not r._forward_hooks for r in routers)


def test_one_batch_or_many_give_the_same_record(model):
    tok = CharTokenizer()
    records = []
    for batch_size in (8, 3, 1):  # 8: one batch with a padded last window; 1: no padding at all
        with record_routing(model, keep_topk=True) as rec:
            perplexity(model, tok, TEXT, window=24, batch_size=batch_size)
        records.append(rec)
    first = records[0]
    assert first.tokens == len(TEXT) + math.ceil(len(TEXT) / 23)  # every text token + one BOS per window
    for other in records[1:]:
        assert other.tokens == first.tokens
        for a, b in zip(first.layers, other.layers):
            assert torch.equal(a.counts, b.counts)
            assert torch.equal(a.topk, b.topk)
            torch.testing.assert_close(a.mass, b.mass, rtol=1e-6, atol=1e-6)
            span = float((a.logits.max - a.logits.min).max())
            torch.testing.assert_close(a.percentiles(), b.percentiles(), rtol=0, atol=1e-5 * span)
    s0, s1 = RoutingStats.from_record(first), RoutingStats.from_record(records[-1])
    assert [(l.cv, l.entropy, l.cold) for l in s0.layers] == [(l.cv, l.entropy, l.cold) for l in s1.layers]
    # a record compared with itself agrees completely
    same = RoutingStats.from_record(first, reference=records[-1])
    assert same.overall["jaccard"] == 1.0 and same.overall["top1_changed"] == 0.0
    assert same.overall["kl"] == pytest.approx(0, abs=1e-12)


def test_usage_view_matches_the_layer_counts(model):
    with torch.no_grad(), record_routing(model) as rec:
        model(input_ids=IDS, attention_mask=torch.ones_like(IDS))
    assert rec.layers[0].topk is None  # not kept unless asked
    usage = rec.usage()
    assert torch.equal(usage.counts, torch.stack([layer.counts for layer in rec.layers]))
    assert usage.tokens == IDS.numel() and usage.layer_indices == rec.layer_indices


def test_streamed_percentiles_match_torch_quantile(model):
    # the model's own router logits, recorded one window at a time, vs torch.quantile of all of them
    ids = torch.randint(1, 63, (6, 20), generator=torch.Generator().manual_seed(3))
    with torch.no_grad(), record_routing(model) as rec:
        for row in ids:
            model(input_ids=row[None])
    logits = [lg for _, _, lg in reference(model, input_ids=ids)]
    q = torch.tensor([1, 5, 50, 95, 99], dtype=torch.float64) / 100
    for layer, lg in zip(rec.layers, logits):
        exact = torch.quantile(lg.double(), q, dim=0).T
        span = (lg.max(0).values - lg.min(0).values).double()
        err = (layer.percentiles() - exact).abs() / span[:, None]
        assert float(err.max()) < 0.01


@pytest.mark.parametrize("dist", ["normal", "heavy", "growing"])
def test_sketch_accuracy_and_order_independence(dist):
    g = torch.Generator().manual_seed(5)
    n, cols = 20000, 3
    if dist == "normal":
        x = torch.randn(n, cols, generator=g) * 2 + 1
    elif dist == "heavy":  # skewed, long right tail
        x = torch.empty(n, cols).exponential_(1.0, generator=g) ** 2 - 3
    else:  # a narrow first batch, then ever wider values: the grid must widen and re-bin many times
        x = torch.randn(n, cols, generator=g) * torch.logspace(-4, 2, n)[:, None]
    sketches = []
    for chunks in (x.split(n), x.split(777), x.flip(0).split(64)):
        s = LogitSketch(cols, bins=512)
        for c in chunks:
            s.update(c)
        sketches.append(s)
    whole = sketches[0]
    for other in sketches[1:]:  # the histogram depends only on the values, never on the batching or order
        assert torch.equal(other.hist, whole.hist) and torch.equal(other.level, whole.level)
        assert torch.equal(other.quantiles(), whole.quantiles())
    assert whole.state_bytes() < 20_000  # fixed: bins × columns counters, however many values
    p = (0, 1, 5, 50, 95, 99, 100)
    exact = torch.quantile(x.double(), torch.tensor(p, dtype=torch.float64) / 100, dim=0).T
    span = (x.max(0).values - x.min(0).values).double()
    err = (whole.quantiles(p) - exact).abs() / span[:, None]
    assert float(err.max()) < 0.01
    assert torch.equal(whole.quantiles((0, 100)), torch.stack([x.min(0).values, x.max(0).values], 1).double())


def test_sketch_edge_cases():
    s = LogitSketch(2, bins=16)
    assert torch.isnan(s.quantiles()).all()
    s.update(torch.tensor([[1.5, float("nan")], [1.5, -2.0], [float("inf"), -2.0]]))
    assert s.count.tolist() == [2, 2] and s.nonfinite.tolist() == [1, 1]
    assert s.quantiles((0, 50, 100)).tolist() == [[1.5] * 3, [-2.0] * 3]
    s.update(torch.tensor([[1024.0, 3.0]], dtype=torch.bfloat16))
    assert s.count.tolist() == [3, 3] and float(s.max[0]) == 1024.0


def test_plots_are_written(tmp_path):
    from romer.noise.chip import Chip, program
    from romer.routing.plots import write_routing_plots

    model = tiny("deepseek_v2")  # layer 0 dense: MoE layers 1, 2
    with torch.no_grad(), record_routing(model) as clean:
        model(input_ids=IDS)
    with program(model, Chip.from_options("gaussian", eta=0.3, placement="moe")), torch.no_grad(), \
            record_routing(model) as noisy:
        model(input_ids=IDS)
    paths = write_routing_plots(clean, noisy, tmp_path / "plots", prefix="tiny_", title="tiny deepseek_v2")
    assert sorted(p.name for p in paths) == ["tiny_expert_load.png", "tiny_frequency_heatmap.png",
                                             "tiny_logit_percentiles.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(p.name for p in paths)  # no temp files
