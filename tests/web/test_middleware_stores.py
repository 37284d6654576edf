"""The web cache over other stores: an AsyncStore under ASGI, RedisCache (JSON
values), and TieredCache near caches on two app servers, purged across them."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from scalekit.cache import LRUCache, RedisCache, RedisInvalidation, TieredCache
from scalekit.errors import ConfigurationError
from scalekit.testing import FakeClock
from scalekit.web import CacheMiddleware, HttpCache, WSGICacheMiddleware
from tests.web._http_apps import Origin, asgi_get, asgi_request, wsgi_get

START = 1_700_000_000.0
MAX60 = [("Cache-Control", "max-age=60")]


class AsyncLRU:
    """An AsyncStore over an LRUCache, counting its awaited calls."""

    def __init__(self, clock: FakeClock) -> None:
        self.cache: LRUCache[str, Any] = LRUCache(1000, timer=clock)
        self.calls = 0

    async def get(self, key: str, default: Any = None) -> Any:
        self.calls += 1
        await asyncio.sleep(0)
        return self.cache.get(key, default)

    async def set(self, key: str, value: Any, *, ttl: float | None = None) -> None:
        self.calls += 1
        self.cache.set(key, value, ttl=ttl)

    async def add(self, key: str, value: Any, *, ttl: float | None = None) -> bool:
        self.calls += 1
        return self.cache.add(key, value, ttl=ttl)

    async def delete(self, key: str) -> bool:
        self.calls += 1
        return self.cache.delete(key)

    async def get_many(self, keys: Any) -> dict[str, Any]:
        self.calls += 1
        return self.cache.get_many(keys)

    async def set_many(self, items: Any, *, ttl: float | None = None) -> None:
        self.cache.set_many(items, ttl=ttl)

    async def ttl_of(self, key: str) -> float | None:
        return self.cache.ttl_of(key)


def test_an_async_store_is_awaited_under_asgi() -> None:
    clock = FakeClock(START)
    store = AsyncLRU(clock)
    cache = HttpCache(store, clock=clock)
    assert cache.asynchronous
    origin = Origin()
    origin.route("/a", headers=[*MAX60, ("Surrogate-Key", "t")], body=b"A")
    app = CacheMiddleware(origin.asgi, cache)

    async def run() -> list[str]:
        statuses = [(await asgi_request(app, "/a")).cache_status for _ in range(2)]
        await cache.purge_async("t")
        statuses.append((await asgi_request(app, "/a")).cache_status)
        return statuses

    assert asyncio.run(run()) == [
        "scalekit; fwd=uri-miss; stored",
        "scalekit; hit; ttl=60",
        "scalekit; fwd=uri-miss; stored",
    ]
    assert store.calls > 5
    with pytest.raises(ConfigurationError, match="sync store"):
        cache.purge("t")
    with pytest.raises(ConfigurationError, match="sync store"):
        WSGICacheMiddleware(origin.wsgi, cache)


@pytest.fixture
def redis_db(redis_client: Any) -> Any:
    return redis_client


@pytest.mark.redis
def test_redis_keeps_json_entries_that_another_server_reads(redis_db: Any) -> None:
    clock = FakeClock(START)
    origin = Origin()
    origin.route("/a", headers=[*MAX60, ("Vary", "Accept"), ("ETag", '"e"')], body=b"\x00\xffbin")
    caches = [HttpCache(RedisCache(redis_db, prefix="t15:"), clock=clock) for _ in range(2)]
    first = WSGICacheMiddleware(origin.wsgi, caches[0])
    second = CacheMiddleware(origin.asgi, caches[1])
    assert wsgi_get(first, "/a", [("Accept", "x")]).body == b"\x00\xffbin"
    hit = asgi_get(second, "/a", [("Accept", "x")])
    assert (hit.body, hit.cache_status) == (b"\x00\xffbin", "scalekit; hit; ttl=60")
    assert (
        asgi_get(second, "/a", [("Accept", "y")]).cache_status == "scalekit; fwd=vary-miss; stored"
    )
    assert origin.calls == 2
    assert 0 < redis_db.pttl(b"t15:web:http://example.com/2:/a?") <= 60_000 + 60_000


@pytest.mark.redis
def test_a_purge_on_one_server_is_seen_by_the_other_ones_near_cache(
    redis_db: Any, redis_url: str
) -> None:
    import redis

    clock = FakeClock(START)
    servers = []
    channels = []
    for _ in range(2):
        client = redis.Redis.from_url(redis_url)
        channel = RedisInvalidation(client, prefix="t15:")
        channels.append(channel)
        tiered = TieredCache(
            LRUCache(1000, timer=clock),
            RedisCache(client, prefix="t15:"),
            invalidation=channel,
            timer=clock,
        )
        assert channel.wait_ready(5)
        servers.append((client, tiered))
    try:
        origin = Origin()
        origin.route("/a", headers=[*MAX60, ("Surrogate-Key", "news")], body=b"A")
        caches = [HttpCache(tiered, clock=clock) for _, tiered in servers]
        apps = [WSGICacheMiddleware(origin.wsgi, cache) for cache in caches]
        wsgi_get(apps[0], "/a")
        assert wsgi_get(apps[1], "/a").cache_status == "scalekit; hit; ttl=60"
        assert wsgi_get(apps[1], "/a").cache_status == "scalekit; hit; ttl=60"  # from l1 now
        caches[0].purge("news")
        seen = threading.Event()
        for _ in range(500):
            if wsgi_get(apps[1], "/a").cache_status != "scalekit; hit; ttl=60":
                seen.set()
                break
            threading.Event().wait(0.01)
        assert seen.is_set(), "the other server kept serving the purged response"
        assert origin.calls == 2
    finally:
        for client, tiered in servers:
            tiered.close()
            client.close()
        for channel in channels:
            channel.close()
