"""The reference-model trainer: loss formulas (golden), batching, hooks, and a tiny end-to-end run."""

import math

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from romer.data import load_text
from romer.models import training
from romer.models.training import (
    ZooRecipe,
    balance_loss,
    router_losses,
    router_z_loss,
    train,
    window_batches,
)
from tests.tiny_models import tiny


def test_balance_loss_is_one_for_uniform_routing():
    # 4 experts, top-1, 8 tokens: 2 tokens each, all probabilities 1/4 → E · Σ (1/4 · 1/4) = 4 · 4/16 = 1
    logits = torch.zeros(8, 4)
    topk = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3]).view(8, 1)
    assert balance_loss(logits, topk, 4).item() == pytest.approx(1.0)


def test_balance_loss_is_num_experts_for_collapsed_routing():
    # every token picks expert 0 with probability ≈ 1 → E · 1 · 1 = E
    logits = torch.tensor([[50.0, 0.0, 0.0, 0.0]]).repeat(6, 1)
    topk = torch.zeros(6, 1, dtype=torch.long)
    assert balance_loss(logits, topk, 4).item() == pytest.approx(4.0, rel=1e-6)


def test_balance_loss_hand_checked_top2():
    # 2 tokens, 3 experts, top-2: slots → expert 0 twice, 1 once, 2 once: f = (1/2, 1/4, 1/4)
    # probabilities: token 1 softmax(ln 2, 0, 0) = (1/2, 1/4, 1/4), token 2 uniform (1/3 each)
    # P = (5/12, 7/24, 7/24); loss = 3 · (1/2·5/12 + 1/4·7/24 + 1/4·7/24) = 3 · (5/24 + 7/48) = 17/16
    logits = torch.tensor([[math.log(2), 0.0, 0.0], [0.0, 0.0, 0.0]])
    topk = torch.tensor([[0, 1], [0, 2]])
    assert balance_loss(logits, topk, 3).item() == pytest.approx(17 / 16, rel=1e-6)


def test_router_z_loss_golden():
    # zero logits over E experts: logsumexp = ln E for every token
    assert router_z_loss(torch.zeros(5, 8)).item() == pytest.approx(math.log(8) ** 2, rel=1e-6)


def test_window_batches_cover_each_chunk_once_per_epoch():
    ids = torch.arange(1, 101)
    batches = window_batches(ids, seq_len=5, batch_size=3, bos_id=0, generator=torch.Generator().manual_seed(0))
    first = [next(batches) for _ in range(8)]  # 100 // 4 = 25 chunks (or 24 after a random offset) → 8 batches
    rows = torch.cat(first)
    assert (rows[:, 0] == 0).all()
    assert (rows[:, 2:] - rows[:, 1:-1] == 1).all(), "each window holds consecutive text tokens"
    assert len({tuple(r.tolist()) for r in rows}) == len(rows), "no chunk repeats within an epoch"


def _fixed_router(logits: torch.Tensor, indices: torch.Tensor):
    """A forward hook that makes a router return these (logits, gate weights ½ each, indices) for 2 tokens."""
    def hook(module, args, output):
        return logits.clone(), torch.full(indices.shape, 0.5), indices.clone()
    return hook


def test_router_losses_golden_per_layer_mean_and_hooks_removed():
    """Hand-computed, 2 tokens, E = 8, top-2, each layer's router output fixed by a hook registered first.

    Layer 0: p_A = (.17, .17, .005, .005, .1625 × 4) picks {0, 1}; p_B = (.005, .005, .17, .17, .1625 × 4) picks
    {2, 3}; so f = ¼ on experts 0–3, P_0…3 = (.17 + .005)/2 = .0875 and E·Σ f·P = 8 · 4 · ¼ · .0875 = 0.7 — below 1
    although every token takes its own top-2 (the balance loss is not bounded below by 1). Logits ln p + c_t with
    c = (1, 2): logsumexp = c_t, z-loss = (1² + 2²)/2 = 2.5. Layers 1, 2: all-zero logits, P = ⅛ whatever is
    chosen, so E·Σ f·P = 1, z-loss = (ln 8)². Both losses are the mean over the three layers."""
    p_a = torch.tensor([0.17, 0.17, 0.005, 0.005, 0.1625, 0.1625, 0.1625, 0.1625])
    p_b = torch.tensor([0.005, 0.005, 0.17, 0.17, 0.1625, 0.1625, 0.1625, 0.1625])
    layer0 = torch.stack([p_a.log() + 1, p_b.log() + 2])
    cases = [(layer0, torch.tensor([[0, 1], [2, 3]])),
             (torch.zeros(2, 8), torch.tensor([[0, 1], [0, 5]])),
             (torch.zeros(2, 8), torch.tensor([[7, 6], [7, 6]]))]
    model = tiny("olmoe")
    fixed = [layer.mlp.gate.register_forward_hook(_fixed_router(*case))
             for layer, case in zip(model.model.layers, cases)]
    with router_losses(model) as losses:
        model(input_ids=torch.tensor([[5, 9]]))
        balance, z = losses()
    for handle in fixed:
        handle.remove()
    assert balance.item() == pytest.approx((0.7 + 1 + 1) / 3, rel=1e-5)
    assert z.item() == pytest.approx((2.5 + 2 * math.log(8) ** 2) / 3, rel=1e-5)
    assert all(not layer.mlp.gate._forward_hooks for layer in model.model.layers)


TINY_RECIPE = {
    "model": {"model_type": "olmoe", "vocab_size": 8192, "hidden_size": 16, "num_hidden_layers": 2,
              "num_attention_heads": 2, "num_key_value_heads": 2, "intermediate_size": 8, "num_experts": 4,
              "num_experts_per_tok": 2, "max_position_embeddings": 64},
    "training": {"seed": 3, "seq_len": 32, "batch_size": 2, "tokens": 640, "lr": 0.01, "betas": [0.9, 0.95],
                 "weight_decay": 0.1, "warmup_steps": 2, "grad_clip": 1.0, "balance_loss_coef": 0.01,
                 "z_loss_coef": 0.001, "eval_every": 5, "eval_windows": 2},
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    recipe = root / "train.yaml"
    recipe.write_text(yaml.safe_dump(TINY_RECIPE))
    with pytest.MonkeyPatch.context() as patch:  # 640 training tokens need 100 kB of each split, not 7 MB
        patch.setattr(training, "load_text", lambda split: load_text(split)[:100_000])
        logs = [train(recipe, root / f"run{i}", progress=False) for i in range(2)]
    return root, logs


def test_training_writes_a_loadable_hf_folder(trained):
    root, (log, _) = trained
    folder = root / "run0"
    assert {p.name for p in folder.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json",
                                                   "train.yaml", "training_log.json", "loss_curve.png"}
    model = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True)
    assert type(model).__name__ == "OlmoeForCausalLM"
    assert model.config.torch_dtype == torch.float16 or str(model.config.dtype).endswith("float16")
    assert len(log["steps"]) == 10 and [v["step"] for v in log["validation"]] == [5, 10]
    assert log["steps"][-1]["lm_loss"] < log["steps"][0]["lm_loss"]


def test_training_is_reproducible_with_its_seed(trained):
    from safetensors.torch import load_file

    root, (a, b) = trained
    assert [s["lm_loss"] for s in a["steps"]] == [s["lm_loss"] for s in b["steps"]]
    wa, wb = load_file(root / "run0/model.safetensors"), load_file(root / "run1/model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_recipe_with_unknown_section_is_refused(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**TINY_RECIPE, "extra": 1}))
    with pytest.raises(ValueError, match="exactly the sections"):
        ZooRecipe.from_yaml(path)
