"""Consumers: a pool of threads running a handler on each message."""

from __future__ import annotations

import logging
import math
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from scalekit._validate import (
    check_bool,
    check_callable,
    check_count,
    check_name,
    check_number,
    check_seconds,
    type_name,
)
from scalekit.errors import ArgumentTypeError, ConfigurationError, DeliveryExpired
from scalekit.mq._queue import Delivery, Queue, check_timeout

__all__ = ["Backoff", "Consumer"]

log = logging.getLogger("scalekit.mq")


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter: before attempt ``n + 1``, wait between half
    and all of ``min(cap, base * factor ** (n - 1))`` seconds ("equal jitter", so
    failing consumers do not retry in lockstep, yet never at once).

    The exponent stops growing once the cap is reached, so any attempt number
    works (``Backoff()(10**6)`` is ``cap``-bound, not an overflow).

    >>> Backoff(jitter=False)(3), Backoff(jitter=False)(10**6)
    (4.0, 300.0)
    """

    base: float = 1.0
    factor: float = 2.0
    cap: float = 300.0
    jitter: bool = True

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "base", check_seconds(self.base, "base", allow_zero=True))
        set_(self, "cap", check_seconds(self.cap, "cap", allow_zero=True))
        set_(self, "factor", check_number(self.factor, "factor", minimum=1.0, maximum=1e6))
        check_bool(self.jitter, "jitter")
        if self.base > self.cap:
            raise ConfigurationError(f"need base <= cap, got base={self.base} cap={self.cap}")

    def __call__(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1 for the first).
        Runtime complexity: O(1)."""
        attempt = check_count(attempt, "attempt")
        delay = self.base
        if delay and self.factor > 1 and attempt > 1:
            # compared in logarithms: factor ** (attempt - 1) itself may overflow
            grown = math.log(delay) + (attempt - 1) * math.log(self.factor)
            if grown >= math.log(self.cap):
                delay = self.cap
            else:
                try:
                    delay *= self.factor ** (attempt - 1)
                except OverflowError:  # a base of 1e-300: below the cap all the same
                    delay = math.exp(grown)
        delay = min(self.cap, delay)
        if not self.jitter:
            return delay
        return delay / 2 + (rng or random).uniform(0, delay / 2)


class Consumer:
    """Runs ``handler(body)`` on every message of ``queue``, on ``concurrency`` threads.

    A message is acked when the handler returns, and nacked when it raises: it
    comes back after ``retry_backoff(attempt)`` seconds, until the queue's
    ``max_deliveries`` sends it to the dead letters (the exception is logged on
    the ``scalekit.mq`` logger and kept as the reason); a cancellation raised in
    the handler (``asyncio.CancelledError``) counts as a failure too. A handler
    that raises ``SystemExit`` ends its worker thread, and its message is given
    back at once. With
    ``pass_delivery=True`` the handler gets the :class:`Delivery` instead of the
    body, to read headers or call ``extend`` during long work (it must not settle
    it). :meth:`stop` is graceful: no new messages are taken and running
    handlers finish.

    >>> from scalekit.mq import Broker
    >>> queue = Broker().queue("jobs")
    >>> done = []
    >>> consumer = Consumer(queue, done.append, concurrency=2).start()
    >>> queue.put("job-1")
    1
    >>> queue.close()             # the consumers finish what is queued, then exit
    >>> consumer.join(timeout=5)
    True
    >>> done
    ['job-1']
    """

    def __init__(
        self,
        queue: Queue,
        handler: Callable[[Any], object],
        *,
        concurrency: int = 4,
        retry_backoff: Callable[[int], float] | None = None,
        pass_delivery: bool = False,
        name: str | None = None,
    ) -> None:
        if not isinstance(queue, Queue):
            raise ArgumentTypeError(f"queue must be a scalekit.mq Queue, got {type_name(queue)}")
        check_callable(handler, "handler")
        concurrency = check_count(concurrency, "concurrency", minimum=1, maximum=4096)
        check_callable(retry_backoff, "retry_backoff", allow_none=True)
        if name is not None:
            check_name(name, "name")
        self.queue = queue
        self.handler = handler
        self.concurrency = concurrency
        self.retry_backoff = Backoff() if retry_backoff is None else retry_backoff
        self.pass_delivery = pass_delivery
        self.name = name or f"consumer-{queue.name}"
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.handled = 0  # messages acked after the handler returned
        self.failed = 0  # handler calls that raised

    def start(self) -> Consumer:
        """Start the threads (once)."""
        with self._lock:
            if self._threads:
                raise RuntimeError(f"{self.name} is already started")
            self._stopping.clear()
            self._threads = [
                threading.Thread(target=self._work, name=f"{self.name}-{i}", daemon=True)
                for i in range(self.concurrency)
            ]
            for thread in self._threads:
                thread.start()
        return self

    def stop(self, timeout: float | None = None) -> bool:
        """Take no new messages; wait up to ``timeout`` seconds (None: as long as it
        takes) for running handlers. True if every thread has finished."""
        timeout = check_timeout(timeout)
        self._stopping.set()
        self.queue._wake_all()
        for thread in self._threads:
            thread.join(timeout)
        return not any(thread.is_alive() for thread in self._threads)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the threads to exit (after :meth:`stop`, or once the queue is
        closed and drained); True if they all have."""
        timeout = check_timeout(timeout)
        for thread in self._threads:
            thread.join(timeout)
        return not any(thread.is_alive() for thread in self._threads)

    @property
    def running(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)

    def __enter__(self) -> Consumer:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _work(self) -> None:
        """A worker thread's loop. It never dies of an error: a failing take (the
        backend is down, a damaged store) is logged and retried after a pause that
        grows to a second; a failing handler or settlement is logged."""
        stopping = self._stopping.is_set
        pause = 0.0
        while not stopping():
            try:
                got = self.queue._take(1, None, stopping)
            except Exception:
                pause = min(1.0, pause * 2 or 0.01)
                log.exception("%s: taking a message failed; retrying in %.2f s", self.name, pause)
                self._stopping.wait(pause)
                continue
            pause = 0.0
            if not got:
                if self.queue.closed:
                    return
                continue
            try:
                self._handle(got[0])
            except (SystemExit, KeyboardInterrupt):
                log.warning("%s: a handler raised SystemExit: its worker thread ends", self.name)
                return
            except Exception:  # a settlement failed (the backend is down...)
                log.exception("%s: settling message %r failed", self.name, got[0].id)

    def _handle(self, delivery: Delivery) -> None:
        try:
            self.handler(delivery if self.pass_delivery else delivery.body)
        except (SystemExit, KeyboardInterrupt) as exc:
            # the handler ends this worker (_work returns): its message goes back
            # at once, not after the visibility timeout
            self._failed(delivery, exc, 0.0)
            raise
        except BaseException as exc:  # an error, or a cancellation (asyncio.CancelledError)
            self._failed(delivery, exc, None)
            return
        try:
            delivery.ack()
        except DeliveryExpired:
            log.warning(
                "%s: message %r was handled after its visibility timeout; "
                "it is delivered again (raise visibility_timeout or call extend)",
                self.name,
                delivery.id,
            )
            return
        with self._lock:
            self.handled += 1

    def _failed(self, delivery: Delivery, exc: BaseException, delay: float | None) -> None:
        """The handler raised ``exc``: count it, log it, and nack the message after
        ``delay`` seconds (None: what ``retry_backoff`` says)."""
        with self._lock:
            self.failed += 1
        log.warning(
            "%s: handler failed on message %r (attempt %d)",
            self.name,
            delivery.id,
            delivery.attempt,
            exc_info=True,
        )
        if delay is None:
            try:
                delay = check_seconds(
                    self.retry_backoff(delivery.attempt), "retry_backoff()", allow_zero=True
                )
            except Exception:
                log.exception("%s: retry_backoff failed; retrying at once", self.name)
                delay = 0.0
        try:
            delivery.nack(delay, reason=_reason(exc))
        except DeliveryExpired:
            log.warning("%s: message %r timed out during its handler", self.name, delivery.id)

    def __repr__(self) -> str:
        return f"<Consumer {self.name!r} x{self.concurrency}>"


def _reason(exc: BaseException) -> str:
    """A dead-letter reason for ``exc``, valid text whatever the exception says."""
    text = f"{type(exc).__name__}: {exc}"
    return text.encode("utf-8", "replace").decode()
