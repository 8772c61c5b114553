"""Bundled public-domain corpus, its tokenizer, and text loaders (bundled and local copies of public datasets)."""

from romer.data.corpus import SPLITS, Document, load_documents, load_text
from romer.data.datasets import (
    DATASETS,
    check_disjoint,
    load_dataset_documents,
    load_dataset_text,
    text_overlap,
)
from romer.data.tokenizer import TOKENIZER_DIR, load_tokenizer

__all__ = ["SPLITS", "Document", "load_documents", "load_text", "TOKENIZER_DIR", "load_tokenizer", "DATASETS",
           "check_disjoint", "load_dataset_documents", "load_dataset_text", "text_overlap"]
