"""The reference-model trainer: loss formulas (golden), batching, hooks, and a tiny end-to-end run."""

import math

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

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


def test_router_losses_hooks_every_layer_and_removes_hooks():
    model = tiny("olmoe")
    with router_losses(model) as losses:
        model(input_ids=torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(0)))
        balance, z = losses()
        assert balance.item() >= 1.0 - 1e-6  # the minimum of E · Σ f·P over routings is 1 only when balanced
        assert z.item() > 0
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
