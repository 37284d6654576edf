"""TieredCache and RedisInvalidation at the seams: a tier or the invalidation
channel failing mid-call, close(), a prefix mismatch, a Redis server restarted."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest

from scalekit.cache import LRUCache, RedisCache, RedisInvalidation, TieredCache
from scalekit.errors import BackendError, ConfigurationError
from tests.services import redis_server


class Channel:
    """A stand-in for a RedisInvalidation, always listening."""

    generation = 0
    ready = True

    def __init__(self, prefix: str = "", fail_publish: bool = False) -> None:
        self.prefix = prefix
        self.fail_publish = fail_publish
        self.listeners: list[Any] = []

    def attach(self, on_keys: Any, on_flush: Any) -> None:
        self.listeners.append((on_keys, on_flush))

    def detach(self, on_keys: Any) -> None:
        self.listeners = [pair for pair in self.listeners if pair[0] != on_keys]

    def publish(self, keys: Any) -> None:
        if self.fail_publish:
            raise BackendError("publishing failed", backend="test")


def test_a_failed_publish_leaves_no_flight_and_keeps_nothing() -> None:
    cache = TieredCache(LRUCache(10), LRUCache(10), invalidation=Channel(fail_publish=True))
    for write in (lambda: cache.set("k", 1), lambda: cache.add("a", 1)):
        with pytest.raises(BackendError):
            write()
    assert cache._flights == {}
    assert "k" not in cache.l1
    assert "a" not in cache.l1
    assert cache.l2["k"] == 1  # l2 took the write: the error says the others were not told
    cache._check()


class Gated(LRUCache[Any, Any]):
    """An l2 whose reads wait for a gate after reading (a slow round trip), and whose
    delete and set_many fail after doing their work (a reply lost on the way)."""

    def __init__(self) -> None:
        super().__init__(100)
        self.reading = threading.Event()
        self.gate = threading.Event()
        self.fail = False

    def get_with_ttl(self, key: Any, default: Any = None) -> tuple[Any, float | None]:
        value = super().get(key, default)
        if self.fail:
            self.reading.set()
            self.gate.wait(5)
        return value, None

    def delete(self, key: Any) -> bool:
        super().delete(key)
        raise BackendError("the reply was lost", backend="test")

    def set_many(self, items: Any, *, ttl: Any = None) -> None:
        super().set_many(items, ttl=ttl)
        raise BackendError("the reply was lost", backend="test")


@pytest.mark.parametrize("failing", ["delete", "set_many"])
def test_a_read_in_flight_during_a_failed_write_is_not_kept(failing: str) -> None:
    l2 = Gated()
    l2.set("k", "old")
    cache = TieredCache(LRUCache(10), l2)
    l2.fail = True
    read: list[Any] = []
    reader = threading.Thread(target=lambda: read.append(cache.get("k")))
    reader.start()
    assert l2.reading.wait(5)
    write = (lambda: cache.delete("k")) if failing == "delete" else lambda: cache.set_many({"k": 2})
    with pytest.raises(BackendError):
        write()
    l2.gate.set()
    reader.join(5)
    assert read == ["old"]  # read before the write: its caller may have it
    assert "k" not in cache.l1  # but l1 does not keep it over the write
    l2.fail = False
    assert cache.get("k") == (None if failing == "delete" else 2)
    cache._check()


def test_close_detaches_empties_l1_and_keeps_nothing_more() -> None:
    channel = Channel()
    cache = TieredCache(LRUCache(10), LRUCache(10), invalidation=channel)
    cache.set("k", 1)
    assert cache.get("k") == 1
    assert "k" in cache.l1
    cache.close()
    assert channel.listeners == []  # a bound method is a new object at each access
    assert "k" not in cache.l1
    cache.l2.set("k", 2)  # another server's write: no message reaches a closed cache
    assert cache.get("k") == 2
    cache.set("j", 3)
    assert cache.get("j") == 3
    assert len(cache.l1) == 0
    cache._check()


def test_an_invalidation_under_another_prefix_than_l2_is_refused() -> None:
    import redis

    client = redis.Redis(port=1)  # never connected
    for prefix in ("", "app", "app:x:"):
        with pytest.raises(ConfigurationError, match="prefix"):
            TieredCache(
                LRUCache(10), RedisCache(client, prefix="app:"), invalidation=Channel(prefix)
            )
    TieredCache(LRUCache(10), RedisCache(client, prefix="app:"), invalidation=Channel("app:"))
    invalidation = RedisInvalidation(client, prefix="other:")
    with pytest.raises(ConfigurationError, match="prefix"):
        TieredCache(LRUCache(10), RedisCache(client, prefix="app:"), invalidation=invalidation)
    assert invalidation._thread is None  # refused before attaching: nothing started


@pytest.mark.redis
def test_redis_invalidation_detaches_a_closed_cache(redis_client: Any) -> None:
    invalidation = RedisInvalidation(redis_client, prefix="c:", reconnect_delay=0.05)
    try:
        first = TieredCache(
            LRUCache(10), RedisCache(redis_client, prefix="c:"), invalidation=invalidation
        )
        second = TieredCache(
            LRUCache(10), RedisCache(redis_client, prefix="c:"), invalidation=invalidation
        )
        assert invalidation.wait_ready(5)
        first.close()
        assert len(invalidation._listeners) == 1
        second.set("k", 1)
        RedisCache(redis_client, prefix="c:").set("k", 2)
        deadline = time.monotonic() + 5
        while "k" in second.l1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert second.get("k") == 2
    finally:
        invalidation.close()


@pytest.mark.redis
@pytest.mark.slow
def test_a_restarted_server_flushes_l1_and_no_read_is_stale_after() -> None:
    import redis

    with redis_server("--enable-debug-command", "yes") as port:
        client = redis.Redis(port=port)
        invalidation = RedisInvalidation(client, prefix="r:", reconnect_delay=0.02)
        cache = TieredCache(
            LRUCache(100), RedisCache(client, prefix="r:"), invalidation=invalidation
        )
        other_client = redis.Redis(port=port)
        other = RedisCache(other_client, prefix="r:")
        try:
            assert invalidation.wait_ready(5)
            other.set("k", 1)
            time.sleep(0.05)
            assert cache.get("k") == 1
            assert "k" in cache.l1
            with pytest.raises(redis.ConnectionError):
                client.execute_command("DEBUG", "RESTART")  # the same port, every link cut
            deadline = time.monotonic() + 10
            while invalidation.stats()["connects"] < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert invalidation.stats()["drops"] >= 1
            assert "k" not in cache.l1
            assert invalidation.wait_ready(10)
            other.set("k", 2)
            cache.get("k")
            other.set("k", 3)
            deadline = time.monotonic() + 5
            while cache.get("k") != 3 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert cache.get("k") == 3
        finally:
            invalidation.close()
            client.close()
            other_client.close()


class FreezingProxy:
    """A TCP proxy to a Redis server that can stop forwarding while keeping every
    socket open: a link that died without a word (a partition, a NAT timeout)."""

    def __init__(self, port: int) -> None:
        self.upstream = port
        self.frozen = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream))
            self.sockets += [client, server]
            for source, target in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        while True:
            try:
                data = source.recv(65536)
                while self.frozen.is_set():
                    time.sleep(0.01)
                if not data:
                    target.close()
                    return
                target.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


@pytest.mark.redis
def test_a_link_that_died_without_a_word_is_dropped_and_l1_flushed(redis_url: str) -> None:
    import redis

    port = redis.Redis.from_url(redis_url).connection_pool.connection_kwargs["port"]
    proxy = FreezingProxy(port)
    client = redis.Redis(port=proxy.port, db=14)
    invalidation = RedisInvalidation(client, prefix="h:", heartbeat=0.2, reconnect_delay=0.05)
    cache = TieredCache(LRUCache(10), LRUCache(10), invalidation=invalidation)
    try:
        assert invalidation.wait_ready(5)
        cache.set("k", 1)
        assert cache.get("k") == 1
        assert "k" in cache.l1
        proxy.frozen.set()
        deadline = time.monotonic() + 2
        while invalidation.ready and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not invalidation.ready
        assert invalidation.stats()["drops"] == 1
        assert "k" not in cache.l1
        cache.get("k")
        assert "k" not in cache.l1  # nothing kept while down
    finally:
        proxy.frozen.clear()
        invalidation.close()
        client.close()
        proxy.close()
