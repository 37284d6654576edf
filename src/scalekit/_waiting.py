"""Waiting for an event from threads and asyncio tasks at once, woken by events
rather than polling: the one copy of the wait-and-wake code that every block uses.

- :class:`Wakeups`: blocked threads (a condition) and waiting tasks (futures,
  resolved thread-safely on their own loops) waiting for one kind of event; a
  waiter retries an ``attempt`` until it returns something. mq's memory and
  SQLite queues wait on it for a message or for room.
- :class:`AsyncWaiters`: tasks waiting in line, woken one at a time from any
  thread (a signal for one consumer) or all at once. mq's Redis backend wakes
  them from its pump thread.
- :class:`Handoff`: a result computed on a worker thread for a task that may be
  cancelled meanwhile: whichever side comes second undoes it (mq gives back a
  message nobody received). A cache fill started for a cancelled caller has the
  same shape.
- :class:`Latch`: set once, waited for by threads and by tasks on any loop. The
  cache decorators' callers wait on it for a call in flight.
- :func:`resolve`: complete a future if it is not done (for ``call_soon_threadsafe``).

Nothing here does I/O or imports a block.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = [
    "AsyncWaiters",
    "Handoff",
    "Latch",
    "Waiter",
    "Wakeups",
    "resolve",
    "seconds_left",
]

T = TypeVar("T")


def resolve(future: asyncio.Future[None]) -> None:
    """Complete ``future`` if it is not done yet (call on its loop)."""
    if not future.done():
        future.set_result(None)


def seconds_left(deadline: float | None, due_in: float | None) -> float | None:
    """How long to sleep: until the ``time.monotonic()`` ``deadline`` or until
    something is due in ``due_in`` seconds, whichever comes first (at least a
    millisecond when something is due, never a busy loop); None: no limit."""
    wait = None if deadline is None else deadline - time.monotonic()
    if due_in is not None:
        due_in = max(due_in, 0.001)
        wait = due_in if wait is None else min(wait, due_in)
    return wait


class Wakeups:
    """Blocked threads and asyncio tasks waiting for one kind of event (a message
    ready, or room in a bounded queue; a value filled), woken by events rather
    than polling.

    ``sleepers`` is read without the lock by the side that makes the event, after
    it has made it: a waiter counts itself in before it checks, so one of the two
    always sees the other (no lost wake-up).
    """

    def __init__(self, lock: threading.Lock) -> None:
        self._cond = threading.Condition(lock)
        self.sleepers = 0
        self._generation = 0
        self._tasks: set[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = set()

    def wake(self, everyone: bool = False) -> None:
        """Wake one blocked thread (or all) and every waiting task."""
        with self._cond:
            self._generation += 1
            if everyone:
                self._cond.notify_all()
            else:
                self._cond.notify()
            tasks = list(self._tasks)
        for loop, future in tasks:
            with contextlib.suppress(RuntimeError):  # a closed loop: its waiter is gone
                loop.call_soon_threadsafe(resolve, future)

    def wait(
        self,
        attempt: Callable[[], T | None],
        timeout: float | None,
        until: Callable[[], float | None],
        give_up: Callable[[], bool] = lambda: False,
    ) -> T | None:
        """Call ``attempt`` until it returns something, waiting between tries for
        a wake-up, ``timeout`` (None: no limit) or the seconds ``until()`` returns
        (when something becomes due: None, nothing). None once timed out or
        once ``give_up()`` is true."""
        deadline = None if timeout is None else time.monotonic() + timeout
        cond = self._cond
        with cond:
            self.sleepers += 1
        try:
            while True:
                generation = self._generation
                got = attempt()
                if got is not None:
                    return got
                if give_up():  # one last look: what was put before the close is drained
                    return attempt()
                wait = seconds_left(deadline, until())
                if wait is not None and wait <= 0:
                    return None
                with cond:
                    if self._generation == generation and cond.wait(wait) and give_up():
                        cond.notify()  # woken but leaving: pass the wake-up on
        finally:
            with cond:
                self.sleepers -= 1

    async def wait_async(
        self,
        attempt: Callable[[], T | None],
        timeout: float | None,
        until: Callable[[], float | None],
        give_up: Callable[[], bool] = lambda: False,
    ) -> T | None:
        """:meth:`wait` for a coroutine: the task sleeps on a future, not a thread."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            future: asyncio.Future[None] = loop.create_future()
            entry = (loop, future)
            with self._cond:
                self.sleepers += 1
                self._tasks.add(entry)
            try:
                got = attempt()
                if got is not None:
                    return got
                if give_up():
                    return attempt()
                wait = seconds_left(deadline, until())
                if wait is not None and wait <= 0:
                    return None
                try:
                    # asyncio.wait, not wait_for: on 3.10 and 3.11 wait_for swallows a
                    # cancellation that arrives together with the wake-up.
                    await asyncio.wait((future,), timeout=wait)
                except asyncio.CancelledError:
                    if future.done() and not future.cancelled():
                        self.wake()  # woken but cancelled: pass the wake-up on
                    raise
            finally:
                with self._cond:
                    self.sleepers -= 1
                    self._tasks.discard(entry)


class Latch:
    """An event that is set once, for blocked threads and for asyncio tasks on any
    event loop. A thread waits on a :class:`threading.Event` made only when a
    thread does wait; a task waits on a future of its own loop, resolved
    thread-safely when the latch is set."""

    __slots__ = ("_event", "_lock", "_set", "_tasks")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._set = False
        self._event: threading.Event | None = None
        self._tasks: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        """Wake every waiter, now and later; setting twice is a no-op."""
        with self._lock:
            if self._set:
                return
            self._set = True
            event, tasks, self._tasks = self._event, self._tasks, []
        if event is not None:
            event.set()
        for loop, future in tasks:
            with contextlib.suppress(RuntimeError):  # a closed loop: its waiter is gone
                loop.call_soon_threadsafe(resolve, future)

    def wait(self) -> None:
        """Block this thread until the latch is set."""
        with self._lock:
            if self._set:
                return
            if self._event is None:
                self._event = threading.Event()
            event = self._event
        event.wait()

    async def wait_async(self) -> None:
        """Suspend this task until the latch is set."""
        with self._lock:
            if self._set:
                return
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._tasks.append((asyncio.get_running_loop(), future))
        await future


class Handoff(Generic[T]):
    """A result passed from a worker thread to a task that may be cancelled
    meanwhile: whichever side comes second undoes it. The thread calls
    :meth:`offer` (False: the task is gone, undo it); the cancelled task calls
    :meth:`cancel` (what the thread had offered, for the task to undo)."""

    __slots__ = ("_got", "_lock", "cancelled")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._got: T | None = None
        self.cancelled = False

    def offer(self, got: T | None) -> bool:
        with self._lock:
            if self.cancelled:
                return False
            self._got = got
            return True

    def cancel(self) -> T | None:
        with self._lock:
            self.cancelled = True
            got, self._got = self._got, None
            return got


class Waiter:
    """One asyncio task waiting for a message."""

    __slots__ = ("future", "loop", "woken")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()
        self.woken = False

    def reset(self) -> None:
        """A fresh future, for the next wait (call on the task's loop)."""
        if self.future.done():
            self.future = self.loop.create_future()
        self.woken = False


class AsyncWaiters:
    """The asyncio tasks of one handle waiting for a message, oldest first. Woken
    one at a time (per signal, or by a task that took a full batch), or all at
    once (close); waking resolves the task's future from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[Waiter, None] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def add(self, loop: asyncio.AbstractEventLoop) -> Waiter:
        waiter = Waiter(loop)
        with self._lock:
            self._waiting[waiter] = None
        return waiter

    def discard(self, waiter: Waiter) -> None:
        with self._lock:
            self._waiting.pop(waiter, None)

    def wake_one(self) -> bool:
        """Wake the oldest task not woken yet; False if no task waits."""
        with self._lock:
            if not self._waiting:
                return False
            target = next((w for w in self._waiting if not w.woken), None)
            if target is None:
                return True  # all are woken already and will look again
            target.woken = True
        self._call(target)
        return True

    def wake_all(self) -> None:
        with self._lock:
            waiters = list(self._waiting)
            for waiter in waiters:
                waiter.woken = True
        for waiter in waiters:
            self._call(waiter)

    @staticmethod
    def _call(waiter: Waiter) -> None:
        with contextlib.suppress(RuntimeError):  # its loop is closed: the task is gone
            waiter.loop.call_soon_threadsafe(resolve, waiter.future)
