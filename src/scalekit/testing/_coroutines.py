"""Contracts written once as coroutines, run on sync and async implementations.

A check is an ``async def`` that awaits the methods of the object under test. On
an async implementation it runs in the event loop as it is; on a sync one, the
object is wrapped in :class:`Awaited`, whose methods return awaitables that
never suspend, and :func:`drive` runs the check to its end without a loop.
"""

from __future__ import annotations

from collections.abc import Collection, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["Awaited", "drive", "expect", "raises"]


class Awaited:
    """A sync object whose ``methods`` return awaitables that never suspend."""

    def __init__(self, target: Any, methods: Collection[str]) -> None:
        self._target = target
        self._methods = methods

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._target, name)
        if name not in self._methods:
            return attribute

        async def call(*args: Any, **kwargs: Any) -> Any:
            return attribute(*args, **kwargs)

        return call


def drive(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that never suspends (a check on a sync object) to its end."""
    try:
        coroutine.send(None)
    except StopIteration as stop:
        return stop.value
    coroutine.close()
    raise AssertionError("a check on a sync object suspended: it returned an awaitable")


@contextmanager
def raises(
    kind: type[BaseException] | tuple[type[BaseException], ...], what: str
) -> Iterator[None]:
    """Fail with ``what`` unless the block raises ``kind``."""
    try:
        yield
    except kind:
        return
    raise AssertionError(f"{what}: no {kind!r} was raised")


def expect(condition: bool, what: str) -> None:
    """Fail with ``what`` unless ``condition``."""
    if not condition:
        raise AssertionError(what)
