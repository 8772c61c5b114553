"""One writer per trial: how concurrent runs on one store split the trials instead of each computing all of them.

:class:`TrialClaims` hands this process its share of a run's work, group by group: it leases a group's missing
trials (``ResultsStore.claim``), skips those another live process holds, and comes back to them once its first
pass is over — they are either stored by then, free again (their owner released them, ended or let the lease
expire: taken over), or still held (then the caller waits, ``poll_s`` at a time). :class:`Heartbeat` renews this
process's leases every ``renew_s`` seconds from a thread of its own, so a trial longer than the lease keeps it.

Work items are ``(group, method names)``; a group needs only ``trial_key(name)`` (no import of the experiment).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from romer.owners import Owner

WAIT = "wait"  # TrialClaims.take: the work left is held by other live processes; wait, then take again


@dataclass(frozen=True)
class LeaseTimes:
    """Lease length, renewal period and the wait between looks at trials another process holds, in seconds. A
    lease outlives its owner by at most ``ttl_s`` on another host (on this host an ended owner is seen at once)."""

    ttl_s: float = 300.0
    renew_s: float = 60.0
    poll_s: float = 1.0


class Heartbeat:
    """A thread renewing ``owner``'s leases in the store at ``path`` every ``times.renew_s`` s (its own
    connection), as a context manager; on exit it stops and releases every lease ``owner`` still holds."""

    def __init__(self, path: str | Path, owner: str, times: LeaseTimes):
        self.path, self.owner, self.times = Path(path), owner, times
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="romer-lease-heartbeat", daemon=True)

    def _beat(self) -> None:
        from romer.store.sqlite import ResultsStore

        try:
            with ResultsStore(self.path) as store:
                while not self._stop.wait(self.times.renew_s):
                    store.renew(self.owner, self.times.ttl_s)
        except sqlite3.Error:  # a full disk, a store locked for long: the run itself reports it; a lease not
            return  # renewed only expires (a trial stored twice keeps the first row)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        from romer.store.sqlite import ResultsStore

        self._stop.set()
        self._thread.join()
        try:
            with ResultsStore(self.path) as store:
                store.release(self.owner)
        except sqlite3.Error:  # never hide the error that ends the run; leases of an ended owner are taken over
            pass


class TrialClaims:
    """This process's share of ``work`` (a list of (group, set of method names)) on ``store``.

    ``take()`` returns the next (group, names) leased to this process, :data:`WAIT` while everything left is
    held by other live processes, or None when nothing is left. ``done(group, names)`` releases a finished (or
    failed) item's leases. ``on_stored_elsewhere(group, name)`` is told of every trial another process stored
    while this one ran; ``on_wait(count, owners)`` once each time this process starts waiting.
    """

    def __init__(self, store, work, owner: str | None = None, times: LeaseTimes = LeaseTimes(),
                 on_stored_elsewhere: Callable | None = None, on_wait: Callable | None = None):
        self.store, self.times = store, times
        self.owner = owner or str(Owner.this_process())
        self._queue = [(group, set(names)) for group, names in work]
        self._deferred: list[tuple[object, set[str]]] = []
        self._waiting = False
        self._wake = threading.Event()
        self._on_stored_elsewhere = on_stored_elsewhere or (lambda group, name: None)
        self._on_wait = on_wait or (lambda count, owners: None)
        self.stored_elsewhere = 0

    def _claim(self, group, names: set[str]) -> set[str]:
        keys = {group.trial_key(name): name for name in names}
        return {keys[k] for k in self.store.claim(keys, self.owner, self.times.ttl_s)}

    def take(self):
        while self._queue:  # first pass, in the work's order
            group, names = self._queue.pop(0)
            mine = self._claim(group, names)
            if names - mine:
                self._deferred.append((group, names - mine))
            if mine:
                return group, mine
        self._forget_stored()
        for index, (group, names) in enumerate(self._deferred):
            mine = self._claim(group, names)
            if mine:
                self._waiting = False
                self._deferred[index] = (group, names - mine)
                self._deferred = [item for item in self._deferred if item[1]]
                return group, mine
        if not self._deferred:
            return None
        if not self._waiting:
            self._waiting = True
            holders = self.store.leases()
            owners = sorted({holders[g.trial_key(n)][0] for g, names in self._deferred for n in names
                             if g.trial_key(n) in holders})
            self._on_wait(sum(len(names) for _, names in self._deferred), owners)
        return WAIT

    def _forget_stored(self) -> None:
        """Drop deferred trials another process has stored since, telling ``on_stored_elsewhere``."""
        left = []
        for group, names in self._deferred:
            keys = {group.trial_key(name): name for name in names}
            for key in sorted(self.store.stored(keys)):
                self.stored_elsewhere += 1
                self._on_stored_elsewhere(group, keys[key])
                names = names - {keys[key]}
            if names:
                left.append((group, names))
        self._deferred = left

    def wait(self) -> None:
        """Block ``times.poll_s`` s before the next look at trials held by others."""
        self._wake.wait(self.times.poll_s)

    def done(self, group, names) -> None:
        """Release a finished or failed item's leases; a release that fails leaves them to the run's end (the
        heartbeat releases every lease) or, failing that, to the next process (this owner will have ended)."""
        try:
            self.store.release(self.owner, [group.trial_key(name) for name in names])
        except sqlite3.Error:  # never hide the error that is ending the item
            pass
