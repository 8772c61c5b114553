"""Where a run's time goes: exclusive wall seconds per stage (load, clean, program, calibrate, evaluate, tasks:
zero-shot accuracy).

A ``StageClock`` times named stages; a stage opened inside another counts only for itself, so the stages of a
row add up to the time spent on it. ``take()`` hands the times gathered since the last call to the result row
being finished: work shared by several rows (a chip programmed once, the clean model scored once per model) is
counted in the row that first needed it, and summing the stages over all rows of a run gives the whole of it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

STAGES = ("load", "clean", "program", "calibrate", "evaluate", "tasks")


class StageClock:
    def __init__(self):
        self._open: list[list] = []  # [name, seconds spent in stages opened inside it]
        self._seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
        start = time.perf_counter()
        self._open.append([stage, 0.0])
        try:
            yield
        finally:
            _, inner = self._open.pop()
            elapsed = time.perf_counter() - start
            self._seconds[stage] = self._seconds.get(stage, 0.0) + elapsed - inner
            if self._open:
                self._open[-1][1] += elapsed

    def take(self) -> dict[str, float]:
        """Seconds per stage since the last ``take()`` (stages without time left out)."""
        out, self._seconds = self._seconds, {}
        return out
