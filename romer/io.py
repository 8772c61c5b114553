"""Atomic file output: write to a temporary file beside the target, then rename (never a half-written file)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, payload) -> Path:
    return write_text_atomic(path, json.dumps(payload, indent=2, ensure_ascii=False) + "\n")


def replace_between_markers(path: str | Path, begin: str, end: str, text: str) -> Path:
    """Rewrite the part of a text file between the marker lines ``begin`` and ``end`` (markers kept), atomically."""
    content = Path(path).read_text(encoding="utf-8")
    if content.count(begin) != 1 or content.count(end) != 1:
        raise ValueError(f"{path}: expected exactly one {begin!r} and one {end!r}")
    head, rest = content.split(begin)
    _, tail = rest.split(end)
    return write_text_atomic(path, f"{head}{begin}\n{text}\n{end}{tail}")
