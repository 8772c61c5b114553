"""How much noise a model takes: PCM over inference time and placements, and the gaussian η that doubles PPL.

Measured on the validation split (the default chip is chosen from these numbers, so the test split stays
untouched), on the first ``max_chars`` characters to keep a sweep of many chips affordable on a CPU.
"""

from __future__ import annotations

import math

from romer.data import load_text
from romer.eval import perplexity
from romer.experiment.noisy import noisy_perplexity
from romer.models import load_model
from romer.noise.chip import Chip

PCM_TIMES = {"1 s": 1.0, "1 h": 3600.0, "1 day": 86400.0, "1 year": 3.15e7}
GAUSSIAN_ETAS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5)


def doubling_eta(etas: list[float], ppls: list[float], clean: float) -> float | None:
    """The η at which PPL reaches 2× clean, by linear interpolation of ln PPL between the bracketing points
    (None if the sweep never doubles PPL). Golden example: η 0.1 → PPL 150, η 0.2 → PPL 250, clean 100 →
    ln 200 lies at fraction (ln 200 − ln 150)/(ln 250 − ln 150) = 0.5632 → η = 0.1563."""
    target = math.log(2 * clean)
    points = list(zip(etas, (math.log(p) for p in ppls)))
    for (e0, y0), (e1, y1) in zip(points, points[1:]):
        if y0 < target <= y1:
            return e0 + (target - y0) / (y1 - y0) * (e1 - e0)
    return None


def sensitivity(name: str, chips: int = 3, max_chars: int = 80_000, window: int = 512,
                placements: tuple[str, ...] = ("moe", "all"), progress: bool = False) -> dict:
    """Clean and noisy validation PPL of one model: PCM at each time of ``PCM_TIMES`` for each placement, and a
    gaussian η sweep (placement ``moe``). Same chip seeds 0 … chips−1 everywhere."""
    model, tokenizer = load_model(name)
    text = load_text("validation")[:max_chars]
    clean = perplexity(model, tokenizer, text, window=window).ppl

    def run(chip: Chip) -> dict:
        result = noisy_perplexity(model, tokenizer, text, chip, chips, window=window, progress=progress)
        return {"ppl_mean": result["ppl_mean"], "ppl_std": result["ppl_std"], "ppl_per_chip": result["ppl_per_chip"]}

    pcm = {placement: {label: run(Chip.from_options("pcm", placement=placement, t_inference=t))
                       for label, t in PCM_TIMES.items()} for placement in placements}
    gaussian = {eta: run(Chip.from_options("gaussian", placement="moe", eta=eta)) for eta in GAUSSIAN_ETAS}
    means = [gaussian[eta]["ppl_mean"] for eta in GAUSSIAN_ETAS]
    return {
        "model": name, "split": "validation", "max_chars": max_chars, "window": window, "chips": chips,
        "clean_ppl": clean, "pcm": pcm,
        "gaussian": {str(eta): v for eta, v in gaussian.items()},
        "gaussian_doubling_eta": doubling_eta(list(GAUSSIAN_ETAS), means, clean),
    }


def markdown(results: list[dict]) -> str:
    """README table: clean PPL, PCM PPL (mean ± std over chips) per placement and time, doubling η."""
    times = list(PCM_TIMES)
    lines = ["| model | placement | clean | " + " | ".join(f"pcm t = {t}" for t in times) + " | gaussian η for 2× PPL |",
             "|---|---|---|" + "---|" * len(times) + "---|"]
    for r in results:
        eta = r["gaussian_doubling_eta"]
        for placement, row in r["pcm"].items():
            cells = " | ".join(f"{row[t]['ppl_mean']:.2f} ± {row[t]['ppl_std']:.2f}" for t in times)
            lines.append(f"| `{r['model']}` | {placement} | {r['clean_ppl']:.2f} | {cells} | "
                         f"{'—' if eta is None else f'{eta:.3f}'} |")
    return "\n".join(lines)
