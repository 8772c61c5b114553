"""Tiny random MoE models of every named family, shared by the tests (and saved as checkpoint folders)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

E, K, H, VOCAB = 8, 2, 32, 64
COMMON = dict(vocab_size=VOCAB, hidden_size=H, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4,
              intermediate_size=48, num_experts_per_tok=K, max_position_embeddings=64, tie_word_embeddings=False)
MLA = dict(q_lora_rank=None, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8, head_dim=8,
           moe_intermediate_size=16, n_routed_experts=E, n_shared_experts=2, first_k_dense_replace=1)
GROUPS = dict(n_group=4, topk_group=2)  # 8 experts in 4 groups of 2; a token may use 2 groups
CONFIGS = {
    "olmoe": dict(num_experts=E),
    "qwen2_moe": dict(num_experts=E, moe_intermediate_size=16, shared_expert_intermediate_size=24,
                      norm_topk_prob=False),
    "qwen3_moe": dict(num_experts=E, moe_intermediate_size=16, head_dim=8, norm_topk_prob=True),
    "mixtral": dict(num_local_experts=E),
    "deepseek_v2": dict(MLA, topk_method="greedy", routed_scaling_factor=1.0),
    "deepseek_v3": dict(MLA, **GROUPS, routed_scaling_factor=2.5, norm_topk_prob=True),
    "gpt_oss": dict(num_local_experts=E, intermediate_size=16, head_dim=8, sliding_window=16,
                    rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
    # sparsemixer's near-rival band 2ε wide enough (Phi-3.5-MoE: ε = 0.01) that most tiny tokens have rivals
    "phimoe": dict(num_local_experts=E, router_jitter_noise=0.3, input_jitter_noise=0.01),
}
# name → (model_type, overrides): the same family with another routing rule
VARIANTS = {
    # scored by its best expert, a group limit binds only when a token may use fewer groups than experts
    "deepseek_v2-group": ("deepseek_v2", dict(CONFIGS["deepseek_v2"], topk_method="group_limited_greedy",
                                              routed_scaling_factor=1.5, n_group=4, topk_group=1)),
    "deepseek_v3-greedy": ("deepseek_v3", dict(CONFIGS["deepseek_v3"], n_group=1, topk_group=1)),
}
NAMES = list(CONFIGS) + list(VARIANTS)


def config(name: str, **overrides):
    """The tiny config of a family (``CONFIGS``) or variant (``VARIANTS``)."""
    model_type, options = VARIANTS.get(name, (name, CONFIGS.get(name)))
    return AutoConfig.for_model(model_type, **{**COMMON, **options, **overrides})


def tiny(name: str, **overrides) -> nn.Module:
    """A tiny random model; seeded, and the global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config(name, **overrides)).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # experts 10x the default init scale, so that experts differ clearly from each other
        for pname, p in model.named_parameters():
            if pname.endswith(("gate_up_proj", "down_proj")) and p.dim() == 3:
                p.normal_(0, 0.2, generator=generator)
            elif pname.endswith(("proj_bias", "router.bias")):
                p.normal_(0, 0.1, generator=generator)
        for bname, b in model.named_buffers():  # a score-correction bias that changes the choice
            if bname.endswith("e_score_correction_bias"):
                b.normal_(0, 0.05, generator=generator)
    return model


def save_tiny(name: str, folder: Path, tokenizer=None, **overrides) -> Path:
    """``tiny(name)`` saved with ``save_pretrained`` (safetensors) into ``folder``, with ``tokenizer`` if given."""
    tiny(name, **overrides).save_pretrained(folder, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder
