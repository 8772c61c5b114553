"""phimoe (Phi-3.5-MoE): eval-mode sparsemixer routing checked against transformers' own PhimoeTopKRouter and
PhimoeSparseMoeBlock and on one token by hand; every calibration method on a tiny phimoe; a saved phimoe folder
through ``romer stats``, a noisy ``romer eval`` over 2 chips and ``romer calibrate`` (CLI)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

import romer
from romer.calibrate import Calibrator, apply
from romer.calibrate.config import MethodConfig, default_methods
from romer.cli.main import app
from romer.data import load_tokenizer
from romer.models import UnsupportedModelError
from romer.models.rules import RoutingRule, select
from romer.models.view import moe_layers
from romer.noise.chip import Chip
from romer.noise.placement import analog_weights, parse_placement
from romer.routing import record_routing
from tests.tiny_models import VOCAB, H, save_tiny, tiny

runner = CliRunner(env={"COLUMNS": "200"})
CHIP = Chip.from_options("gaussian", eta=0.3, placement="moe", seed=3)
FOLDER_SIZE = dict(vocab_size=8192, num_hidden_layers=2, max_position_embeddings=128, bos_token_id=0, eos_token_id=0, pad_token_id=0)


def windows(rows=6, length=24, seed=0):
    return torch.randint(1, VOCAB, (rows, length), generator=torch.Generator().manual_seed(seed))


# --- the rule against the family's own router -------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("eps", [0.01, 0.3])  # Phi-3.5-MoE's router_jitter_noise, and a band most tokens use
def test_rule_selects_the_experts_and_weights_of_the_family_router(eps, dtype):
    model = tiny("phimoe", router_jitter_noise=eps).to(dtype)
    layers = moe_layers(model)
    assert [type(layer.block).__name__ for layer in layers] == ["PhimoeSparseMoeBlock"] * 3
    generator = torch.Generator().manual_seed(5)
    for layer in layers:
        assert layer.rule == RoutingRule(order="sparsemixer", jitter_eps=eps) and layer.top_k == 2
        x = torch.randn(2, 300, H, generator=generator).to(dtype)
        with torch.no_grad():
            logits, want_w, want_i = layer.block.router(x.reshape(-1, H))  # the family's router, eval mode
            want_out = layer.block(x)  # the family's whole MoE block
            weights, indices = select(layer.rule, layer.top_k, logits)
            out = layer.block.experts(x.reshape(-1, H), indices, weights.to(dtype)).reshape(x.shape)
        assert torch.equal(indices, want_i)
        tolerance = 1e-6 if dtype == torch.float32 else 2 * torch.finfo(dtype).eps
        torch.testing.assert_close(weights, want_w.float(), rtol=tolerance, atol=1e-6)
        torch.testing.assert_close(out, want_out, rtol=tolerance, atol=1e-6)
        # the rival band matters on these tokens: some weights are below 1, and weights are not renormalised
        assert bool((want_w < 1).any()) and bool((want_w.float().sum(-1) > 1.01).any())


def test_rule_on_one_token_by_hand():
    """ε = 0.01, z = (1, 0.99, 0.5, 0.985): expert 0 first, its rivals (1 − z_j)/max(|z_j|, 1) ≤ 0.02 are 1 and
    3; then expert 1 among 1, 2, 3, its rivals (0.99 − z_j)/max(|z_j|, 0.99) ≤ 0.02: only 3."""
    rule = RoutingRule(order="sparsemixer", jitter_eps=0.01)
    z = torch.tensor([[1.0, 0.99, 0.5, 0.985]])
    e = [math.exp(v) for v in z[0].tolist()]
    weights, indices = select(rule, 2, z)
    assert indices.tolist() == [[0, 1]]
    assert weights[0].tolist() == pytest.approx([e[0] / (e[0] + e[1] + e[3]), e[1] / (e[1] + e[3])], rel=1e-6)
    # expert 1 masked (a replaced slot): no longer chosen nor a rival; 3 is second, alone in its band
    weights, indices = select(rule, 2, z, masked=[1])
    assert indices.tolist() == [[0, 3]]
    assert weights[0].tolist() == pytest.approx([e[0] / (e[0] + e[3]), 1.0], rel=1e-6)
    # a selection-only bias (recalibration P2) picks expert 2 first; its weight still comes from the router's z:
    # rivals of z = 0.5 are the experts with (0.5 − z_j)/max(|z_j|, 0.5) ≤ 0.02, i.e. every expert above it too
    weights, indices = select(rule, 2, z + torch.tensor([0.0, 0.0, 1.0, 0.0]), z)
    assert indices.tolist() == [[2, 0]]
    assert weights[0].tolist() == pytest.approx([e[2] / sum(e), e[0] / (e[0] + e[1] + e[3])], rel=1e-6)


def test_a_rule_sparsemixer_cannot_be_is_refused():
    for bad in (dict(norm_topk_prob=True), dict(scoring="sigmoid"), dict(n_group=2), dict(jitter_eps=-0.1)):
        with pytest.raises(ValueError, match="sparsemixer"):
            RoutingRule(order="sparsemixer", **bad)
    with pytest.raises(ValueError, match="score-correction"):
        select(RoutingRule(order="sparsemixer"), 2, torch.zeros(1, 4), correction_bias=torch.zeros(4))


def test_sparsemixer_is_top_two_only():
    """The family's sparsemixer always routes 2 experts: a config asking for another top-k is refused."""
    with pytest.raises(UnsupportedModelError, match="has top_k 1 but returns 2 experts per token"):
        moe_layers(tiny("phimoe", num_experts_per_tok=1))


def test_the_router_is_analog_under_moe():
    names = [w.name for w in analog_weights(tiny("phimoe"), parse_placement("moe"), strict=False) if w.group == "router"]
    assert names == [f"model.layers.{i}.mlp.router.weight" for i in range(3)]


# --- every calibration method ------------------------------------------------------------------------------


METHODS = default_methods() + [MethodConfig(name=v, kind="replace", replace={"variant": v})
                               for v in ("redirect", "split", "prune-duplicate")] + [
    MethodConfig(name=f"P{m}", kind="recalibrate", recalibrate={"mode": mode})
    for m, mode in ((2, "shift"), (3, "token"))]


@pytest.mark.parametrize("method", [m for m in METHODS if m.kind not in ("clean", "noisy", "oracle")],
                         ids=lambda m: m.name)
def test_every_method_fits_and_applies(method):
    model, ids = tiny("phimoe"), windows()
    method = method.model_copy(update={"calibration": method.calibration.model_copy(update={"batch_size": 3})})
    plan = Calibrator(method).fit(model, ids, CHIP)
    with apply(model, CHIP, plan), record_routing(model) as record, torch.no_grad():
        logits = model(input_ids=ids).logits
    assert torch.isfinite(logits).all()
    masked = {r.layer: {cold for cold, _ in r.pairs} for r in plan.replacement if r.variant in ("replica", "redirect")}
    for layer in record:
        assert layer.counts.sum() == ids.numel() * 2
        assert not layer.counts[sorted(masked.get(layer.layer, ()))].any()  # replaced slots are never chosen
    if method.kind in ("recalibrate", "romer", "balance"):
        assert plan.changes_routing


# --- a saved folder through the command line ---------------------------------------------------------------


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_tiny("phimoe", tmp_path_factory.mktemp("phimoe"), load_tokenizer(), **FOLDER_SIZE)


def invoke(args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def test_stats_from_the_folder(folder, tmp_path):
    out = tmp_path / "stats.json"
    invoke(["stats", "--model", folder, "--preset", "gaussian", "--set", "chip.overrides.eta=0.5", "--chips", "2",
            "--max-tokens", "1000", "--window", "128", "--json", out])
    payload = json.loads(out.read_text())
    assert payload["chips"] == 2 and len(payload["per_chip"]) == 2 and len(payload["per_layer"]) == 2
    assert 0 <= payload["summary"]["jaccard"]["mean"] < 1  # the analog router changed routing decisions
    assert all(math.isfinite(chip["oracle_ppl"]) for chip in payload["per_chip"])


def test_noisy_eval_over_two_chips(folder, tmp_path):
    clean, noisy = tmp_path / "clean.json", tmp_path / "noisy.json"
    common = ["eval", "--model", folder, "--split", "validation", "--max-tokens", "2048", "--window", "128"]
    invoke(common + ["--json", clean])
    invoke(common + ["--preset", "gaussian", "--set", "chip.overrides.eta=0.5", "--chips", "2", "--json", noisy])
    clean_ppl, payload = json.loads(clean.read_text())["ppl"], json.loads(noisy.read_text())
    a, b = payload["ppl_per_chip"]
    assert payload["chips"] == 2 and a != b and clean_ppl not in (a, b)
    assert all(math.isfinite(p) for p in (clean_ppl, a, b))


def test_calibrate_writes_a_folder_that_routes_by_the_plan(folder, tmp_path):
    out = tmp_path / "calibrated"
    invoke(["calibrate", "--model", folder, "--out", out, "--sequences", "4", "--method", "romer", "--set",
            "calibration.window=64", "--seed", "1"])
    plan = json.loads((out / "plan.json").read_text())
    assert plan["model"]["model_type"] == "phimoe" and plan["replacement"] and plan["router"]
    model, _ = romer.load(out)
    with record_routing(model) as record, torch.no_grad():
        model(input_ids=windows(4, 32))
    for replaced, layer in zip(plan["replacement"], record):
        cold = [c for c, _ in replaced["pairs"]]
        assert replaced["variant"] == "replica" and not layer.counts[cold].any()
    invoke(["eval", "--model", out, "--split", "validation", "--max-tokens", "2048", "--window", "128"])


def test_a_folder_with_the_published_weight_names_loads_into_the_built_in_classes(folder, tmp_path):
    """Phi-3.5-MoE's published safetensors name the block ``block_sparse_moe``, the router ``gate`` and each
    expert's matrices ``w1`` (gate), ``w3`` (up), ``w2`` (down); transformers' built-in phimoe renames and fuses
    them on load. Written that way by hand here, the folder loads into the same model."""
    from safetensors.torch import load_file, save_file

    published = {}
    for name, tensor in load_file(folder / "model.safetensors").items():
        name = name.replace(".mlp.", ".block_sparse_moe.").replace(".router.weight", ".gate.weight")
        if name.endswith("experts.gate_up_proj"):
            for e, fused in enumerate(tensor):
                gate, up = fused.chunk(2)
                published[f"{name[:-len('gate_up_proj')]}{e}.w1.weight"] = gate.contiguous()
                published[f"{name[:-len('gate_up_proj')]}{e}.w3.weight"] = up.contiguous()
        elif name.endswith("experts.down_proj"):
            for e, down in enumerate(tensor):
                published[f"{name[:-len('down_proj')]}{e}.w2.weight"] = down.contiguous()
        else:
            published[name] = tensor
    copy = tmp_path / "published"
    copy.mkdir()
    for f in folder.iterdir():
        if f.name != "model.safetensors":
            (copy / f.name).write_bytes(f.read_bytes())
    save_file(published, str(copy / "model.safetensors"), metadata={"format": "pt"})
    ids = windows(2, 16)
    (mine, _), (theirs, _) = romer.load(folder), romer.load(copy)
    with torch.no_grad():
        assert torch.equal(mine(input_ids=ids).logits, theirs(input_ids=ids).logits)
    assert [l.rule for l in moe_layers(theirs)] == [RoutingRule(order="sparsemixer", jitter_eps=0.3)] * 2
