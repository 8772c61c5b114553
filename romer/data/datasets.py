"""Evaluation and calibration text by dataset name, from the bundled corpus or a local copy; exact preprocessing.

Names (:data:`DATASETS`): ``bundled`` (the corpus shipped with romer), ``wikitext2``, ``wikitext103`` (raw
versions), ``lambada`` (``lambada_openai``), ``c4`` (English validation) and ``text`` (the user's own file).
A local copy is given by ``path`` in any form :mod:`romer.data.formats` reads; without ``path`` a public dataset is
looked up in the local Hugging Face cache (never downloaded).

Two views of a split, matching the two conventions in the literature:
- :func:`load_dataset_text`, one string for GPTQ-style token perplexity (cut into non-overlapping windows by
  :func:`romer.eval.perplexity.perplexity`). WikiText: its rows (the raw file's lines, blank lines as ``""``)
  joined with ``"\\n\\n"``, exactly ``"\\n\\n".join(load_dataset("wikitext", …, split="test")["text"])`` as
  in GPTQ. Every other dataset: its documents joined with ``"\\n\\n"``.
- :func:`load_dataset_documents`, the documents for lm-eval's document-level word perplexity
  (:func:`romer.eval.perplexity.document_perplexity`). WikiText: pages, a new page at each level-1 heading row
  (``" = Title = "``) as in ``EleutherAI/wikitext_document_level``, each page its rows concatenated; records that
  already have a ``page`` column are taken as they are. LAMBADA: one passage per record; C4: one web page per
  record; bundled: one chapter / book per document; ``text``: a ``.txt`` file is one document, any other file
  one document per record (its ``text`` column).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from romer.data.corpus import DOCUMENT_SEPARATOR, SPLITS, load_documents
from romer.data.formats import TEXT_SUFFIXES, data_suffix, hub_cache_records, read_records, text_field
from romer.errors import UserError


@dataclass(frozen=True)
class DatasetInfo:
    """Where a named dataset lives on the Hub and how its text is shaped."""

    name: str
    splits: tuple[str, ...]
    eval_split: str  # the split used when none is named
    hub_repo: str | None = None  # Hub dataset id, for the local Hugging Face cache
    hub_config: str | None = None
    hub_patterns: tuple[str, ...] = ()  # data files of a split inside the Hub snapshot, formatted with split
    rows_are_lines: bool = False  # WikiText: records are the raw file's lines
    description: str = ""


def _wikitext(name: str, config: str, size: str) -> DatasetInfo:
    return DatasetInfo(name, SPLITS, "test", "Salesforce/wikitext", config, (f"{config}/{{split}}-*.parquet",),
                       rows_are_lines=True,
                       description=f"WikiText-{size} raw: wiki.{{test,valid,train}}.raw, the Hub parquet "
                                   f"({config}/test-00000-of-00001.parquet), or a save_to_disk folder")


DATASETS: dict[str, DatasetInfo] = {
    "bundled": DatasetInfo("bundled", SPLITS, "test", description="romer's public-domain corpus (no path)"),
    "wikitext2": _wikitext("wikitext2", "wikitext-2-raw-v1", "2"),
    "wikitext103": _wikitext("wikitext103", "wikitext-103-raw-v1", "103"),
    "lambada": DatasetInfo("lambada", ("test",), "test", "EleutherAI/lambada_openai", "default",
                           ("default/{split}-*.parquet", "data/lambada_{split}.jsonl", "lambada_{split}.jsonl"),
                           description="lambada_openai: lambada_test.jsonl, one {\"text\": passage} per line"),
    "c4": DatasetInfo("c4", ("validation",), "validation", "allenai/c4", "en",
                      ("en/c4-{split}.*.json.gz",),
                      description="C4 English validation: c4-validation.0000N-of-00008.json.gz shards"),
    "text": DatasetInfo("text", ("test",), "test", description="your own file: .txt, .jsonl (text column), "
                                                               ".parquet, or a save_to_disk folder"),
}

_WIKITEXT_PAGE = re.compile(r"^ = [^=].* = $")  # a level-1 heading row: " = Valkyria Chronicles III = \n"


def dataset_info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


def _resolve_split(info: DatasetInfo, split: str | None) -> str:
    split = info.eval_split if split is None else split
    if split not in info.splits:
        raise UserError(f"dataset {info.name!r} has no split {split!r}; choose one of {', '.join(info.splits)}")
    return split


def _records(info: DatasetInfo, path: str | Path | None, split: str) -> tuple[list[dict], str]:
    """Non-empty records of the split: from ``path``, or else from the local Hugging Face cache."""
    if path is not None:
        records, source = read_records(path, split), str(path)
    elif info.name == "text":
        raise UserError("dataset 'text' needs a path: the file holding your text")
    else:
        records, source = hub_cache_records(info.hub_repo, info.hub_patterns, info.hub_config, split), info.hub_repo
    if not records:
        raise UserError(f"{source}: the dataset is empty")
    return records, source


def _column(records: list[dict], source: str) -> list[str]:
    field = text_field(records, source)
    values = [r.get(field) for r in records]
    if not all(isinstance(v, str) for v in values):
        raise UserError(f"{source}: column {field!r} must hold text in every record")
    return values


def _check_not_empty(items: list[str], name: str, source: str) -> None:
    if not any(item.strip() for item in items):
        raise UserError(f"{source}: dataset {name!r} has no text")


def wikitext_pages(rows: list[str]) -> list[str]:
    """WikiText rows → pages: a new page starts at every level-1 heading row; a page is its rows concatenated."""
    pages: list[list[str]] = []
    for row in rows:
        if _WIKITEXT_PAGE.match(row.rstrip("\n")) or not pages:
            pages.append([])
        pages[-1].append(row)
    return ["".join(page) for page in pages if "".join(page).strip()]


def _documents(info: DatasetInfo, records: list[dict], source: str, path: str | Path | None) -> list[str]:
    if info.rows_are_lines and "page" not in records[0]:
        docs = wikitext_pages(_column(records, source))
    elif info.name == "text" and Path(path).is_file() and data_suffix(Path(path)) in TEXT_SUFFIXES:
        docs = [Path(path).read_text(encoding="utf-8")]  # the file as it is, blank lines included
    else:
        docs = [d for d in _column(records, source) if d.strip()]
    _check_not_empty(docs, info.name, source)
    return docs


def load_dataset_documents(name: str = "bundled", path: str | Path | None = None, split: str | None = None) -> list[str]:
    """The documents of one split of a named dataset (see the module docstring for each dataset's unit)."""
    info = dataset_info(name)
    split = _resolve_split(info, split)
    if name == "bundled":
        if path is not None:
            raise UserError("dataset 'bundled' ships with romer and takes no path")
        return [d.text for d in load_documents(split)]
    records, source = _records(info, path, split)
    return _documents(info, records, source, path)


def load_dataset_text(name: str = "bundled", path: str | Path | None = None, split: str | None = None) -> str:
    """One split of a named dataset as the single string GPTQ-style token perplexity is computed over."""
    info = dataset_info(name)
    if info.rows_are_lines:
        records, source = _records(info, path, _resolve_split(info, split))
        if "page" not in records[0]:
            rows = _column(records, source)
            _check_not_empty(rows, name, source)
            return DOCUMENT_SEPARATOR.join(rows)
        return DOCUMENT_SEPARATOR.join(_documents(info, records, source, path))
    return DOCUMENT_SEPARATOR.join(load_dataset_documents(name, path, split))


def _shingles(text: str, n: int) -> set[int]:
    words = text.split()
    return {hash(tuple(words[i : i + n])) for i in range(max(len(words) - n + 1, 1 if words else 0))}


def text_overlap(calibration: str, evaluation: str, n: int = 32) -> float:
    """Fraction of the calibration text's word ``n``-grams (whitespace-split) that also occur in the evaluation text."""
    calib = _shingles(calibration, n)
    if not calib:
        return 0.0
    return len(calib & _shingles(evaluation, n)) / len(calib)


def check_disjoint(calibration: str, evaluation: str, max_overlap: float = 0.05, n: int = 32) -> float:
    """Refuse calibration text that is, contains, or largely repeats the evaluation text; return the overlap.

    Raises UserError when the texts are equal (ignoring surrounding whitespace), when either contains the other,
    or when more than ``max_overlap`` of the calibration text's word ``n``-grams occur in the evaluation text.
    """
    a, b = calibration.strip(), evaluation.strip()
    if not a or not b:
        raise UserError("calibration and evaluation text must both be non-empty")
    if a == b:
        raise UserError("calibration text is the evaluation text: choose a different split or dataset")
    if a in b or b in a:
        raise UserError("calibration text and evaluation text contain one another: choose disjoint data")
    overlap = text_overlap(a, b, n)
    if overlap > max_overlap:
        raise UserError(f"{overlap:.0%} of the calibration text's {n}-word passages occur in the evaluation text "
                        f"(at most {max_overlap:.0%} allowed): choose disjoint data")
    return overlap
