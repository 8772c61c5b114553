"""Overhead per served token of the streaming routing monitor (romer.calibrate.monitor), side by side in one run.

    python benchmarks/monitor_overhead.py [--model olmoe-tiny] [--windows 4] [--rounds 10]

On the same windows of the test split: the plain forward of the model programmed on the default chip with
offline P1 installed as a plan (the reference), and the same forward with the monitor routing instead (it
sketches the noisy logits, routes with the same P1 and counts the experts). Rounds alternate the two (order
rotating), each round's time ratio is taken, and the geometric mean with a 95 % Student-t interval over rounds
is printed, with the per-token overhead in µs and the monitor's state in bytes; one refit is timed too. Prints
only; docs/in-service.md quotes the numbers with this command.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch


def main(argv=None) -> int:
    import romer
    from romer.calibrate import apply
    from romer.calibrate.monitor import MonitorConfig, RoutingMonitor, reference_percentiles
    from romer.calibrate.calibrator import observe
    from romer.calibrate.plan import Plan
    from romer.estimators import t_quantile
    from romer.eval import token_windows

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="olmoe-tiny")
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args(argv)
    model, tokenizer = romer.load(args.model)
    text = romer.EvalSpec(split="test", max_tokens=args.windows * 511).text(tokenizer)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    batch = torch.stack([w for w in token_windows(ids, 512, tokenizer.bos_token_id) if len(w) == 512])
    chip = romer.default_chip()
    plan = romer.calibrate(model, tokenizer, chip, sequences=4)
    reference = reference_percentiles(observe(model, batch, 8).record, (1.0, 50.0, 99.0))
    tokens = batch.numel()

    def plain() -> float:
        with apply(model, chip, plan) as _:
            start = time.perf_counter()
            with torch.no_grad():
                model(input_ids=batch)
            return time.perf_counter() - start

    def monitored() -> float:
        with apply(model, chip, Plan.none(chip)), RoutingMonitor(model, reference, MonitorConfig(),
                                                                 plan.router) as monitor:
            start = time.perf_counter()
            with torch.no_grad():
                model(input_ids=batch)
            monitor.end_window()
            elapsed = time.perf_counter() - start
            state = monitor.state_bytes()
            begin = time.perf_counter()
            monitor.refit()
            timings["refit"].append(time.perf_counter() - begin)
            timings["state"] = state
            return elapsed

    timings = {"refit": [], "state": 0}
    ratios, base_times = [], []
    for r in range(args.rounds):
        if r % 2:
            m, p = monitored(), plain()
        else:
            p, m = plain(), monitored()
        ratios.append(math.log(m / p))
        base_times.append(p)
    mean = statistics.fmean(ratios)
    half = t_quantile(0.975, len(ratios) - 1) * statistics.stdev(ratios) / math.sqrt(len(ratios))
    base = statistics.median(base_times)
    print(f"{args.model}: {tokens} tokens per forward, {args.rounds} rounds, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"monitor / plain forward: {math.exp(mean):.3f} (95 % CI {math.exp(mean - half):.3f} … "
          f"{math.exp(mean + half):.3f}); overhead {(math.exp(mean) - 1) * base / tokens * 1e6:.1f} µs per token "
          f"(plain {base / tokens * 1e6:.1f} µs per token)")
    print(f"monitor state: {timings['state'] / 2**20:.2f} MiB; one refit: {statistics.median(timings['refit']) * 1e3:.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
