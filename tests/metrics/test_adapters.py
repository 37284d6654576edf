"""Each adapter maps its block's stats() to samples whose values equal the stats."""

from __future__ import annotations

import dataclasses
import importlib
import random
from typing import Any

import pytest

from scalekit.balancing import (
    FailoverGroups,
    HealthChecker,
    LeastConnections,
    PeakEwma,
    RoundRobin,
)
from scalekit.cache import (
    LRUCache,
    RedisCache,
    ThreadSafeCache,
    TieredCache,
    TTLCache,
    cached,
)
from scalekit.metrics import METRICS, Registry, Sample
from scalekit.metrics._adapters import OBJECT_ADAPTERS, SNAPSHOT_ADAPTERS
from scalekit.mq import AsyncQueue, Broker
from scalekit.replication import ReplicaRouter
from scalekit.sharding import JumpHash, ShardedStore
from scalekit.testing import FakeClock
from scalekit.web import HttpCache, WSGICacheMiddleware


def _read(obj: Any, name: str = "x", **options: Any) -> dict[tuple[str, tuple[Any, ...]], Sample]:
    registry = Registry()
    registry.register(name, obj, **options)
    samples = registry.collect()
    by_key = {(s.name, s.labels): s for s in samples}
    assert len(by_key) == len(samples), "two samples share a name and labels"
    for sample in samples:
        assert METRICS.get(sample.name, ("gauge",))[0] == sample.kind
        assert sample.kind != "counter" or sample.name.endswith("_total")
    return by_key


def _value(by_key: dict[Any, Sample], name: str, **labels: str) -> float:
    for (metric, pairs), sample in by_key.items():
        if metric == name and dict(pairs) == labels:
            return sample.value
    raise AssertionError(f"no {name}{labels} in {sorted(k[0] for k in by_key)}")


@pytest.mark.parametrize("table", [OBJECT_ADAPTERS, SNAPSHOT_ADAPTERS])
def test_every_table_entry_names_a_real_class(table: dict[str, Any]) -> None:
    for qualified in table:
        module, _, name = qualified.rpartition(".")
        assert isinstance(getattr(importlib.import_module(module), name), type), qualified


def test_an_lru_cache_with_hits_and_misses() -> None:
    cache: LRUCache[str, int] = LRUCache(maxsize=2, stats=True)
    cache["a"], cache["b"], cache["c"] = 1, 2, 3  # "a" is evicted
    cache.get("b"), cache.get("c"), cache.get("a")
    by_key = _read(cache, "users")
    stats = cache.stats()
    assert _value(by_key, "scalekit_cache_hits_total", cache="users") == stats.hits == 2
    assert _value(by_key, "scalekit_cache_misses_total", cache="users") == stats.misses == 1
    assert _value(by_key, "scalekit_cache_evictions_total", cache="users") == 1
    assert _value(by_key, "scalekit_cache_size", cache="users") == 2
    assert _value(by_key, "scalekit_cache_maxsize", cache="users") == 2


def test_a_thread_safe_cache_reads_as_its_cache() -> None:
    cache = ThreadSafeCache(LRUCache(maxsize=10, stats=True))
    cache["a"] = 1
    cache.get("a")
    cache.get("z")
    by_key = _read(cache, "users")
    assert _value(by_key, "scalekit_cache_hits_total", cache="users") == 1
    assert _value(by_key, "scalekit_cache_misses_total", cache="users") == 1
    assert _value(by_key, "scalekit_cache_size", cache="users") == 1


def test_a_cached_function() -> None:
    @cached(LRUCache(maxsize=8))
    def square(n: int) -> int:
        return n * n

    square(2), square(2), square(3)
    by_key = _read(square, "square")
    assert _value(by_key, "scalekit_cached_hits_total", function="square") == 1
    assert _value(by_key, "scalekit_cached_misses_total", function="square") == 2
    assert _value(by_key, "scalekit_cached_size", function="square") == 2
    assert _value(by_key, "scalekit_cached_maxsize", function="square") == 8


def test_a_tiered_cache_per_tier() -> None:
    l2 = ShardedStore(JumpHash(["a"]), {"a": LRUCache(100)})
    tiered: TieredCache[int] = TieredCache(LRUCache(100), l2)
    tiered.set("k", 1)
    l2.set("only-l2", 2)
    tiered.get("k"), tiered.get("only-l2"), tiered.get("nowhere")
    stats = tiered.stats()
    by_key = _read(tiered, "near")
    assert _value(by_key, "scalekit_tiered_cache_hits_total", cache="near", tier="l1") == (
        stats.l1_hits
    )
    assert _value(by_key, "scalekit_tiered_cache_hits_total", cache="near", tier="l2") == (
        stats.l2_hits
    )
    assert stats.l1_hits == stats.l2_hits == 1
    assert _value(by_key, "scalekit_tiered_cache_misses_total", cache="near") == 1


def test_a_round_robin_with_a_lease_in_flight() -> None:
    balancer = RoundRobin(["app-1", "app-2", "app-3"])
    with balancer.lease() as backend:
        by_key = _read(balancer, "web")
        assert _value(by_key, "scalekit_balancer_in_flight", balancer="web", backend=backend) == 1
    balancer.report("app-2", False, latency=0.25)
    by_key = _read(balancer, "web")
    assert _value(by_key, "scalekit_balancer_in_flight", balancer="web", backend="app-1") == 0
    assert _value(by_key, "scalekit_balancer_picks_total", balancer="web", backend="app-1") == 1
    assert _value(by_key, "scalekit_balancer_failures_total", balancer="web", backend="app-2") == 1
    assert _value(by_key, "scalekit_balancer_latency_seconds", balancer="web", backend="app-2") == (
        0.25
    )
    never = (("balancer", "web"), ("backend", "app-3"))  # no latency reported: no series
    assert ("scalekit_balancer_latency_seconds", never) not in by_key
    assert ("scalekit_balancer_weight", never) in by_key


def test_backends_labelled_by_label_of_and_kept_apart() -> None:
    class Server:
        def __init__(self, port: int) -> None:
            self.port = port

        def __str__(self) -> str:
            return "server"  # the same for both: the labels must still differ

    first, second = Server(1), Server(2)
    balancer = LeastConnections([first, second])
    by_key = _read(balancer, "web")
    backends = {dict(k[1])["backend"] for k in by_key if k[0] == "scalekit_balancer_weight"}
    assert backends == {"server", "server#2"}
    by_key = _read(balancer, "web", label_of=lambda server: f"127.0.0.1:{server.port}")
    backends = {dict(k[1])["backend"] for k in by_key if k[0] == "scalekit_balancer_weight"}
    assert backends == {"127.0.0.1:1", "127.0.0.1:2"}


def test_failover_groups() -> None:
    east, west = RoundRobin(["east-0", "east-1"]), RoundRobin(["west-0"])
    groups = FailoverGroups([east, west], rng=random.Random(1))
    east.mark_down("east-0")
    east.mark_down("east-1")
    groups.pick()
    stats = groups.stats()
    by_key = _read(groups, "web")
    assert (
        _value(by_key, "scalekit_failover_failovers_total", balancer="web") == stats.failovers == 1
    )
    assert _value(by_key, "scalekit_failover_group_picks_total", balancer="web", group="1") == 1
    assert _value(by_key, "scalekit_balancer_down", balancer="web", backend="east-0") == 1
    assert _value(by_key, "scalekit_balancer_picks_total", balancer="web", backend="west-0") == 1


def test_a_health_checker_reads_its_balancer() -> None:
    balancer = RoundRobin(["a", "b"])
    checker = HealthChecker(balancer, lambda backend: backend == "a", fall=1)
    checker.check_all()
    by_key = _read(checker, "web")
    assert _value(by_key, "scalekit_health_checker_running", balancer="web") == 0
    assert _value(by_key, "scalekit_balancer_down", balancer="web", backend="b") == 1
    assert _value(by_key, "scalekit_balancer_down", balancer="web", backend="a") == 0


def test_a_broker_queue_depth() -> None:
    with Broker(clock=FakeClock(1_000)) as broker:
        emails, jobs = broker.queue("emails"), broker.queue("jobs")
        for n in range(3):
            emails.put({"n": n})
        delivery = emails.get(timeout=0)
        assert delivery is not None
        by_key = _read(broker, "main")
        assert _value(by_key, "scalekit_mq_depth", broker="main", queue="emails") == 2
        assert _value(by_key, "scalekit_mq_in_flight", broker="main", queue="emails") == 1
        assert _value(by_key, "scalekit_mq_delivered_total", broker="main", queue="emails") == 1
        assert _value(by_key, "scalekit_mq_depth", broker="main", queue="jobs") == 0
        delivery.ack()
        by_key = _read(jobs, "jobs")
        assert _value(by_key, "scalekit_mq_depth", broker="jobs", queue="jobs") == 0
        by_key = _read(emails, "e")
        assert _value(by_key, "scalekit_mq_acked_total", broker="e", queue="emails") == 1
        assert _value(by_key, "scalekit_mq_oldest_age_seconds", broker="e", queue="emails") == 0


def test_a_replica_router() -> None:
    lags = {"replica-a": 0.5, "replica-b": 9.0}
    router = ReplicaRouter(
        "primary", ["replica-a", "replica-b"], max_lag=2.0, lag_probe=lags.__getitem__
    )
    reads = [router.for_read() for _ in range(3)]
    router.for_write()
    stats = router.stats()
    by_key = _read(router, "db")
    assert _value(by_key, "scalekit_replica_lag_seconds", router="db", replica="replica-b") == 9.0
    assert _value(by_key, "scalekit_replica_lag_seconds", router="db", replica="replica-a") == 0.5
    assert _value(by_key, "scalekit_replica_lagging", router="db", replica="replica-b") == 1
    assert _value(by_key, "scalekit_replica_reads_total", router="db", replica="replica-a") == (
        reads.count("replica-a")
    )
    assert _value(by_key, "scalekit_router_reads_total", router="db") == stats.reads == 3
    assert _value(by_key, "scalekit_router_writes_total", router="db") == 1


def test_a_sharded_store() -> None:
    store = ShardedStore(JumpHash(["a", "b"]), {"a": LRUCache(100), "b": LRUCache(100)})
    store.set_many({f"k{i}": i for i in range(20)})
    stats = store.stats()
    by_key = _read(store, "kv")
    for shard, calls in stats.calls.items():
        assert _value(by_key, "scalekit_shard_calls_total", store="kv", shard=shard) == calls
    assert sum(stats.calls.values()) >= 2
    assert _value(by_key, "scalekit_sharded_store_failovers_total", store="kv") == 0


def test_an_http_cache() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Cache-Control", "max-age=60")])
        return [b"hello"]

    cache = HttpCache(clock=FakeClock(1_700_000_000))
    middleware = WSGICacheMiddleware(app, cache)
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/a",
        "HTTP_HOST": "example.com",
        "wsgi.url_scheme": "http",
        "QUERY_STRING": "",
    }
    for _ in range(3):
        assert b"".join(middleware(dict(environ), lambda status, headers: None)) == b"hello"
    stats = cache.stats()
    by_key = _read(cache, "pages")
    assert _value(by_key, "scalekit_web_cache_hits_total", cache="pages") == stats.hits == 2
    assert _value(by_key, "scalekit_web_cache_misses_total", cache="pages") == stats.misses == 1
    assert _value(by_key, "scalekit_web_cache_stores_total", cache="pages") == 1


def test_an_unknown_block_gets_its_numeric_fields_as_gauges() -> None:
    @dataclasses.dataclass(frozen=True)
    class PoolStats:
        open: int
        idle: float
        healthy: bool
        label: str

    class Pool:
        def stats(self) -> PoolStats:
            return PoolStats(open=4, idle=1.5, healthy=True, label="x")

    by_key = _read(Pool(), "pool")
    assert {name: s.value for (name, _), s in by_key.items()} == {
        "scalekit_pool_open": 4,
        "scalekit_pool_idle": 1.5,
        "scalekit_pool_healthy": 1,
    }
    assert all(s.kind == "gauge" and s.labels == () for s in by_key.values())


def test_a_mapping_from_stats_is_read_as_gauges() -> None:
    class Listener:
        def stats(self) -> dict[str, int]:
            return {"messages": 3, "keys-seen": 5}

    by_key = _read(Listener(), "inv")
    assert {name: s.value for (name, _), s in by_key.items()} == {
        "scalekit_inv_messages": 3,
        "scalekit_inv_keys_seen": 5,
    }


@pytest.mark.parametrize("kind", [RoundRobin, LeastConnections, PeakEwma])
def test_every_balancer_shows_its_lease_in_flight(kind: Any) -> None:
    balancer = kind(["app-1", "app-2"])
    with balancer.lease() as backend:
        by_key = _read(balancer, "web")
        in_flight = {
            dict(labels)["backend"]: sample.value
            for (name, labels), sample in by_key.items()
            if name == "scalekit_balancer_in_flight"
        }
    assert in_flight == {"app-1": 0, "app-2": 0, backend: 1}


@pytest.mark.redis
def test_a_redis_cache(redis_client: Any) -> None:
    cache: RedisCache[int] = RedisCache(redis_client, prefix="metrics:")
    cache.set("a", 1)
    cache.get("a"), cache.get("b"), cache.get("c")
    cache.delete("a")
    stats = cache.stats()
    by_key = _read(cache, "shared")
    assert _value(by_key, "scalekit_cache_hits_total", cache="shared") == stats.hits == 1
    assert _value(by_key, "scalekit_cache_misses_total", cache="shared") == stats.misses == 2
    assert _value(by_key, "scalekit_cache_writes_total", cache="shared") == stats.writes == 1
    assert _value(by_key, "scalekit_cache_deletes_total", cache="shared") == stats.deletes == 1
    assert _value(by_key, "scalekit_cache_errors_total", cache="shared") == 0


def test_a_plain_cache_is_not_purged_by_a_scrape() -> None:
    clock = FakeClock(0)
    cache: TTLCache[str, int] = TTLCache(maxsize=10, ttl=5, timer=clock, stats=True)
    cache["a"] = 1
    clock.advance(10)  # "a" has expired; only the cache's owner may purge it
    registry = Registry()
    registry.register("users", cache)
    registry.collect()
    assert cache._data == {"a": 1}  # the scrape changed nothing
    safe = ThreadSafeCache(TTLCache(maxsize=10, ttl=5, timer=clock, stats=True))
    safe["b"] = 2
    clock.advance(10)
    by_key = _read(safe, "safe")  # purged under its lock
    assert _value(by_key, "scalekit_cache_size", cache="safe") == 0


def test_an_async_queue_reads_its_queue() -> None:
    with Broker() as broker:
        queue = AsyncQueue(broker.queue("emails"))
        broker.queue("emails").put({"n": 1})
        by_key = _read(queue, "mail")
        assert _value(by_key, "scalekit_mq_depth", broker="mail", queue="emails") == 1


def test_a_session_store_counts_per_operation() -> None:
    from scalekit.sessions import MemorySessionStore

    store = MemorySessionStore()
    session = store.create({"user": "ada"})
    store.load(session.id)
    store.load("x")
    store.delete(session.id)
    by_key = _read(store, "web")
    for field, wanted in (("created", 1), ("loaded", 1), ("not_found", 1), ("deleted", 1)):
        assert _value(by_key, f"scalekit_sessions_{field}_total", store="web") == wanted
    assert _value(by_key, "scalekit_sessions_conflicts_total", store="web") == 0
