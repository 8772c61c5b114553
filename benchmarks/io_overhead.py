"""The IO model's evaluation cost: perplexity of the same windows on the default chip with the ideal periphery
(exact inputs and outputs, today's path) and with each IO preset (DAC, output noise, ADC, tiles on every analog
matmul; ``romer.noise.io``), for each placement.

Repetitions are interleaved (the order rotates every round) and each round's time ratio IO / ideal is taken, so
background load on a shared machine hits both alike; rounds continue until every 95 % interval (Student t over the
rounds' log ratios) is narrower than ±``--ci`` %, or ``--max-repeats``. Issue goal: ≤ 1.5× the ideal path on CPU.
``--update-readme`` rewrites the table in benchmarks/README.md between its markers. ``--profile IO PLACEMENT``
instead prints the share of each of the slowest torch operators in one perplexity pass on that chip
(``torch.profiler``), e.g. ``--profile hwa-standard all``: where the IO path's time goes.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import replace

import torch
from forward_throughput import interval, publish

from romer.eval import perplexity
from romer.eval.spec import EvalSpec
from romer.models import load_model
from romer.noise.chip import default_chip, program
from romer.noise.io import get_io

BEGIN, END = "<!-- io-overhead:begin -->", "<!-- io-overhead:end -->"


@torch.no_grad()
def measure(name: str, ios: list[str], placements: list[str], tokens: int, window: int, batch_size: int,
            ci: float, min_repeats: int, max_repeats: int) -> dict:
    model, tokenizer = load_model(name)
    text = EvalSpec(max_tokens=tokens).text(tokenizer)
    out = {}
    for placement in placements:
        chips = {io: replace(default_chip(0), placement=placement, io=get_io(io)) for io in ["ideal", *ios]}
        seconds: dict[str, list[float]] = {io: [] for io in chips}
        names = list(chips)
        for round_ in range(max_repeats + 1):  # round 0 warms up and is discarded
            for io in names[round_ % len(names):] + names[: round_ % len(names)]:
                with program(model, chips[io]):
                    started = time.perf_counter()
                    perplexity(model, tokenizer, text, window=window, batch_size=batch_size)
                    seconds[io].append(time.perf_counter() - started)
            print(f"{name} {placement} round {round_}: " + ", ".join(f"{io} {s[-1]:.2f} s" for io, s in seconds.items()),
                  file=sys.stderr, flush=True)
            if round_ == 0:
                continue
            ratios = {io: interval([math.log(a / b) for a, b in zip(seconds[io][1:], seconds["ideal"][1:])])
                      for io in ios}
            if round_ >= min_repeats and all(half < ci / 100 for _, half in ratios.values()):
                break
        out[placement] = {"seconds": {io: statistics.median(s[1:]) for io, s in seconds.items()},
                          "ratios": ratios, "rounds": len(seconds["ideal"]) - 1}
    return out


@torch.no_grad()
def profile_shares(name: str, io: str, placement: str, tokens: int, window: int, batch_size: int,
                   rows: int = 8) -> list[tuple[str, float]]:
    """(operator, share of the profiled CPU time) for the ``rows`` slowest operators of one perplexity pass on the
    default chip with ``io`` at ``placement`` (after one warm-up pass)."""
    from torch.profiler import ProfilerActivity, profile

    model, tokenizer = load_model(name)
    text = EvalSpec(max_tokens=tokens).text(tokenizer)
    with program(model, replace(default_chip(0), placement=placement, io=get_io(io))):
        perplexity(model, tokenizer, text, window=window, batch_size=batch_size)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            perplexity(model, tokenizer, text, window=window, batch_size=batch_size)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return [(e.key, e.self_cpu_time_total / total) for e in events[:rows]]


def table(results: dict[str, dict], args) -> str:
    lines = ["| model | placement | ideal IO (s) | " + " | ".join(f"{io} (s) | {io} / ideal (95 % CI)"
                                                            for io in args.io) + " | rounds |",
             "|---|---|---|" + "---|---|" * len(args.io) + "---|"]
    for name, per_placement in results.items():
        for placement, r in per_placement.items():
            cells = [f"{r['seconds'][io]:.2f} | {r['ratios'][io][0]:.2f}× ± {r['ratios'][io][1] * 100:.0f} %"
                     for io in args.io]
            lines.append(f"| {name} | {placement} | {r['seconds']['ideal']:.2f} | " + " | ".join(cells)
                         + f" | {r['rounds']} |")
    lines += ["", f"Perplexity of the first {args.tokens} tokens of the bundled text in windows of {args.window}, "
              f"batch {args.batch_size}, on the default chip (PCM ×10, t = 1 day); seconds are medians over the "
              f"rounds, ratios geometric means of per-round ratios; torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads, {platform.machine()}, load average {os.getloadavg()[0]:.1f} at "
              f"the end. Regenerate: `python benchmarks/io_overhead.py --models {' '.join(args.models)} --tokens "
              f"{args.tokens} --min-repeats {args.min_repeats} --max-repeats {args.max_repeats} --update-readme`."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["olmoe-tiny"])
    parser.add_argument("--io", nargs="*", default=["aihwkit-default", "hwa-standard"])
    parser.add_argument("--placements", nargs="*", default=["moe", "all"])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--ci", type=float, default=5.0, help="stop when every 95 %% interval is within ± this %%")
    parser.add_argument("--min-repeats", type=int, default=3)
    parser.add_argument("--max-repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--update-readme", action="store_true", help="rewrite the io-overhead table in README.md")
    parser.add_argument("--profile", nargs=2, metavar=("IO", "PLACEMENT"),
                        help="print where one pass's time goes instead of timing (e.g. hwa-standard all)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.profile:
        for name in args.models:
            for op, share in profile_shares(name, *args.profile, args.tokens, args.window, args.batch_size):
                print(f"{name} {' '.join(args.profile)}: {op:<50} {100 * share:5.1f} %")
        return
    results = {name: measure(name, args.io, args.placements, args.tokens, args.window, args.batch_size, args.ci,
                             args.min_repeats, args.max_repeats) for name in args.models}
    publish(table(results, args), args.update_readme, BEGIN, END)


if __name__ == "__main__":
    main()
