"""Telling every app server's near cache that a key changed: :class:`RedisInvalidation`.

Two ways, chosen by ``mode``:

- ``"tracking"``: Redis client-side caching (Redis 6 and newer). A connection of
  its own turns on ``CLIENT TRACKING ... BCAST PREFIX <prefix>`` redirected to
  itself and subscribes to ``__redis__:invalidate``: the *server* then reports
  every change of a key under the prefix, by anyone (another app server, a
  script, an expiry, ``FLUSHDB``), with nothing for writers to do.
- ``"pubsub"``: writers publish the keys they change on a channel that every
  listener subscribes to (for servers without tracking, or data kept elsewhere).

``"auto"`` uses tracking where the server has it. :meth:`~RedisInvalidation.sync`
is a barrier: once it returns True, every change made before it was called has
reached the near caches (read-your-writes across app servers). Either way, a listener thread
reads the messages and hands the keys to every attached near cache. Messages
sent while the connection is down are lost, so the near caches are flushed
whenever it drops and again once it is back, and :attr:`generation` changes, so
a value read before the change is not kept (see :class:`~scalekit.cache.TieredCache`).
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from scalekit._validate import check_choice, check_methods, check_seconds, check_str, type_name
from scalekit.errors import ArgumentTypeError, BackendError, ClosedError

__all__ = ["RedisInvalidation"]

_log = logging.getLogger("scalekit.cache")

OnKeys = Callable[[list[str]], object]
OnFlush = Callable[[], object]

TRACKING_CHANNEL = b"__redis__:invalidate"


class RedisInvalidation:
    """Invalidation messages for the keys under ``prefix`` on one Redis server.

    ``client`` is a ``redis.Redis`` of the server that holds the shared tier; a
    connection of this object's own is made from its settings. ``prefix`` is the
    prefix of the shared store's keys (a :class:`~scalekit.cache.RedisCache`'s
    ``prefix``): keys are reported without it. ``channel`` is the pub/sub channel
    of ``"pubsub"`` mode (by default, one per prefix). After ``heartbeat``
    seconds without a message the connection is sent a ``PING``; with no reply
    within ``heartbeat`` more it is taken as dropped (a link that died without a
    word, behind a NAT or a partition, would otherwise keep near caches stale).

    The listener thread starts with the first :meth:`attach`; :meth:`close`
    stops it. Counters: :meth:`stats`.
    """

    def __init__(
        self,
        client: Any,
        *,
        prefix: str = "",
        mode: str = "auto",
        channel: str | None = None,
        reconnect_delay: float = 0.1,
        heartbeat: float = 5.0,
    ) -> None:
        check_methods(client, "client", "a redis.Redis", ("execute_command",))
        self._prefix = check_str(prefix, "prefix", allow_empty=True).encode(
            "utf-8", "surrogatepass"
        )
        self._asked_mode = check_choice(mode, "mode", ("auto", "tracking", "pubsub"))
        if channel is None:
            channel = "scalekit:invalidate:" + prefix
        self._channel = check_str(channel, "channel").encode("utf-8", "surrogatepass")
        self._delay = check_seconds(reconnect_delay, "reconnect_delay")
        self._heartbeat = check_seconds(heartbeat, "heartbeat")
        self._client = client
        self._listeners: list[tuple[OnKeys, OnFlush]] = []
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()  # the listener's heartbeats and sync()'s PINGs
        self._barriers: dict[bytes, threading.Event] = {}
        self._tokens = itertools.count()
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._connection: Any = None
        self._generation = 0
        self._closed = False
        self.mode: str | None = None if mode == "auto" else mode
        self._counts = {"messages": 0, "keys": 0, "flushes": 0, "connects": 0, "drops": 0}

    # -- for near caches -------------------------------------------------------------

    def attach(self, on_keys: OnKeys, on_flush: OnFlush) -> None:
        """Call ``on_keys(keys)`` for every message and ``on_flush()`` whenever
        messages may have been missed; starts listening on first use."""
        with self._lock:
            if self._closed:
                raise ClosedError("this RedisInvalidation is closed")
            self._listeners.append((on_keys, on_flush))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._listen, name="scalekit-invalidation", daemon=True
                )
                self._thread.start()

    def detach(self, on_keys: OnKeys) -> None:
        """Stop calling the listener attached with ``on_keys``."""
        with self._lock:
            # ==, not is: a bound method is a new object at each access
            self._listeners = [pair for pair in self._listeners if pair[0] != on_keys]

    @property
    def prefix(self) -> str:
        """The prefix of the keys reported (cut from the keys handed to listeners)."""
        return self._prefix.decode("utf-8", "surrogatepass")

    @property
    def ready(self) -> bool:
        """Whether messages are being received now (near caches may keep values)."""
        return self._ready.is_set()

    @property
    def generation(self) -> int:
        """Changes whenever the connection drops or comes back."""
        return self._generation

    def wait_ready(self, timeout: float = 5.0) -> bool:
        """Wait until listening; whether it is."""
        return self._ready.wait(check_seconds(timeout, "timeout", allow_zero=True))

    def sync(self, timeout: float = 1.0) -> bool:
        """Wait until every change made before this call has been handed to the
        listeners; whether it was, within ``timeout`` seconds (False while not
        listening: a near cache keeps nothing then).

        A ``PING`` on the listening connection: Redis queues an invalidation for
        that connection while it runs the write (before the writer hears back),
        and answers the ``PING`` after it, so once the listener has read the
        answer, it has delivered every message before it.

        Runtime complexity: one round trip to Redis.
        """
        seconds = check_seconds(timeout, "timeout", allow_zero=True)
        token = b"scalekit-sync-%d" % next(self._tokens)
        arrived = threading.Event()
        with self._lock:
            self._barriers[token] = arrived
        try:
            with self._send_lock:  # the listener clears ready under it before a disconnect
                if not self._ready.is_set():
                    return False
                self._connection.send_command("PING", token)
            return arrived.wait(seconds)
        except Exception as exc:  # the listener sees the broken link too, and flushes
            _log.debug("invalidation sync failed: %s", exc)
            return False
        finally:
            with self._lock:
                self._barriers.pop(token, None)

    def publish(self, keys: Iterable[str]) -> None:
        """Report ``keys`` as changed, in ``"pubsub"`` mode (tracking reports by itself).

        Raises :class:`~scalekit.errors.BackendError` when Redis fails."""
        if not isinstance(keys, Iterable) or isinstance(keys, (str, bytes)):
            raise ArgumentTypeError(f"keys must be an iterable of str, got {type_name(keys)}")
        names = list(keys)
        for key in names:
            if not isinstance(key, str):
                raise ArgumentTypeError(f"a key must be a str, got {type_name(key)}")
        if not names or self._resolved_mode() != "pubsub":
            return
        # ASCII JSON: a key with a lone surrogate travels as a \ud800 escape
        payload = json.dumps(names, ensure_ascii=True).encode()
        try:
            self._client.execute_command("PUBLISH", self._channel, payload)
        except Exception as exc:
            raise BackendError(
                f"publishing an invalidation failed: {exc}", backend="redis"
            ) from exc

    def stats(self) -> dict[str, int]:
        """Messages and keys received, flushes, connects and drops so far."""
        with self._lock:
            return dict(self._counts)

    def close(self) -> None:
        """Stop listening and close the connection."""
        with self._lock:
            self._closed = True
            thread = self._thread
        self._stopping.set()
        connection = self._connection
        if connection is not None:
            try:
                connection.disconnect()
            except Exception:
                _log.debug("closing the invalidation connection failed", exc_info=True)
        if thread is not None:
            thread.join(5)

    def __enter__(self) -> RedisInvalidation:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the listener thread ---------------------------------------------------------

    def _resolved_mode(self) -> str:
        if self.mode is None:
            try:
                self._client.execute_command("CLIENT", "TRACKINGINFO")
            except Exception:
                self.mode = "pubsub"
            else:
                self.mode = "tracking"
        return self.mode

    def _connect(self) -> Any:
        pool = self._client.connection_pool
        settings = dict(pool.connection_kwargs)
        # RESP2: the messages are read as pub/sub replies, whatever the client speaks
        settings.update(health_check_interval=0, socket_timeout=5.0, protocol=2)
        for name in ("maint_notifications_config", "maint_notifications_pool_handler"):
            settings.pop(name, None)  # redis-py 7+: only for RESP3
        connection = pool.connection_class(**settings)
        try:
            self._subscribe(connection)
        except BaseException:
            connection.disconnect()  # a failed setup must not leave a socket per retry
            raise
        return connection

    def _subscribe(self, connection: Any) -> None:
        connection.connect()
        if self._resolved_mode() == "tracking":
            connection.send_command("CLIENT", "ID")
            own_id = connection.read_response()
            tracking = ["CLIENT", "TRACKING", "on", "REDIRECT", own_id, "BCAST"]
            if self._prefix:
                tracking += ["PREFIX", self._prefix]
            connection.send_command(*tracking)
            connection.read_response()
            connection.send_command("SUBSCRIBE", TRACKING_CHANNEL)
        else:
            connection.send_command("SUBSCRIBE", self._channel)
        connection.read_response()  # the subscribe confirmation

    def _flush(self) -> None:
        with self._lock:
            self._generation += 1
            self._counts["flushes"] += 1
            listeners = list(self._listeners)
        for _, on_flush in listeners:
            on_flush()

    def _deliver(self, keys: list[str]) -> None:
        with self._lock:
            self._counts["messages"] += 1
            self._counts["keys"] += len(keys)
            listeners = list(self._listeners)
        for on_keys, _ in listeners:
            on_keys(keys)

    def _decode(self, payload: Any) -> list[str] | None:
        """The keys of a message, or ``None`` for "everything"."""
        if payload is None:
            return None
        if self.mode == "pubsub":
            names = json.loads(payload)
            return None if names is None else [str(name) for name in names]
        cut = len(self._prefix)
        keys = []
        for name in payload if isinstance(payload, list) else [payload]:
            raw = name.encode("utf-8", "surrogatepass") if isinstance(name, str) else name
            keys.append(raw[cut:].decode("utf-8", "surrogatepass"))
        return keys

    def _fields(self, **more: Any) -> dict[str, Any]:
        """The ``extra`` of a log line: the channel, the mode and ``more``."""
        channel = self._channel.decode("utf-8", "replace")
        return {"channel": channel, "mode": self.mode, **more}

    def _listen(self) -> None:
        lost = False  # the link failed or dropped: its return is logged
        while not self._stopping.is_set():
            try:
                self._connection = self._connect()
            except Exception as exc:
                if lost:
                    _log.debug("invalidation connection failed again, retrying: %s", exc)
                else:
                    lost = True
                    _log.warning(
                        "invalidation connection failed, retrying every %g s: %s",
                        self._delay,
                        exc,
                        extra=self._fields(reason="connect failed", error=str(exc)),
                    )
                self._stopping.wait(self._delay)
                continue
            with self._lock:
                self._counts["connects"] += 1
                listeners = len(self._listeners)
            self._flush()  # what was cached before listening may be stale
            if lost:
                lost = False
                _log.info(
                    "invalidation connection re-established; %d near cache(s) flushed",
                    listeners,
                    extra=self._fields(reason="reconnected", flushed=listeners),
                )
            self._ready.set()
            try:
                self._receive(self._connection)
            except Exception as exc:
                if not self._stopping.is_set():
                    lost = True
                    with self._lock:
                        listeners = len(self._listeners)
                    _log.warning(
                        "invalidation connection lost: %s; flushing %d near cache(s), reconnecting",
                        exc,
                        listeners,
                        extra=self._fields(
                            reason="connection lost", error=str(exc), flushed=listeners
                        ),
                    )
            finally:
                with self._send_lock:
                    self._ready.clear()
                with self._lock:
                    self._counts["drops"] += 1
                self._flush()  # messages may have been missed
                try:
                    self._connection.disconnect()
                except Exception:
                    _log.debug("closing a dropped connection failed", exc_info=True)
            if not self._stopping.is_set():
                self._stopping.wait(self._delay)

    def _reached(self, token: Any) -> None:
        """A sync() PING came back: every message before it was delivered."""
        if isinstance(token, str):
            token = token.encode()
        with self._lock:
            arrived = self._barriers.get(token)
        if arrived is not None:
            arrived.set()

    def _receive(self, connection: Any) -> None:
        wait, heard, pinged = min(0.2, self._heartbeat), time.monotonic(), False
        while not self._stopping.is_set():
            if not connection.can_read(timeout=wait):
                if time.monotonic() - heard < self._heartbeat:
                    continue
                if pinged:
                    raise ConnectionError(f"no reply to PING in {self._heartbeat} s")
                with self._send_lock:
                    connection.send_command("PING")  # the reply is a ["pong", ""] message
                heard, pinged = time.monotonic(), True
                continue
            message = connection.read_response()
            heard, pinged = time.monotonic(), False
            if not isinstance(message, list):
                continue
            if len(message) == 2 and message[0] in (b"pong", "pong"):
                self._reached(message[1])
                continue
            if len(message) < 3:
                continue
            kind = message[0]
            if kind not in (b"message", "message"):
                continue
            keys = self._decode(message[2])
            if keys is None:
                self._flush()
            else:
                self._deliver(keys)
