"""The Redis Streams backend: where a broker's queues and subscriptions live."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from scalekit._validate import check_name, check_seconds, type_name
from scalekit.errors import ArgumentTypeError, ConfigurationError
from scalekit.mq._queue import Queue, QueueOptions, close_all, open_handle
from scalekit.mq._redis._queue import RedisQueue
from scalekit.mq._redis._scripts import backend_error, load_scripts
from scalekit.protocols import Clock

if TYPE_CHECKING:
    import redis

__all__ = ["RedisStreamsBackend"]

log = logging.getLogger("scalekit.mq")


class RedisStreamsBackend:
    """Queues in Redis Streams, shared by every process and machine that reaches
    the server: a put in one process is delivered to a consumer in another, and
    a message a dead consumer held is delivered again after its visibility
    timeout. Subscriptions of topics are kept in Redis too.

    ``client`` is a ``redis.Redis`` made with ``decode_responses=False`` (the
    default); its ``socket_timeout``, if any, must exceed ``block``. The backend
    never closes it. ``prefix`` starts every key. ``block``: the longest single
    blocking read, in seconds; it bounds how late a blocked getter notices a
    delivery timing out unexpectedly, and how long ``close()`` may take to stop
    a getter of this handle whose wake-up was lost. See the module docstring for
    the key layout and how this backend differs from :class:`MemoryBackend`.

    Example (needs a Redis server)::

        import redis
        from scalekit.mq import Broker
        from scalekit.mq._redis import RedisStreamsBackend

        broker = Broker(RedisStreamsBackend(redis.Redis()))
        emails = broker.queue("emails", visibility_timeout=60)
        emails.put({"to": "ada@example.com"})
        delivery = emails.get(timeout=5)
        delivery.ack()
    """

    name = "redis"

    def __init__(
        self, client: redis.Redis, *, prefix: str = "scalekit:mq", block: float = 1.0
    ) -> None:
        import redis as redis_module
        import redis.asyncio

        asyncio_client: Any = redis_module.asyncio.Redis
        if isinstance(client, asyncio_client) or not callable(
            getattr(client, "register_script", None)
        ):
            raise ArgumentTypeError(f"client must be a redis.Redis, got {type_name(client)}")
        check_name(prefix, "prefix")
        block = check_seconds(block, "block", maximum=60)
        pool = getattr(client, "connection_pool", None)
        kwargs: dict[str, Any] = getattr(pool, "connection_kwargs", None) or {}
        if kwargs.get("decode_responses"):
            raise ConfigurationError(
                "the redis client must be made with decode_responses=False: bodies are bytes"
            )
        socket_timeout = kwargs.get("socket_timeout")
        if socket_timeout is not None and socket_timeout <= block:
            raise ConfigurationError(
                f"the client's socket_timeout ({socket_timeout} s) must exceed block ({block} s)"
            )
        self.client = client
        self.prefix = prefix
        self.block = float(block)
        self._errors: tuple[type[Exception], ...] = (redis_module.RedisError,)
        # a connection lost (killed, timed out): a blocking wait that fails so is looked past
        self._dropped: tuple[type[Exception], ...] = (
            redis_module.ConnectionError,
            redis_module.TimeoutError,
        )
        self._scripts: dict[str, Any] = load_scripts(client)
        self._lock = threading.Lock()
        self._queues: dict[str, RedisQueue] = {}

    def key(self, name: str) -> str:
        """The base key of queue ``name``; its keys start with it (see the module
        docstring), its dead letters' with ``key(name) + ":dlq"``."""
        return f"{self.prefix}:{{{name}}}"

    def _topic_key(self, topic: str) -> str:
        return f"{self.prefix}:topic:{{{topic}}}"

    def _wrap(self, what: str, name: str, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except self._errors as exc:
            raise backend_error(what, name, exc) from exc

    def open_queue(self, name: str, options: QueueOptions | None, clock: Clock) -> Queue:
        """The queue ``name`` with its dead-letter queue. Explicit ``options`` are
        stored in Redis; ``None`` uses the handle open in this backend, else the
        stored options, else the defaults. Cost: one round trip on first open."""
        with self._lock:
            queue = open_handle(self._queues.get(name), name, options, clock)
            if queue is not None:
                return queue
            base = self.key(name)
            if options is None:
                options = self._load_options(name, base)
            else:
                meta: dict[Any, Any] = {
                    "visibility_timeout": repr(options.visibility_timeout),
                    "max_deliveries": str(options.max_deliveries or ""),
                    "maxsize": str(options.maxsize or ""),
                    "dedup_window": repr(options.dedup_window),
                }
                self._wrap("open", name, lambda: self.client.hset(base + ":meta", mapping=meta))
            dead = RedisQueue(
                self,
                f"{name}.dlq",
                QueueOptions(options.visibility_timeout, None, None, options.dedup_window),
                clock,
                None,
                base + ":dlq",
                base + ":ids",
            )
            queue = RedisQueue(self, name, options, clock, dead, base, base + ":ids")
            self._queues[name] = queue
            return queue

    def _load_options(self, name: str, base: str) -> QueueOptions:
        stored = self._wrap("open", name, lambda: self.client.hgetall(base + ":meta"))
        if not stored:
            return QueueOptions()
        try:
            return QueueOptions(
                float(stored[b"visibility_timeout"]),
                int(stored[b"max_deliveries"]) if stored[b"max_deliveries"] else None,
                int(stored[b"maxsize"]) if stored[b"maxsize"] else None,
                float(stored[b"dedup_window"]),
            )
        except (KeyError, ValueError):
            log.warning("queue %r: unreadable stored options %r; using defaults", name, stored)
            return QueueOptions()

    def subscribe(self, topic: str, group: str) -> None:
        """Cost: one script call, O(log g) in Redis."""
        script = self._scripts["subscribe"]
        self._wrap("subscribe", topic, lambda: script(keys=[self._topic_key(topic)], args=[group]))

    def unsubscribe(self, topic: str, group: str) -> None:
        """Cost: one round trip, O(log g) in Redis."""
        self._wrap("unsubscribe", topic, lambda: self.client.zrem(self._topic_key(topic), group))

    def subscribers(self, topic: str) -> list[str]:
        """Cost: one round trip, O(g) in Redis."""
        groups = self._wrap(
            "subscribers", topic, lambda: self.client.zrange(self._topic_key(topic), 0, -1)
        )
        return [group.decode() for group in groups]

    def close(self) -> None:
        """Close every queue handle opened through this backend, and their dead-letter
        queues' (not the client)."""
        with self._lock:
            queues = list(self._queues.values())
        close_all(queues)

    def __repr__(self) -> str:
        return f"RedisStreamsBackend(prefix={self.prefix!r})"
