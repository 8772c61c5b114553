"""Output folders written as a whole: built in a hidden staging folder beside the target, then renamed into place.

A staging folder is named ``.OUT.romer-staging-PID.START.HOST-XXXXXXXX`` (``OUT`` the target's name; ``PID``,
``START`` and a hash of ``HOST`` name the process that makes it, ``romer.owners``), so a later run can recognise
the ones a killed process left (SIGKILL, a power cut) and remove them when it starts: a staging folder is stale
when its owner ran on this host and has ended, or, made on another host (a shared file system), when it is older
than :data:`STALE_AFTER_S`. Nothing else beside the target is ever touched.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
import time
from pathlib import Path

from romer.owners import Owner

STALE_AFTER_S = 24 * 3600.0  # a staging folder from another host is left alone for a day (s)
TAG = "romer-staging"


def _host_hash(host: str) -> str:
    return hashlib.sha256(host.encode()).hexdigest()[:8]


def _pattern(out: Path) -> re.Pattern:
    return re.compile(rf"^\.{re.escape(out.name)}\.{TAG}-(\d+)\.([0-9?]+)\.([0-9a-f]{{8}})-[A-Za-z0-9_]+$")


def is_stale(folder: Path, out: Path, now: float | None = None) -> bool:
    """Whether ``folder`` is a staging folder of ``out`` that its owner left behind (see the module's rule)."""
    match = _pattern(out).match(folder.name)
    if not match or not folder.is_dir() or folder.is_symlink():
        return False
    pid, start, host = match.groups()
    me = Owner.this_process()
    if host == _host_hash(me.host):
        return Owner(me.host, int(pid), start).alive() is False
    now = time.time() if now is None else now
    return now - folder.stat().st_mtime > STALE_AFTER_S


def remove_stale(out: str | Path) -> list[Path]:
    """Remove the staging folders of ``out`` that killed processes left beside it; the ones removed."""
    out = Path(out)
    if not out.parent.is_dir():
        return []
    stale = [p for p in out.parent.glob(f".{out.name}.{TAG}-*") if is_stale(p, out)]
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
    return stale


def make_staging(out: str | Path) -> Path:
    """A new, empty staging folder beside ``out`` (its parent created), after removing stale ones."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(out)
    me = Owner.this_process()
    start = me.start if me.start.isdigit() else "?"
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.{TAG}-{me.pid}.{start}.{_host_hash(me.host)}-",
                                 dir=out.parent))


def publish_modes(folder: Path) -> None:
    """Give a staged output folder the modes every other romer output has: folders 0755, files 0644 (mkdtemp makes
    0700, and libraries write some files 0600)."""
    folder.chmod(0o755)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
