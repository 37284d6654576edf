"""A delivery of the Redis backend: a message, and its receipt in the group."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from scalekit.mq._body import UndecodableBody, from_stored, loads_headers
from scalekit.mq._queue import (
    DEAD_LETTER_ATTEMPTS,
    DEAD_LETTER_QUEUE,
    DEAD_LETTER_REASON,
    Delivery,
)

if TYPE_CHECKING:
    from scalekit.mq._redis._queue import RedisQueue

__all__ = ["RedisDelivery", "signal_kind"]


class RedisDelivery(Delivery):
    """A delivery and its receipt: the entry (level, id) and which delivery of it
    (owner consumer, PEL delivery count) this is."""

    __slots__ = ("_count", "_level", "_owner", "_sid")

    def __init__(
        self,
        queue: RedisQueue,
        fields: dict[bytes, bytes],
        level: bytes,
        sid: bytes,
        count: int,
        owner: str,
        deadline: float,
    ) -> None:
        try:
            headers = loads_headers(fields.get(b"h"))
            if b"r" in fields:
                headers = dict(headers) if headers else {}
                headers[DEAD_LETTER_REASON] = fields[b"r"].decode()
                headers[DEAD_LETTER_QUEUE] = fields[b"q"].decode()
                headers[DEAD_LETTER_ATTEMPTS] = fields[b"a"].decode()
            message_id = fields[b"i"].decode()
            stored = from_stored(fields[b"k"].decode(), fields[b"d"])
            enqueued_at = int(fields[b"t"]) / 1000
            before = int(fields.get(b"n", 0))
        except (KeyError, ValueError) as exc:  # UnicodeDecodeError and UndecodableBody too
            if isinstance(exc, UndecodableBody):
                raise
            raise UndecodableBody(f"a damaged entry ({type(exc).__name__}: {exc})") from None
        super().__init__(
            queue, message_id, stored, headers, int(level), enqueued_at, count + before
        )
        self._level = level
        self._sid = sid
        self._count = count
        self._owner = owner
        self._deadline = deadline


def signal_kind(reply: Any) -> bytes | None:
    """The ``w`` field of the entry in an XREADGROUP reply (RESP2 or RESP3 shape)."""
    if not reply:
        return None
    stack = [reply]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if b"w" in item:
                kind: bytes = item[b"w"]
                return kind
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return b"p"
