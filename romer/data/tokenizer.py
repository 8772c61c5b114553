"""Byte-level BPE tokenizer trained on the corpus's train split, shipped as a Hugging Face tokenizer folder."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

TOKENIZER_DIR = Path(__file__).resolve().parent / "tokenizer"
VOCAB_SIZE = 8192
EOS_TOKEN = "<|endoftext|>"


# Files that hold a tokenizer's vocabulary (fast, sentencepiece, byte-level BPE, WordPiece)
VOCABULARY_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json", "vocab.txt")
JSON_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def check_tokenizer_files(folder: str | Path) -> None:
    """Refuse, in one line naming the file, a model folder without a tokenizer (transformers would quietly build
    an empty one, and every text would then tokenize to nothing) or with a tokenizer JSON file that is not UTF-8
    JSON."""
    from romer.errors import UserError

    folder = Path(folder)
    if not any((folder / name).is_file() for name in VOCABULARY_FILES):
        raise UserError(f"{folder}: no tokenizer ({', '.join(VOCABULARY_FILES[:3])}, …); copy the tokenizer files "
                        "of the model the weights were trained with into the folder")
    for name in JSON_FILES:
        path = folder / name
        if not path.is_file():
            continue
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as error:
            raise UserError(f"{path}: not UTF-8 text (byte {error.start}); re-save it as UTF-8") from None
        except json.JSONDecodeError as error:
            raise UserError(f"{path}: not valid JSON ({error.msg}, line {error.lineno} column {error.colno})") \
                from None
        if not isinstance(payload, dict):
            raise UserError(f"{path}: not a JSON object")


def load_tokenizer(path: str | Path = TOKENIZER_DIR):
    """The shipped tokenizer (or one from a folder, checked by :func:`check_tokenizer_files`) through
    ``AutoTokenizer``."""
    from transformers import AutoTokenizer

    check_tokenizer_files(path)
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
