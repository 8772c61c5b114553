"""Your own MoE checkpoint on a simulated analog chip: load it, program it onto a chip, score it clean and on
the chip.

    python examples/own_model.py [FOLDER] [--quick] [--device cuda]

FOLDER is a local Hugging Face MoE folder (safetensors; OLMoE, Qwen-MoE, Qwen3-MoE, Mixtral, DeepSeek-V2/V3 and
GPT-OSS layouts). Without it the script first builds a tiny random-weight Qwen3-MoE folder (2 layers, 8 experts,
the bundled tokenizer) in a temporary directory, to show the steps: random weights predict nothing, so its
perplexity sits near the vocabulary size (8192) and the chip barely moves it; a trained model's does not.

Time on a 2-core CPU, random model: about 10 s, --quick too (mostly importing torch and transformers).
A real checkpoint costs what its forward passes cost: 16,384 tokens (--quick: 256).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import romer


def build_random_moe(folder: Path) -> Path:
    """A tiny random-weight Qwen3-MoE saved as a Hugging Face folder (safetensors + the bundled tokenizer)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from romer.data import load_tokenizer

    tokenizer = load_tokenizer()
    config = AutoConfig.for_model(
        "qwen3_moe", vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, intermediate_size=128, moe_intermediate_size=32, num_experts=8,
        num_experts_per_tok=2, max_position_embeddings=1024, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)  # the same random model every run
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", help="your MoE checkpoint folder (default: build a random one)")
    parser.add_argument("--quick", action="store_true", help="256 tokens instead of 16,384")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--seed", type=int, default=0, help="chip seed")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.folder or build_random_moe(Path(tmp) / "random-qwen3-moe")
        model, tokenizer = romer.load(folder, device=args.device)
        chip = romer.default_chip(seed=args.seed)  # IBM PCM, t = 1 day, noise ×10, MoE blocks analog
        spec = romer.EvalSpec(split="test", max_tokens=256 if args.quick else 16384,
                              window=128 if args.quick else 512)
        clean = romer.evaluate(model, tokenizer, spec)
        with romer.program(model, chip) as programmed:
            noisy = romer.evaluate(model, tokenizer, spec)
        name = Path(folder).name if args.folder else "random-weight qwen3_moe"
        print(f"{name}: {len(programmed.names)} analog tensors on PCM ×10 (chip seed {chip.seed})")
        print(f"PPL clean {clean.ppl:.2f}, on the chip {noisy.ppl:.2f} ({spec.label})")


if __name__ == "__main__":
    main()
