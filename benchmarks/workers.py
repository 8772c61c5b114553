"""Threads or processes? The same evaluations in one process with torch's intra-op threads, and split over
single-threaded worker processes running at the same time.

    python benchmarks/workers.py [--evaluations 4] [--workers 2] [--model olmoe-tiny]

Each evaluation is one ``romer run`` row's work: perplexity of the first 16,384 test tokens under the routing
recorder. The parent starts the workers together and waits for each to exit; the wall time of the whole batch is
compared (the model load is outside the timed part in both). docs/experiments.md ("What makes each forward fast") and benchmarks/README.md quote the result.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch


def evaluate(model_name: str, evaluations: int, threads: int) -> float:
    """Seconds for ``evaluations`` evaluations in this process with ``threads`` torch threads."""
    from romer.eval import perplexity
    from romer.eval.spec import EvalSpec
    from romer.models import load_model
    from romer.routing import record_routing

    torch.set_num_threads(threads)
    model, tokenizer = load_model(model_name)
    text = EvalSpec(max_tokens=16384).text(tokenizer)
    with torch.no_grad(), record_routing(model):
        perplexity(model, tokenizer, text)  # warm-up
    started = time.perf_counter()
    for _ in range(evaluations):
        with torch.no_grad(), record_routing(model):
            perplexity(model, tokenizer, text)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--evaluations", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--model", default="olmoe-tiny")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:  # one worker: its share of the evaluations on one thread
        print(json.dumps(evaluate(args.model, args.child, 1)))
        return 0
    threaded = evaluate(args.model, args.evaluations, torch.get_num_threads())
    share = args.evaluations // args.workers
    children = [subprocess.Popen([sys.executable, __file__, "--model", args.model, "--child", str(share)],
                                 stdout=subprocess.PIPE, text=True) for _ in range(args.workers)]
    seconds = [json.loads(child.communicate()[0]) for child in children]
    print(f"{args.evaluations} evaluations of {args.model}: one process, {torch.get_num_threads()} threads "
          f"{threaded:.1f} s; {args.workers} processes × 1 thread {max(seconds):.1f} s (slowest worker); "
          f"ratio {threaded / max(seconds):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
