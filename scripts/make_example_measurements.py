"""Write examples/pcm_measurements.csv: SYNTHETIC chip measurements sampled from romer's `pcm` preset.

Not a real chip: 16 target levels (ĝ_T = 0.01, 0.02, 0.04, 0.07 — where most mapped weights sit — and 1/12 … 1)
× 128 devices, each read twice at 20 s, 1 h, 1 day and 30 days after programming (16 384 reads), in µS with
g_max = 25 µS, from a seeded generator (seed 0), so the file is reproducible bit for bit. It exists to try `romer chip fit` / `romer chip report` on, and lets the fit be
checked against the constants it came from (docs/chip-measurements.md).

    .venv/bin/python scripts/make_example_measurements.py [--out examples/pcm_measurements.csv] [--seed 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from romer.chipfit.measurements import sample_measurements, write_measurements_csv
from romer.noise.registry import get_preset

LEVELS = [0.01, 0.02, 0.04, 0.07] + [k / 12 for k in range(1, 13)]
DEVICES = 128
TIMES_S = [20.0, 3600.0, 86400.0, 2592000.0]  # s after the programming pulse (pcm's t0 = 20 s is the first read)
REPEATS = 2
OUT = Path(__file__).resolve().parents[1] / "examples" / "pcm_measurements.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    m = sample_measurements(get_preset("pcm"), LEVELS, DEVICES, TIMES_S, REPEATS,
                            torch.Generator().manual_seed(args.seed))
    comments = [
        "SYNTHETIC DATA - not a real chip. Sampled from romer's `pcm` preset (IBM PCM model, Joshi et al. 2020)",
        f"by scripts/make_example_measurements.py, seed {args.seed}: {len(LEVELS)} levels x {DEVICES} devices x "
        f"{len(TIMES_S)} times x {REPEATS} reads.",
        "t: seconds after the programming pulse; device_id + cycle: one programmed device.",
    ]
    path = write_measurements_csv(m, args.out, units="uS", comments=comments)
    print(f"wrote {path} ({len(m.g_read)} reads, {path.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
