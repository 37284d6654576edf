"""The one driver of scalekit's I/O-free flows.

A block that does I/O writes each operation once, as a generator (a *flow*) that
yields the steps it needs done (a store call, a sleep, a batch of shard calls)
and receives each step's result at its ``yield``. :func:`drive` runs a flow with
a sync ``perform``; :func:`drive_async` awaits an async one. What ``perform``
raises, if it is one of ``catch``, is thrown into the flow at its ``yield``, so
the flow may handle it; anything else ends the flow and propagates.

``perform`` gets each step and then ``args``: a shell hands its per-call context
(a request, its client) to one ``perform`` made once, not to a closure made per
call. :func:`drive_async` may take ``now``, a sync ``perform(step)`` tried first:
what it returns is the step's result, unless it is :data:`LATER`, which leaves
the step to the awaited ``perform`` (the web cache's ASGI shell makes a sync
store's calls so, without a coroutine each: its cached hit is one store call).

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

__all__ = ["LATER", "drive", "drive_async"]

_R = TypeVar("_R")
Catch = type[BaseException] | tuple[type[BaseException], ...]

LATER: Any = type("Later", (), {"__repr__": lambda self: "LATER"})()
"""What the ``now`` of :func:`drive_async` returns for a step it leaves to ``perform``."""


def drive(
    flow: Generator[Any, Any, _R],
    perform: Callable[..., Any],
    catch: Catch = Exception,
    args: tuple[Any, ...] = (),
) -> _R:
    """Run ``flow`` to its end, doing each step with ``perform(step, *args)``; its
    return value."""
    try:
        step = next(flow)
        while True:
            try:
                result = perform(step, *args)
            except catch as exc:
                step = flow.throw(exc)
            else:
                step = flow.send(result)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


async def drive_async(
    flow: Generator[Any, Any, _R],
    perform: Callable[..., Awaitable[Any]],
    catch: Catch = Exception,
    args: tuple[Any, ...] = (),
    now: Callable[[Any], Any] | None = None,
) -> _R:
    """:func:`drive`, awaiting ``perform`` on the steps that ``now`` (if any) left
    :data:`LATER`; what ``now`` raises is caught and thrown in as ``perform``'s."""
    try:
        step = next(flow)
        while True:
            try:
                if now is None or (result := now(step)) is LATER:
                    result = await perform(step, *args)
            except catch as exc:
                step = flow.throw(exc)
            else:
                step = flow.send(result)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
