"""The bundled corpus: Jane Austen's novels and the King James Version, split by chapter / book (see DATA.md)."""

from __future__ import annotations

import json
import lzma
from dataclasses import dataclass
from pathlib import Path

from romer.errors import UserError

CORPUS_DIR = Path(__file__).resolve().parent / "corpus"
SPLITS = ("train", "validation", "test")
DOCUMENT_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class Document:
    source: str  # "austen" or "kjv"
    title: str  # e.g. "Emma, chapter 8" or "Luke 3"
    text: str


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")


def load_documents(split: str, source: str | None = None) -> list[Document]:
    """The documents (chapters) of one split, in source order; optionally only one source."""
    _check_split(split)
    with lzma.open(CORPUS_DIR / f"{split}.jsonl.xz", "rt", encoding="utf-8") as f:
        docs = [Document(**json.loads(line)) for line in f]
    if source is not None:
        docs = [d for d in docs if d.source == source]
        if not docs:
            raise UserError(f"split {split!r} has no documents from source {source!r}")
    return docs


def load_text(split: str, source: str | None = None) -> str:
    """One split as a single string: documents joined by a blank line."""
    return DOCUMENT_SEPARATOR.join(d.text for d in load_documents(split, source))
