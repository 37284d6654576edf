"""``TieredCache.sync()``: read-your-writes across app servers with near caches.

Two near caches over one Redis, each with its own invalidation connection, stand
for two app servers. The second one's listener is made slow to deliver (a busy
process): a read right after the first one's write is then stale, unless the
reader calls ``sync()`` first, a barrier behind every message sent before it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from scalekit.cache import LRUCache, RedisCache, RedisInvalidation, TieredCache
from scalekit.errors import ArgumentTypeError, ConfigurationError

pytestmark = pytest.mark.redis

PREFIX = "ts:"


def _server(client: Any) -> tuple[TieredCache[Any], RedisInvalidation]:
    channel = RedisInvalidation(client, prefix=PREFIX, mode="tracking")
    cache: TieredCache[Any] = TieredCache(
        LRUCache(100), RedisCache(client, prefix=PREFIX), invalidation=channel
    )
    assert channel.wait_ready(5)
    return cache, channel


@pytest.fixture
def servers(redis_client: Any) -> Iterator[tuple[TieredCache[Any], TieredCache[Any], Any]]:
    writer, writer_channel = _server(redis_client)
    reader, reader_channel = _server(redis_client)
    yield writer, reader, reader_channel
    for cache, channel in ((writer, writer_channel), (reader, reader_channel)):
        cache.close()
        channel.close()


def _slow_listener(channel: RedisInvalidation, seconds: float) -> None:
    """Make ``channel``'s listener take ``seconds`` before delivering each message."""
    deliver = channel._deliver

    def late(keys: list[str]) -> None:
        time.sleep(seconds)
        deliver(keys)

    channel._deliver = late  # type: ignore[method-assign]


@pytest.mark.parametrize("synced", [False, True])
def test_a_read_after_another_servers_write_is_fresh_after_sync(
    servers: tuple[TieredCache[Any], TieredCache[Any], Any], synced: bool
) -> None:
    writer, reader, reader_channel = servers
    writer.set("user:1", {"v": 1})
    assert reader.sync()  # the write's own invalidation must not drop what is read next
    assert reader.get("user:1") == {"v": 1}  # now in the reader's l1
    _slow_listener(reader_channel, 0.3)
    writer.set("user:1", {"v": 2})  # acknowledged: the invalidation is on its way
    if synced:
        started = time.monotonic()
        assert reader.sync(timeout=5) is True
        assert time.monotonic() - started >= 0.25  # it waited for the slow delivery
        assert reader.get("user:1") == {"v": 2}
    else:
        assert reader.get("user:1") == {"v": 1}  # stale: what sync() is for


def test_sync_returns_at_once_when_nothing_is_on_its_way(
    servers: tuple[TieredCache[Any], TieredCache[Any], Any],
) -> None:
    writer, reader, _ = servers
    writer.set("k", 1)
    assert reader.sync()
    assert reader.get("k") == 1
    started = time.monotonic()
    for _ in range(20):
        assert reader.sync() is True
    assert time.monotonic() - started < 1.0  # a round trip each
    assert reader.get("k") == 1
    assert reader.stats().flushes == 1  # only the one of attaching


def test_a_sync_that_times_out_flushes_l1(
    servers: tuple[TieredCache[Any], TieredCache[Any], Any],
) -> None:
    writer, reader, reader_channel = servers
    writer.set("k", 1)
    assert reader.sync()
    assert reader.get("k") == 1
    _slow_listener(reader_channel, 0.5)
    writer.set("other", 2)
    assert reader.sync(timeout=0.05) is False
    assert len(reader.l1) == 0  # not known to be fresh: kept nothing
    assert reader.get("k") == 1  # read again from l2


def test_sync_while_not_listening_flushes_and_says_so(redis_client: Any) -> None:
    channel = RedisInvalidation(redis_client, prefix=PREFIX)
    assert channel.sync() is False  # no listener yet
    cache: TieredCache[Any] = TieredCache(
        LRUCache(10), RedisCache(redis_client, prefix=PREFIX), invalidation=channel
    )
    try:
        assert channel.wait_ready(5)
        cache.set("k", 1)
        channel.close()
        assert channel.sync() is False
        assert cache.sync() is False
        assert len(cache.l1) == 0
    finally:
        cache.close()


def test_sync_without_a_channel_flushes_l1(redis_client: Any) -> None:
    cache: TieredCache[Any] = TieredCache(LRUCache(10), RedisCache(redis_client, prefix=PREFIX))
    cache.set("k", 1)
    assert len(cache.l1) == 1
    assert cache.sync() is False
    assert len(cache.l1) == 0


def test_many_threads_sync_at_once(
    servers: tuple[TieredCache[Any], TieredCache[Any], Any],
) -> None:
    writer, reader, _ = servers
    results: list[bool] = []
    lock = threading.Lock()

    def work(n: int) -> None:
        for i in range(20):
            writer.set(f"k{n}", i)
            ok = reader.sync(timeout=5)
            value = reader.get(f"k{n}")
            with lock:
                results.append(ok and value == i)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(results) == 160
    assert all(results)


@pytest.mark.parametrize(
    ("timeout", "error"),
    [
        (-1, ConfigurationError),
        (float("nan"), ConfigurationError),
        (float("inf"), ConfigurationError),
        (10**400, ConfigurationError),
        (True, ArgumentTypeError),
        ("1", ArgumentTypeError),
        (None, ArgumentTypeError),
    ],
)
def test_a_bad_timeout_is_refused_and_l1_is_kept(
    servers: tuple[TieredCache[Any], TieredCache[Any], Any], timeout: Any, error: type
) -> None:
    writer, reader, reader_channel = servers
    writer.set("k", 1)
    assert reader.sync()
    assert reader.get("k") == 1
    with pytest.raises(error, match="timeout"):
        reader.sync(timeout)
    with pytest.raises(error, match="timeout"):
        reader_channel.sync(timeout)
    assert len(reader.l1) == 1
