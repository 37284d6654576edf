"""Memoizing in a shared store, with stampede protection across app servers.

:func:`~scalekit.cache.cached` over a :class:`~scalekit.protocols.Store` (a
:class:`~scalekit.cache.RedisCache`, a :class:`~scalekit.cache.TieredCache`, a
:class:`~scalekit.sharding.ShardedStore`) instead of an in-process mapping. A
miss is computed once per process (callers of the same key in one process join
one call) and, with a lease, once across processes: the caller that misses takes
a short lease in the store (``add``, atomic at the store); the others, in any
process, wait for the value to appear instead of calling the function. A holder
that crashes leaves a lease that expires after ``lease`` seconds, and then
another caller takes over.

The memoization is written once, as a flow that yields the store calls, sleeps
and function calls it needs; :func:`run` drives it for a function and a sync
store, :func:`run_async` for a coroutine function (and an async store, or a sync
one on a worker thread).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
import uuid
from collections.abc import Callable, Generator, Hashable
from typing import Any, NamedTuple

from scalekit import _json
from scalekit._flow import drive, drive_async
from scalekit._waiting import Latch
from scalekit.errors import ArgumentTypeError, ReentrantCall

__all__ = ["LocalCalls", "Memo", "run", "run_async", "store_key"]

_MISSING: Any = object()
_log = logging.getLogger("scalekit.cache")

Step = tuple[Any, ...]
Flow = Generator[Step, Any, "Outcome"]


class Outcome(NamedTuple):
    value: Any
    hit: bool


def store_key(namespace: str, key: Callable[..., Hashable] | None) -> Callable[..., str]:
    """The function from a call's arguments to its key in the store.

    With no ``key``: the strict JSON of ``[args, kwargs]`` (so every process
    computes the same key), after ``namespace`` (the function's qualified name).
    A ``key`` returning a ``str`` is used as it is after the namespace; any
    other result is JSON-encoded.
    """

    def make(*args: Any, **kwargs: Any) -> str:
        raw: Any = (
            [list(args), dict(sorted(kwargs.items()))] if key is None else key(*args, **kwargs)
        )
        if isinstance(raw, str):
            return namespace + raw
        try:
            return namespace + _json.dumps(raw).decode()
        except (TypeError, ValueError) as exc:
            raise ArgumentTypeError(
                "the arguments of a function cached in a shared store must be JSON values "
                f"(or pass key= returning a str): {exc}"
            ) from None

    return make


class _Call:
    """One computation in this process, joined by its other callers."""

    __slots__ = ("done", "error", "outcome", "runner", "stale")

    def __init__(self, runner: object) -> None:
        self.runner = runner
        self.stale = False
        self.done = Latch()
        self.outcome: Outcome | None = None
        self.error: BaseException | None = None


class LocalCalls:
    """The calls in flight in this process, by store key; no I/O."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[str, _Call] = {}
        self.hits = 0
        self.misses = 0

    def count(self, hit: bool) -> None:
        with self._lock:
            if hit:
                self.hits += 1
            else:
                self.misses += 1

    def begin(self, key: str, runner: object) -> tuple[_Call, bool]:
        """The call for ``key`` and whether this caller leads it."""
        with self._lock:
            call = self._calls.get(key)
            if call is not None:
                if call.runner == runner:
                    raise ReentrantCall(
                        f"the cached function called itself with the key {key!r} it is computing"
                    )
                return call, False
            call = self._calls[key] = _Call(runner)
            return call, True

    def finish(
        self, key: str, call: _Call, outcome: Outcome | None, error: BaseException | None
    ) -> None:
        with self._lock:
            if self._calls.get(key) is call:
                del self._calls[key]
            call.outcome, call.error = outcome, error
        call.done.set()

    def detach(self, key: str | None = None) -> None:
        """Mark the call of ``key`` (or every call) stale: it answers its callers
        but stores nothing; later callers start a new call."""
        with self._lock:
            keys = list(self._calls) if key is None else [key]
            for name in keys:
                call = self._calls.pop(name, None)
                if call is not None:
                    call.stale = True

    def reset(self) -> None:
        with self._lock:
            self.hits = self.misses = 0


class Memo:
    """The settings of one function cached in a store, and its flow."""

    def __init__(
        self,
        store: Any,
        lease: float | None,
        ttl: float | None,
        poll: float,
    ) -> None:
        self.store = store
        self.lease = lease
        self.ttl = ttl
        self.poll = poll
        self.calls = LocalCalls()
        # a store that writes a value only while a guard key holds a token, in one
        # atomic step, closes the window between the lease check and the store
        self.guarded = bool(getattr(store, "atomic_set_if", False)) and callable(
            getattr(store, "set_if", None)
        )

    def lease_key(self, key: str) -> str:
        return key + "#lease"

    def flow(self, key: str, runner: object) -> Flow:
        value = yield ("get", key, _MISSING)
        if value is not _MISSING:
            return Outcome(value, True)
        while True:
            call, leads = self.calls.begin(key, runner)
            if leads:
                break
            yield ("join", call)
            if isinstance(call.error, asyncio.CancelledError):
                continue  # the leader was cancelled, not this caller: try again
            if call.error is not None:
                raise call.error
            assert call.outcome is not None
            return Outcome(call.outcome.value, True)
        try:
            outcome = yield from self._lead(key, call)
        except BaseException as exc:
            self.calls.finish(key, call, None, exc)
            raise
        self.calls.finish(key, call, outcome, None)
        return outcome

    def _store(self, key: str, value: Any) -> Step:
        return ("set", key, value) if self.ttl is None else ("set", key, value, self.ttl)

    def _lead(self, key: str, call: _Call) -> Flow:
        if self.lease is None:
            value = yield ("call",)
            if not call.stale:
                yield self._store(key, value)
            return Outcome(value, False)
        lease_key, token = self.lease_key(key), uuid.uuid4().hex
        delay = self.poll
        while True:
            try:
                taken = yield ("add", lease_key, token, self.lease)
            except BaseException:
                yield from self._release(lease_key, token)  # the add may have been done
                raise
            if taken:
                return (yield from self._compute(key, call, lease_key, token))
            while True:  # another caller holds the lease: wait for its value
                value = yield ("get", key, _MISSING)
                if value is not _MISSING:
                    return Outcome(value, True)
                if (yield ("get", lease_key, _MISSING)) is _MISSING:
                    break  # it finished without storing, failed, or its lease expired
                yield ("sleep", delay)
                delay = min(delay * 2, 0.25)

    def _compute(self, key: str, call: _Call, lease_key: str, token: str) -> Flow:
        try:
            value = yield ("call",)
            # An invalidation meanwhile dropped the lease (or it expired and another
            # caller took it): this result may predate the change, so it is not stored.
            if self.guarded and not call.stale:
                still_ours = bool((yield ("set_if", key, value, lease_key, token, self.ttl)))
            else:  # two steps: an invalidation between them is undone (docs/scale-out.md)
                still_ours = (yield ("get", lease_key, _MISSING)) == token
                if still_ours and not call.stale:
                    yield self._store(key, value)
        except BaseException:
            # the function, the store or a cancellation failed this caller: let
            # another caller try now rather than when the lease expires
            yield from self._release(lease_key, token)
            raise
        if still_ours:
            try:
                yield ("delete", lease_key)
            except Exception:  # the value is stored: answer with it
                _log.warning("could not drop the lease %r; it expires by itself", lease_key)
        return Outcome(value, False)

    def _release(self, lease_key: str, token: str) -> Generator[Step, Any, None]:
        """Drop the lease if it is still this caller's (read, then delete: a lease
        that expired and was taken in between is dropped too, which costs one more
        computation, never a wrong value); a failing store leaves it to expire."""
        try:
            if (yield ("get", lease_key, _MISSING)) == token:
                yield ("delete", lease_key)
        except Exception:
            _log.warning("could not drop the lease %r; it expires by itself", lease_key)


def _store_call(store: Any, step: Step) -> Any:
    name = step[0]
    if name == "set" and len(step) == 4:
        return store.set(step[1], step[2], ttl=step[3])
    if name == "add":
        return store.add(step[1], step[2], ttl=step[3])
    if name == "set_if":
        return store.set_if(step[1], step[2], guard=step[3], expected=step[4], ttl=step[5])
    return getattr(store, name)(*step[1:])


def run(memo: Memo, flow: Flow, func: Callable[..., Any], args: Any, kwargs: Any) -> Outcome:
    """Drive ``flow`` with direct calls (a sync function over a sync store)."""

    def perform(step: Step) -> Any:
        name = step[0]
        if name == "call":
            return func(*args, **kwargs)
        if name == "sleep":
            return time.sleep(step[1])
        if name == "join":
            return step[1].done.wait()
        return _store_call(memo.store, step)

    return drive(flow, perform, BaseException)


async def _on_thread(store: Any, step: Step) -> Any:
    """A sync store's call on a worker thread; a cancellation waits for the call
    to end (it runs on regardless), so the flow's next step sees what it did."""
    done = asyncio.ensure_future(asyncio.to_thread(_store_call, store, step))
    try:
        return await asyncio.shield(done)
    except asyncio.CancelledError:
        await asyncio.wait([done])
        if not done.cancelled():
            done.exception()  # retrieved: the cancellation is what the caller sees
        raise


async def run_async(
    memo: Memo, flow: Flow, func: Callable[..., Any], args: Any, kwargs: Any
) -> Outcome:
    """Drive ``flow`` awaiting the coroutine function and an async store's
    calls (a sync store's run on a worker thread)."""
    awaited = inspect.iscoroutinefunction(getattr(memo.store, "get", None))

    async def perform(step: Step) -> Any:
        name = step[0]
        if name == "call":
            return await func(*args, **kwargs)
        if name == "sleep":
            return await asyncio.sleep(step[1])
        if name == "join":
            return await step[1].done.wait_async()
        if awaited:
            return await _store_call(memo.store, step)
        return await _on_thread(memo.store, step)

    return await drive_async(flow, perform, BaseException)
