"""Which process holds something (a trial's lease in the results store, a calibrate staging folder), and whether
that process still runs.

An owner is ``host:pid:start`` where ``start`` is the process's start time in clock ticks since boot (Linux
``/proc/PID/stat``), so a pid the kernel reused for another process does not count as the same owner. On this
host an owner is alive when a process with that pid and start time exists; on another host this cannot be seen
(``alive`` is None) and callers fall back to a lease's expiry or a folder's age.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path


def _start_ticks(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (field 22 of /proc/PID/stat); None when the
    process does not exist, "?" where /proc is not available."""
    stat = Path(f"/proc/{pid}/stat")
    if not Path("/proc/self/stat").exists():
        return "?" if _pid_exists(pid) else None
    try:
        text = stat.read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()[19]  # fields after "(comm)" start at field 3


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True


@dataclass(frozen=True)
class Owner:
    """A process: host name, pid and start time (clock ticks since boot, "?" where unknown)."""

    host: str
    pid: int
    start: str

    @classmethod
    def this_process(cls) -> "Owner":
        return cls(socket.gethostname(), os.getpid(), _start_ticks(os.getpid()) or "?")

    @classmethod
    def parse(cls, text: str) -> "Owner | None":
        """``host:pid:start`` → Owner; None for anything else."""
        parts = text.split(":")
        if len(parts) < 3 or not parts[-2].isdigit():
            return None
        return cls(":".join(parts[:-2]), int(parts[-2]), parts[-1])

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}:{self.start}"

    def alive(self) -> bool | None:
        """True while this process runs, False once it has ended; None for a process on another host."""
        if self.host != socket.gethostname():
            return None
        start = _start_ticks(self.pid)
        return start is not None and (start == self.start or "?" in (start, self.start))
