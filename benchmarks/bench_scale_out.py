"""The shared tier against the raw clients a user would otherwise call, same run.

- ``RedisCache`` ``get`` (a hit) and ``set`` of a small JSON object (about 120
  bytes) against redis-py's ``get`` and ``set(px=...)`` of the same bytes on the
  same server: the issue's target is at most 1.3 x.
- ``MemcachedCache`` the same against pymemcache, on a memcached of the run's own.
- ``ShardedStore.get_many`` of 100 keys over 3 Redis servers of the run's own
  (one ``MGET`` per shard, all sent before any reply is read) against
  100 single ``get`` calls: the target is at least 10 x faster (a ratio <= 0.1).
- ``TieredCache`` l1 hit against a plain ``LRUCache`` hit, 1,000 keys (target
  <= 1.5 x), without TTLs and with the same TTL on both (then both read the clock).

Each pair is measured interleaved (alternating batches of 100 calls, 40 rounds)
and the median ratio is kept in ``extra_info["ratio"]``; with
``--benchmark-disable`` each runs once, briefly, so none rots.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from tests.services import REDIS_URL, memcached_server, probe_redis, require_service

from benchmarks.timing import record
from scalekit._json import dumps
from scalekit.cache import MemcachedCache, RedisCache

VALUE = {"id": 48213, "name": "Ada Lovelace", "roles": ["customer", "reviewer"], "score": 9.5}
RAW = dumps(VALUE)


def rounds(benchmark: Any) -> dict[str, int]:
    return {"rounds": 2, "batch": 5} if benchmark.disabled else {}


@pytest.fixture
def redis_client() -> Iterator[Any]:
    require_service("Redis", REDIS_URL, probe_redis)
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    yield client
    client.delete("bench:ours:k", "bench:raw:k")
    client.close()


@pytest.fixture(scope="module")
def memcached_client() -> Iterator[Any]:
    from pymemcache.client.base import Client

    with memcached_server() as port:
        client = Client(("127.0.0.1", port))
        yield client
        client.close()


def test_redis_get(benchmark: Any, redis_client: Any) -> None:
    benchmark.group = "RedisCache get / redis-py get"
    cache = RedisCache(redis_client, prefix="bench:ours:", ttl=600)
    cache.set("k", VALUE)
    redis_client.set("bench:raw:k", RAW, px=600_000)
    assert cache.get("k") == VALUE
    record(
        benchmark,
        lambda: cache.get("k"),
        lambda: redis_client.get("bench:raw:k"),
        **rounds(benchmark),
    )


def test_redis_set(benchmark: Any, redis_client: Any) -> None:
    benchmark.group = "RedisCache set / redis-py set"
    cache = RedisCache(redis_client, prefix="bench:ours:", ttl=600)
    record(
        benchmark,
        lambda: cache.set("k", VALUE),
        lambda: redis_client.set("bench:raw:k", RAW, px=600_000),
        **rounds(benchmark),
    )
    assert cache.get("k") == VALUE


def test_memcached_get(benchmark: Any, memcached_client: Any) -> None:
    benchmark.group = "MemcachedCache get / pymemcache get"
    cache = MemcachedCache(memcached_client, prefix="ours:", ttl=600)
    cache.set("k", VALUE)
    memcached_client.set(b"raw:k", RAW, 601, noreply=False)
    assert cache.get("k") == VALUE
    record(
        benchmark,
        lambda: cache.get("k"),
        lambda: memcached_client.get(b"raw:k"),
        **rounds(benchmark),
    )


def test_memcached_set(benchmark: Any, memcached_client: Any) -> None:
    benchmark.group = "MemcachedCache set / pymemcache set"
    cache = MemcachedCache(memcached_client, prefix="ours:", ttl=600)
    record(
        benchmark,
        lambda: cache.set("k", VALUE),
        lambda: memcached_client.set(b"raw:k", RAW, 601, noreply=False),
        **rounds(benchmark),
    )
    assert cache.get("k") == VALUE


@pytest.fixture(scope="module")
def three_redis() -> Iterator[dict[str, Any]]:
    import redis
    from tests.services import redis_server

    with redis_server() as a, redis_server() as b, redis_server() as c:
        clients = {
            name: redis.Redis(port=port) for name, port in zip("abc", (a, b, c), strict=True)
        }
        yield clients
        for client in clients.values():
            client.close()


@pytest.mark.parametrize("threads", [True, False])
def test_sharded_get_many(benchmark: Any, three_redis: dict[str, Any], threads: bool) -> None:
    """get_many of 100 keys over 3 shards against 100 single GETs (target >= 10 x)."""
    from scalekit.sharding import KetamaRing, ShardedStore

    benchmark.group = "ShardedStore get_many(100 keys, 3 shards) / 100 single gets"
    stores = {name: RedisCache(client) for name, client in three_redis.items()}
    store = ShardedStore(KetamaRing(list(stores)), stores, max_workers=None if threads else 1)
    keys = [f"user:{i}" for i in range(100)]
    store.set_many(dict.fromkeys(keys, VALUE))
    assert len(store.get_many(keys)) == 100

    def singles() -> None:
        for key in keys:
            store.get(key)

    kw = {"rounds": 2, "batch": 2} if benchmark.disabled else {"rounds": 15, "batch": 10}
    benchmark.extra_info["threads"] = threads
    record(benchmark, lambda: store.get_many(keys), singles, **kw)
    store.close()


@pytest.mark.parametrize("l1_ttl", [None, 60.0])
def test_tiered_l1_hit(benchmark: Any, l1_ttl: float | None) -> None:
    """A TieredCache l1 hit against a plain LRUCache hit (target <= 1.5 x); with
    ``l1_ttl`` each hit reads the clock, and so does the LRUCache's (same ``ttl``)."""
    from scalekit._bench_suite import tiered_l1_workloads

    benchmark.group = f"TieredCache l1 hit / LRUCache hit (l1_ttl={l1_ttl})"
    ours, rival, near = tiered_l1_workloads(l1_ttl)

    kw = {"rounds": 2, "batch": 2} if benchmark.disabled else {"rounds": 30, "batch": 20}
    record(benchmark, ours, rival, **kw)
    assert near.stats().l1_hits >= 1000
