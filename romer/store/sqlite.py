"""The results store: one SQLite row per trial (model × chip × method), written in its own transaction.

SQLite in WAL mode with ``synchronous=FULL``: a trial is on disk once ``add`` returns, so a run killed at any
point (Ctrl-C, SIGKILL) loses at most the trial being computed, and a rerun skips every stored trial. A row holds
everything needed to reproduce and report it: the config (by hash, JSON in ``configs``), the chip (preset label
and constants, placement, mapping, seed, inference time in s), the method config, the metrics (PPL also as a
column), the plan, git commit, library versions, seconds spent (and per stage: load, clean, program, calibrate,
evaluate) and the UTC time it was written. Each run adds a row to ``runs``: its wall time, backend, workers and
stage totals, so a run's time breakdown comes from the store. Reports read rows only (no pickles).

One writer per trial: a process computes a trial only while it holds the trial's row in ``leases`` (owner
``host:pid:start``, expiry in Unix seconds), claimed inside a ``BEGIN IMMEDIATE`` transaction, renewed while the
trial runs and released when it ends; a lease whose owner has ended (on this host) or whose expiry has passed is
taken over (``romer.store.lease``). Older romer versions ignore the table.
"""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import time
from collections.abc import Iterable
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from romer.owners import Owner

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS configs (
    config_hash TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    config_json TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS trials (
    trial_key TEXT PRIMARY KEY,
    config_hash TEXT NOT NULL REFERENCES configs(config_hash),
    model TEXT NOT NULL,
    preset TEXT NOT NULL,
    preset_json TEXT NOT NULL,
    placement TEXT NOT NULL,
    mapping TEXT NOT NULL,
    chip_seed INTEGER NOT NULL,
    t_inference REAL NOT NULL,
    method TEXT NOT NULL,
    method_kind TEXT NOT NULL,
    method_json TEXT NOT NULL,
    eval_json TEXT NOT NULL,
    ppl REAL,
    metrics_json TEXT NOT NULL,
    plan_json TEXT,
    git TEXT NOT NULL,
    versions_json TEXT NOT NULL,
    seconds REAL,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS trials_by_config ON trials(config_hash);
CREATE TABLE IF NOT EXISTS runs (
    config_hash TEXT NOT NULL,
    started_at TEXT NOT NULL,
    seconds REAL NOT NULL,
    backend TEXT NOT NULL,
    workers INTEGER NOT NULL,
    computed INTEGER NOT NULL,
    skipped INTEGER NOT NULL,
    stages_json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS leases (
    trial_key TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    expires REAL NOT NULL
);
"""
COLUMNS = ("trial_key", "config_hash", "model", "preset", "preset_json", "placement", "mapping", "chip_seed",
           "t_inference", "method", "method_kind", "method_json", "eval_json", "ppl", "metrics_json", "plan_json",
           "git", "versions_json", "seconds", "created_at")

JSON_COLUMNS = {"preset_json": "preset_config", "method_json": "method_config", "eval_json": "eval",
                "metrics_json": "metrics", "plan_json": "plan", "versions_json": "versions"}


def _jsonable(value: Any):
    """numpy / torch scalars and arrays → Python numbers and lists (json.dumps ``default``)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def dumps(payload: Any) -> str:
    return json.dumps(payload, sort_keys=True, ensure_ascii=False, default=_jsonable)


def git_revision(folder: str | Path | None = None) -> str:
    """``git rev-parse HEAD`` of the repository holding ``folder`` (default: this package), ``-dirty`` if tracked
    files differ from it; "unknown" without git or outside a repository."""
    folder = Path(folder) if folder is not None else Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def library_versions() -> dict[str, str]:
    """Installed versions of torch, transformers and romer (without importing them)."""
    out = {}
    for name in ("torch", "transformers", "romer"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def provenance() -> dict:
    """What every row of one run shares: git commit and library versions."""
    return {"git": git_revision(), "versions": library_versions()}


def _open_read_only(path: Path) -> sqlite3.Connection:
    """A read-only connection to a romer store: nothing is created, migrated or switched (an empty file, another
    application's database or a store of another schema is refused untouched; a store on a read-only mount is
    read as immutable)."""
    from romer.errors import UserError

    if not path.is_file() or path.stat().st_size == 0:
        raise UserError(f"no results store at {path}" + (" (the file is empty)" if path.is_file() else ""))
    uri = path.resolve().as_uri()
    try:
        db = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=60.0, isolation_level=None)
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.OperationalError:  # a WAL store on a read-only mount: no -shm file can be made beside it
        db = sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, isolation_level=None)
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError:
        raise UserError(f"{path} is not a romer results store (not an SQLite database)") from None
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if not {"configs", "trials", "runs"} <= tables or version != SCHEMA_VERSION:
        db.close()
        raise UserError(f"{path} is not a romer results store (schema {version}, tables "
                        f"{', '.join(sorted(tables)) or 'none'})")
    return db


class ResultsStore:
    """A results database file (created on first use). Use as a context manager or call ``close()``."""

    def __init__(self, path: str | Path, read_only: bool = False):
        self.path = Path(path)
        if read_only:
            self._db = _open_read_only(self.path)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, SCHEMA_VERSION):
            raise RuntimeError(f"{self.path}: results store schema {version}, this romer reads {SCHEMA_VERSION}")
        self._db.executescript(SCHEMA)
        self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "ResultsStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- writing ------------------------------------------------------------------------------------------

    def save_config(self, config_hash: str, name: str, config: dict) -> None:
        """Record a config once (the first record of a hash wins)."""
        self._transaction("INSERT OR IGNORE INTO configs VALUES (?, ?, ?, ?)",
                          (config_hash, name, dumps(config), _now()))

    def add(self, group, result: dict, prov: dict | None = None) -> bool:
        """Store one method's result on one TrialGroup in its own transaction; False if the trial was already
        there (the stored one is kept)."""
        prov = prov or provenance()
        name = result["method"]
        method = next((m for m in group.methods if m["name"] == name), None)
        if method is None:
            raise ValueError(f"result for method {name!r}, which group {group.model} / seed {group.chip['seed']} "
                             f"does not hold")
        metrics = {k: v for k, v in result.items() if k not in ("method", "plan")}
        ppl = metrics.get("ppl")
        chip = group.chip
        row = (group.trial_key(name), group.config_hash, group.model, group.preset, dumps(chip["preset"]),
               chip["placement"], chip["mapping"], int(chip["seed"]), float(chip["t_inference"]), name,
               method["kind"], dumps(method), dumps(group.eval),
               None if ppl is None or (isinstance(ppl, float) and math.isnan(ppl)) else float(ppl),
               dumps(metrics), None if result.get("plan") is None else dumps(result["plan"]),
               prov["git"], dumps(prov["versions"]), metrics.get("seconds"), _now())
        placeholders = ", ".join("?" * len(COLUMNS))
        return self._transaction(f"INSERT OR IGNORE INTO trials ({', '.join(COLUMNS)}) VALUES ({placeholders})",
                                 row) == 1

    def add_run(self, config_hash: str, started_at: str, seconds: float, backend: str, workers: int, computed: int,
                skipped: int, stages: dict[str, float]) -> None:
        """Record one run of a config: its wall time (s), how it ran, and the stage seconds of the trials it
        computed (summed over workers, so they add up to about workers × seconds)."""
        self._transaction("INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                          (config_hash, started_at, float(seconds), backend, int(workers), int(computed), int(skipped),
                           dumps(stages)))

    def runs(self, config_hash: str | None = None) -> list[dict]:
        """Recorded runs, oldest first: {config_hash, started_at, seconds, backend, workers, computed, skipped,
        stages}."""
        sql, params = "SELECT * FROM runs", ()
        if config_hash is not None:
            sql, params = sql + " WHERE config_hash = ?", (config_hash,)
        keys = ("config_hash", "started_at", "seconds", "backend", "workers", "computed", "skipped", "stages")
        out = [dict(zip(keys, row)) for row in self._db.execute(sql + " ORDER BY started_at, rowid", params)]
        for run in out:
            run["stages"] = json.loads(run["stages"])
        return out

    # --- leases: one writer per trial ------------------------------------------------------------------------

    def claim(self, keys: Iterable[str], owner: str, ttl_s: float, now: float | None = None) -> set[str]:
        """Lease to ``owner`` for ``ttl_s`` s every trial of ``keys`` that is not stored and not leased by another
        live owner (an owner that has ended on this host, or whose lease expired, is taken over); returns the keys
        now leased to ``owner`` (its own leases renewed). One ``BEGIN IMMEDIATE`` transaction: two processes never
        both get a key. ``now``: Unix time in s (default the clock)."""
        keys = list(dict.fromkeys(keys))
        if not keys:
            return set()
        now = time.time() if now is None else now
        marks = ", ".join("?" * len(keys))
        self._db.execute("BEGIN IMMEDIATE")
        try:
            done = {k for (k,) in self._db.execute(f"SELECT trial_key FROM trials WHERE trial_key IN ({marks})", keys)}
            held = {k: (o, e) for k, o, e in self._db.execute(
                f"SELECT trial_key, owner, expires FROM leases WHERE trial_key IN ({marks})", keys)}
            mine = [k for k in keys if k not in done and (k not in held or _free(*held[k], owner, now))]
            self._db.executemany("INSERT OR REPLACE INTO leases VALUES (?, ?, ?)",
                                 [(k, owner, now + ttl_s) for k in mine])
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        return set(mine)

    def renew(self, owner: str, ttl_s: float, now: float | None = None) -> int:
        """Extend every lease ``owner`` holds to ``ttl_s`` s from now; how many it holds."""
        now = time.time() if now is None else now
        return self._transaction("UPDATE leases SET expires = ? WHERE owner = ?", (now + ttl_s, owner))

    def release(self, owner: str, keys: Iterable[str] | None = None) -> None:
        """Give up ``owner``'s leases on ``keys`` (default: all of them)."""
        if keys is None:
            self._transaction("DELETE FROM leases WHERE owner = ?", (owner,))
            return
        for key in keys:
            self._transaction("DELETE FROM leases WHERE owner = ? AND trial_key = ?", (owner, key))

    def leases(self) -> dict[str, tuple[str, float]]:
        """trial key → (owner, expiry in Unix s) of every lease held."""
        return {k: (o, e) for k, o, e in self._db.execute("SELECT trial_key, owner, expires FROM leases")}

    def stored(self, keys: Iterable[str]) -> set[str]:
        """The keys among ``keys`` whose trial is stored."""
        keys = list(keys)
        marks = ", ".join("?" * len(keys))
        return {k for (k,) in self._db.execute(f"SELECT trial_key FROM trials WHERE trial_key IN ({marks})", keys)}

    def _transaction(self, sql: str, params: tuple) -> int:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            changed = self._db.execute(sql, params).rowcount
            self._db.execute("COMMIT")
        except BaseException:  # Ctrl-C included: the trial is either committed whole or not at all
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        return changed

    # --- reading ------------------------------------------------------------------------------------------

    def done_keys(self, config_hash: str | None = None) -> set[str]:
        sql, params = "SELECT trial_key FROM trials", ()
        if config_hash is not None:
            sql, params = sql + " WHERE config_hash = ?", (config_hash,)
        return {key for (key,) in self._db.execute(sql, params)}

    def count(self, config_hash: str | None = None) -> int:
        return len(self.done_keys(config_hash))

    def configs(self) -> list[dict]:
        """Every recorded config, oldest first: {config_hash, name, config, created_at}."""
        rows = self._db.execute("SELECT config_hash, name, config_json, created_at FROM configs "
                                "ORDER BY created_at, config_hash").fetchall()
        return [{"config_hash": h, "name": n, "config": json.loads(c), "created_at": t} for h, n, c, t in rows]

    def config(self, config_hash: str) -> dict | None:
        return next((c for c in self.configs() if c["config_hash"] == config_hash), None)

    def latest_config_hash(self) -> str | None:
        """The config of the most recently written trial (or recorded config when no trial is stored yet)."""
        row = self._db.execute("SELECT config_hash FROM trials ORDER BY created_at DESC, rowid DESC LIMIT 1").fetchone()
        if row is None:
            configs = self.configs()
            return configs[-1]["config_hash"] if configs else None
        return row[0]

    def rows(self, config_hash: str | None = None, with_plans: bool = False) -> list[dict]:
        """Trials as dicts (JSON columns parsed, named as in ``JSON_COLUMNS``; plans only if asked), in a fixed order:
        model, preset, placement, t, chip seed, method."""
        columns = [c for c in COLUMNS if with_plans or c != "plan_json"]
        sql = f"SELECT {', '.join(columns)} FROM trials"
        params: tuple = ()
        if config_hash is not None:
            sql, params = sql + " WHERE config_hash = ?", (config_hash,)
        sql += " ORDER BY model, preset, placement, t_inference, chip_seed, method"
        out = []
        for values in self._db.execute(sql, params):
            row = dict(zip(columns, values))
            for key in [c for c in columns if c in JSON_COLUMNS]:
                text = row.pop(key)
                row[JSON_COLUMNS[key]] = None if text is None else json.loads(text)
            out.append(row)
        return out


def _free(holder: str, expires: float, owner: str, now: float) -> bool:
    """Whether a lease held by ``holder`` until ``expires`` (Unix s) may go to ``owner`` at ``now``: it is
    ``owner``'s own, it has expired, or its holder has ended."""
    if holder == owner or expires <= now:
        return True
    held_by = Owner.parse(holder)
    return held_by is not None and held_by.alive() is False


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")
