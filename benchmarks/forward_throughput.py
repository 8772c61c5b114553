"""Forward throughput of the zoo models (eval mode, no grad), side by side in one run:

* plain Hugging Face forward in fp32 (the reference),
* the same under bf16 autocast,
* fp32 with romer's routing recorder on every router (counts, mass, streamed logit percentiles, per-token
  top-k; what `romer run` and `romer stats` use).

Each configuration runs the same windows of the test split; repetitions are interleaved and the median is
reported, so background load hits every column alike. ``--update-readme`` rewrites the table in
benchmarks/README.md between its markers.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import time
from pathlib import Path

import torch

from romer.data import load_text
from romer.eval import token_windows
from romer.models import load_model, zoo_names
from romer.routing import record_routing

README = Path(__file__).resolve().parent / "README.md"
BEGIN, END = "<!-- forward-throughput:begin -->", "<!-- forward-throughput:end -->"


def _modes(model):
    return {
        "fp32": contextlib.nullcontext,
        "bf16 autocast": lambda: torch.autocast("cpu", dtype=torch.bfloat16),
        "fp32 + routing recorder": lambda: record_routing(model, keep_topk=True),
    }


@torch.no_grad()
def measure(name: str, windows: int, batch_size: int, window: int, repeats: int) -> dict[str, float]:
    model, tokenizer = load_model(name)
    ids = tokenizer.backend_tokenizer.encode(load_text("test"), add_special_tokens=False).ids
    batch = torch.stack(token_windows(ids, window, tokenizer.bos_token_id)[:windows])
    modes = _modes(model)
    seconds: dict[str, list[float]] = {mode: [] for mode in modes}
    for _ in range(repeats + 1):  # the first round warms up and is discarded
        for mode, context in modes.items():
            started = time.perf_counter()
            with context():
                for start in range(0, len(batch), batch_size):
                    model(input_ids=batch[start : start + batch_size])
            seconds[mode].append(time.perf_counter() - started)
    return {mode: batch.numel() / statistics.median(s[1:]) for mode, s in seconds.items()}


def table(results: dict[str, dict[str, float]], args) -> str:
    modes = list(next(iter(results.values())))
    lines = [
        f"| model | {' | '.join(f'{m} (tok/s)' for m in modes)} | bf16 / fp32 | recorder overhead |",
        "|---|" + "---|" * (len(modes) + 2),
    ]
    for name, r in results.items():
        cells = " | ".join(f"{r[m]:,.0f}" for m in modes)
        lines.append(f"| {name} | {cells} | {r['bf16 autocast'] / r['fp32']:.2f} | "
                     f"{100 * (r['fp32'] / r['fp32 + routing recorder'] - 1):+.1f} % |")
    lines.append("")
    lines.append(f"{args.windows} windows × {args.window} tokens, batch {args.batch_size}, median of {args.repeats} "
                 f"interleaved repeats; torch {torch.__version__}, {torch.get_num_threads()} threads, "
                 f"{platform.machine()}. Regenerate: `make bench`.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=16)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--update-readme", action="store_true")
    args = parser.parse_args()
    results = {name: measure(name, args.windows, args.batch_size, args.window, args.repeats) for name in zoo_names()}
    text = table(results, args)
    print(text)
    if args.update_readme:
        from romer.io import replace_between_markers

        replace_between_markers(README, BEGIN, END, text)


if __name__ == "__main__":
    main()
