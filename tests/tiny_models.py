"""Tiny random MoE models of every supported family, shared by the tests."""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

E, K, H, VOCAB = 8, 2, 32, 64
COMMON = dict(vocab_size=VOCAB, hidden_size=H, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4,
              intermediate_size=48, num_experts_per_tok=K, max_position_embeddings=64, tie_word_embeddings=False)
MLA = dict(q_lora_rank=None, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8, head_dim=8,
           moe_intermediate_size=16, n_routed_experts=E, n_shared_experts=2, first_k_dense_replace=1)
CONFIGS = {
    "olmoe": dict(num_experts=E),
    "qwen2_moe": dict(num_experts=E, moe_intermediate_size=16, shared_expert_intermediate_size=24,
                      norm_topk_prob=False),
    "qwen3_moe": dict(num_experts=E, moe_intermediate_size=16, head_dim=8, norm_topk_prob=True),
    "mixtral": dict(num_local_experts=E),
    "deepseek_v2": dict(MLA, topk_method="greedy", routed_scaling_factor=1.0),
    "deepseek_v3": dict(MLA, n_group=1, topk_group=1, routed_scaling_factor=2.5, norm_topk_prob=True),
}


def tiny(model_type: str, **overrides) -> nn.Module:
    """A tiny random model of ``model_type``; seeded, and the global RNG is left as it was."""
    config = AutoConfig.for_model(model_type, **{**COMMON, **CONFIGS[model_type], **overrides})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # experts 10x the default init scale, so that experts differ clearly from each other
        for name, p in model.named_parameters():
            if name.endswith(("gate_up_proj", "down_proj")) and p.dim() == 3:
                p.normal_(0, 0.2, generator=generator)
    return model
