"""What one evaluation measures on one model: perplexity under an :class:`romer.eval.spec.EvalSpec` and, per task,
lm-eval's zero-shot scores — the same on a clean model, a chip-programmed one or a calibrated one — and their
summary over chips."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from torch import nn

from romer.estimators import mean_std
from romer.eval.perplexity import PerplexityResult
from romer.eval.spec import EvalSpec


@dataclass(frozen=True)
class Measurement:
    """One model's perplexity (None for a tasks-only spec) and, per task, its lm-eval scores
    (``romer.eval.zero_shot.TaskScore``)."""

    ppl: PerplexityResult | None
    tasks: dict = field(default_factory=dict)


def measure(spec: EvalSpec, model: nn.Module, tokenizer, text: str | None = None, description: str = "perplexity",
            progress: bool = False) -> Measurement:
    """Perplexity and every task of ``spec`` on ``model`` as it is (programmed, calibrated or clean); ``text``: the
    spec's already resolved text."""
    ppl = None if spec.ppl == "none" else spec.perplexity(model, tokenizer, text, progress, description)
    return Measurement(ppl, spec.task_scores(model, tokenizer))


def summarize(measurements: Sequence[Measurement]) -> dict:
    """Per-chip values and mean ± sample std over chips (std 0 for one) of PPL and of each task's acc / acc_norm."""
    from romer.eval.zero_shot import summarize as summarize_tasks

    out: dict = {"tasks": {}}
    if measurements[0].ppl is not None:
        per_chip = [m.ppl.ppl for m in measurements]
        ppl_mean, ppl_std = mean_std(per_chip)
        out.update({"tokens": measurements[0].ppl.tokens, "ppl_per_chip": per_chip, "ppl": ppl_mean,
                    "ppl_std": ppl_std, "word_ppl": mean_std([m.ppl.word_ppl for m in measurements])[0],
                    "bits_per_byte": mean_std([m.ppl.bits_per_byte for m in measurements])[0]})
    if measurements[0].tasks:
        for task, metrics in summarize_tasks([m.tasks for m in measurements]).items():
            out["tasks"][task] = {"samples": measurements[0].tasks[task].samples, **{
                name: {"mean": s.mean, "std": s.std, "per_chip": list(s.values),
                       "stderr_per_chip": [m.tasks[task].stderr.get(name) for m in measurements]}
                for name, s in metrics.items()}}
    return out
