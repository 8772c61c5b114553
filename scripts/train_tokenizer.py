"""Retrain the shipped tokenizer (romer/data/tokenizer) on the corpus's train split."""

from romer.data import load_documents
from romer.data.tokenizer import train_tokenizer

if __name__ == "__main__":
    out = train_tokenizer(d.text for d in load_documents("train"))
    print(f"wrote {out}")
