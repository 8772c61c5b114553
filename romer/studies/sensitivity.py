"""How much noise a model takes: PCM over inference time, PCM with scaled noise, and the gaussian η, per
placement; the noise level that doubles PPL is interpolated.

Measured on the validation split (the default chip is chosen from these numbers, so the test split stays
untouched), on its first ``SENSITIVITY_SPEC.max_tokens`` tokens to keep a sweep of many chips affordable on a CPU.
"""

from __future__ import annotations

import math

from romer.eval.spec import EvalSpec
from romer.studies.noisy import noisy_perplexity
from romer.models import load_model
from romer.noise.chip import Chip
from romer.noise.io import get_io
from romer.progress import Progress

PCM_TIMES = {"1 s": 1.0, "1 h": 3600.0, "1 day": 86400.0, "1 year": 3.15e7}
PCM_SCALES = (1.0, 3.0, 10.0, 20.0)  # prog_noise_scale = read_noise_scale = k, at t = 1 day
GAUSSIAN_ETAS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5)
LEVELS = {"pcm_times": list(PCM_TIMES), "pcm_scales": list(PCM_SCALES), "gaussian_etas": list(GAUSSIAN_ETAS)}
SENSITIVITY_SPEC = EvalSpec(split="validation", max_tokens=16384)


def doubling_point(levels: list[float], ppls: list[float], clean: float) -> float | None:
    """The noise level at which PPL reaches 2× clean, by linear interpolation of ln PPL between the bracketing
    levels (None if the sweep never doubles PPL). Golden example: level 0.1 → PPL 150, 0.2 → PPL 250, clean 100
    → ln 200 lies at fraction (ln 200 − ln 150)/(ln 250 − ln 150) = 0.5632 → level 0.1563."""
    target = math.log(2 * clean)
    points = list(zip(levels, (math.log(p) for p in ppls)))
    for (e0, y0), (e1, y1) in zip(points, points[1:]):
        if y0 < target <= y1:
            return e0 + (target - y0) / (y1 - y0) * (e1 - e0)
    return None


def sensitivity(name: str, chips: int = 3, spec: EvalSpec = SENSITIVITY_SPEC,
                placements: tuple[str, ...] = ("moe", "all"), progress: bool = False, io=None) -> dict:
    """Clean and noisy validation PPL of one model, per placement: PCM at each time of ``PCM_TIMES``, PCM at
    1 day with programming and read noise scaled by ``PCM_SCALES``, and a gaussian η sweep. The same chip seeds
    0 … chips−1 everywhere; ``io``: the chips' IO model (``romer.noise.io``; default ideal)."""
    model, tokenizer = load_model(name)
    text = spec.text(tokenizer)
    clean = spec.perplexity(model, tokenizer, text).ppl

    bar = Progress(f"{name}: noise sweep", len(placements) * (len(PCM_TIMES) + len(PCM_SCALES) + len(GAUSSIAN_ETAS)),
                   unit="settings", enabled=progress)

    def run(chip: Chip) -> dict:
        result = noisy_perplexity(model, tokenizer, text, chip, chips, window=spec.window)
        bar.advance(label=f"{chip.preset.name} · {chip.placement_name()}")
        return {"ppl_mean": result["ppl_mean"], "ppl_std": result["ppl_std"], "ppl_per_chip": result["ppl_per_chip"]}

    with bar:
        io_part = {} if get_io(io).is_ideal else {"io": get_io(io).to_dict()}
        return _sweep(run, clean, placements, io) | io_part | {
            "model": name, "eval": spec.describe(), "text": spec.label, "chips": chips, "clean_ppl": clean,
            "levels": LEVELS}


def _sweep(run, clean: float, placements: tuple[str, ...], io=None) -> dict:
    """Run every setting through ``run(chip) → {ppl_mean, ppl_std, ppl_per_chip}``, per placement."""
    pcm_time = {pl: {label: run(Chip.from_options("pcm", placement=pl, t_inference=t, io=io))
                     for label, t in PCM_TIMES.items()} for pl in placements}
    pcm_scaled = {pl: {k: run(Chip.from_options("pcm", placement=pl, prog_noise_scale=k, read_noise_scale=k, io=io))
                       for k in PCM_SCALES} for pl in placements}
    gaussian = {pl: {eta: run(Chip.from_options("gaussian", placement=pl, eta=eta, io=io)) for eta in GAUSSIAN_ETAS}
                for pl in placements}

    def doubling(sweep: dict) -> float | None:
        return doubling_point(list(sweep), [v["ppl_mean"] for v in sweep.values()], clean)

    return {
        "placements": {pl: {"pcm_time": pcm_time[pl],
                            "pcm_scaled": {str(k): v for k, v in pcm_scaled[pl].items()},
                            "pcm_doubling_scale": doubling(pcm_scaled[pl]),
                            "gaussian": {str(eta): v for eta, v in gaussian[pl].items()},
                            "gaussian_doubling_eta": doubling(gaussian[pl])} for pl in placements},
    }
