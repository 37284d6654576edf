"""A progress bar for long moves: rich or tqdm when installed, plain lines otherwise;
and the log lines of a move's progress."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any, Protocol

__all__ = ["progress_bar"]

_log = logging.getLogger("scalekit.sharding")


class _Report(Protocol):
    @property
    def examined(self) -> int: ...

    @property
    def moved(self) -> int: ...

    @property
    def total(self) -> int: ...

    @property
    def done(self) -> bool: ...


def progress_bar(
    description: str,
    *,
    stream: IO[str] | None = None,
    every: float = 1.0,
    unit: str = "key",
    moved: str = "moved",
) -> Callable[[_Report], None]:
    """A callback that shows each report of a move (a
    :class:`~scalekit.sharding.MigrationProgress`, or anything with ``examined``,
    ``total``, ``moved`` and ``done``) and closes itself when done.

    rich's bar when rich is installed, else tqdm's, else a plain line on
    ``stream`` (standard error) at most every ``every`` seconds and at the end:
    ``"<description>: 500/3,000 <unit>s examined (17%), 120 <moved>"``.
    """
    try:
        from rich.progress import Progress  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        pass
    else:
        return _rich(Progress, description)
    try:
        from tqdm import tqdm  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError:
        pass
    else:
        return _tqdm(tqdm, description, unit)
    return _plain(description, stream, every, unit, moved)


def _rich(progress_class: Any, description: str) -> Callable[[_Report], None]:
    progress = progress_class(transient=False)
    task = progress.add_task(description, total=None)
    progress.start()

    def update(report: _Report) -> None:
        progress.update(task, completed=report.examined, total=report.total or None)
        if report.done:
            progress.stop()

    return update


def _tqdm(tqdm: Any, description: str, unit: str) -> Callable[[_Report], None]:
    bar = tqdm(unit=unit, desc=description)
    seen = [0]

    def update(report: _Report) -> None:
        bar.total = report.total
        bar.update(report.examined - seen[0])
        seen[0] = report.examined
        if report.done:
            bar.close()

    return update


def _plain(
    description: str, stream: IO[str] | None, every: float, unit: str, moved: str
) -> Callable[[_Report], None]:
    last = [-float("inf")]

    def update(report: _Report) -> None:
        now = time.monotonic()
        if not report.done and now - last[0] < every:
            return
        last[0] = now
        total = report.total or report.examined
        share = report.examined / total if total else 1.0
        print(
            f"{description}: {report.examined:,}/{total:,} {unit}s examined ({share:.0%}), "
            f"{report.moved:,} {moved}{', done' if report.done else ''}",
            file=stream if stream is not None else sys.stderr,
            flush=True,
        )

    return update


class ProgressLog:
    """Logs a move on ``scalekit.sharding`` at INFO: its start, every ``step``
    percent of the work (10) or ``every`` seconds (whichever comes first), its
    end, and a stop. ``resharder`` names the mover in the ``extra`` fields; ``unit`` is what
    ``examined`` counts (keys, slots).

    Runtime complexity: O(1) per report.
    """

    def __init__(
        self,
        resharder: str,
        unit: str,
        *,
        every: float = 5.0,
        step: int = 10,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._resharder = resharder
        self._unit = unit
        self._every = every
        self._step = step
        self._clock = clock
        self._started = False
        self._finished = False
        self._next_percent = step
        self._last = 0.0
        self._lock = threading.Lock()  # steps of one move may report from several threads

    def _fields(self, examined: int, total: int, moved: int) -> dict[str, Any]:
        share = examined / total if total else 1.0
        return {
            "resharder": self._resharder,
            "examined": examined,
            "total": total,
            "moved": moved,
            "percent": round(100 * share, 1),
        }

    def report(self, examined: int, total: int, moved: int, done: bool) -> None:
        """After each batch: log the start, a step of progress, or the end."""
        with self._lock:
            self._report(examined, total, moved, done)

    def _report(self, examined: int, total: int, moved: int, done: bool) -> None:
        if self._finished:
            return
        fields = self._fields(examined, total, moved)
        now = self._clock()
        if not self._started:
            self._started = True
            self._last = now
            _log.info(
                "resharding started (%s): %d %ss to examine",
                self._resharder,
                total,
                self._unit,
                extra=fields,
            )
        if done:
            self._finished = True
            _log.info(
                "resharding done (%s): %d %ss examined, %d keys moved",
                self._resharder,
                examined,
                self._unit,
                moved,
                extra=fields,
            )
            return
        share = examined / total if total else 0.0
        if 100 * examined < self._next_percent * total and now - self._last < self._every:
            return
        while self._next_percent * total <= 100 * examined:
            self._next_percent += self._step
        self._last = now
        _log.info(
            "resharding (%s): %d/%d %ss examined (%.0f%%), %d keys moved",
            self._resharder,
            examined,
            total,
            self._unit,
            100 * share,
            moved,
            extra=fields,
        )

    def stopped(self, examined: int, total: int, moved: int) -> None:
        """Log a move stopped before its end (it can be resumed)."""
        _log.info(
            "resharding stopped (%s) at %d/%d %ss examined, %d keys moved",
            self._resharder,
            examined,
            total,
            self._unit,
            moved,
            extra=self._fields(examined, total, moved),
        )
