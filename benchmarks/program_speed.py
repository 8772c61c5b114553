"""Programming a model onto a PCM chip (programming noise + drift to t = 1 day + read noise): romer vs aihwkit.

Each measurement runs in its own process, so its peak RSS is its own. aihwkit's analog wrappers replace
``nn.Linear`` modules only: fused expert tensors and OLMoE's router are not ``nn.Linear``, so the side-by-side
runs on what both can program, the attention projections of every decoder layer. romer is also timed on its
full placements (``moe`` and ``all``). aihwkit is optional: without it only romer's rows are measured.
Beside each romer row: the random-number limit, torch.randn timed for the same number of normal draws in the
same process right after programming (programming rate / that rate is the issue's yardstick, goal ≥ 0.8).

Usage: python benchmarks/program_speed.py [--update-readme]   (rewrites the table in benchmarks/README.md)
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

README = Path(__file__).resolve().parent / "README.md"
BEGIN, END = "<!-- program-speed:begin -->", "<!-- program-speed:end -->"
T_INFERENCE = 86400.0
SYNTHETIC = dict(vocab_size=8192, hidden_size=1024, num_hidden_layers=4, num_attention_heads=16,
                 num_key_value_heads=16, intermediate_size=256, num_experts=64, num_experts_per_tok=8,
                 max_position_embeddings=1024)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _load(model_name: str):
    if model_name == "synthetic-200m":
        from transformers import AutoConfig, AutoModelForCausalLM

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return AutoModelForCausalLM.from_config(AutoConfig.for_model("olmoe", **SYNTHETIC)).eval()
    from romer.models import load_model

    return load_model(model_name)[0]


def _romer(model, placement: str) -> int:
    """Program; the number of normal draws it took."""
    from romer.noise.chip import Chip, program

    return program(model, Chip.from_options("pcm", placement=placement, t_inference=T_INFERENCE, seed=0)).draws


def _rng_limit(draws: int) -> float:
    """Seconds torch.randn takes for ``draws`` float32 normals on the CPU, same process and thread count, in
    blocks of 2^22 from one generator: the random-number limit of programming."""
    generator, left = torch.Generator().manual_seed(0), draws
    started = time.perf_counter()
    while left > 0:
        torch.randn(min(left, 1 << 22), generator=generator)
        left -= 1 << 22
    return time.perf_counter() - started


def _aihwkit(model, placement: str) -> int:
    from aihwkit.inference.compensation.drift import GlobalDriftCompensation
    from aihwkit.inference.noise.pcm import PCMLikeNoiseModel
    from aihwkit.nn.conversion import convert_to_analog
    from aihwkit.simulator.configs import TorchInferenceRPUConfig

    assert placement == "attention", "aihwkit converts nn.Linear modules only"
    rpu = TorchInferenceRPUConfig()
    rpu.noise_model = PCMLikeNoiseModel(g_max=25.0)
    rpu.drift_compensation = GlobalDriftCompensation()
    for layer in model.model.layers:
        layer.self_attn = convert_to_analog(layer.self_attn, rpu)  # the documented, copying default
        layer.self_attn.eval()
        layer.self_attn.program_analog_weights()
        layer.self_attn.drift_analog_weights(T_INFERENCE)
    return 0


def worker(tool: str, model_name: str, placement: str) -> dict:
    model = _load(model_name)
    params = sum(p.numel() for p in model.parameters())
    model_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    loaded_rss = _current_rss_mb()
    started = time.perf_counter()
    with torch.no_grad():
        draws = (_romer if tool == "romer" else _aihwkit)(model, placement)
    seconds = time.perf_counter() - started
    peak = _peak_rss_mb()
    limit = _rng_limit(draws) if draws else None
    return {"tool": tool, "model": model_name, "placement": placement, "params": params, "model_mb": model_mb, "seconds": seconds,
            "loaded_rss_mb": loaded_rss, "peak_rss_mb": peak, "draws": draws, "rng_limit_s": limit}


def run_worker(tool: str, model_name: str, placement: str) -> dict | None:
    cmd = [sys.executable, __file__, "--worker", tool, model_name, placement]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"{tool} {model_name} {placement} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    def key(r):
        return r["model"], r["placement"]

    aihwkit = {key(r): r for r in rows if r["tool"] == "aihwkit"}
    lines = ["| model (params, fp32 size) | analog part | romer time | normal draws | torch.randn, same draws "
             "| rate / RNG limit | aihwkit time | aihwkit / romer time | romer extra peak RSS | aihwkit extra peak RSS |",
             "|---|---|---|---|---|---|---|---|---|---|"]

    def extra(r: dict) -> str:
        grown = r["peak_rss_mb"] - r["loaded_rss_mb"]
        return f"{grown:.0f} MB (×{1 + grown / r['model_mb']:.2f} of the model)"

    for r in (r for r in rows if r["tool"] == "romer"):
        a = aihwkit.get(key(r))
        their_time = f"{a['seconds']:.2f} s" if a else "—"
        speedup = f"×{a['seconds'] / r['seconds']:.1f}" if a else "—"
        limit = r.get("rng_limit_s")
        lines.append(f"| {r['model']} ({r['params'] / 1e6:.0f}M, {r['model_mb']:.0f} MB) | {r['placement']} "
                     f"| {r['seconds']:.2f} s | {r['draws'] / 1e6:.0f}M | {limit:.2f} s | **{limit / r['seconds']:.2f}** "
                     f"| {their_time} | {speedup} | {extra(r)} | {extra(a) if a else '—'} |")
    lines += ["", "Rate / RNG limit = (draws / romer time) / (draws / torch.randn time) for the same number of float32 "
                  "normal draws, measured right after programming in the same process (goal ≥ 0.8).",
              "Extra peak RSS = the process's peak RSS minus its RSS with the clean model loaded; ×k = (model + extra) "
                  "/ model, the issue's goal being ≤ ×1.3.",
              f"PCM, t = 1 day, fp32, one process per row; torch {torch.__version__}, "
                  f"{torch.get_num_threads()} threads, {platform.machine()}. Regenerate: `make bench`."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", nargs=3, metavar=("TOOL", "MODEL", "PLACEMENT"))
    parser.add_argument("--update-readme", action="store_true",
                        help="rewrite the program-speed table in benchmarks/README.md")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker)))
        return
    try:
        import aihwkit  # noqa: F401

        tools = ("romer", "aihwkit")
    except ImportError:
        tools = ("romer",)
    rows = []
    for model_name in ("olmoe-tiny", "synthetic-200m"):
        for placement in ("attention", "moe", "all"):
            for tool in tools if placement == "attention" else ("romer",):
                row = run_worker(tool, model_name, placement)
                if row:
                    rows.append(row)
    text = table(rows)
    print(text)
    if args.update_readme:
        from romer.io import replace_between_markers

        replace_between_markers(README, BEGIN, END, text)


if __name__ == "__main__":
    main()
