"""Consumers: a pool of threads running a handler on each message."""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from scalekit.errors import ConfigurationError, DeliveryExpired
from scalekit.mq._queue import Delivery, Queue

__all__ = ["Backoff", "Consumer"]

log = logging.getLogger("scalekit.mq")


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter: before attempt ``n + 1``, wait between half
    and all of ``min(cap, base * factor ** (n - 1))`` seconds ("equal jitter", so
    failing consumers do not retry in lockstep, yet never at once)."""

    base: float = 1.0
    factor: float = 2.0
    cap: float = 300.0
    jitter: bool = True

    def __post_init__(self) -> None:
        if not (0 <= self.base <= self.cap) or self.factor < 1:
            raise ConfigurationError("need 0 <= base <= cap and factor >= 1")

    def __call__(self, attempt: int, rng: random.Random | None = None) -> float:
        delay = min(self.cap, self.base * self.factor ** max(0, attempt - 1))
        if not self.jitter:
            return delay
        return delay / 2 + (rng or random).uniform(0, delay / 2)


class Consumer:
    """Runs ``handler(body)`` on every message of ``queue``, on ``concurrency`` threads.

    A message is acked when the handler returns, and nacked when it raises: it
    comes back after ``retry_backoff(attempt)`` seconds, until the queue's
    ``max_deliveries`` sends it to the dead letters (the exception is logged on
    the ``scalekit.mq`` logger and kept as the reason). With
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
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigurationError(f"concurrency is an int >= 1, got {concurrency!r}")
        if not callable(handler):
            raise TypeError(f"handler must be callable, got {handler!r}")
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
        self._stopping.set()
        self.queue._wake_all()
        for thread in self._threads:
            thread.join(timeout)
        return not any(thread.is_alive() for thread in self._threads)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the threads to exit (after :meth:`stop`, or once the queue is
        closed and drained); True if they all have."""
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
        stopping = self._stopping.is_set
        while not stopping():
            got = self.queue._take(1, None, stopping)
            if not got:
                if self.queue.closed:
                    return
                continue
            self._handle(got[0])

    def _handle(self, delivery: Delivery) -> None:
        try:
            self.handler(delivery if self.pass_delivery else delivery.body)
        except Exception as exc:
            with self._lock:
                self.failed += 1
            log.warning(
                "%s: handler failed on message %r (attempt %d)",
                self.name,
                delivery.id,
                delivery.attempt,
                exc_info=True,
            )
            try:
                delivery.nack(
                    self.retry_backoff(delivery.attempt),
                    reason=f"{type(exc).__name__}: {exc}",
                )
            except DeliveryExpired:
                log.warning("%s: message %r timed out during its handler", self.name, delivery.id)
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

    def __repr__(self) -> str:
        return f"<Consumer {self.name!r} x{self.concurrency}>"
