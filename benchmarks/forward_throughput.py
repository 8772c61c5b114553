"""Forward throughput of the zoo models (eval mode, no grad), side by side in one run, on the same windows:

* "HF forward": the plain Hugging Face forward, ``model(input_ids=batch)``, with transformers' own fastest CPU
  experts kernel (``grouped_mm``): the reference;
* "+ recorder": the same forward with romer's routing recorder on every router (counts, mass, streamed logit
  percentiles: what every scored row of ``romer run`` records);
* "romer eval": what ``romer run`` does for one noisy row: the model programmed on the default chip, romer's
  sorted experts kernel (``romer.models.sorted_experts``), perplexity of the same windows
  (``romer.eval.perplexity``: forward, log-probabilities, NLL sum) under the recorder.

Each is measured in ``romer run``'s evaluation dtype (fp32; ``--bf16`` adds bf16 autocast). Repetitions are
interleaved (the order of the modes rotates every round) and each round's ratio to the HF forward of the same
round is taken, so background load on a shared machine hits numerator and denominator alike; rounds continue
until the 95 % interval of every ratio (Student t over the rounds' log ratios) is narrower than ±``--ci`` %, or
``--max-repeats``. ``--update-readme`` rewrites the table in benchmarks/README.md (the benchmarks' page) between
its markers.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from scipy.stats import t as student_t

from romer.eval import perplexity, token_windows
from romer.eval.spec import AUTOCAST, EvalSpec
from romer.models import load_model, zoo_names
from romer.models.sorted_experts import NAME as SORTED_EXPERTS
from romer.noise.chip import default_chip, program
from romer.routing import record_routing

README = Path(__file__).resolve().parent / "README.md"
BEGIN, END = "<!-- forward-throughput:begin -->", "<!-- forward-throughput:end -->"
HF_EXPERTS = "grouped_mm"


def _precision(dtype: str):
    autocast = AUTOCAST[dtype]
    return contextlib.nullcontext() if autocast is None else torch.autocast("cpu", dtype=autocast)


def _modes(model, tokenizer, text: str, batch: torch.Tensor, batch_size: int, window: int, dtypes: list[str]):
    def forward():
        model.set_experts_implementation(HF_EXPERTS)
        for start in range(0, len(batch), batch_size):
            model(input_ids=batch[start : start + batch_size])

    def recorded():
        with record_routing(model):
            forward()

    def evaluation():
        model.set_experts_implementation(SORTED_EXPERTS)
        with record_routing(model):
            perplexity(model, tokenizer, text, window=window, batch_size=batch_size)

    modes = {}
    for dtype in dtypes:
        label = "fp32" if dtype == "float32" else "bf16"
        for name, run in (("HF forward", forward), ("+ recorder", recorded), ("romer eval", evaluation)):
            modes[(name, label)] = (dtype, run)
    return modes


def interval(log_ratios: list[float]) -> tuple[float, float]:
    """(ratio, half-width of its 95 % interval as a fraction) from per-round log ratios (Student t)."""
    n = len(log_ratios)
    mean = statistics.fmean(log_ratios)
    if n < 2:
        return math.exp(mean), math.inf
    half = student_t.ppf(0.975, n - 1) * statistics.stdev(log_ratios) / math.sqrt(n)
    return math.exp(mean), math.expm1(half)


@torch.no_grad()
def measure(name: str, windows: int, batch_size: int, window: int, ci: float, min_repeats: int,
            max_repeats: int, dtypes: list[str]) -> dict:
    model, tokenizer = load_model(name)
    text = EvalSpec(max_tokens=windows * (window - 1)).text(tokenizer)
    ids = tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids
    batch = torch.stack(token_windows(ids, window, tokenizer.bos_token_id))
    modes = _modes(model, tokenizer, text, batch, batch_size, window, dtypes)
    seconds: dict[tuple, list[float]] = {mode: [] for mode in modes}
    names = list(modes)
    with program(model, default_chip(0)):  # noise does not change the work; the eval runs on a chip
        for round_ in range(max_repeats + 1):  # round 0 warms up and is discarded
            order = names[round_ % len(names):] + names[: round_ % len(names)]
            for mode in order:
                dtype, run = modes[mode]
                with _precision(dtype):
                    started = time.perf_counter()
                    run()
                    seconds[mode].append(time.perf_counter() - started)
            if round_ >= min_repeats and all(half < ci / 100 for _, half in _ratios(seconds).values()):
                break
    tokens = batch.numel()
    out = {"labels": ["fp32" if d == "float32" else "bf16" for d in dtypes], "tok/s": {mode: tokens / statistics.median(s[1:]) for mode, s in seconds.items()},
           "ratios": _ratios(seconds), "repeats": len(seconds[names[0]]) - 1}
    return out


def _ratios(seconds: dict[tuple, list[float]]) -> dict[tuple, tuple[float, float]]:
    """Per mode, its time per round over the HF forward's of the same dtype and round (warm-up dropped)."""
    return {(kind, label): interval([math.log(a / b) for a, b in zip(values[1:], seconds[("HF forward", label)][1:])])
            for (kind, label), values in seconds.items() if kind != "HF forward" and len(values) >= 3}


def table(results: dict[str, dict], args) -> str:
    lines = ["| model | dtype | HF forward (tok/s) | + recorder (tok/s) | romer eval (tok/s) | recorder overhead "
             "(95 % CI) | romer eval / HF forward (95 % CI) | rounds |", "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        for label in r["labels"]:
            tps = {kind: r["tok/s"][(kind, label)] for kind in ("HF forward", "+ recorder", "romer eval")}
            rec, rec_ci = r["ratios"][("+ recorder", label)]
            ev, ev_ci = r["ratios"][("romer eval", label)]
            lines.append(f"| {name} | {label} | {tps['HF forward']:,.0f} | {tps['+ recorder']:,.0f} "
                         f"| {tps['romer eval']:,.0f} | {100 * (rec - 1):+.1f} % ± {100 * rec_ci:.1f} % "
                         f"| {1 / ev:.3f} ± {ev_ci / ev:.3f} | {r['repeats']} |")
    load = os.getloadavg()[0]
    lines.append("")
    lines.append(f"{args.windows} windows × {args.window} tokens of the test split, batch {args.batch_size}; tok/s are "
                 f"medians, ratios the geometric mean of per-round time ratios (time / HF forward time of the same "
                 f"round; eval / forward = 1 / that), rounds interleaved until every 95 % interval is within "
                 f"±{args.ci:g} %; bf16 = autocast, weights fp32; torch {torch.__version__}, "
                 f"{torch.get_num_threads()} threads, {platform.machine()}, load average {load:.1f} at the end. "
                 "Regenerate: `make bench`.")
    return "\n".join(lines)


def publish(text: str, update: bool, begin: str = BEGIN, end: str = END) -> None:
    """Print a table and, with ``update``, rewrite it in benchmarks/README.md between the markers."""
    print(text)
    if update:
        from romer.io import replace_between_markers

        replace_between_markers(README, begin, end, text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=16)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--ci", type=float, default=2.0, help="stop when every 95 %% interval is within ± this %%")
    parser.add_argument("--min-repeats", type=int, default=5)
    parser.add_argument("--max-repeats", type=int, default=40)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch threads (default: torch's, as romer run uses)")
    parser.add_argument("--bf16", action="store_true", help="also measure under bf16 autocast")
    parser.add_argument("--models", nargs="*", default=None)
    parser.add_argument("--update-readme", action="store_true",
                        help="rewrite the forward-throughput table in benchmarks/README.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {name: measure(name, args.windows, args.batch_size, args.window, args.ci, args.min_repeats,
                             args.max_repeats, ["float32", "bfloat16"] if args.bf16 else ["float32"])
               for name in (args.models or zoo_names())}
    publish(table(results, args), args.update_readme)


if __name__ == "__main__":
    main()
