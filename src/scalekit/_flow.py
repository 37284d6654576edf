"""The one driver of scalekit's I/O-free flows.

A block that does I/O writes each operation once, as a generator (a *flow*) that
yields the steps it needs done (a store call, a sleep, a batch of shard calls)
and receives each step's result at its ``yield``. :func:`drive` runs a flow with
a sync ``perform``; :func:`drive_async` awaits an async one. What ``perform``
raises, if it is one of ``catch``, is thrown into the flow at its ``yield``, so
the flow may handle it; anything else ends the flow and propagates.

>>> def flow():
...     total = yield ("get", "a")
...     try:
...         yield ("get", "missing")
...     except KeyError:
...         total += 1
...     return total
>>> drive(flow(), lambda step: {"a": 41}[step[1]], catch=KeyError)
42

Runtime complexity: O(1) per step, beside what ``perform`` costs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from typing import Any, TypeVar

__all__ = ["drive", "drive_async"]

_R = TypeVar("_R")
Catch = type[BaseException] | tuple[type[BaseException], ...]


def drive(
    flow: Generator[Any, Any, _R], perform: Callable[[Any], Any], catch: Catch = Exception
) -> _R:
    """Run ``flow`` to its end, doing each step with ``perform``; its return value."""
    try:
        step = next(flow)
        while True:
            try:
                result = perform(step)
            except catch as exc:
                step = flow.throw(exc)
            else:
                step = flow.send(result)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


async def drive_async(
    flow: Generator[Any, Any, _R],
    perform: Callable[[Any], Awaitable[Any]],
    catch: Catch = Exception,
) -> _R:
    """:func:`drive`, awaiting ``perform``."""
    try:
        step = next(flow)
        while True:
            try:
                result = await perform(step)
            except catch as exc:
                step = flow.throw(exc)
            else:
                step = flow.send(result)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
