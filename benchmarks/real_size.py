"""Real size on this machine: an OLMoE-1B-7B-shaped checkpoint (random weights) through the whole pipeline.

Builds the published OLMoE-1B-7B shape (16 layers, hidden 2048, 16 heads, 64 experts, top-8, expert width 1024,
vocab 50304, no shared expert, norm_topk_prob false; ≈ 6.9B parameters, ≈ 13.8 GB in bf16) with seeded random
weights into a temporary folder (never committed; --folder, default /tmp/romer-olmoe-1b-7b), then, in a fresh
process on the CPU in bf16: load → program (PCM default chip, moe placement) → routing statistics on the eval
windows → calibrate (ROMER, a few calibration windows) → evaluate with the plan. Records load time,
programming time, peak RSS relative to the bf16 model, calibration time per window, eval tokens/s; writes
benchmarks/real_size.json and the table in benchmarks/README.md; extrapolates to 14–16B models and an 80 GB GPU.

Usage: python benchmarks/real_size.py [--folder DIR] [--calibration-windows 2] [--eval-windows 2] [--keep]
(run it with nohup: on 2 cores it takes an hour or more).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
README = HERE / "README.md"
RESULT = HERE / "real_size.json"
BEGIN, END = "<!-- real-size:begin -->", "<!-- real-size:end -->"
OLMOE_1B_7B = dict(vocab_size=50304, hidden_size=2048, intermediate_size=1024, num_hidden_layers=16,
                   num_attention_heads=16, num_key_value_heads=16, num_experts=64, num_experts_per_tok=8,
                   norm_topk_prob=False, max_position_embeddings=4096, tie_word_embeddings=False,
                   pad_token_id=1, bos_token_id=None, eos_token_id=50279)
TOKENIZER_FROM = Path(__file__).resolve().parents[1] / "romer" / "models" / "zoo" / "olmoe-tiny"


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _peak_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the present RSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


SMOKE = dict(hidden_size=256, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=4, num_experts=16, num_experts_per_tok=4, vocab_size=8192)


def _shape(smoke: bool, layers: int | None = None) -> dict:
    """The published shape (``SMOKE``: a small one of the same family; ``layers``: that many decoder layers of
    the chosen width, e.g. 4 real-size layers to find where memory goes in minutes rather than an hour)."""
    return {**OLMOE_1B_7B, **(SMOKE if smoke else {}), **({"num_hidden_layers": layers} if layers else {})}


class Stages:
    """Resident memory stage by stage: ``mark(name)`` records the RSS now and the peak (VmHWM) since the previous
    mark, then resets the peak mark, so each stage's own peak is seen (``stages_mb`` in the result)."""

    def __init__(self):
        self.rows: dict[str, dict[str, float]] = {}
        self.resets = True  # the first mark's peak counts from the process start


    def mark(self, name: str) -> None:
        self.rows[name] = {"rss": round(_rss_mb(), 1), "peak": round(_peak_mb(), 1)}
        print(f"{name}: rss {self.rows[name]['rss']:.0f} MB, peak {self.rows[name]['peak']:.0f} MB",
              file=sys.stderr, flush=True)
        self.resets = _reset_peak() and self.resets


def build(folder: Path, smoke: bool = False, shard_bytes: int = 2 * 10**9, layers: int | None = None) -> dict:
    """Write the random-weight checkpoint without ever holding the model: the shapes come from a model built on
    the meta device; each tensor is drawn from its own seed (bf16) and written in safetensors shards of
    ≈ ``shard_bytes`` (the model's own fused expert keys, which ``from_pretrained`` reads as they are)."""
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("olmoe", **_shape(smoke, layers))
    started = time.perf_counter()
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(folder)
    shapes = [(name, tuple(p.shape)) for name, p in model.named_parameters()]
    shard: dict[str, torch.Tensor] = {}
    weight_map: dict[str, str] = {}
    files: list[str] = []

    def flush() -> None:
        if shard:
            files.append(f"model-{len(files) + 1:05d}.safetensors")
            save_file(shard, folder / files[-1], metadata={"format": "pt"})
            weight_map.update({k: files[-1] for k in shard})
            shard.clear()

    for name, shape in shapes:
        seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little") & (2**63 - 1)
        tensor = torch.ones(shape, dtype=torch.bfloat16) if len(shape) == 1 else \
            torch.empty(shape, dtype=torch.bfloat16).normal_(0.0, 0.02, generator=torch.Generator().manual_seed(seed))
        shard[name] = tensor
        if sum(t.numel() * 2 for t in shard.values()) >= shard_bytes:
            flush()
    flush()
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TOKENIZER_FROM / name, folder / name)
    params = sum(math.prod(shape) for _, shape in shapes)
    return {"params": params, "bytes_bf16": params * 2, "shards": len(files),
            "build_s": time.perf_counter() - started}


def pipeline(folder: Path, calibration_windows: int, eval_windows: int, window: int) -> dict:
    """Every stage on the CPU in bf16, timed, with its resident memory (``Stages``)."""
    from romer.calibrate import Calibrator, apply
    from romer.calibrate.calibrator import observe
    from romer.calibrate.config import MethodConfig
    from romer.eval.spec import EvalSpec
    from romer.eval import perplexity
    from romer.models.loading import load_model
    from romer.noise.chip import default_chip, program
    from romer.routing import record_routing
    from romer.routing.stats import coefficient_of_variation

    out: dict = {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine()}
    started = time.perf_counter()
    model, tokenizer = load_model(folder, dtype=torch.bfloat16, device="cpu")
    out["load_s"] = time.perf_counter() - started
    out["params"] = sum(p.numel() for p in model.parameters())
    out["model_mb"] = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    stages = Stages()  # the peak since the process began: the load (and imports)
    stages.mark("load")
    out["rss_loaded_mb"], out["peak_load_mb"] = stages.rows["load"]["rss"], stages.rows["load"]["peak"]
    out["peak_reset"] = stages.resets

    chip = default_chip(0)
    method = MethodConfig(name="romer", kind="romer",
                          calibration={"sequences": calibration_windows, "window": window, "batch_size": 1})
    calibrator = Calibrator(method)
    windows = calibrator.windows(tokenizer)
    eval_text = EvalSpec(order="source", max_tokens=eval_windows * (window - 1)).text(tokenizer)

    started = time.perf_counter()
    handle = program(model, chip)
    out["program_s"] = time.perf_counter() - started
    out["program_draws"] = handle.draws
    out["analog_params"] = sum(model.get_parameter(n).numel() for n in handle.names)
    stages.mark("program")
    started = time.perf_counter()
    with record_routing(model) as record:
        noisy = perplexity(model, tokenizer, eval_text, window=window, batch_size=1)
    out["stats_eval_s"] = time.perf_counter() - started
    out["eval_tokens"] = noisy.tokens
    out["noisy_eval_tok_s"] = noisy.tokens / out["stats_eval_s"]
    out["cv_noisy"] = sum(coefficient_of_variation(layer.frequency) for layer in record) / len(record.layers)
    stages.mark("stats eval")
    started = time.perf_counter()
    noisy_obs = observe(model, windows, 1, keep_logits=True)
    out["noisy_observe_s"] = time.perf_counter() - started
    stages.mark("noisy observe")
    started = time.perf_counter()
    handle.restore()
    out["restore_s"] = time.perf_counter() - started
    stages.mark("restore")
    started = time.perf_counter()
    clean_obs = observe(model, windows, 1, keep_logits=True)
    out["clean_observe_s"] = time.perf_counter() - started
    stages.mark("clean observe")
    started = time.perf_counter()
    plan = calibrator.fit(model, windows, chip, clean=clean_obs, noisy=noisy_obs)
    out["fit_s"] = time.perf_counter() - started
    stages.mark("fit")
    out["calibration_windows"] = calibration_windows
    out["calibration_s_per_window"] = (out["noisy_observe_s"] + out["clean_observe_s"] + out["fit_s"]) / \
        calibration_windows
    started = time.perf_counter()
    with apply(model, chip, plan):
        applied_s = time.perf_counter() - started
        stages.mark("apply")
        scored = perplexity(model, tokenizer, eval_text, window=window, batch_size=1)
        eval_s = time.perf_counter() - started - applied_s
        stages.mark("eval")
    out["apply_s"], out["eval_s"] = applied_s, eval_s
    out["eval_tok_s"] = scored.tokens / eval_s
    out["ppl_noisy"], out["ppl_romer"] = noisy.ppl, scored.ppl
    stages.mark("restore after eval")
    out["stages_mb"] = stages.rows
    out["peak_after_load_mb"] = max(row["peak"] for name, row in stages.rows.items() if name != "load")
    out["peak_over_model"] = out["peak_after_load_mb"] / out["model_mb"]
    out["peak_load_over_model"] = out["peak_load_mb"] / out["model_mb"]
    return out


def _run_child(*args: str) -> dict:
    # stderr goes straight to ours (stage by stage, live): a run killed midway still shows how far it got
    done = subprocess.run([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{args[0]} failed (exit {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def extrapolate(r: dict) -> list[str]:
    """Scale the measured per-parameter rates to 14–16B models and an 80 GB GPU (formulas in the text)."""
    per_param_program = r["program_s"] / r["analog_params"]
    lines = []
    for name, total, analog, active in (("deepseek-moe-16b", 16.4e9, 15.3e9, 2.8e9),
                                        ("Qwen1.5-MoE-A2.7B (14.3B)", 14.3e9, 12.9e9, 2.7e9)):
        gb = total * 2 / 1e9
        lines.append(f"| {name} | {total / 1e9:.1f}B | {gb:.1f} GB | {gb * r['peak_over_model']:.1f} GB "
                     f"(RAM ×{r['peak_over_model']:.2f}) | {per_param_program * analog / 60:.0f} min | "
                     f"{r['eval_tok_s'] * r['active_params'] / active:.1f} tok/s | "
                     f"{'fits' if gb * 1.05 + 4 < 80 else 'does not fit'} an 80 GB GPU in bf16 "
                     f"({gb:.0f} GB + activations) |")
    return lines


def table(r: dict) -> str:
    gb = r["model_mb"] * 2**20 / 1e9
    lines = [
        "| step | measured |", "|---|---|",
        f"| checkpoint | {r['params'] / 1e9:.2f}B parameters, {gb:.1f} GB bf16 ({r['analog_params'] / 1e9:.2f}B analog, "
        f"moe placement), random weights |",
        f"| load (safetensors → bf16 CPU model) | {r['load_s']:.0f} s, peak RSS {r['peak_load_mb'] / 1024:.1f} GiB "
        f"(×{r['peak_load_over_model']:.2f} of the model) |",
        f"| program (default chip: PCM ×10, t = 1 day) | {r['program_s']:.0f} s, {r['program_draws'] / 1e9:.1f}G "
        f"normal draws ({r['program_draws'] / r['program_s'] / 1e6:.0f} M/s) |",
        f"| restore (temp file) | {r['restore_s']:.0f} s |",
        f"| routing stats + noisy eval | {r['noisy_eval_tok_s']:.1f} tok/s ({r['eval_tokens']} tokens) |",
        f"| calibrate (ROMER, {r['calibration_windows']} windows of {r['window']}) | "
        f"{r['calibration_s_per_window']:.0f} s per window (clean + noisy observation + fit) |",
        f"| eval with the plan | {r['eval_tok_s']:.1f} tok/s (apply {r['apply_s']:.0f} s) |",
        f"| peak RSS after loading (program → calibrate → eval) | {r['peak_after_load_mb'] / 1024:.1f} GiB = "
        f"**×{r['peak_over_model']:.2f}** of the bf16 model (goal ≤ ×1.15) |",
        "",
        "Extrapolated (programming time ∝ analog parameters, eval tokens/s ∝ 1 / active parameters, peak ∝ model):",
        "", "| model | params | bf16 | CPU peak RSS | program (this CPU) | eval (this CPU) | 80 GB GPU |",
        "|---|---|---|---|---|---|---|", *extrapolate(r), "",
        f"torch {r['torch']}, {r['threads']} threads, {r['machine']}, shared machine. Regenerate: "
        "`python benchmarks/real_size.py --update-readme`.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=Path("/tmp/romer-olmoe-1b-7b"))
    parser.add_argument("--calibration-windows", type=int, default=2)
    parser.add_argument("--eval-windows", type=int, default=2)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--keep", action="store_true", help="Keep the checkpoint folder afterwards.")
    parser.add_argument("--update-readme", action="store_true",
                        help="rewrite the real-size table in benchmarks/README.md")
    parser.add_argument("--smoke", action="store_true", help="A small model of the same family (checks the script).")
    parser.add_argument("--layers", type=int, help="Build this many decoder layers of the chosen width (default: "
                        "the published 16; e.g. 4 real-size layers find where memory goes in minutes).")
    parser.add_argument("--child", choices=("build", "pipeline"))
    args = parser.parse_args()
    if args.child == "build":
        print(json.dumps(build(args.folder, args.smoke, layers=args.layers)))
        return
    if args.child == "pipeline":
        print(json.dumps(pipeline(args.folder, args.calibration_windows, args.eval_windows, args.window)))
        return
    built = None
    if not (args.folder / "config.json").exists():
        print(f"building {args.folder} …", file=sys.stderr, flush=True)
        built = _run_child("--child", "build", "--folder", str(args.folder), *(["--smoke"] if args.smoke else []),
                           *(["--layers", str(args.layers)] if args.layers else []))
    print("running the pipeline …", file=sys.stderr, flush=True)
    result = _run_child("--child", "pipeline", "--folder", str(args.folder), "--calibration-windows",
                        str(args.calibration_windows), "--eval-windows", str(args.eval_windows),
                        "--window", str(args.window))
    result.update(window=args.window, build=built)
    result["active_params"] = _active_params(result, _shape(args.smoke, args.layers))
    from romer.io import replace_between_markers, write_text_atomic

    if not args.smoke and not args.layers:
        write_text_atomic(RESULT, json.dumps(result, indent=2) + "\n")
    text = table(result)
    print(text)
    if args.update_readme:
        replace_between_markers(README, BEGIN, END, text)
    if not args.keep:
        shutil.rmtree(args.folder, ignore_errors=True)


def _active_params(r: dict, c: dict) -> int:
    """Parameters one token uses: all but the (E − k)/E unused share of the routed experts."""
    experts = c["num_hidden_layers"] * c["num_experts"] * 3 * c["hidden_size"] * c["intermediate_size"]
    return int(r["params"] - experts * (1 - c["num_experts_per_tok"] / c["num_experts"]))


if __name__ == "__main__":
    main()
