"""Active health checks: probe each backend now and then, mark it down or up.

Every check runs on its own (a daemon thread, or an asyncio task) under a timeout,
so a check that hangs costs its own backend a failed check per round and delays
nobody else: the other backends are still checked every ``interval``, and
:meth:`HealthChecker.stop` returns without waiting for it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, TypeVar, Union

from scalekit._validate import check_callable, check_count, check_seconds, type_name
from scalekit.balancing._base import _expect
from scalekit.errors import ArgumentTypeError, ConfigurationError

__all__ = ["HealthChecker"]

B = TypeVar("B", bound=Hashable)

_log = logging.getLogger("scalekit.balancing")

# A backend whose last check is still running: the thread's future or the task.
_Running = Union["concurrent.futures.Future[Any]", "asyncio.Future[Any]"]


class HealthChecker(Generic[B]):
    """Runs ``check(backend) -> bool`` on every backend every ``interval`` seconds.

    A backend is marked down after ``fall`` failed checks in a row and up again
    after ``rise`` passed ones (HAProxy's thresholds), so one lost probe does not
    flap it. A check that raises counts as failed; the exception is kept in
    ``last_error[backend]``.

    Every check runs on its own under ``timeout`` seconds (half the interval by
    default): a plain function on a daemon thread of its own, a coroutine
    function as an asyncio task. A check still running at the timeout counts as
    failed (``last_error`` holds a :class:`TimeoutError`), and while it keeps
    running, each round counts it failed again without starting another, so a
    backend whose check hangs goes down after ``fall`` rounds and never holds
    more than one thread. The other backends are checked on time whatever one
    check does. A thread cannot be killed: a sync check that never returns keeps
    its daemon thread; an async one is cancelled.

    :meth:`start` checks on a thread, :meth:`start_async` as a task of the running
    event loop; :meth:`stop` ends either without waiting for a check in flight.
    :meth:`check_all` and :meth:`check_all_async` run one round, for tests and
    cron-style use.

    Runtime complexity: one check per backend per round, all in parallel; a
    round lasts at most ``timeout`` seconds.

    >>> from scalekit.balancing import RoundRobin
    >>> balancer = RoundRobin(["a", "b"])
    >>> checker = HealthChecker(balancer, lambda backend: backend == "a", fall=1)
    >>> checker.check_all()
    {'a': True, 'b': False}
    >>> balancer.healthy()
    ('a',)
    """

    def __init__(
        self,
        balancer: Any,
        check: Callable[[B], bool] | Callable[[B], Awaitable[bool]],
        interval: float = 5.0,
        *,
        timeout: float | None = None,
        rise: int = 2,
        fall: int = 3,
    ) -> None:
        for method in ("backends", "mark_down", "mark_up"):
            if not hasattr(balancer, method):
                raise ArgumentTypeError(
                    f"balancer must have backends, mark_down and mark_up (a Balancer), "
                    f"got {type_name(balancer)}"
                )
        check_callable(check, "check")
        interval = check_seconds(interval, "interval")
        if timeout is None:
            timeout = interval / 2
        else:
            timeout = check_seconds(timeout, "timeout")
        rise = check_count(rise, "rise", minimum=1)
        fall = check_count(fall, "fall", minimum=1)
        self.balancer = balancer
        self.check = check
        self.interval = interval
        self.timeout = timeout
        self.rise = rise
        self.fall = fall
        self.last_error: dict[B, BaseException] = {}
        self._is_async = _is_coroutine_function(check)
        self._lock = threading.RLock()  # the streaks, the marks and the checks running
        self._life = threading.Lock()  # the thread or task: never held around a mark
        self._streaks: dict[B, int] = {}  # > 0: passes in a row; < 0: failures in a row
        self._took_down: set[B] = set()  # what this checker marked down (and may mark up)
        self._running: dict[B, _Running] = {}  # each backend's check still in flight
        self._stopping: concurrent.futures.Future[None] | None = None
        self._thread: threading.Thread | None = None
        self._task: asyncio.Task[None] | None = None

    # -- one round ---------------------------------------------------------------

    def _record(self, results: dict[B, bool]) -> None:
        with self._lock:
            present = set(self.balancer.backends)
            self._forget_gone(present)
            for backend, passed in results.items():
                if backend not in present:
                    continue  # removed while being checked
                streak = self._streaks.get(backend, 0)
                streak = max(streak, 0) + 1 if passed else min(streak, 0) - 1
                self._streaks[backend] = streak
                if streak >= self.rise and backend in self._took_down:
                    self._took_down.discard(backend)
                    self.balancer.mark_up(backend)
                    _log.info(
                        "backend %r re-admitted: %d health checks passed in a row",
                        backend,
                        streak,
                        extra={"backend": backend, "reason": "health check", "checks": streak},
                    )
                elif -streak >= self.fall and backend not in self._took_down:
                    self._took_down.add(backend)
                    self.balancer.mark_down(backend)
                    error = self.last_error.get(backend)
                    _log.warning(
                        "backend %r marked down: %d health checks failed in a row (%s)",
                        backend,
                        -streak,
                        "no error raised" if error is None else f"last error: {error!r}",
                        extra={
                            "backend": backend,
                            "reason": "health check",
                            "checks": -streak,
                            "error": None if error is None else repr(error),
                        },
                    )

    def _forget_gone(self, present: set[B]) -> None:
        """Under the lock: forget the backends removed from the balancer, and start
        afresh with those it took down that are back in rotation without it (removed
        and added again, or marked up by hand): each is a backend to take down again
        after ``fall`` failed checks, not one this checker holds down."""
        for gone in [backend for backend in self._streaks if backend not in present]:
            del self._streaks[gone]
            self.last_error.pop(gone, None)
        self._took_down &= present
        healthy = getattr(self.balancer, "healthy", None)
        if self._took_down and callable(healthy):
            back = self._took_down.intersection(healthy())
            self._took_down -= back
            for backend in back:
                self._streaks.pop(backend, None)

    def _verdict(self, backend: B, running: _Running | None) -> bool:
        """The result of ``backend``'s check this round: its check's answer if it
        ended in time, a failure (kept in ``last_error``) otherwise."""
        if running is None or not running.done():
            self.last_error[backend] = TimeoutError(
                f"the health check of {backend!r} took longer than {self.timeout:g} s"
            )
            return False
        if running.cancelled():
            self.last_error[backend] = TimeoutError(
                f"the health check of {backend!r} was cancelled"
            )
            return False
        error = running.exception()
        if error is not None:
            self.last_error[backend] = error
            return False
        return bool(running.result())

    def _launch(self, backend: B) -> concurrent.futures.Future[Any]:
        """Run the sync check of ``backend`` on a daemon thread of its own."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                result = self.check(backend)
                if inspect.isawaitable(result):
                    if inspect.iscoroutine(result):
                        result.close()  # never awaited: no warning
                    raise ConfigurationError(
                        "an async check needs start_async() or check_all_async()"
                    )
            except BaseException as exc:  # a failed probe: kept, and counted as failed
                future.set_exception(exc)
            else:
                future.set_result(result)

        threading.Thread(target=run, name=f"scalekit-health-{backend!r}", daemon=True).start()
        return future

    def check_all(self) -> dict[B, bool]:
        """Check every backend once (synchronous checks), each on its own thread,
        and return the results. Returns within ``timeout`` seconds, whatever the
        checks do.

        Raises :class:`~scalekit.errors.ConfigurationError` for an ``async def``
        check: use :meth:`check_all_async`.
        """
        return self._round(None)

    def _round(self, stopping: concurrent.futures.Future[None] | None) -> dict[B, bool]:
        if self._is_async:
            raise ConfigurationError("an async check needs start_async() or check_all_async()")
        deadline = time.monotonic() + self.timeout
        with self._lock:
            backends = list(self.balancer.backends)
            started: dict[B, _Running] = {}
            for backend in backends:
                if backend not in self._running:  # one hanging check holds one thread
                    started[backend] = self._running[backend] = self._launch(backend)
        waiting: set[Any] = set(started.values())
        if stopping is not None:
            waiting.add(stopping)
        while started and not (stopping is not None and stopping.done()):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            _done, pending = concurrent.futures.wait(
                waiting, timeout=left, return_when=concurrent.futures.FIRST_COMPLETED
            )
            waiting = pending
            if not waiting - {stopping}:
                break
        if stopping is not None and stopping.done():
            self._release(started)  # stopped mid-round: no verdict, nothing marked
            return {}
        return self._finish(backends, started)

    def _release(self, started: dict[B, _Running]) -> None:
        """Forget the checks of this round that ended; the others when they end."""
        with self._lock:
            for backend, running in started.items():
                if running.done() and self._running.get(backend) is running:
                    del self._running[backend]
                elif not running.done():
                    running.add_done_callback(self._forget(backend, running))

    def _finish(self, backends: list[B], started: dict[B, _Running]) -> dict[B, bool]:
        self._release(started)
        # A check still running from an earlier round has no answer for this one.
        results = {backend: self._verdict(backend, started.get(backend)) for backend in backends}
        self._record(results)
        return results

    def _forget(self, backend: B, running: _Running) -> Callable[[Any], None]:
        def forget(_: Any) -> None:
            with self._lock:
                if self._running.get(backend) is running:
                    del self._running[backend]

        return forget

    async def check_all_async(self) -> dict[B, bool]:
        """Check every backend once, concurrently: an ``async def`` check as a task
        each, a plain one on a daemon thread each. Returns within ``timeout``
        seconds; a check still running then is cancelled (a task) and counts as
        failed."""
        deadline = asyncio.get_running_loop().time() + self.timeout
        with self._lock:
            backends = list(self.balancer.backends)
            tasks: dict[B, asyncio.Future[Any]] = {}
            for backend in backends:
                if backend not in self._running:
                    tasks[backend] = self._running[backend] = asyncio.ensure_future(
                        self._one_async(backend)
                    )
        try:
            if tasks:
                left = deadline - asyncio.get_running_loop().time()
                await asyncio.wait(tasks.values(), timeout=max(0.0, left))
        finally:
            for running in tasks.values():
                if not running.done():
                    running.cancel()  # a task that ignores it stays in _running
        started: dict[B, _Running] = dict(tasks)
        return self._finish(backends, started)

    async def _one_async(self, backend: B) -> Any:
        if self._is_async:
            result = self.check(backend)
        else:
            result = await asyncio.wrap_future(self._launch(backend))
        if inspect.isawaitable(result):
            result = await result
        return result

    # -- running -----------------------------------------------------------------

    def start(self) -> HealthChecker[B]:
        """Check on a daemon thread every ``interval`` seconds until :meth:`stop`;
        return the checker."""
        if self._is_async:
            raise ConfigurationError("an async check needs start_async()")
        with self._life:
            if self._thread is not None or self._task is not None:
                raise ConfigurationError("the health checker is already running")
            stopping: concurrent.futures.Future[None] = concurrent.futures.Future()
            self._stopping = stopping

            def loop() -> None:
                while not stopping.done():
                    began = time.monotonic()
                    self._round(stopping)
                    pause = max(0.0, self.interval - (time.monotonic() - began))
                    concurrent.futures.wait([stopping], timeout=pause)

            self._thread = threading.Thread(target=loop, name="scalekit-health", daemon=True)
            self._thread.start()
        return self

    def start_async(self) -> asyncio.Task[None]:
        """Check as a task of the running event loop every ``interval`` seconds
        until :meth:`stop`; return the task."""
        with self._life:
            if self._thread is not None or self._task is not None:
                raise ConfigurationError("the health checker is already running")
            loop = asyncio.get_running_loop()

            async def run() -> None:
                while True:
                    began = loop.time()
                    await self.check_all_async()
                    await asyncio.sleep(max(0.0, self.interval - (loop.time() - began)))

            self._task = loop.create_task(run())
            return self._task

    def stop(self) -> None:
        """Stop the thread or the task, without waiting for a check in flight.

        Returns as soon as the checker's thread has seen the stop, which it does at
        once: it only ever waits on the stop signal or on checks, and otherwise
        spends its time in ``balancer.mark_down``/``mark_up``. Even if those
        block, ``stop()`` returns within ``timeout + 1`` seconds. An async
        checker's task is cancelled, with the checks it runs, and ``stop()``
        returns at once. No check starts after ``stop()`` returns; one that was
        running goes on on its daemon thread, and its answer is dropped.
        """
        with self._life:
            thread, self._thread = self._thread, None
            task, self._task = self._task, None
            stopping, self._stopping = self._stopping, None
        if stopping is not None and not stopping.done():
            stopping.set_result(None)
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.timeout + 1.0)
        if task is not None:
            task.cancel()

    @property
    def running(self) -> bool:
        """Whether :meth:`start` or :meth:`start_async` runs the checks now."""
        return self._thread is not None or self._task is not None

    def _check(self) -> None:
        """Assert the internal invariants. Raises :class:`AssertionError`."""
        with self._lock:
            for backend, streak in self._streaks.items():
                _expect(streak != 0, f"{backend!r} has a streak of 0")
            for backend in self._took_down:
                _expect(
                    self._streaks.get(backend, 0) < self.rise,
                    f"{backend!r} passed {self.rise} checks and is still taken down",
                )
            _expect(self._thread is None or self._task is None, "both a thread and a task")


def _is_coroutine_function(check: object) -> bool:
    """``check`` is an ``async def`` function, or an object whose ``__call__`` is."""
    return inspect.iscoroutinefunction(check) or inspect.iscoroutinefunction(
        getattr(check, "__call__", None)  # noqa: B004
    )
