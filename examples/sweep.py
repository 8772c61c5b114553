"""A small sweep through the Python API: chips (seeds) × two noise scales, each chip scored noisy and with router
recalibration fitted for it, the pairs summarised as the mean PPL reduction with its 95 % Student-t interval
(``romer.estimators.paired_reduction``, the estimator every romer table uses).

    python examples/sweep.py [--quick] [--model olmoe-tiny] [--chips 5] [--scales 3 10] [--method recalibrate]

Each chip is the default chip (IBM PCM at t = 1 day, MoE blocks analog) with programming and read noise ×scale and
its own seed; the same seeds serve every scale, so the scales are paired too. A study-sized version of this
(more methods, models, presets; resumable, parallel) is ``romer run`` with an experiment config.

Time on a 2-core CPU with olmoe-tiny: about 5 min (5 chips × 2 scales, 16,384 scored tokens, 64 calibration
windows each); --quick: about 30 s (2 chips, 256 tokens, 4 calibration windows of 128).
"""

from __future__ import annotations

import argparse

import romer
from romer.estimators import paired_reduction


def fmt(value, digits: int = 1) -> str:
    return f"{value:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 chips, 256 tokens, 4 calibration windows")
    parser.add_argument("--model", default="olmoe-tiny", help="zoo name or local MoE folder")
    parser.add_argument("--chips", type=int, default=None, help="chips per scale (default 5; --quick: 2)")
    parser.add_argument("--scales", type=float, nargs="+", default=[3.0, 10.0], help="PCM noise scales")
    parser.add_argument("--method", default="recalibrate", help="recalibrate, romer, replace, maxnn, balance")
    args = parser.parse_args()
    chips = args.chips or (2 if args.quick else 5)

    model, tokenizer = romer.load(args.model)
    spec = romer.EvalSpec(split="test", max_tokens=256 if args.quick else 16384, window=128 if args.quick else 512)
    calibration = dict(sequences=4, window=128) if args.quick else {}
    clean = romer.evaluate(model, tokenizer, spec).ppl
    print(f"{args.model}, {spec.label}: clean PPL {clean:.2f}")
    for scale in args.scales:
        noisy, calibrated = {}, {}
        for seed in range(chips):
            chip = romer.default_chip(seed=seed, scale=scale)
            noisy[seed] = romer.evaluate(model, tokenizer, spec, chip=chip).ppl
            plan = romer.calibrate(model, tokenizer, chip, args.method, **calibration)
            calibrated[seed] = romer.evaluate(model, tokenizer, spec, chip=chip, plan=plan).ppl
            print(f"  PCM ×{scale:g} chip {seed}: noisy {noisy[seed]:.2f}, {args.method} {calibrated[seed]:.2f}")
        r = paired_reduction(calibrated, noisy)
        spread = f"95 % CI {fmt(r['low'])} … {fmt(r['high'])}, " if r["n"] > 1 else ""
        print(f"PCM ×{scale:g}: {args.method} reduces PPL by {fmt(r['mean'])} % "
              f"({spread}{r['n']} chip{'s' if r['n'] != 1 else ''})")


if __name__ == "__main__":
    main()
