"""What to measure on one model: perplexity of a dataset in one of the two literature conventions, and zero-shot
tasks through lm-eval — the same on a clean model, a chip-programmed one or a calibrated one.

``ppl="windows"``: GPTQ-style token perplexity — the split as one string, cut into non-overlapping BOS-prefixed
windows of ``window`` tokens (:func:`romer.eval.perplexity.perplexity`). ``ppl="documents"``: lm-eval's
document-level perplexity — each document scored on its own in rolling windows of ``window`` tokens
(:func:`romer.eval.perplexity.document_perplexity`; its word PPL equals lm-eval's ``word_perplexity``).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from romer.errors import UserError
from romer.eval.perplexity import PerplexityResult, document_perplexity, perplexity

PPL_MODES = ("windows", "documents")


@dataclass(frozen=True)
class Measurement:
    """One model's perplexity and, per task, its lm-eval scores (``romer.eval.zero_shot.TaskScore``)."""

    ppl: PerplexityResult
    tasks: dict = field(default_factory=dict)


@dataclass
class EvalSuite:
    """A dataset split to score and zero-shot tasks to run (the text is read once, when first needed)."""

    dataset: str = "bundled"
    data_path: str | None = None
    split: str | None = None
    ppl: str = "windows"
    window: int = 512
    batch_size: int = 8
    max_chars: int | None = None
    tasks: tuple[str, ...] = ()
    task_data: dict[str, str] = field(default_factory=dict)
    task_limit: int | None = None
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.ppl not in PPL_MODES:
            raise UserError(f"unknown perplexity convention {self.ppl!r}; choose windows or documents")
        if self.max_chars is not None and self.ppl != "windows":
            raise UserError("max_chars (--max-chars) applies to the windows convention only")
        from romer.data.datasets import dataset_info

        dataset_info(self.dataset)  # an unknown dataset is refused before any model is loaded
        if self.data_path is not None and not Path(self.data_path).expanduser().exists():
            raise UserError(f"no such file or folder: {self.data_path}")
        unknown = sorted(set(self.task_data) - set(self.tasks))
        if unknown:
            raise UserError(f"task data given for task(s) not asked for: {', '.join(unknown)}")

    @classmethod
    def from_options(cls, dataset: str, data_path: str | None, split: str | None, ppl: str, tasks: str | None,
                     task_data: Sequence[str], window: int, batch_size: int, limit: int | None = None,
                     max_chars: int | None = None) -> "EvalSuite":
        """From CLI options: ``tasks`` a comma list, ``task_data`` items ``TASK=PATH``."""
        paths = {}
        for item in task_data:
            task, sep, path = item.partition("=")
            if not sep or not task.strip() or not path.strip():
                raise UserError(f"--task-data takes TASK=PATH, got {item!r}")
            paths[task.strip()] = path.strip()
        names = tuple(t.strip() for t in (tasks or "").split(",") if t.strip())
        return cls(dataset, data_path, split, ppl, window, batch_size, max_chars, tasks=names, task_data=paths,
                   task_limit=limit)

    @property
    def label(self) -> str:
        split = self.split or "test"
        return f"{self.dataset} {split}" if self.dataset != "bundled" else split

    def text(self) -> str:
        """The split as one string (windows convention), first ``max_chars`` characters."""
        if "text" not in self._cache:
            from romer.data import load_dataset_text

            self._cache["text"] = load_dataset_text(self.dataset, self.data_path, self.split)[: self.max_chars]
        return self._cache["text"]

    def documents(self) -> list[str]:
        """The split's documents (documents convention)."""
        if "documents" not in self._cache:
            from romer.data import load_dataset_documents

            self._cache["documents"] = load_dataset_documents(self.dataset, self.data_path, self.split)
        return self._cache["documents"]

    def perplexity(self, model: nn.Module, tokenizer, description: str = "perplexity",
                   progress: bool = False) -> PerplexityResult:
        if self.ppl == "windows":
            return perplexity(model, tokenizer, self.text(), window=self.window, batch_size=self.batch_size,
                              progress=progress, description=description)
        return document_perplexity(model, tokenizer, self.documents(), max_length=self.window,
                                   batch_size=self.batch_size, progress=progress, description=description)

    def measure(self, model: nn.Module, tokenizer, description: str = "perplexity",
                progress: bool = False) -> Measurement:
        """Perplexity and every task on ``model`` as it is (programmed, calibrated or clean)."""
        scores = {}
        if self.tasks:
            from romer.eval.zero_shot import evaluate_tasks

            scores = evaluate_tasks(model, tokenizer, self.tasks, self.task_data or None, limit=self.task_limit)
        return Measurement(self.perplexity(model, tokenizer, description, progress), scores)

    def describe(self) -> dict:
        return {"dataset": self.dataset, "data_path": None if self.data_path is None else str(Path(self.data_path)),
                "split": self.split, "ppl_convention": self.ppl, "window": self.window, "tasks": list(self.tasks)}


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n − 1; 0 for a single value)."""
    values = list(values)
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(measurements: Sequence[Measurement]) -> dict:
    """Per-chip values and mean ± sample std over chips (std 0 for one) of PPL and of each task's acc / acc_norm."""
    per_chip = [m.ppl.ppl for m in measurements]
    ppl_mean, ppl_std = mean_std(per_chip)
    out = {"tokens": measurements[0].ppl.tokens, "ppl_per_chip": per_chip, "ppl": ppl_mean, "ppl_std": ppl_std,
           "word_ppl": mean_std([m.ppl.word_ppl for m in measurements])[0],
           "bits_per_byte": mean_std([m.ppl.bits_per_byte for m in measurements])[0], "tasks": {}}
    for task in measurements[0].tasks:
        metrics = {}
        for name in ("acc", "acc_norm"):
            if name not in measurements[0].tasks[task].metrics:
                continue
            values = [m.tasks[task].metrics[name] for m in measurements]
            mean, std = mean_std(values)
            metrics[name] = {"mean": mean, "std": std, "per_chip": values,
                             "stderr_per_chip": [m.tasks[task].stderr.get(name) for m in measurements]}
        out["tasks"][task] = {"samples": measurements[0].tasks[task].samples, **metrics}
    return out
