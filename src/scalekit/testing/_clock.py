"""FakeClock: virtual time for tests of anything that takes ``clock=``."""

from __future__ import annotations

import math
import threading

from scalekit.errors import ConfigurationError

__all__ = ["FakeClock"]


class FakeClock:
    """A clock that stands still until :meth:`advance` or :meth:`set` moves it.

    Thread-safe; time never goes backwards.

    >>> clock = FakeClock()
    >>> clock()
    0.0
    >>> clock.advance(1.5)
    1.5
    >>> clock()
    1.5
    """

    __slots__ = ("_lock", "_now")

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(self._finite(start))
        self._lock = threading.Lock()

    def __call__(self) -> float:
        """Return the current fake time in seconds."""
        return self._now

    @property
    def now(self) -> float:
        """The current fake time in seconds."""
        return self._now

    def advance(self, seconds: float) -> float:
        """Move time forward by ``seconds`` (>= 0) and return the new time."""
        seconds = self._finite(seconds)
        if seconds < 0:
            raise ConfigurationError(f"time cannot go backwards: advance({seconds!r})")
        with self._lock:
            self._now += seconds
            return self._now

    def set(self, now: float) -> None:
        """Move time forward to ``now``; going backwards raises ``ConfigurationError``."""
        now = self._finite(now)
        with self._lock:
            if now < self._now:
                raise ConfigurationError(f"time cannot go backwards: {now!r} < {self._now!r}")
            self._now = float(now)

    def __repr__(self) -> str:
        return f"FakeClock(now={self._now!r})"

    @staticmethod
    def _finite(value: float) -> float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise TypeError(f"time must be a number, got {type(value).__name__}")
        if not math.isfinite(value):
            raise ConfigurationError(f"time must be finite, got {value!r}")
        return value
