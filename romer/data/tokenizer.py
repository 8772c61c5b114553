"""Byte-level BPE tokenizer trained on the corpus's train split, shipped as a Hugging Face tokenizer folder."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

TOKENIZER_DIR = Path(__file__).resolve().parent / "tokenizer"
VOCAB_SIZE = 8192
EOS_TOKEN = "<|endoftext|>"


def load_tokenizer(path: str | Path = TOKENIZER_DIR):
    """The shipped tokenizer (or one from a folder) through ``AutoTokenizer``."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def train_tokenizer(texts, out_dir: str | Path = TOKENIZER_DIR, vocab_size: int = VOCAB_SIZE) -> Path:
    """Train byte-level BPE on ``texts`` and write ``tokenizer.json`` + ``tokenizer_config.json``.

    One special token, ``<|endoftext|>``, serves as BOS, EOS and padding (padding is always masked).
    Training is deterministic for the same texts and tokenizers version.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": EOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "pad_token": EOS_TOKEN,
        "unk_token": None,
        "add_bos_token": False,
        "model_max_length": 1_000_000_000,
        "clean_up_tokenization_spaces": False,
    }
    for name, payload in (("tokenizer.json", tok.to_str(pretty=True)), ("tokenizer_config.json", json.dumps(config, indent=2))):
        fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{name}.")
        os.chmod(tmp, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(payload + "\n")
        os.replace(tmp, out_dir / name)
    return out_dir
