"""Timing two workloads against each other on a shared machine."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def interleaved_ratio(
    ours: Callable[[], Any], rival: Callable[[], Any], *, rounds: int = 40, batch: int = 100
) -> tuple[float, float, float]:
    """Median seconds per call of ``ours`` and ``rival``, measured in alternating
    batches (so both see the same machine), and the median of the per-round ratios
    ``ours / rival``."""
    for _ in range(batch):
        ours()
        rival()
    our_times, rival_times, ratios = [], [], []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(batch):
            ours()
        middle = time.perf_counter()
        for _ in range(batch):
            rival()
        end = time.perf_counter()
        our_times.append((middle - start) / batch)
        rival_times.append((end - middle) / batch)
        ratios.append((middle - start) / (end - middle))
    return statistics.median(our_times), statistics.median(rival_times), statistics.median(ratios)


def record(benchmark: Any, ours: Callable[[], Any], rival: Callable[[], Any], **kw: Any) -> float:
    """Run :func:`interleaved_ratio` once under ``benchmark`` and keep its figures in
    ``extra_info`` (``ours_us``, ``rival_us``, ``ratio``); returns the ratio."""
    ours_s, rival_s, ratio = benchmark.pedantic(
        interleaved_ratio, args=(ours, rival), kwargs=kw, rounds=1, iterations=1
    )
    benchmark.extra_info.update(
        ours_us=round(ours_s * 1e6, 2), rival_us=round(rival_s * 1e6, 2), ratio=round(ratio, 3)
    )
    return float(ratio)
