"""Timing two workloads against each other on a shared machine (the timing itself
lives in ``scalekit._bench_timing``, shared with ``scalekit bench``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from scalekit._bench_timing import interleaved_ratio

__all__ = ["interleaved_ratio", "record"]


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
