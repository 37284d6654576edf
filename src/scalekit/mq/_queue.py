"""What every queue shares: the public ``Queue`` API, ``Delivery``, ``QueueStats``,
argument checks, and the wake-ups of blocked getters and putters.

A backend subclasses :class:`Queue` and implements the storage operations
(``_put``, ``_take``, ``_ack``, ``_nack``, ``_reject``, ``_extend``, ``stats``,
``purge``, ``redrive``, ``_next_due``). The one contract suite in
``tests/contracts/queue_contract.py`` holds every backend to the same semantics.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TypeAlias, TypeVar

from scalekit._validate import check_count, check_seconds, check_str, type_name
from scalekit.errors import ArgumentTypeError, ClosedError, ConfigurationError, DeliveryExpired
from scalekit.mq._body import Body, Stored, check_headers, check_text, decode, encode, fast_loads
from scalekit.protocols import Clock

__all__ = [
    "DEAD_LETTER_ATTEMPTS",
    "DEAD_LETTER_QUEUE",
    "DEAD_LETTER_REASON",
    "Delivery",
    "MessageId",
    "Outgoing",
    "Queue",
    "QueueOptions",
    "QueueStats",
    "settle_failed",
]

MessageId: TypeAlias = int | str
"""A message's id: an int on the memory and SQLite backends, a str on Redis."""

DEAD_LETTER_REASON = "x-dead-letter-reason"
DEAD_LETTER_QUEUE = "x-dead-letter-queue"
DEAD_LETTER_ATTEMPTS = "x-dead-letter-attempts"

T = TypeVar("T")
_Q = TypeVar("_Q", bound="Queue")

_log = logging.getLogger("scalekit.mq")


@dataclass(frozen=True)
class QueueOptions:
    """The settings of one queue handle (see :meth:`Broker.queue`)."""

    visibility_timeout: float = 30.0
    max_deliveries: int | None = 5
    maxsize: int | None = None
    dedup_window: float = 300.0

    def __post_init__(self) -> None:
        # normalised in place (frozen): seconds as floats, counts as ints
        set_ = object.__setattr__
        set_(
            self, "visibility_timeout", check_seconds(self.visibility_timeout, "visibility_timeout")
        )
        if self.max_deliveries is not None:
            set_(
                self,
                "max_deliveries",
                check_count(self.max_deliveries, "max_deliveries", minimum=1),
            )
        if self.maxsize is not None:
            set_(self, "maxsize", check_count(self.maxsize, "maxsize", minimum=1))
        set_(
            self, "dedup_window", check_seconds(self.dedup_window, "dedup_window", allow_zero=True)
        )


@dataclass(frozen=True)
class QueueStats:
    """A snapshot of one queue.

    ``ready`` is the queue depth, the number to scale consumers on: messages that
    could be delivered now and wait for a consumer. Counters (``delivered``...)
    count since the queue was created (on durable backends, across restarts).
    """

    name: str
    ready: int
    delayed: int
    in_flight: int
    dead_letters: int
    oldest_age: float | None
    """Seconds since the oldest message still in the queue (ready, delayed or in
    flight) was put; None when there is none."""
    delivered: int
    redelivered: int
    acked: int
    dead_lettered: int

    @property
    def depth(self) -> int:
        """Messages ready for delivery now (``ready``)."""
        return self.ready

    @property
    def total(self) -> int:
        """Messages in the queue: ready, delayed and in flight."""
        return self.ready + self.delayed + self.in_flight


Outgoing = tuple[Stored, dict[str, str] | None, int, float]
"""A message about to be stored: (stored body, headers, priority, delay in seconds)."""


MAX_PRIORITY = 2**53
"""Priorities lie within +-MAX_PRIORITY on every backend (Redis keeps them as
sorted-set scores, exact to 2**53)."""


def check_timeout(timeout: float | None, what: str = "timeout") -> float | None:
    """Seconds to wait, None for no limit (``math.inf`` means no limit too)."""
    if timeout is None:
        return None
    seconds = check_seconds(timeout, what, allow_zero=True, allow_inf=True)
    return None if seconds == math.inf else seconds


def check_delay(delay: float, what: str = "delay") -> float:
    return check_seconds(delay, what, allow_zero=True)


def check_limit(limit: int | None) -> int | None:
    return None if limit is None else check_count(limit, "limit")


def check_dedup_key(dedup_key: str | None) -> str | None:
    return None if dedup_key is None else check_text(check_str(dedup_key, "dedup_key"), "dedup_key")


def check_reason(reason: str | None, allow_none: bool) -> str | None:
    if reason is None and allow_none:
        return None
    return check_text(check_str(reason, "reason", allow_empty=True), "reason")


def open_handle(
    queue: Queue | None, name: str, options: QueueOptions | None, clock: Clock
) -> Queue | None:
    """For a backend's ``open_queue``: the handle it already has for ``name``, if
    ``options`` (None: any) and ``clock`` match; None if it has none. Raises
    :class:`~scalekit.errors.ConfigurationError` for other options."""
    if queue is None:
        return None
    if options is not None and (queue.options != options or queue._clock is not clock):
        raise ConfigurationError(
            f"queue {name!r} is already open with {queue.options}; "
            "open it with the same options and clock"
        )
    return queue


def make_outgoing(
    body: Body, headers: Mapping[str, str] | None, priority: int, delay: float
) -> Outgoing:
    """A message ready to store: its body encoded, every option checked."""
    return (encode(body), check_headers(headers), check_priority(priority), check_delay(delay))


def check_priority(priority: int) -> int:
    return check_count(priority, "priority", minimum=-MAX_PRIORITY, maximum=MAX_PRIORITY)


class Delivery:
    """One delivery of a message to a consumer.

    Settle it with :meth:`ack` (done: the message is deleted), :meth:`nack` (give it
    back, for another attempt, after ``delay``), or :meth:`reject` (poison: straight
    to the dead letters). A delivery left unsettled past its visibility deadline
    is delivered again; settling it after that raises
    :class:`~scalekit.errors.DeliveryExpired`. ``ack`` twice is a no-op.
    """

    __slots__ = (
        "_deadline",
        "_headers",
        "_queue",
        "_settled",
        "_stored",
        "attempt",
        "enqueued_at",
        "id",
        "priority",
    )

    def __init__(
        self,
        queue: Queue,
        message_id: MessageId,
        stored: Stored,
        headers: dict[str, str] | None,
        priority: int,
        enqueued_at: float,
        attempt: int,
    ) -> None:
        self._queue = queue
        self.id = message_id
        self._stored = stored
        self._headers = headers
        self.priority = priority
        self.enqueued_at = enqueued_at
        self.attempt = attempt  # 1 on the first delivery
        self._deadline = 0.0
        self._settled: str | None = None

    @property
    def body(self) -> Body:
        """The body as it was put: bytes, str or a (fresh) JSON value.
        Runtime complexity: O(size of the body)."""
        stored = self._stored
        kind = stored.__class__
        if kind is tuple:  # JSON the fast codec reads exactly
            return fast_loads(stored[0])  # type: ignore[arg-type]
        if kind is bytes or kind is str:
            return stored
        return decode(stored)

    @property
    def headers(self) -> dict[str, str]:
        """A copy of the message's headers."""
        return dict(self._headers) if self._headers else {}

    @property
    def queue(self) -> Queue:
        """The queue this delivery came from."""
        return self._queue

    @property
    def deadline(self) -> float:
        """When the delivery times out and the message is delivered again (clock time)."""
        return self._deadline

    @property
    def dead_letter_reason(self) -> str | None:
        """Why the message was dead-lettered, for a delivery from a dead-letter queue."""
        return self._headers.get(DEAD_LETTER_REASON) if self._headers else None

    def ack(self) -> None:
        """The message is done with: delete it."""
        self._queue._ack(self)

    def nack(self, delay: float = 0.0, *, reason: str | None = None) -> None:
        """Give the message back for another attempt, visible again after ``delay``
        seconds; on its last allowed attempt it goes to the dead letters instead."""
        delay = check_delay(delay)
        self._queue._nack(self, delay, check_reason(reason, allow_none=True))

    def reject(self, reason: str = "rejected") -> None:
        """Send the message to the dead letters now, whatever its attempts."""
        self._queue._reject(self, check_reason(reason, allow_none=False))  # type: ignore[arg-type]

    def extend(self, seconds: float) -> None:
        """Keep the message invisible to others for ``seconds`` from now (a long task
        calls this before its deadline, as a heartbeat)."""
        self._queue._extend(self, check_delay(seconds, "seconds"))

    def __repr__(self) -> str:
        return (
            f"<Delivery {self.id!r} of {self._queue.name!r}, attempt {self.attempt}"
            f"{', ' + self._settled if self._settled else ''}>"
        )


class Queue(ABC):
    """A named queue of messages with acks, redelivery, dead letters and delays.

    Get one from :meth:`Broker.queue`. Delivery is at least once: a message is
    deleted only when a consumer acks it, and delivered again when a consumer
    does not settle it within ``visibility_timeout`` seconds. After
    ``max_deliveries`` deliveries it moves to :attr:`dead_letters` with the reason.
    """

    def __init__(
        self,
        name: str,
        options: QueueOptions,
        clock: Clock,
        dead_letters: Queue | None,
    ) -> None:
        self.name = name
        self.options = options
        self.visibility_timeout = options.visibility_timeout
        self.max_deliveries = options.max_deliveries
        self.maxsize = options.maxsize
        self._clock = clock
        self._dead_letters = dead_letters
        self._closed = False

    @property
    def dead_letters(self) -> Queue:
        """The dead-letter queue: messages that failed ``max_deliveries`` times or
        were rejected, each with ``dead_letter_reason``. Raises ``AttributeError``
        on a dead-letter queue itself (it has none)."""
        if self._dead_letters is None:
            raise AttributeError(f"{self.name!r} is a dead-letter queue and has none of its own")
        return self._dead_letters

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called on this handle."""
        return self._closed

    # -- producing ------------------------------------------------------------

    def put(
        self,
        body: Body,
        *,
        delay: float = 0.0,
        priority: int = 0,
        dedup_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> MessageId:
        """Store a message and return its id.

        ``delay``: seconds before it can be delivered. ``priority``: higher is
        delivered first (equal priorities in order). ``dedup_key``: a second put
        with the same key within the queue's ``dedup_window`` stores nothing and
        returns the first message's id. On a full bounded queue, waits up to
        ``timeout`` seconds (None: as long as it takes; 0: not at all) for room,
        then raises :class:`~scalekit.errors.QueueFull`.
        """
        outgoing = make_outgoing(body, headers, priority, delay)
        timeout = check_timeout(timeout)
        return self._put([outgoing], check_dedup_key(dedup_key), timeout)[0]

    def put_many(
        self,
        bodies: Iterable[Body],
        *,
        delay: float = 0.0,
        priority: int = 0,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> list[MessageId]:
        """Store several messages at once (one transaction on durable backends);
        all of them or, if a bounded queue has no room for all within
        ``timeout``, none (:class:`~scalekit.errors.QueueFull`)."""
        shared = (check_headers(headers), check_priority(priority), check_delay(delay))
        timeout = check_timeout(timeout)
        if isinstance(bodies, (str, bytes, Mapping)) or not isinstance(bodies, Iterable):
            raise ArgumentTypeError(
                f"bodies must be an iterable of bodies, got {type_name(bodies)}"
            )
        outgoing = [(encode(body), *shared) for body in bodies]
        if not outgoing:
            return []
        if self.maxsize is not None and len(outgoing) > self.maxsize:
            from scalekit.errors import QueueFull

            raise QueueFull(
                f"{len(outgoing)} messages can never fit in {self.name!r} (maxsize {self.maxsize})"
            )
        return self._put(outgoing, None, timeout)

    # -- consuming ------------------------------------------------------------

    def get(self, timeout: float | None = None) -> Delivery | None:
        """The next message, waiting up to ``timeout`` seconds (None: until one
        comes; 0: not at all); None if none came. A closed queue gives what is
        ready and then None at once."""
        got = self._take(1, check_timeout(timeout))
        return got[0] if got else None

    def get_many(self, n: int, timeout: float | None = None) -> list[Delivery]:
        """Up to ``n`` messages: waits (as :meth:`get`) for the first, then takes
        what else is ready without waiting."""
        n = check_count(n, "n", minimum=1)
        return self._take(n, check_timeout(timeout))

    def ack_many(self, deliveries: Iterable[Delivery]) -> None:
        """Ack several deliveries of this queue at once, as :meth:`Delivery.ack`
        each: in one transaction on SQLite (one commit, not one per message).

        Every delivery that is still held is acked; then, if some could not be
        (timed out and delivered again, or settled another way), the first
        :class:`~scalekit.errors.DeliveryExpired` is raised. A delivery acked
        already is fine, as with ``ack``. A list holding something other than a
        delivery of this queue is refused before anything is acked.

        Runtime complexity: O(k) for k deliveries, one round trip on backends
        that batch it.
        """
        if isinstance(deliveries, (str, bytes, Mapping)) or not isinstance(deliveries, Iterable):
            raise ArgumentTypeError(
                f"deliveries must be an iterable of deliveries, got {type_name(deliveries)}"
            )
        batch = list(deliveries)
        for delivery in batch:
            if not isinstance(delivery, Delivery) or delivery._queue is not self:
                raise ArgumentTypeError(
                    f"deliveries must be deliveries of {self.name!r}, got {delivery!r}"
                )
        if batch:
            self._ack_many(batch)

    def _ack_many(self, batch: list[Delivery]) -> None:
        """Ack each of ``batch`` (a backend that can batch it overrides this)."""
        failure: DeliveryExpired | None = None
        for delivery in batch:
            try:
                self._ack(delivery)
            except DeliveryExpired as exc:
                failure = failure or exc
        if failure is not None:
            raise failure

    def __iter__(self) -> Iterator[Delivery]:
        """Deliveries as they come, until the queue is closed and drained."""
        while True:
            delivery = self.get()
            if delivery is None:
                return
            yield delivery

    def close(self) -> None:
        """Refuse further puts (:class:`~scalekit.errors.ClosedError`); getters take
        what is ready, then get None instead of waiting. Idempotent."""
        self._closed = True
        self._wake_all()

    def __enter__(self) -> Queue:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"queue {self.name!r} is closed")

    def _redrive_from(self: _Q, limit: int | None) -> _Q:
        """The dead-letter queue :meth:`redrive` moves from, once ``limit`` is checked
        and this handle is known to be open (a backend's queues are all one class)."""
        check_limit(limit)
        dead = self.dead_letters
        assert isinstance(dead, type(self))
        self._check_open()
        return dead

    def _dead_letter_headers(
        self, headers: dict[str, str] | None, reason: str, attempts: int
    ) -> dict[str, str]:
        marked = dict(headers) if headers else {}
        marked[DEAD_LETTER_REASON] = reason
        marked[DEAD_LETTER_QUEUE] = self.name
        marked[DEAD_LETTER_ATTEMPTS] = str(attempts)
        return marked

    def _log_dead_letter(self, message_id: MessageId, reason: str, attempts: int) -> None:
        """Log a message moved to the dead letters (its body never: only its id)."""
        _log.warning(
            "queue %r: message %s dead-lettered after %d deliveries: %s",
            self.name,
            message_id,
            attempts,
            reason,
            extra={
                "queue": self.name,
                "message_id": message_id,
                "reason": reason,
                "deliveries": attempts,
            },
        )

    def _exhausted(self, attempts: int) -> bool:
        """Whether a message delivered ``attempts`` times may not be delivered again."""
        return self._dead_letters is not None and (
            self.max_deliveries is not None and attempts >= self.max_deliveries
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    # -- what a backend implements ----------------------------------------------

    @abstractmethod
    def _put(
        self, outgoing: list[Outgoing], dedup_key: str | None, timeout: float | None
    ) -> list[MessageId]: ...

    @abstractmethod
    def _take(
        self, n: int, timeout: float | None, stop: Callable[[], bool] | None = None
    ) -> list[Delivery]:
        """Up to ``n`` deliveries, waiting up to ``timeout`` for the first; returns
        early (empty) when the queue is closed or ``stop()`` turns true after a
        :meth:`_wake_all`."""

    @abstractmethod
    def _ack(self, delivery: Delivery) -> None: ...

    @abstractmethod
    def _nack(self, delivery: Delivery, delay: float, reason: str | None) -> None: ...

    @abstractmethod
    def _reject(self, delivery: Delivery, reason: str) -> None: ...

    @abstractmethod
    def _extend(self, delivery: Delivery, seconds: float) -> None: ...

    @abstractmethod
    def _wake_all(self) -> None:
        """Wake every blocked getter and putter of this handle, to re-check why they wait."""

    @abstractmethod
    async def _take_async(self, n: int, timeout: float | None) -> list[Delivery]:
        """:meth:`_take` for a coroutine; must not block the event loop while waiting."""

    _blocking_io = True
    """Whether settling and putting do I/O (the async API runs them on a thread)."""

    @abstractmethod
    def stats(self) -> QueueStats:
        """A snapshot of the queue's sizes and counters."""

    @abstractmethod
    def purge(self) -> int:
        """Delete every ready and delayed message (not those in flight); return how many."""

    @abstractmethod
    def redrive(self, limit: int | None = None) -> int:
        """Move up to ``limit`` (None: all) dead letters back into this queue, oldest
        first, ready now with a fresh count of attempts; return how many moved.

        A bounded queue never holds more than ``maxsize``: redrive moves at most the
        room there is (``maxsize`` less the messages ready, delayed and in flight,
        counted as a put counts them, with the room check and the move atomic), and
        never waits for more; the rest stay dead letters for a later redrive.
        Unbounded queues take all that ``limit`` allows."""


def close_all(queues: Iterable[Queue]) -> None:
    """Close each queue handle and its dead-letter queue's (waking whoever waits on them)."""
    for queue in queues:
        queue.close()
        if queue._dead_letters is not None:
            queue._dead_letters.close()


def nack_reason(reason: str | None, attempts: int) -> str:
    return f"nacked on delivery {attempts}" + (f": {reason}" if reason else "")


def expiry_reason(attempts: int) -> str:
    return f"not settled within the visibility timeout on delivery {attempts}"


def settle_failed(delivery: Delivery, action: str, state: str | None = None) -> None:
    """``action`` found ``delivery`` no longer held: say why with
    :class:`~scalekit.errors.DeliveryExpired` (ack twice is fine). ``state``: what
    became of it, if the backend knows better than ``delivery._settled``."""
    state = state or delivery._settled
    if state == "acked" and action == "ack":
        return
    why = f"was {state} already" if state else "timed out and is delivered again"
    raise DeliveryExpired(
        f"cannot {action} delivery {delivery.attempt} of message {delivery.id!r} in "
        f"{delivery._queue.name!r}: it {why}"
    )
