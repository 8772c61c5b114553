"""Safe local loading of causal LMs: zoo names or local HF folders, safetensors only, no remote code."""

from __future__ import annotations

from pathlib import Path

import torch

from romer.errors import UserError

ZOO_DIR = Path(__file__).resolve().parent / "zoo"


class ModelNotFoundError(UserError):
    """A model name or folder that cannot be loaded; the message is one line meant for users."""


def zoo_names() -> list[str]:
    """Names of the bundled reference models (folders holding a training recipe)."""
    return sorted(p.parent.name for p in ZOO_DIR.glob("*/train.yaml"))


def resolve_model_dir(name_or_path: str | Path) -> Path:
    """A zoo name or a local folder → the folder holding config.json and *.safetensors."""
    text = str(name_or_path)
    if text in zoo_names():
        folder = ZOO_DIR / text
        if not (folder / "model.safetensors").exists():
            raise ModelNotFoundError(f"zoo model {text!r} has no weights yet; train it: romer zoo train {text}")
        return folder
    folder = Path(text).expanduser()
    if not folder.is_dir():
        raise ModelNotFoundError(
            f"{text!r} is neither a zoo model ({', '.join(zoo_names())}) nor an existing folder"
        )
    if not (folder / "config.json").exists():
        raise ModelNotFoundError(f"{folder}: no config.json, not a Hugging Face model folder")
    if not any(folder.glob("*.safetensors")):
        raise ModelNotFoundError(f"{folder}: no *.safetensors weights (romer never loads pickled checkpoints)")
    return folder


def load_model(name_or_path: str | Path, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """Load a causal LM and its tokenizer from the zoo or a local folder, in eval mode.

    Safetensors only, ``trust_remote_code=False``, no network. Returns ``(model, tokenizer)``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = resolve_model_dir(name_or_path)
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=dtype, use_safetensors=True, trust_remote_code=False, local_files_only=True
    ).to(device)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    model.eval()
    return model, tokenizer
