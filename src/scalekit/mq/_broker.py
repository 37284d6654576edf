"""The broker: names queues and topics on one backend."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Protocol, runtime_checkable

from scalekit._validate import check_callable, type_name
from scalekit._validate import check_name as check_name_text
from scalekit.errors import ArgumentTypeError, ClosedError, ConfigurationError, QueueFull
from scalekit.mq._body import Body
from scalekit.mq._queue import (
    MessageId,
    Queue,
    QueueOptions,
    check_timeout,
    make_outgoing,
)
from scalekit.protocols import Clock

__all__ = ["Backend", "Broker", "Topic"]


@runtime_checkable
class Backend(Protocol):
    """Where a broker's queues live: :class:`MemoryBackend`, :class:`SqliteBackend`,
    :class:`RedisStreamsBackend`."""

    name: str

    def open_queue(self, name: str, options: QueueOptions | None, clock: Clock) -> Queue:
        """The queue ``name``, created if missing. ``options=None``: as it is already
        open in this backend, else the defaults."""
        ...

    def subscribe(self, topic: str, group: str) -> None: ...

    def unsubscribe(self, topic: str, group: str) -> None: ...

    def subscribers(self, topic: str) -> list[str]:
        """The groups subscribed to ``topic``, in the order they subscribed."""
        ...

    def close(self) -> None: ...


def check_name(name: str, what: str = "queue name") -> str:
    """A queue, topic or group name: 1 to 200 printable characters of valid text,
    without surrounding spaces, not ending in ``.dlq`` (the dead-letter queues').

    Topic and group names may not contain ``/``: the queue of group ``g`` of topic
    ``t`` is named ``t/g``, so no other pair of names, and no queue name without
    exactly that meaning, maps to the same storage on any backend."""
    check_name_text(name, what)
    if len(name) > 200 or not name.isprintable() or name != name.strip():
        raise ConfigurationError(
            f"a {what} is 1 to 200 printable characters without surrounding spaces, got {name!r}"
        )
    if name.endswith(".dlq"):
        raise ConfigurationError(f"{name!r}: names ending in .dlq are the dead-letter queues'")
    if what != "queue name" and "/" in name:
        raise ConfigurationError(
            f"a {what} may not contain '/' (a group's queue is 'topic/group'), got {name!r}"
        )
    return name


class Broker:
    """Named queues and topics on one backend.

    >>> broker = Broker()                       # in memory; SqliteBackend(path) to keep them
    >>> emails = broker.queue("emails")
    >>> emails.put({"to": "ada@example.com"})
    1
    >>> delivery = emails.get(timeout=0)
    >>> delivery.body, delivery.attempt
    ({'to': 'ada@example.com'}, 1)
    >>> delivery.ack()
    """

    def __init__(self, backend: Backend | None = None, *, clock: Clock | None = None) -> None:
        if backend is None:
            from scalekit.mq._memory import MemoryBackend

            backend = MemoryBackend()
        if not isinstance(backend, Backend):
            raise ArgumentTypeError(f"backend must be a queue backend, got {type_name(backend)}")
        check_callable(clock, "clock", allow_none=True)
        self.backend = backend
        self._clock: Clock = time.time if clock is None else clock
        self._lock = threading.Lock()
        self._queues: dict[str, Queue] = {}
        self._closed = False

    def queue(
        self,
        name: str,
        *,
        visibility_timeout: float = 30.0,
        max_deliveries: int | None = 5,
        maxsize: int | None = None,
        dedup_window: float = 300.0,
    ) -> Queue:
        """The queue ``name``, created on first use.

        ``visibility_timeout``: seconds a delivery stays invisible to other
        consumers before it is delivered again. ``max_deliveries``: deliveries
        before the message goes to the dead letters (None: no limit).
        ``maxsize``: at most this many messages ready, delayed or in flight
        (None: no limit). ``dedup_window``: seconds a ``dedup_key`` is remembered.
        Asking again for an open queue returns it; with other options, it raises
        :class:`~scalekit.errors.ConfigurationError`.
        """
        options = QueueOptions(visibility_timeout, max_deliveries, maxsize, dedup_window)
        return self._open(check_name(name), options)

    def _open(self, name: str, options: QueueOptions | None) -> Queue:
        with self._lock:
            if self._closed:
                raise ClosedError("the broker is closed")
            queue = self._queues.get(name)
            if queue is None or (options is not None and queue.options != options):
                queue = self._queues[name] = self.backend.open_queue(name, options, self._clock)
            return queue

    def topic(self, name: str) -> Topic:
        """The topic ``name``: publish once, every subscribed group gets a copy."""
        return Topic(self, check_name(name, "topic name"))

    def close(self) -> None:
        """Close every queue opened through this broker, then the backend."""
        with self._lock:
            self._closed = True
            queues = list(self._queues.values())
        for queue in queues:
            queue.close()
        self.backend.close()

    def __enter__(self) -> Broker:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Broker({self.backend!r})"


class Topic:
    """Publish/subscribe fan-out: every subscribed group receives each message.

    Each group is a queue (``"topic/group"``): the consumers of one group compete
    for its messages, groups are independent of each other. Subscriptions are
    kept by the backend, so a publisher in another process sees them too. A
    message published while no group is subscribed goes nowhere.
    """

    def __init__(self, broker: Broker, name: str) -> None:
        self.broker = broker
        self.name = name

    def _queue_name(self, group: str) -> str:
        return f"{self.name}/{check_name(group, 'group name')}"

    def subscribe(
        self,
        group: str,
        *,
        visibility_timeout: float = 30.0,
        max_deliveries: int | None = 5,
        maxsize: int | None = None,
        dedup_window: float = 300.0,
    ) -> Queue:
        """Subscribe ``group`` (idempotent) and return its queue."""
        queue = self.broker.queue(
            self._queue_name(group),
            visibility_timeout=visibility_timeout,
            max_deliveries=max_deliveries,
            maxsize=maxsize,
            dedup_window=dedup_window,
        )
        self.broker.backend.subscribe(self.name, group)
        return queue

    def unsubscribe(self, group: str) -> None:
        """Stop copying messages to ``group``; its queue keeps what it has."""
        self._queue_name(group)
        self.broker.backend.unsubscribe(self.name, group)

    @property
    def subscribers(self) -> list[str]:
        """The subscribed groups."""
        return self.broker.backend.subscribers(self.name)

    def publish(
        self,
        body: Body,
        *,
        delay: float = 0.0,
        priority: int = 0,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> dict[str, MessageId]:
        """Put a copy of the message into every subscribed group's queue; return
        the message id per group. A group whose bounded queue stays full for
        ``timeout`` misses it: the others still get theirs, then
        :class:`~scalekit.errors.QueueFull` names the groups that did not."""
        outgoing = make_outgoing(body, headers, priority, delay)
        timeout = check_timeout(timeout)
        ids: dict[str, MessageId] = {}
        full: list[str] = []
        for group in self.subscribers:
            queue = self.broker._open(self._queue_name(group), None)
            try:
                ids[group] = queue._put([outgoing], None, timeout)[0]
            except QueueFull:
                full.append(group)
        if full:
            raise QueueFull(
                f"topic {self.name!r}: the queues of {full} stayed full; delivered to {sorted(ids)}"
            )
        return ids

    def __repr__(self) -> str:
        return f"<Topic {self.name!r}>"
