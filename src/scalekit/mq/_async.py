"""The asyncio face of a queue: the same operations, awaited."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

from scalekit._validate import check_count, type_name
from scalekit.errors import ArgumentTypeError
from scalekit.mq._body import Body
from scalekit.mq._queue import Delivery, MessageId, Queue, check_timeout

__all__ = ["AsyncQueue"]


class AsyncQueue:
    """``await``-able access to a :class:`Queue`, from any event loop and thread.

    A task waiting in :meth:`get` sleeps on a future that a put from any thread
    or task resolves (no polling); on backends that do I/O (SQLite, Redis), puts
    and settlements run on a worker thread so the loop never blocks.

    >>> import asyncio
    >>> from scalekit.mq import Broker
    >>> queue = AsyncQueue(Broker().queue("jobs"))
    >>> async def main():
    ...     await queue.put({"job": 1})
    ...     delivery = await queue.get()
    ...     await queue.ack(delivery)
    ...     return delivery.body
    >>> asyncio.run(main())
    {'job': 1}
    """

    def __init__(self, queue: Queue) -> None:
        if not isinstance(queue, Queue):
            raise ArgumentTypeError(f"queue must be a scalekit.mq Queue, got {type_name(queue)}")
        self.queue = queue

    @property
    def name(self) -> str:
        return self.queue.name

    async def _run(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        if self.queue._blocking_io:
            return await asyncio.to_thread(function, *args, **kwargs)
        return function(*args, **kwargs)

    async def put(
        self,
        body: Body,
        *,
        delay: float = 0.0,
        priority: int = 0,
        dedup_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> MessageId:
        """:meth:`Queue.put`; waiting for room in a bounded queue happens on a thread."""
        options = {"delay": delay, "priority": priority, "dedup_key": dedup_key, "headers": headers}
        if self.queue.maxsize is not None and timeout != 0:
            return await asyncio.to_thread(self.queue.put, body, timeout=timeout, **options)  # type: ignore[arg-type]
        result: MessageId = await self._run(self.queue.put, body, timeout=timeout, **options)
        return result

    async def put_many(self, bodies: Iterable[Body], **options: Any) -> list[MessageId]:
        """:meth:`Queue.put_many`."""
        if self.queue.maxsize is not None and options.get("timeout") != 0:
            return await asyncio.to_thread(self.queue.put_many, list(bodies), **options)
        result: list[MessageId] = await self._run(self.queue.put_many, list(bodies), **options)
        return result

    async def get(self, timeout: float | None = None) -> Delivery | None:
        """:meth:`Queue.get`, waiting without blocking the loop."""
        got = await self.queue._take_async(1, check_timeout(timeout))
        return got[0] if got else None

    async def get_many(self, n: int, timeout: float | None = None) -> list[Delivery]:
        """:meth:`Queue.get_many`."""
        n = check_count(n, "n", minimum=1)
        return await self.queue._take_async(n, check_timeout(timeout))

    async def ack(self, delivery: Delivery) -> None:
        """:meth:`Delivery.ack`."""
        await self._run(delivery.ack)

    async def ack_many(self, deliveries: Iterable[Delivery]) -> None:
        """:meth:`Queue.ack_many`."""
        await self._run(self.queue.ack_many, list(deliveries))

    async def nack(
        self, delivery: Delivery, delay: float = 0.0, *, reason: str | None = None
    ) -> None:
        """:meth:`Delivery.nack`."""
        await self._run(delivery.nack, delay, reason=reason)

    async def reject(self, delivery: Delivery, reason: str = "rejected") -> None:
        """:meth:`Delivery.reject`."""
        await self._run(delivery.reject, reason)

    async def extend(self, delivery: Delivery, seconds: float) -> None:
        """:meth:`Delivery.extend`."""
        await self._run(delivery.extend, seconds)

    def __aiter__(self) -> AsyncIterator[Delivery]:
        return self._deliveries()

    async def _deliveries(self) -> AsyncIterator[Delivery]:
        """Deliveries as they come, until the queue is closed and drained."""
        while True:
            delivery = await self.get()
            if delivery is None:
                return
            yield delivery

    def close(self) -> None:
        """:meth:`Queue.close`."""
        self.queue.close()

    def __repr__(self) -> str:
        return f"AsyncQueue({self.queue!r})"
