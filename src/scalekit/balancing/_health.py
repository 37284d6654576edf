"""Active health checks: probe each backend now and then, mark it down or up."""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, TypeVar

from scalekit.errors import ConfigurationError

__all__ = ["HealthChecker"]

B = TypeVar("B", bound=Hashable)


class HealthChecker(Generic[B]):
    """Runs ``check(backend) -> bool`` on every backend every ``interval`` seconds.

    A backend is marked down after ``fall`` failed checks in a row and up again
    after ``rise`` passed ones (HAProxy's thresholds), so one lost probe does not
    flap it. A check that raises counts as failed; the exception is kept in
    ``last_error[backend]``. ``check`` may be a plain function (run on a thread,
    :meth:`start`) or a coroutine function (run as an asyncio task,
    :meth:`start_async`). :meth:`check_all` runs one round, for tests and cron-style use.

    Runtime complexity: one check per backend per round.
    """

    def __init__(
        self,
        balancer: Any,
        check: Callable[[B], bool] | Callable[[B], Awaitable[bool]],
        interval: float = 5.0,
        *,
        rise: int = 2,
        fall: int = 3,
    ) -> None:
        if not interval > 0:
            raise ConfigurationError(f"interval must be positive, got {interval!r}")
        if rise < 1 or fall < 1:
            raise ConfigurationError("rise and fall must be at least 1")
        self.balancer = balancer
        self.check = check
        self.interval = interval
        self.rise = rise
        self.fall = fall
        self.last_error: dict[B, BaseException] = {}
        self._streaks: dict[B, int] = {}  # > 0: passes in a row; < 0: failures in a row
        self._took_down: set[B] = set()  # what this checker marked down (and may mark up)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._task: asyncio.Task[None] | None = None

    def _record(self, backend: B, passed: bool) -> None:
        streak = self._streaks.get(backend, 0)
        streak = max(streak, 0) + 1 if passed else min(streak, 0) - 1
        self._streaks[backend] = streak
        if backend not in self.balancer.backends:
            return  # removed while being checked
        if streak >= self.rise and backend in self._took_down:
            self._took_down.discard(backend)
            self.balancer.mark_up(backend)
        elif -streak >= self.fall and backend not in self._took_down:
            self._took_down.add(backend)
            self.balancer.mark_down(backend)

    def _run_check(self, backend: B) -> bool:
        try:
            result = self.check(backend)
            if inspect.isawaitable(result):
                raise TypeError("an async check needs start_async() or check_all_async()")
            return bool(result)
        except Exception as exc:  # a failed probe: kept, and counted as failed
            self.last_error[backend] = exc
            return False

    def check_all(self) -> dict[B, bool]:
        """Check every backend once (synchronous checks); return the results."""
        results = {backend: self._run_check(backend) for backend in self.balancer.backends}
        for backend, passed in results.items():
            self._record(backend, passed)
        return results

    async def check_all_async(self) -> dict[B, bool]:
        """Check every backend once, concurrently (async or sync checks)."""
        backends = list(self.balancer.backends)

        async def one(backend: B) -> bool:
            try:
                result = self.check(backend)
                if inspect.isawaitable(result):
                    result = await result
                return bool(result)
            except Exception as exc:  # a failed probe: kept, and counted as failed
                self.last_error[backend] = exc
                return False

        outcomes = await asyncio.gather(*(one(b) for b in backends))
        results = dict(zip(backends, outcomes, strict=True))
        for backend, passed in results.items():
            self._record(backend, passed)
        return results

    def start(self) -> None:
        """Check on a daemon thread every ``interval`` seconds until :meth:`stop`."""
        if self._thread is not None:
            raise ConfigurationError("the health checker is already running")
        self._stop.clear()

        def loop() -> None:
            while not self._stop.is_set():
                self.check_all()
                self._stop.wait(self.interval)

        self._thread = threading.Thread(target=loop, name="scalekit-health", daemon=True)
        self._thread.start()

    def start_async(self) -> asyncio.Task[None]:
        """Check as a task of the running event loop every ``interval`` seconds."""
        if self._task is not None:
            raise ConfigurationError("the health checker is already running")

        async def loop() -> None:
            while True:
                await self.check_all_async()
                await asyncio.sleep(self.interval)

        self._task = asyncio.get_running_loop().create_task(loop())
        return self._task

    def stop(self) -> None:
        """Stop the thread or the task."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._task is not None:
            self._task.cancel()
            self._task = None
