"""What an evaluation scores, in one object: the text (dataset, split, document order, token budget), the
perplexity convention and window, the numeric precision, and the zero-shot tasks.

Every command, study, benchmark and script resolves its evaluation text here (:meth:`EvalSpec.text`), so two
commands asked for the same text score the same tokens: ``romer eval --split test --max-tokens 16384`` and the
clean row of ``romer run`` are the same number.

Document order: ``shuffled`` puts the split's documents in a fixed shuffled order (``torch.randperm`` with seed
``ORDER_SEED``) before joining them with a blank line, so a token-capped prefix mixes the corpus's sources (the
bundled split files list every Austen chapter before the first KJV book); ``source`` keeps the file's order, as the
literature's WikiText numbers do (GPTQ-style text: for line-based datasets the raw lines joined by blank lines).
Left unset, the order is ``shuffled`` for the bundled corpus and ``source`` for every other dataset.

Token budget: ``max_tokens`` keeps the longest prefix of the text whose tokens are the text's first
``max_tokens`` tokens (cut at a token boundary); None scores the whole split.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from romer.errors import UserError

ORDERS = ("shuffled", "source")
PPL_CONVENTIONS = ("windows", "documents", "none")  # none: zero-shot tasks only, no perplexity
ORDER_SEED = 0
AUTOCAST = {"float32": None, "bfloat16": torch.bfloat16}  # eval dtype → autocast dtype (weights stay float32)


def resolve_order(order: str | None, dataset: str) -> str:
    """The document order an unset ``order`` means: shuffled for the bundled corpus, source for any other."""
    return order or ("shuffled" if dataset == "bundled" else "source")


def settings_label(settings: Mapping) -> str:
    """The text label of a config's ``eval`` section (``romer run``'s ``EvalSettings`` as a dict), without
    validating it (a report may be read where the data files are not)."""
    dataset = settings.get("dataset", "bundled")
    return text_label({"dataset": dataset, "split": settings.get("split", "test"),
                       "order": resolve_order(settings.get("order"), dataset), "tokens": settings.get("max_tokens"),
                       "window": settings.get("window", 512), "dtype": settings.get("dtype", "float32")})


def token_prefix(tokenizer, text: str, max_tokens: int | None) -> str:
    """The longest prefix of ``text`` whose tokens are the first ``max_tokens`` tokens of the whole text (cut at a
    token boundary); the whole text when ``max_tokens`` is None or the text is shorter."""
    if max_tokens is None:
        return text
    encoding = tokenizer.backend_tokenizer.encode(text, add_special_tokens=False)
    if len(encoding.ids) <= max_tokens:
        return text
    return text[: encoding.offsets[max_tokens - 1][1]]


@dataclass(frozen=True)
class EvalSpec:
    """One evaluation: which text, how it is scored, and which zero-shot tasks run beside it.

    >>> spec = EvalSpec(split="validation", max_tokens=4096)
    >>> spec.resolved_order, spec.describe()["tokens"]
    ('shuffled', 4096)
    """

    dataset: str = "bundled"  # a name of romer.data.DATASETS; data_path its local copy
    data_path: str | None = None
    split: str = "test"
    order: str | None = None  # shuffled | source; None: shuffled for the bundled corpus, source otherwise
    max_tokens: int | None = None  # the text's first N tokens; None: the whole split
    ppl: str = "windows"  # windows (GPTQ-style) | documents (lm-eval's rolling) | none (tasks only)
    window: int = 512  # model input length in tokens, BOS included
    batch_size: int = 8  # windows per forward pass
    dtype: str = "float32"  # bfloat16: scoring forwards under bf16 autocast, the weights staying float32
    tasks: tuple[str, ...] = ()
    task_data: Mapping[str, str] = field(default_factory=dict)  # task → local file
    task_limit: int | None = None  # only the first N items of each task

    def __post_init__(self):
        object.__setattr__(self, "tasks", tuple(self.tasks))
        object.__setattr__(self, "task_data", dict(self.task_data))
        if self.order is not None and self.order not in ORDERS:
            raise UserError(f"unknown document order {self.order!r}; choose shuffled or source")
        if self.ppl not in PPL_CONVENTIONS:
            raise UserError(f"unknown perplexity convention {self.ppl!r}; choose windows, documents or none")
        if self.ppl == "none" and not self.tasks:
            raise UserError("ppl none scores tasks only: name at least one task")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise UserError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if self.max_tokens is not None and self.ppl == "documents":
            raise UserError("a token budget (max_tokens) applies to the windows convention only")
        if self.window < 2:
            raise UserError(f"the window must be at least 2 tokens (one BOS + one text token), got {self.window}")
        if self.batch_size < 1:
            raise UserError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.dtype not in AUTOCAST:
            raise UserError(f"unknown evaluation dtype {self.dtype!r}; choose {' or '.join(AUTOCAST)}")
        from romer.data.datasets import dataset_info

        info = dataset_info(self.dataset)  # an unknown dataset is refused before any model is loaded
        if self.split not in info.splits:
            raise UserError(f"dataset {self.dataset!r} has no split {self.split!r}; choose one of "
                            f"{', '.join(info.splits)}")
        if self.data_path is not None and not Path(self.data_path).expanduser().exists():
            raise UserError(f"no such file or folder: {self.data_path}")
        unknown = sorted(set(self.task_data) - set(self.tasks))
        if unknown:
            raise UserError(f"task data given for task(s) not asked for: {', '.join(unknown)}")

    @classmethod
    def from_dict(cls, values: Mapping) -> "EvalSpec":
        """From a config's ``eval`` section (``romer.experiment.config.EvalSettings``); keys that say where the
        model runs (device, weights_dtype) are not part of the evaluation and are ignored."""
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in values.items() if k in names})

    def with_(self, **changes) -> "EvalSpec":
        return replace(self, **changes)

    # --- the text ------------------------------------------------------------------------------------------

    @property
    def resolved_order(self) -> str:
        return resolve_order(self.order, self.dataset)

    def full_text(self) -> str:
        """The whole split as one string in the spec's document order (documents joined by a blank line)."""
        from romer.data import load_dataset_text
        from romer.data.corpus import DOCUMENT_SEPARATOR

        if self.resolved_order == "source":
            return load_dataset_text(self.dataset, self.data_path, self.split)
        return DOCUMENT_SEPARATOR.join(self.documents())

    def text(self, tokenizer) -> str:
        """The scored text: :meth:`full_text` cut to its first ``max_tokens`` tokens of ``tokenizer``."""
        return token_prefix(tokenizer, self.full_text(), self.max_tokens)

    def documents(self) -> list[str]:
        """The split's documents in the spec's order (the documents convention scores each on its own)."""
        from romer.data import load_dataset_documents

        documents = load_dataset_documents(self.dataset, self.data_path, self.split)
        if self.resolved_order == "source":
            return documents
        order = torch.randperm(len(documents), generator=torch.Generator().manual_seed(ORDER_SEED)).tolist()
        return [documents[i] for i in order]

    # --- scoring -------------------------------------------------------------------------------------------

    def precision(self, device_type: str = "cpu"):
        """The scoring forwards' numeric context: autocast to ``dtype`` unless that is float32."""
        import contextlib

        dtype = AUTOCAST[self.dtype]
        return contextlib.nullcontext() if dtype is None else torch.autocast(device_type, dtype=dtype)

    def perplexity(self, model, tokenizer, text: str | None = None, progress: bool = False,
                   description: str = "perplexity"):
        """``PerplexityResult`` of ``model`` as it is now (clean, programmed or calibrated) on the spec's text
        (``text``: the already resolved :meth:`text`, to skip re-reading it)."""
        from romer.eval.perplexity import document_perplexity, perplexity

        if self.ppl == "none":
            raise UserError("this evaluation scores tasks only (ppl none)")
        device_type = next(model.parameters()).device.type
        with self.precision(device_type):
            if self.ppl == "documents":
                return document_perplexity(model, tokenizer, self.documents(), max_length=self.window,
                                           batch_size=self.batch_size, progress=progress, description=description)
            return perplexity(model, tokenizer, self.text(tokenizer) if text is None else text, window=self.window,
                              batch_size=self.batch_size, progress=progress, description=description)

    def task_scores(self, model, tokenizer) -> dict:
        """``{task: TaskScore}`` of ``model`` as it is now; {} without tasks."""
        if not self.tasks:
            return {}
        from romer.eval.zero_shot import evaluate_tasks

        device_type = next(model.parameters()).device.type
        with self.precision(device_type):
            return evaluate_tasks(model, tokenizer, self.tasks, self.task_data or None, limit=self.task_limit)

    # --- description ---------------------------------------------------------------------------------------

    def describe(self) -> dict:
        """What was scored, for results files and table headers."""
        return {"dataset": self.dataset, "data_path": None if self.data_path is None else str(Path(self.data_path)),
                "split": self.split, "order": self.resolved_order, "tokens": self.max_tokens,
                "ppl_convention": self.ppl, "window": self.window, "dtype": self.dtype, "tasks": list(self.tasks)}

    @property
    def label(self) -> str:
        """One line naming the text, e.g. ``bundled test, shuffled, first 16,384 tokens, window 512, float32``."""
        name = self.dataset if self.data_path is None else f"{self.dataset} ({Path(self.data_path).name})"
        if self.ppl == "none":
            return f"tasks {', '.join(self.tasks)}, {self.dtype}"
        return text_label({**self.describe(), "dataset": name})


def text_label(described: Mapping) -> str:
    """The one-line label of a stored :meth:`EvalSpec.describe` dict (tables read results, not specs)."""
    budget = "whole split" if described.get("tokens") is None else f"first {described['tokens']:,} tokens"
    return (f"{described.get('dataset', 'bundled')} {described.get('split')}, {described.get('order')} order, "
            f"{budget}, {described.get('ppl_convention', 'windows')} of {described.get('window')}, "
            f"{described.get('dtype', 'float32')}")
