"""Records (one dict per row) from the local forms datasets come in: text, jsonl, parquet, save_to_disk, HF caches.

Supported forms, chosen by what ``path`` is:
- ``*.txt`` / ``*.raw`` / ``*.tokens``: one record ``{"text": line}`` per line, newline kept; a whitespace-only line
  becomes ``""`` (how Hugging Face's ``wikitext`` builder turns ``wiki.test.raw`` into rows);
- ``*.jsonl`` / ``*.json`` (JSON lines, or one JSON array), optionally ``.gz``-compressed (C4's ``*.json.gz`` shards);
- ``*.parquet`` (needs pyarrow, part of ``romer[eval]``);
- a folder written by ``datasets``' ``save_to_disk`` (a ``Dataset`` or a ``DatasetDict``, one split chosen);
- any other folder: its data files whose name names the split (``test``, ``valid``/``validation``, ``train``).
Records of a Hugging Face Hub dataset in the local cache come from :func:`hub_cache_records` (no network).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from romer.data.offline import offline, require
from romer.errors import UserError

TEXT_SUFFIXES = (".txt", ".raw", ".tokens")
JSON_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz")
PARQUET_SUFFIXES = (".parquet",)
DATA_SUFFIXES = TEXT_SUFFIXES + JSON_SUFFIXES + PARQUET_SUFFIXES
# Names a split goes by in file names of public releases (wiki.valid.raw, c4-validation.*, valid.jsonl, …).
SPLIT_ALIASES = {"test": ("test",), "validation": ("validation", "valid", "val", "dev"), "train": ("train",)}


def data_suffix(path: Path) -> str:
    """The data-format suffix of a file name (``.json.gz`` counts as one), lower case."""
    name = path.name.lower()
    for suffix in sorted(DATA_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()


def _read_text_lines(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [{"text": line if line.strip() else ""} for line in f]


def _read_json(path: Path) -> list[dict]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            content = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not readable as UTF-8 JSON lines ({exc})") from None
    stripped = content.lstrip()
    try:
        if stripped.startswith("["):
            records = json.loads(stripped)
        else:
            records = [json.loads(line) for line in content.splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON lines ({exc.msg} at line {exc.lineno})") from None
    if not all(isinstance(r, dict) for r in records):
        raise UserError(f"{path}: every JSON line must be an object with named fields")
    return records


def _read_parquet(path: Path) -> list[dict]:
    parquet = require("pyarrow.parquet", "reading parquet files")
    try:
        return parquet.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises ArrowInvalid and friends for a file that is not parquet
        raise UserError(f"{path}: not a readable parquet file ({type(exc).__name__})") from None


def read_file(path: Path) -> list[dict]:
    """Records of one data file, by its suffix."""
    suffix = data_suffix(path)
    if suffix in TEXT_SUFFIXES:
        return _read_text_lines(path)
    if suffix in JSON_SUFFIXES:
        return _read_json(path)
    if suffix in PARQUET_SUFFIXES:
        return _read_parquet(path)
    raise UserError(f"{path}: unsupported file type {suffix or '(none)'!r}; use one of {', '.join(DATA_SUFFIXES)}")


def _split_of(name: str) -> str | None:
    tokens = [t for t in name.lower().replace("-", ".").replace("_", ".").split(".") if t]
    for split, aliases in SPLIT_ALIASES.items():
        if any(t in aliases for t in tokens):
            return split
    return None


def split_files(folder: Path, split: str) -> list[Path]:
    """Data files under ``folder`` (recursively, sorted) whose file name names ``split``."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and data_suffix(p) in DATA_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    return [p for p in files if _split_of(p.name) == split]


def _is_saved_dataset(folder: Path) -> bool:
    return (folder / "dataset_dict.json").exists() or (folder / "state.json").exists()


def _read_saved_dataset(folder: Path, split: str) -> list[dict]:
    datasets = require("datasets", "reading a save_to_disk folder")
    with offline():
        loaded = datasets.load_from_disk(str(folder))
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise UserError(f"{folder}: saved dataset has no split {split!r} (it has {', '.join(loaded)})")
        loaded = loaded[split]
    return loaded.to_list()


def read_records(path: str | Path, split: str) -> list[dict]:
    """Records of ``split`` stored at ``path`` (a file, a save_to_disk folder or a folder of split files)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"{path}: no such file or folder")
    if path.is_file():
        return read_file(path)
    if _is_saved_dataset(path):
        return _read_saved_dataset(path, split)
    files = split_files(path, split)
    if not files:
        raise UserError(f"{path}: no data file for split {split!r} ({', '.join(DATA_SUFFIXES)} with "
                        f"{'/'.join(SPLIT_ALIASES[split])} in its name)")
    return [record for f in files for record in read_file(f)]


def hub_cache_records(repo_id: str, patterns: tuple[str, ...], config: str | None, split: str,
                      cache_dir: str | Path | None = None) -> list[dict]:
    """Records of a Hub dataset already in the local Hugging Face cache, never downloading.

    First the hub cache (``datasets--owner--name/snapshots/<commit>/``): the files matching the first of
    ``patterns`` (globs formatted with ``split``) that matches any; then the ``datasets`` arrow cache through
    ``load_dataset(repo_id, config, split=split)`` with every offline switch on.
    """
    from huggingface_hub import snapshot_download

    with offline():
        try:
            snapshot = Path(snapshot_download(repo_id, repo_type="dataset", local_files_only=True, cache_dir=cache_dir))
        except Exception:  # LocalEntryNotFoundError and friends: not in the hub cache
            snapshot = None
    if snapshot is not None:
        for pattern in patterns:
            files = sorted(snapshot.glob(pattern.format(split=split)))
            if files:
                return [record for f in files for record in read_file(f)]
    try:
        datasets = require("datasets", "reading the Hugging Face datasets cache")
        with offline():
            loaded = datasets.load_dataset(repo_id, config, split=split, cache_dir=cache_dir)
        return loaded.to_list()
    except UserError:
        raise
    except Exception:
        raise UserError(f"{repo_id} ({config or 'default'}, {split}) is not in the local Hugging Face cache; "
                        f"give the path of a local copy") from None


def text_field(records: list[dict], source: str, preferred: tuple[str, ...] = ("text", "page")) -> str:
    """The name of the records' text column: the first of ``preferred`` present, else the only string column."""
    if not records:
        raise UserError(f"{source}: the dataset is empty")
    first = records[0]
    for name in preferred:
        if name in first:
            return name
    strings = [k for k, v in first.items() if isinstance(v, str)]
    if len(strings) == 1:
        return strings[0]
    raise UserError(f"{source}: no text column (looked for {', '.join(preferred)}; it has {', '.join(first) or 'none'})")
