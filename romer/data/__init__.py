"""Bundled public-domain corpus, its tokenizer, and text loaders."""

from romer.data.corpus import SPLITS, Document, load_documents, load_text
from romer.data.tokenizer import TOKENIZER_DIR, load_tokenizer

__all__ = ["SPLITS", "Document", "load_documents", "load_text", "TOKENIZER_DIR", "load_tokenizer"]
