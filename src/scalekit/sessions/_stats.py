"""What a session store has done: :class:`SessionStats`, counted by the operations
themselves (``scalekit.sessions._core``), so the sync and async stores count alike."""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass

__all__ = ["SessionStats", "Tally"]


@dataclass(frozen=True)
class SessionStats:
    """A snapshot of a session store's counters, from :meth:`stats`.

    ``created``: sessions stored for the first time (by ``create``, or a blank
    session saved with data); ``loaded`` / ``not_found``: loads that found a live
    session or not (unknown, malformed or expired ids); ``saved``: saves that
    stored changes; ``merged``: concurrent saves merged into them; ``conflicts``:
    saves and rotations refused with ``SessionConflict``; ``touched``: idle
    expiries extended without changes; ``rotated``, ``deleted``; ``purged``:
    expired sessions removed by ``purge_expired``. Counted once the store answered:
    a call that raised a backend error counts nothing.
    """

    created: int = 0
    loaded: int = 0
    not_found: int = 0
    saved: int = 0
    merged: int = 0
    conflicts: int = 0
    touched: int = 0
    rotated: int = 0
    deleted: int = 0
    purged: int = 0


_FIELDS = tuple(field.name for field in dataclasses.fields(SessionStats))


class Tally:
    """The counters of one store, safe to bump from many threads.

    Runtime complexity: O(1) per :meth:`add`.
    """

    __slots__ = ("_counts", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(_FIELDS, 0)

    def add(self, field: str, count: int = 1) -> None:
        with self._lock:
            self._counts[field] += count

    def snapshot(self) -> SessionStats:
        with self._lock:
            return SessionStats(**self._counts)

    def reset(self) -> None:
        with self._lock:
            self._counts = dict.fromkeys(_FIELDS, 0)
