"""A message queue with acks, redelivery, dead letters, delays, priorities and topics.

Producers :meth:`Queue.put` messages; consumers :meth:`Queue.get` a
:class:`Delivery` and settle it with ``ack`` / ``nack`` / ``reject``. Delivery is
at least once: an unsettled delivery is delivered again after the queue's
visibility timeout, and a message that failed ``max_deliveries`` times moves to
the queue's dead letters. Backends: :class:`MemoryBackend` (default),
:class:`SqliteBackend` (durable, embedded) and :class:`RedisStreamsBackend`
(many processes and machines; extra ``redis``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from scalekit.mq._async import AsyncQueue
from scalekit.mq._broker import Backend, Broker, Topic
from scalekit.mq._consumer import Backoff, Consumer
from scalekit.mq._memory import MemoryBackend
from scalekit.mq._queue import (
    DEAD_LETTER_ATTEMPTS,
    DEAD_LETTER_QUEUE,
    DEAD_LETTER_REASON,
    Delivery,
    MessageId,
    Queue,
    QueueOptions,
    QueueStats,
)

__all__ = [
    "DEAD_LETTER_ATTEMPTS",
    "DEAD_LETTER_QUEUE",
    "DEAD_LETTER_REASON",
    "AsyncQueue",
    "Backend",
    "Backoff",
    "Broker",
    "Consumer",
    "Delivery",
    "MemoryBackend",
    "MessageId",
    "Queue",
    "QueueOptions",
    "QueueStats",
    "RedisStreamsBackend",
    "SqliteBackend",
    "Topic",
]

if TYPE_CHECKING:
    from scalekit.mq._redis import RedisStreamsBackend
    from scalekit.mq._sqlite import SqliteBackend


def __getattr__(name: str) -> Any:
    # The durable backends load on first use: sqlite3 and redis stay unimported otherwise.
    if name == "SqliteBackend":
        from scalekit.mq._sqlite import SqliteBackend

        return SqliteBackend
    if name == "RedisStreamsBackend":
        from scalekit.mq._redis import RedisStreamsBackend

        return RedisStreamsBackend
    raise AttributeError(f"module 'scalekit.mq' has no attribute {name!r}")
