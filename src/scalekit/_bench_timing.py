"""Timing two workloads against each other on a shared machine.

Used by ``benchmarks/`` (through ``benchmarks/timing.py``) and by ``scalekit bench``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

__all__ = ["interleaved_ratio"]


def interleaved_ratio(
    ours: Callable[[], Any],
    rival: Callable[[], Any],
    *,
    rounds: int = 40,
    batch: int = 100,
    seconds: float | None = None,
) -> tuple[float, float, float]:
    """Median seconds per call of ``ours`` and ``rival``, measured in alternating
    batches (so both see the same machine; which goes first alternates too, so
    neither always runs on the caches the other warmed), and the median of the
    per-round ratios ``ours / rival``.

    With ``seconds``, rounds stop once that much time has passed since the first
    (after 3 at least), so a loaded machine shortens the run instead of stretching it.
    """
    for _ in range(batch):
        ours()
        rival()
    our_times, rival_times, ratios = [], [], []
    began = time.perf_counter()
    for done in range(rounds):
        first, second = (ours, rival) if done % 2 == 0 else (rival, ours)
        start = time.perf_counter()
        for _ in range(batch):
            first()
        middle = time.perf_counter()
        for _ in range(batch):
            second()
        end = time.perf_counter()
        ours_took, rival_took = (
            (middle - start, end - middle) if done % 2 == 0 else (end - middle, middle - start)
        )
        our_times.append(ours_took / batch)
        rival_times.append(rival_took / batch)
        ratios.append(ours_took / rival_took)
        if seconds is not None and done >= 2 and end - began > seconds:
            break
    return statistics.median(our_times), statistics.median(rival_times), statistics.median(ratios)
