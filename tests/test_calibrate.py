"""ROMER calibration: the routing rule reproduces every family's router, zero noise is the identity, percentile
matching lands on the reference, replacement variants do what they say, plans round-trip exactly."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from romer.calibrate import Calibrator, Plan, apply, plan_cost
from romer.calibrate.config import BalanceConfig, MethodConfig, RecalibrateConfig, method
from romer.calibrate.recalibration import fit_balance_bias, fit_quantile
from romer.calibrate.routing_rule import RouterFix, route
from romer.errors import UserError
from romer.models.view import moe_layers
from romer.noise.chip import Chip, program
from romer.routing import record_routing
from romer.routing.recorder import LayerRouting, LogitSketch, router_logits
from romer.routing.stats import coefficient_of_variation
from tests.test_oracle import FakeDeepseekLM
from tests.tiny_models import NAMES, VOCAB, tiny

FAMILIES = NAMES  # every named family, group-limited deepseek_v2 / v3 and gpt_oss included
CHIP = Chip.from_options("gaussian", eta=0.3, placement="moe", seed=3)
ZERO = Chip.from_options("gaussian", eta=0.0, placement="moe", seed=3)


def windows(rows=6, length=24, seed=0):
    return torch.randint(1, VOCAB, (rows, length), generator=torch.Generator().manual_seed(seed))


def calibrator(kind, **options):
    return Calibrator(MethodConfig(name=kind, kind=kind, calibration={"batch_size": 3}, **options))


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.fixture(scope="module")
def olmoe():
    return tiny("olmoe")


@pytest.fixture(scope="module")
def ids():
    return windows()


def router_calls(model, ids):
    """(layer, router input args, router output) of every router call in one forward."""
    calls = []
    handles = [layer.router.register_forward_hook(lambda m, a, o, layer=layer: calls.append((layer, a, o)))
               for layer in moe_layers(model)]
    try:
        with torch.no_grad():
            model(ids) if isinstance(model, FakeDeepseekLM) else model(input_ids=ids)
    finally:
        for h in handles:
            h.remove()
    return calls


@pytest.mark.parametrize("family", FAMILIES + ["deepseek-modulelist"])
def test_routing_rule_reproduces_the_router(family):
    model = FakeDeepseekLM().eval() if family == "deepseek-modulelist" else tiny(family)
    calls = router_calls(model, windows(2, 16))
    assert calls
    for layer, args, output in calls:
        z = router_logits(layer, args, output)
        want_w = output[layer.router_output.index("weights")].reshape(z.shape[0], -1)
        want_i = output[layer.router_output.index("indices")].reshape(z.shape[0], -1)
        _, weights, indices = route(layer, z, RouterFix(layer.index), want_w.dtype)
        got = torch.zeros(z.shape, dtype=torch.float64).scatter(1, indices, weights.double())
        want = torch.zeros(z.shape, dtype=torch.float64).scatter(1, want_i.long(), want_w.double())
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", ["deepseek_v3", "deepseek_v2-group"])
def test_group_limited_routing_keeps_every_token_inside_its_best_groups(family):
    """Each token's experts lie in the topk_group groups with the best group scores (deepseek_v3: the sum of
    a group's two best sigmoid scores + correction bias; deepseek_v2: its best softmax score), computed here
    from the logits by hand; and the limit binds (greedy top-k would leave those groups on some tokens)."""
    model = tiny(family)
    binding = 0
    for layer, args, output in router_calls(model, windows(2, 16)):
        z = router_logits(layer, args, output).double()
        if family == "deepseek_v3":
            choice = torch.sigmoid(z) + layer.score_correction_bias.double()
            group_score = choice.view(-1, 4, 2).sum(-1)  # a group of two: the sum of its two best is the sum
        else:
            choice = torch.softmax(z, -1)
            group_score = choice.view(-1, 4, 2).amax(-1)
        best_groups = group_score.topk(2 if family == "deepseek_v3" else 1, dim=-1).indices  # topk_group
        indices = output[layer.router_output.index("indices")].reshape(z.shape[0], -1)
        assert ((indices // 2)[:, :, None] == best_groups[:, None, :]).any(-1).all()
        _, weights, own = route(layer, z, RouterFix(layer.index), torch.float32)
        assert torch.equal(own.sort(-1).values, indices.sort(-1).values)
        greedy = choice.topk(2, dim=-1).indices
        binding += int((~((greedy // 2)[:, :, None] == best_groups[:, None, :]).any(-1)).any(-1).sum())
    assert binding > 0


def test_masked_slots_never_win_under_group_limited_routing():
    model = tiny("deepseek_v3")
    for layer, args, output in router_calls(model, windows(2, 16)):
        z = router_logits(layer, args, output)
        _, _, indices = route(layer, z, RouterFix(layer.index, masked=[0, 1, 2]), torch.float32)
        assert not torch.isin(indices, torch.tensor([0, 1, 2])).any()
        assert all(len(set(row.tolist())) == layer.top_k for row in indices)


def test_fit_quantile_maps_an_affine_distortion_back():
    """Noisy logits z_n = 2·z_c + 3 per expert → scale ½, offset −3/2 (within the sketch's resolution)."""
    clean_z = torch.randn(20000, 4, generator=torch.Generator().manual_seed(0)) * torch.tensor([1.0, 2, 0.5, 1])
    records = []
    for z in (clean_z, 2 * clean_z + 3):
        sketch = LogitSketch(4)
        sketch.update(z)
        records.append(LayerRouting(0, 4, 2, "softmax", torch.zeros(4, dtype=torch.int64),
                                    torch.zeros(4, dtype=torch.int64), sketch, tokens=20000))
    fix = fit_quantile(records[1], records[0], RecalibrateConfig(), RouterFix(0))
    torch.testing.assert_close(torch.tensor(fix.scale, dtype=torch.float64), torch.full((4,), 0.5, dtype=torch.float64), atol=2e-3, rtol=0)
    torch.testing.assert_close(torch.tensor(fix.offset, dtype=torch.float64), torch.full((4,), -1.5, dtype=torch.float64), atol=2e-2,
                               rtol=0)
    average = fit_quantile(records[1], records[0], RecalibrateConfig(reference="average"), RouterFix(0))
    assert len(set(round(s * o, 6) for s, o in zip(average.scale, average.offset))) > 1  # targets differ


@pytest.mark.parametrize("mode", ["quantile", "shift"])  # P3 rescales every token: never the identity
def test_zero_noise_recalibration_is_the_identity(olmoe, ids, mode):
    cal = calibrator("recalibrate", recalibrate={"mode": mode})
    plan = cal.fit(olmoe, ids, ZERO)
    clean = logits(olmoe, ids)
    with apply(olmoe, ZERO, plan):
        calibrated = logits(olmoe, ids)
    torch.testing.assert_close(calibrated, clean, rtol=1e-4, atol=1e-4)


def test_recalibration_moves_noisy_percentiles_onto_the_clean_ones(olmoe, ids):
    """First MoE layer (its input does not depend on earlier routing): the corrected median and spread
    Q(90) − Q(10) equal the clean ones per expert (an affine map matches two statistics, not three)."""
    cal = calibrator("recalibrate", recalibrate={"percentiles": (10, 90)})
    plan = cal.fit(olmoe, ids, CHIP)
    ps = (10.0, 50.0, 90.0)

    def first_layer_percentiles(chip_plan):
        with apply(olmoe, *chip_plan) if chip_plan else torch.no_grad(), record_routing(olmoe) as rec:
            logits(olmoe, ids)
        return rec.layers[0].percentiles(ps)

    clean = first_layer_percentiles(None)
    noisy = first_layer_percentiles((CHIP, Plan.none()))
    fixed = first_layer_percentiles((CHIP, plan))
    span = (clean[:, 2] - clean[:, 0]).mean()
    assert (noisy - clean).abs().max() > 0.2 * span  # the noise really moved them
    spread = lambda q: q[:, 2] - q[:, 0]
    assert (spread(noisy) - spread(clean)).abs().max() > 0.1 * span  # the noise really changed the spreads
    assert (fixed[:, 1] - clean[:, 1]).abs().max() < 0.01 * span  # the correction puts them back
    assert (spread(fixed) - spread(clean)).abs().max() < 0.01 * span


def test_plan_round_trip_gives_identical_logits(olmoe, ids, tmp_path):
    plan = calibrator("romer").fit(olmoe, ids, CHIP)
    with apply(olmoe, CHIP, plan):
        first = logits(olmoe, ids)
    plan.save(tmp_path / "plan.json")
    loaded = Plan.load(tmp_path / "plan.json")
    assert json.loads((tmp_path / "plan.json").read_text()) == loaded.to_dict()
    with apply(olmoe, Chip.from_dict(loaded.chip), loaded):
        second = logits(olmoe, ids)
    assert torch.equal(first, second)


def test_apply_restores_the_clean_model_bit_identically(olmoe, ids):
    before = {n: p.detach().clone() for n, p in olmoe.named_parameters()}
    for kind, options in [("romer", {"replace": {"variant": "split"}}), ("maxnn", {}), ("balance", {})]:
        with apply(olmoe, CHIP, calibrator(kind, **options).fit(olmoe, ids, CHIP)):
            pass
    assert all(torch.equal(p, before[n]) for n, p in olmoe.named_parameters())
    assert not any(layer.router._forward_hooks for layer in moe_layers(olmoe))


def topk_rows(model, ids):
    with record_routing(model, keep_topk=True) as rec:
        logits(model, ids)
    return [layer.topk.long() for layer in rec]


def test_replica_masks_cold_slots_averages_pairs_and_stays_loadable(olmoe, ids, tmp_path):
    plan = calibrator("replace", replace={"variant": "replica", "count": 2}).fit(olmoe, ids, CHIP)
    layers = moe_layers(olmoe)
    assert all(len(r.pairs) == 2 for r in plan.replacement)
    copy_chip = {}
    with program(olmoe, CHIP):  # what the copies read back as, programmed on their own: reference for the average
        pass
    with apply(olmoe, CHIP, plan):
        rows = topk_rows(olmoe, ids)
        for layer, r, topk in zip(layers, plan.replacement, rows):
            cold = {c for c, _ in r.pairs}
            assert not cold & set(topk.unique().tolist())  # masked slots never win
            assert topk.shape[1] == layer.top_k and all(len(set(row.tolist())) == layer.top_k for row in topk)
            for cold_e, hot_e in r.pairs:  # slot hot reads the average of two independent noisy copies
                hot_w, cold_w = layer.experts.weights(hot_e)["gate"], layer.experts.weights(cold_e)["gate"]
                copy_chip[(layer.index, hot_e)] = (hot_w.clone(), cold_w.clone())
        olmoe.save_pretrained(tmp_path, safe_serialization=True)
        noisy_logits = logits(olmoe, ids)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with apply(reloaded, None, plan):  # saved weights already hold the chip's read-back values
        torch.testing.assert_close(logits(reloaded, ids), noisy_logits)
    clean_w = {(l.index, h): l.experts.weights(h)["gate"] for l, r in zip(layers, plan.replacement) for _, h in r.pairs}
    for key, (avg, replica) in copy_chip.items():
        first_copy = 2 * avg - replica  # slot hot = ½(hot' + replica')
        noise_a, noise_b = first_copy - clean_w[key], replica - clean_w[key]
        assert noise_a.abs().mean() > 0 and noise_b.abs().mean() > 0
        assert abs(float(torch.corrcoef(torch.stack([noise_a.flatten(), noise_b.flatten()]))[0, 1])) < 0.2


def test_split_alternates_tokens_between_hot_expert_and_replica(olmoe, ids):
    plan = calibrator("replace", replace={"variant": "split", "count": 1}).fit(olmoe, ids, CHIP)
    noisy = Plan.none()
    with apply(olmoe, CHIP, noisy):
        before = topk_rows(olmoe, ids)[0]
    (cold, hot), = plan.replacement[0].pairs
    with apply(olmoe, CHIP, plan):
        after = topk_rows(olmoe, ids)[0]
    hits = (before == hot).any(1).nonzero().flatten()
    assert len(hits) >= 2
    # the first MoE layer sees the same inputs, so only the split changes its routing
    odd, even = hits[hits % 2 == 1], hits[hits % 2 == 0]
    assert (after[odd] == cold).any(1).all() and not (after[odd] == hot).any(1).any()
    assert (after[even] == hot).any(1).all()


def test_redirect_and_prune_duplicate(olmoe, ids):
    redirect = calibrator("replace", replace={"variant": "redirect", "count": 2}).fit(olmoe, ids, ZERO)
    with apply(olmoe, ZERO, redirect):
        rows = topk_rows(olmoe, ids)
    for r, topk in zip(redirect.replacement, rows):
        assert not {c for c, _ in r.pairs} & set(topk.unique().tolist())
    dup = calibrator("replace", replace={"variant": "prune-duplicate", "count": 2}).fit(olmoe, ids, ZERO)
    assert not dup.changes_routing
    layer = moe_layers(olmoe)[0]
    (cold, hot), _ = dup.replacement[0].pairs
    with apply(olmoe, ZERO, dup):
        assert torch.equal(layer.experts.weights(cold)["down"], layer.experts.weights(hot)["down"])


def test_random_control_is_seeded_by_the_chip(olmoe, ids):
    cal = calibrator("replace", replace={"select": "random", "count": 2})
    a, b = cal.fit(olmoe, ids, CHIP), cal.fit(olmoe, ids, CHIP)
    c = cal.fit(olmoe, ids, CHIP.with_seed(99))
    assert a.to_dict()["replacement"] == b.to_dict()["replacement"] != c.to_dict()["replacement"]


def test_replacement_refuses_too_few_selectable_experts(ids):
    wide = tiny("olmoe", num_experts_per_tok=6)
    with pytest.raises(UserError, match="fewer than top-k = 6"):
        calibrator("replace", replace={"count": 3}).fit(wide, ids, CHIP)
    with pytest.raises(UserError, match="at most 4"):
        calibrator("replace", replace={"count": 5, "variant": "prune-duplicate"}).fit(wide, ids, CHIP)


def test_replacement_never_touches_shared_experts(ids):
    model = tiny("qwen2_moe")
    shared = {n: p.detach().clone() for n, p in model.named_parameters() if "shared_expert" in n}
    plan = calibrator("replace", replace={"variant": "prune-duplicate", "count": 2}).fit(model, ids, ZERO)
    with apply(model, ZERO, plan):
        assert all(torch.equal(p, shared[n]) for n, p in model.named_parameters() if n in shared)


def test_maxnn_keeps_its_experts_and_attention_digital():
    model = tiny("olmoe")
    chip = Chip.from_options("gaussian", eta=0.3, placement="all", seed=1)
    plan = calibrator("maxnn", maxnn={"expert_share": 0.25}).fit(model, windows(), chip)
    clean = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert all(len(es) == 2 for es in plan.digital_experts.values())
    with apply(model, chip, plan):
        for layer in moe_layers(model):
            for e in range(layer.num_experts):
                fused = clean[f"model.layers.{layer.index}.mlp.experts.gate_up_proj"]
                same = torch.equal(layer.experts.weights(e)["up"], fused[e, fused.shape[1] // 2:])
                assert same == (e in plan.digital_experts[layer.index])
        assert all(torch.equal(p, clean[n]) for n, p in model.named_parameters() if "self_attn" in n)
        cost = plan_cost(model, chip, plan)
    attention = sum(p.numel() for n, p in model.named_parameters() if "self_attn" in n and p.dim() == 2)
    experts = sum(p.numel() for n, p in model.named_parameters() if "experts" in n) // 4  # 2 of 8 experts
    analog = sum(p.numel() for n, p in model.named_parameters()
                 if p.dim() >= 2 and ("self_attn" in n or ".mlp." in n))
    assert cost.digital_share == pytest.approx((attention + experts) / analog)


def test_bias_balancing_evens_the_load():
    z = torch.randn(4000, 8, generator=torch.Generator().manual_seed(0)) + torch.linspace(-1.5, 1.5, 8)
    before = torch.bincount(torch.topk(z, 2).indices.flatten(), minlength=8).double()
    bias = torch.tensor(fit_balance_bias(z, 2, BalanceConfig(iterations=400)))
    after = torch.bincount(torch.topk(z + bias, 2).indices.flatten(), minlength=8).double()
    assert coefficient_of_variation(before) > 0.5 and coefficient_of_variation(after) < 0.05


def test_seeded_run_gives_the_same_numbers_twice(ids):
    outputs = []
    for _ in range(2):
        model = tiny("deepseek_v2")
        plan = calibrator("romer", replace={"select": "random", "count": 1}).fit(model, ids, CHIP)
        with apply(model, CHIP, plan):
            outputs.append((json.dumps(plan.to_dict()), logits(model, ids)))
    assert outputs[0][0] == outputs[1][0] and torch.equal(outputs[0][1], outputs[1][1])


def test_method_config_errors_are_clear():
    with pytest.raises(ValueError, match="takes no 'replace' options"):
        method("x", "noisy", replace={})
    with pytest.raises(ValueError, match="lo < 50 < hi"):
        RecalibrateConfig(percentiles=(60, 95))
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        MethodConfig(name="x", kind="romer", bogus=1)


def test_sequential_recalibration_matches_every_layer(olmoe, ids):
    """Fitted layer by layer, every MoE layer's corrected median and spread equal the clean ones (a one-pass fit
    only guarantees it for the first layer: later layers then see other hidden states)."""
    cal = calibrator("recalibrate", recalibrate={"percentiles": (10, 90), "sequential": True})
    plan = cal.fit(olmoe, ids, CHIP)
    ps = (10.0, 50.0, 90.0)
    with record_routing(olmoe) as clean_rec:
        logits(olmoe, ids)
    with apply(olmoe, CHIP, plan), record_routing(olmoe) as fixed_rec:
        logits(olmoe, ids)
    for clean_layer, fixed_layer in zip(clean_rec, fixed_rec):
        clean, fixed = clean_layer.percentiles(ps), fixed_layer.percentiles(ps)
        span = (clean[:, 2] - clean[:, 0]).mean()
        assert (fixed[:, 1] - clean[:, 1]).abs().max() < 0.01 * span
        assert ((fixed[:, 2] - fixed[:, 0]) - (clean[:, 2] - clean[:, 0])).abs().max() < 0.01 * span


def test_recalibration_of_chosen_layers_only(olmoe, ids):
    plan = calibrator("recalibrate", recalibrate={"layers": [1]}).fit(olmoe, ids, CHIP)
    assert [f.layer for f in plan.router if not f.is_identity] == [1]
    with pytest.raises(UserError, match="names no MoE layer"):
        calibrator("recalibrate", recalibrate={"layers": [7]}).fit(olmoe, ids, CHIP)
