"""Does the router-noise account predict where P1 helps? Per MoE layer, predicted against measured PPL gain.

    python scripts/per_layer_account.py [--chips 3] [--scales 10 25] [--max-tokens 8192] [--out results/router-noise]
    python scripts/per_layer_account.py --replot     # figures and plot again from per-layer.json, no measuring

For each zoo model, PCM scale (placement ``moe``, t = 1 day) and chip, on the first ``--max-tokens`` validation
tokens (P1 fitted on 32 train windows of 512 tokens: disjoint text), per MoE layer l:

* routing damage D_l = ln PPL_noisy − ln PPL_oracle(l): what replaying the clean routing in layer l alone
  recovers (``oracle_perplexity(layers=(l,))``);
* the account's recoverable share A_l: the measured affine share of layer l's logit noise (paired clean / chip
  logits on the same tokens, ``romer.routing.router_noise``), and the router's own share of it;
* predicted gain D_l · A_l against the measured gain G_l = ln PPL_noisy − ln PPL_P1(l), P1 in layer l only.

Writes ``per-layer.json`` (every layer, chip and scale, and the agreement figures: Pearson's r and Spearman's ρ of
measured against predicted and against damage alone, over all points and without the single largest prediction)
and ``per-layer.png`` (measured against predicted: all points, and zoomed on the bulk), and prints them.
docs/regime-map.md ("Reading the map", item 8) and docs/router-noise.md (finding 7) quote it; it writes no
markdown itself. The measurement is ``romer.studies.per_layer_account``, the plot ``romer.report.studies``; this
script parses arguments and writes the files.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from romer.io import write_bytes_atomic, write_text_atomic
from romer.report.studies import per_layer_plot
from romer.studies.per_layer_account import agreement, measure_model
from romer.studies.regime_map import MODELS

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chips", type=int, default=3)
    parser.add_argument("--scales", type=float, nargs="+", default=[10.0, 25.0])
    parser.add_argument("--max-tokens", type=int, default=8192)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "router-noise")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--replot", action="store_true", help="recompute the figures and the plot from "
                                                                 "OUT/per-layer.json instead of measuring")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.replot:
        saved = json.loads((args.out / "per-layer.json").read_text())
        rows, settings = saved["rows"], saved["settings"]
    else:
        rows = [row for name in args.models for row in measure_model(name, args.scales, args.chips, args.max_tokens)]
        settings = {"chips": args.chips, "scales": args.scales, "max_tokens": args.max_tokens}
    figures = agreement(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / "per-layer.json", json.dumps(
        {"agreement": figures, "rows": rows, "settings": settings}, indent=1) + "\n")
    write_bytes_atomic(args.out / "per-layer.png", per_layer_plot(rows, figures))
    for label in ("all", "without_largest"):
        f = figures[label]
        print(f"{label} ({f['points']} points): predicted r = {f['pearson_predicted_gain']:.3f}, ρ = "
              f"{f['spearman_predicted_gain']:.3f}; damage alone r = {f['pearson_damage']:.3f}, ρ = "
              f"{f['spearman_damage']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
