"""Progress of long work, readable by every consumer: a rich bar on a terminal, plain lines in a pipe or a log.

A job of ``total`` units reports each finished unit with :meth:`Progress.advance`. On a terminal that redraws a
rich progress bar; anywhere else (``romer run > log``, CI) it prints one line per finished unit — throttled to one
per ``min_interval_s`` seconds, the last unit always — with the elapsed time and an ETA::

    default: 12/165 trials (7 %) · olmoe-tiny · chip 2 · noisy · 1 min 31 s elapsed · ETA 19 min 28 s
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def format_seconds(seconds: float) -> str:
    """``75.2`` → ``"1 min 15 s"``; ``3725`` → ``"1 h 02 min"``; under a minute with one decimal."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class Progress:
    """Progress of ``total`` units of ``unit`` (e.g. "trials"), as a context manager.

    ``enabled=False`` reports nothing. ``stream`` defaults to stdout; a terminal gets a bar, anything else lines.
    ``transient`` removes the bar when done (lines are never removed).
    """

    def __init__(self, description: str, total: int, unit: str = "steps", enabled: bool = True,
                 stream: TextIO | None = None, min_interval_s: float = 0.0, transient: bool = False):
        self.description = description
        self.total = max(int(total), 0)
        self.unit = unit
        self.enabled = enabled
        self.stream = stream
        self.min_interval_s = min_interval_s
        self.transient = transient
        self.done = 0
        self._bar = None
        self._task = None
        self._start = 0.0
        self._last_line = float("-inf")

    def __enter__(self) -> "Progress":
        self._start = time.monotonic()
        stream = self.stream or sys.stdout
        if self.enabled and stream.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress
            from rich.progress import TimeRemainingColumn

            self._bar = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), TimeRemainingColumn(), console=Console(file=stream),
                                     transient=self.transient)
            self._bar.start()
            self._task = self._bar.add_task(self.description, total=self.total)
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def advance(self, n: int = 1, label: str | None = None) -> None:
        """``n`` more units finished; ``label`` names the unit that just finished."""
        self.done += n
        if not self.enabled:
            return
        if self._bar is not None:
            description = f"{self.description} · {label}" if label else self.description
            self._bar.update(self._task, advance=n, description=description)
            return
        now = time.monotonic()
        if self.done < self.total and now - self._last_line < self.min_interval_s:
            return
        self._last_line = now
        print(self.line(label, now - self._start), file=self.stream or sys.stdout, flush=True)

    def line(self, label: str | None, elapsed_s: float) -> str:
        """The plain-text report after ``self.done`` units and ``elapsed_s`` seconds."""
        parts = [f"{self.description}: {self.done}/{self.total} {self.unit}"]
        if self.total:
            parts[0] += f" ({100 * self.done / self.total:.0f} %)"
        if label:
            parts.append(label)
        parts.append(f"{format_seconds(elapsed_s)} elapsed")
        if 0 < self.done < self.total:
            parts.append(f"ETA {format_seconds(elapsed_s / self.done * (self.total - self.done))}")
        return " · ".join(parts)
