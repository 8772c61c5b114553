"""ROMER end to end: calibrate a model for one chip, save the calibrated model folder, reload it, and score the
clean, noisy (programmed, uncalibrated) and calibrated model on the same text.

    python examples/calibrate_save_reload.py [--quick] [--model olmoe-tiny] [--method romer]

The chip is the main job's default: IBM PCM at t = 1 day with drift compensation, programming and read noise ×10,
the MoE blocks analog. ROMER replaces each layer's coldest experts with replicas of the hottest, then recalibrates
every router's logits to the clean model's percentiles, both fitted on calibration text (the train split) run
through the programmed model. The folder holds the chip's read-back weights and plan.json; ``romer.load`` installs
the plan's digital routing corrections again.

Time on a 2-core CPU with olmoe-tiny: about 45 s (64 calibration windows of 512, 16,384 scored tokens);
--quick: about 15 s (4 windows of 128, 256 tokens).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import romer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few calibration windows and 256 scored tokens")
    parser.add_argument("--model", default="olmoe-tiny", help="zoo name or local MoE folder")
    parser.add_argument("--method", default="romer", help="romer, recalibrate, replace, maxnn, balance, copies")
    parser.add_argument("--seed", type=int, default=0, help="chip seed")
    args = parser.parse_args()

    model, tokenizer = romer.load(args.model)
    chip = romer.default_chip(seed=args.seed)  # PCM ×10
    spec = romer.EvalSpec(split="test", max_tokens=256 if args.quick else 16384, window=128 if args.quick else 512)
    calibration = dict(sequences=4, window=128) if args.quick else {}  # default: 64 windows of 512 tokens

    plan = romer.calibrate(model, tokenizer, chip, args.method, **calibration)
    with tempfile.TemporaryDirectory() as tmp:
        folder = romer.save_calibrated(model, tokenizer, chip, plan, Path(tmp) / f"{args.model}-calibrated")
        print(f"saved {folder.name}: {', '.join(sorted(p.name for p in folder.iterdir()))}")
        calibrated, _ = romer.load(folder)  # the chip's read-back weights + the plan's routing corrections
        scores = {"clean": romer.evaluate(model, tokenizer, spec),
                  "noisy": romer.evaluate(model, tokenizer, spec, chip=chip),
                  "calibrated": romer.evaluate(calibrated, tokenizer, spec)}
    print(f"{args.model} on PCM ×10 (chip seed {chip.seed}), {args.method}; {spec.label}")
    for name, result in scores.items():
        print(f"PPL {name:<10} {result.ppl:8.2f}")
    noisy, calibrated = scores["noisy"].ppl, scores["calibrated"].ppl
    print(f"{args.method} reduces the chip's PPL by {100 * (1 - calibrated / noisy):.1f} %")


if __name__ == "__main__":
    main()
