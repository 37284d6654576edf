"""Hostile values on every block's public parameters: one table, one rule.

Each case builds a fresh object, records what a user could observe of it, passes one
hostile value to one parameter, and checks three things: the call is refused with an
error of :mod:`scalekit.errors` that is also ``TypeError`` or ``ValueError`` (what a
user catches), the message names the parameter, and the object is exactly as it was.

A value appears in a case's list only when no reading of the docs could accept it
for that parameter (``None`` is left out where it means "the default", ``inf`` where
it means "forever").
"""

from __future__ import annotations

import asyncio
import math
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from scalekit import errors, hashing
from scalekit.balancing import (
    FailoverGroups,
    HealthChecker,
    LeastConnections,
    OutlierEjection,
    PeakEwma,
    RoundRobin,
)
from scalekit.cache import (
    BYTES,
    JSON,
    AsyncRedisCache,
    FIFOCache,
    LFUCache,
    LRUCache,
    MemcachedCache,
    RedisCache,
    RedisInvalidation,
    StoreStats,
    TieredCache,
    TinyLFUCache,
    TTLCache,
    cached,
)
from scalekit.mq import Backoff, Broker, Consumer
from scalekit.replication import ReplicaRouter
from scalekit.sessions import MemorySessionStore
from scalekit.sharding import (
    AsyncShardedStore,
    BoundedLoads,
    ClusterResharder,
    ClusterRouter,
    HashRing,
    HotKeyDetector,
    JumpHash,
    KetamaRing,
    MaglevHash,
    RendezvousHash,
    ShardedStore,
    SlotMap,
    ketama_hash,
)
from scalekit.testing import FakeClock
from tests.services import memcached_server

NAN = math.nan
INF = math.inf
HUGE_INT = 10**400
HUGE_FLOAT = 1e308
SURROGATE = "\ud800"


class _Unhashable:
    __hash__ = None  # type: ignore[assignment]


# Positive seconds (a TTL, an interval, a timeout where inf means nothing).
BAD_SECONDS = [True, "1", b"1", NAN, -INF, HUGE_INT, HUGE_FLOAT, -1, [], object()]
# A count: an int, never bool, never a float, never absurdly large.
BAD_COUNT = [True, 1.5, "3", NAN, INF, HUGE_INT, -1, [], object()]
# A cache size (a float when getsizeof sizes values).
BAD_MAXSIZE = [True, NAN, -INF, HUGE_INT, "3", -1, None, []]
# A weight: a positive finite number.
BAD_WEIGHT = [True, "1", NAN, INF, -INF, HUGE_INT, HUGE_FLOAT, -1, [], object()]
# A node, backend or replica.
BAD_NODE = [None, NAN, [], _Unhashable()]
# A key handed to a sharder.
BAD_KEY = [None, 1.5, NAN, [], object(), (1, 2)]
# A name stored or sent somewhere (queue names, session ids).
BAD_NAME = [None, 5, SURROGATE, b"q", []]


@dataclass(frozen=True)
class Case:
    """``call(make(), value)`` must refuse every one of ``values``."""

    id: str
    make: Callable[[], Any]
    call: Callable[[Any, Any], object]
    values: list[Any]
    snapshot: Callable[[Any], object] = lambda obj: None
    names: str = ""  # a word the message must contain; defaults to the id's last part
    needs: str = ""  # a server the case runs against: "redis" or "memcached"


def _cache_state(cache: Any) -> object:
    return sorted(cache.items()), cache.currsize


def _sharder_state(sharder: Any) -> object:
    return sorted(map(repr, sharder.nodes)), [sharder.node_for(f"k{i}") for i in range(64)]


def _balancer_state(balancer: Any) -> object:
    return repr(balancer.stats())


def _router_state(router: Any) -> object:
    return repr(router.stats()), router.healthy()


def _queue_state(queue: Any) -> object:
    return repr(queue.stats())


def _filled(cache: Any) -> Any:
    cache["a"] = 1
    cache["b"] = 2
    return cache


def _queue() -> Any:
    broker = Broker(clock=FakeClock(1000.0))
    queue = broker.queue("jobs", maxsize=2)
    queue.put({"n": 1})
    return queue


def _ring(cls: type) -> Callable[[], Any]:
    return lambda: cls(["a", "b", "c"])


def _cases() -> list[Case]:
    cases: list[Case] = []
    for cls in (LRUCache, LFUCache, FIFOCache):
        name = cls.__name__
        cases += [
            Case(f"{name}.maxsize", lambda: None, lambda _, v, c=cls: c(v), BAD_MAXSIZE),
            Case(f"{name}.ttl", lambda: None, lambda _, v, c=cls: c(10, ttl=v), BAD_SECONDS),
            Case(
                f"{name}.set.ttl",
                lambda c=cls: _filled(c(10)),
                lambda o, v: o.set("k", 1, ttl=v),
                BAD_SECONDS,
                _cache_state,
            ),
            Case(
                f"{name}.add.ttl",
                lambda c=cls: _filled(c(10)),
                lambda o, v: o.add("k", 1, ttl=v),
                BAD_SECONDS,
                _cache_state,
            ),
            Case(
                f"{name}.set_many.ttl",
                lambda c=cls: _filled(c(10)),
                lambda o, v: o.set_many({"k": 1}, ttl=v),
                BAD_SECONDS,
                _cache_state,
            ),
            Case(
                f"{name}.set_many.items",
                lambda c=cls: _filled(c(10)),
                lambda o, v: o.set_many(v),
                [None, 5, "ab", [1, 2]],
                _cache_state,
            ),
            Case(
                f"{name}.expire.time",
                lambda c=cls: _filled(c(10, ttl=60)),
                lambda o, v: o.expire(v),
                [NAN, "1", True, [], HUGE_INT],
                _cache_state,
            ),
        ]
    cases += [
        Case("TTLCache.ttl", lambda: None, lambda _, v: TTLCache(10, v), BAD_SECONDS),
        Case("TTLCache.maxsize", lambda: None, lambda _, v: TTLCache(v, 60), BAD_MAXSIZE),
        Case(
            "TTLCache.expire.time",
            lambda: _filled(TTLCache(10, 60)),
            lambda o, v: o.expire(v),
            [NAN, "1", True, [], HUGE_INT],
            _cache_state,
        ),
        Case(
            "TTLCache.set.ttl",
            lambda: _filled(TTLCache(10, 60)),
            lambda o, v: o.set("k", 1, ttl=v),
            BAD_SECONDS,
            _cache_state,
        ),
        Case("TinyLFUCache.maxsize", lambda: None, lambda _, v: TinyLFUCache(v), BAD_MAXSIZE),
        Case(
            "TinyLFUCache.window_fraction",
            lambda: None,
            lambda _, v: TinyLFUCache(100, window_fraction=v),
            [NAN, INF, -0.5, 2.0, True, "0.1", None],
        ),
        Case(
            "TinyLFUCache.set.ttl",
            lambda: _filled(TinyLFUCache(10)),
            lambda o, v: o.set("k", 1, ttl=v),
            BAD_SECONDS,
            _cache_state,
        ),
        Case("cached.cache", lambda: None, lambda _, v: cached(v), [None, 5, "x"], names="cache"),
    ]

    sharders = (HashRing, KetamaRing, JumpHash, RendezvousHash, MaglevHash, SlotMap)
    for cls in sharders:
        name = cls.__name__
        cases += [
            Case(
                f"{name}.node_for.key",
                _ring(cls),
                lambda o, v: o.node_for(v),
                BAD_KEY,
                _sharder_state,
                names="key",
            ),
            Case(
                f"{name}.nodes",
                lambda: None,
                lambda _, v, c=cls: c(["a", v]),
                BAD_NODE,
                names="node",
            ),
            Case(
                f"{name}.add.node",
                _ring(cls),
                lambda o, v: o.add(v),
                BAD_NODE,
                _sharder_state,
                names="node",
            ),
            Case(
                f"{name}.add.weight",
                _ring(cls),
                lambda o, v: o.add("d", v),
                BAD_WEIGHT,
                _sharder_state,
            ),
        ]
    cases += [
        Case(
            "HashRing.vnodes", lambda: None, lambda _, v: HashRing(["a"], vnodes=v), [*BAD_COUNT, 0]
        ),
        Case(
            "HashRing.nodes_for.n",
            _ring(HashRing),
            lambda o, v: o.nodes_for("k", v),
            BAD_COUNT,
            _sharder_state,
            names="n",
        ),
        Case(
            "HashRing.set_weight.weight",
            _ring(HashRing),
            lambda o, v: o.set_weight("a", v),
            BAD_WEIGHT,
            _sharder_state,
        ),
        Case(
            "MaglevHash.table_size",
            lambda: None,
            lambda _, v: MaglevHash(["a"], table_size=v),
            [*BAD_COUNT, 0, 4],
        ),
        Case("SlotMap.slots", lambda: None, lambda _, v: SlotMap(["a"], slots=v), [*BAD_COUNT, 0]),
        Case(
            "BoundedLoads.c",
            lambda: None,
            lambda _, v: BoundedLoads(HashRing(["a", "b"]), v),
            [NAN, INF, HUGE_INT, True, "1.25", 0.5, None],
        ),
        Case(
            "BoundedLoads.acquire.key",
            lambda: BoundedLoads(HashRing(["a", "b"])),
            lambda o, v: o.acquire(v),
            BAD_KEY,
            lambda o: o.loads(),
            names="key",
        ),
        Case(
            "HotKeyDetector.k", lambda: None, lambda _, v: HotKeyDetector(v), [*BAD_COUNT, 0, None]
        ),
        Case(
            "HotKeyDetector.add.count",
            lambda: HotKeyDetector(4),
            lambda o, v: o.add("k", v),
            BAD_COUNT,
            lambda o: o.top(),
            names="count",
        ),
    ]

    for cls in (RoundRobin, LeastConnections, PeakEwma):
        name = cls.__name__
        make = lambda c=cls: c(["a", "b"], clock=FakeClock())  # noqa: E731
        cases += [
            Case(
                f"{name}.backends",
                lambda: None,
                lambda _, v, c=cls: c(["a", v]),
                BAD_NODE,
                names="backend",
            ),
            Case(
                f"{name}.weights",
                lambda: None,
                lambda _, v, c=cls: c(["a"], {"a": v}),
                BAD_WEIGHT,
                names="weight",
            ),
            Case(
                f"{name}.add.backend",
                make,
                lambda o, v: o.add(v),
                BAD_NODE,
                _balancer_state,
                names="backend",
            ),
            Case(
                f"{name}.add.weight", make, lambda o, v: o.add("c", v), BAD_WEIGHT, _balancer_state
            ),
            Case(
                f"{name}.set_weight.weight",
                make,
                lambda o, v: o.set_weight("a", v),
                BAD_WEIGHT,
                _balancer_state,
            ),
            Case(
                f"{name}.report.latency",
                make,
                lambda o, v: o.report("a", True, v),
                [NAN, INF, -1, "1", True, HUGE_INT],
                _balancer_state,
            ),
            Case(
                f"{name}.ejection",
                lambda: None,
                lambda _, v, c=cls: c(["a"], ejection=v),
                ["x", 5, True],
                names="ejection",
            ),
            Case(
                f"{name}.slow_start",
                lambda: None,
                lambda _, v, c=cls: c(["a"], slow_start=v),
                BAD_SECONDS,
            ),
            Case(
                f"{name}.panic_threshold",
                lambda: None,
                lambda _, v, c=cls: c(["a"], panic_threshold=v),
                [NAN, INF, -1, 101, True, "5", None],
            ),
        ]
    cases += [
        Case(
            "HealthChecker.check",
            lambda: None,
            lambda _, v: HealthChecker(RoundRobin(["a"]), v),
            [None, 5, "x"],
            names="check",
        ),
        Case(
            "HealthChecker.balancer",
            lambda: None,
            lambda _, v: HealthChecker(v, lambda b: True),
            [None, 5, "x"],
            names="balancer",
        ),
        Case(
            "HealthChecker.interval",
            lambda: None,
            lambda _, v: HealthChecker(RoundRobin(["a"]), lambda b: True, v),
            [*BAD_SECONDS, 0],
        ),
        Case(
            "HealthChecker.rise",
            lambda: None,
            lambda _, v: HealthChecker(RoundRobin(["a"]), lambda b: True, rise=v),
            [*BAD_COUNT, 0],
        ),
        Case(
            "HealthChecker.fall",
            lambda: None,
            lambda _, v: HealthChecker(RoundRobin(["a"]), lambda b: True, fall=v),
            [*BAD_COUNT, 0],
        ),
        Case(
            "OutlierEjection.consecutive_failures",
            lambda: None,
            lambda _, v: OutlierEjection(consecutive_failures=v),
            [*BAD_COUNT, 0],
        ),
        Case(
            "OutlierEjection.base_ejection",
            lambda: None,
            lambda _, v: OutlierEjection(base_ejection=v),
            BAD_SECONDS,
        ),
        Case(
            "OutlierEjection.max_ejection_percent",
            lambda: None,
            lambda _, v: OutlierEjection(max_ejection_percent=v),
            [NAN, INF, -1, 101, True, "5"],
        ),
        Case(
            "FailoverGroups.overprovisioning",
            lambda: None,
            lambda _, v: FailoverGroups([RoundRobin(["a"])], overprovisioning=v),
            [NAN, INF, HUGE_INT, True, "1.4", 0, -1],
        ),
    ]

    cases += [
        Case(
            "Broker.queue.name",
            lambda: Broker(clock=FakeClock()),
            lambda o, v: o.queue(v),
            [*BAD_NAME, ""],
            names="name",
        ),
        Case(
            "Broker.queue.visibility_timeout",
            lambda: Broker(clock=FakeClock()),
            lambda o, v: o.queue("q", visibility_timeout=v),
            [*BAD_SECONDS, 0],
        ),
        Case(
            "Broker.queue.max_deliveries",
            lambda: Broker(clock=FakeClock()),
            lambda o, v: o.queue("q", max_deliveries=v),
            [*BAD_COUNT, 0],
        ),
        Case(
            "Broker.queue.maxsize",
            lambda: Broker(clock=FakeClock()),
            lambda o, v: o.queue("q", maxsize=v),
            [*BAD_COUNT, 0],
        ),
        Case(
            "Broker.backend",
            lambda: None,
            lambda _, v: Broker(v),
            [5, "x", object()],
            names="backend",
        ),
        Case(
            "Queue.put.delay",
            _queue,
            lambda o, v: o.put({"n": 2}, delay=v),
            BAD_SECONDS,
            _queue_state,
        ),
        Case(
            "Queue.put.priority",
            _queue,
            lambda o, v: o.put({"n": 2}, priority=v),
            [True, 1.5, "1", None, NAN, HUGE_INT],
            _queue_state,
        ),
        Case(
            "Queue.put.timeout",
            _queue,
            lambda o, v: o.put({"n": 2}, timeout=v),
            [NAN, -1, "1", True, HUGE_INT, HUGE_FLOAT],
            _queue_state,
        ),
        Case(
            "Queue.put.headers",
            _queue,
            lambda o, v: o.put({"n": 2}, headers=v),
            [5, "x", {"a": 1}, {1: "a"}, {"a": SURROGATE}, {SURROGATE: "a"}],
            _queue_state,
            names="header",
        ),
        Case(
            "Queue.put.body",
            _queue,
            lambda o, v: o.put(v),
            [SURROGATE, {"k": SURROGATE}, object(), {1, 2}, NAN],
            _queue_state,
            names="body",
        ),
        Case(
            "Queue.put.dedup_key",
            _queue,
            lambda o, v: o.put({"n": 2}, dedup_key=v),
            [5, SURROGATE, b"k", []],
            _queue_state,
        ),
        Case(
            "Queue.get.timeout",
            _queue,
            lambda o, v: o.get(timeout=v),
            [NAN, -1, "1", True, HUGE_INT],
            _queue_state,
        ),
        Case(
            "Queue.get_many.n",
            _queue,
            lambda o, v: o.get_many(v),
            [*BAD_COUNT, 0, None],
            _queue_state,
            names="n",
        ),
        Case(
            "Queue.ack_many.deliveries",
            _queue,
            lambda o, v: o.ack_many(v),
            [None, 5, "ab", b"ab", [None], [1], {"a": 1}, [object()]],
            _queue_state,
        ),
        Case("Backoff.base", lambda: None, lambda _, v: Backoff(base=v), BAD_SECONDS),
        Case(
            "Backoff.factor",
            lambda: None,
            lambda _, v: Backoff(factor=v),
            [NAN, INF, HUGE_INT, True, "2", 0.5, -1],
        ),
        Case("Backoff.cap", lambda: None, lambda _, v: Backoff(cap=v), BAD_SECONDS),
        Case(
            "Backoff.attempt",
            lambda: Backoff(),
            lambda o, v: o(v),
            [True, 1.5, "3", NAN, -1, None],
            names="attempt",
        ),
        Case(
            "Consumer.concurrency",
            _queue,
            lambda o, v: Consumer(o, print, concurrency=v),
            [*BAD_COUNT, 0],
            _queue_state,
        ),
        Case(
            "Consumer.handler",
            _queue,
            lambda o, v: Consumer(o, v),
            [None, 5, "x"],
            _queue_state,
            names="handler",
        ),
    ]

    replicas = lambda: ReplicaRouter("p", ["r1", "r2"], clock=FakeClock())  # noqa: E731
    cases += [
        Case(
            "ReplicaRouter.max_lag",
            lambda: None,
            lambda _, v: ReplicaRouter("p", ["r"], max_lag=v),
            BAD_SECONDS,
        ),
        Case(
            "ReplicaRouter.window",
            lambda: None,
            lambda _, v: ReplicaRouter("p", ["r"], window=v),
            BAD_SECONDS,
        ),
        Case(
            "ReplicaRouter.probe_interval",
            lambda: None,
            lambda _, v: ReplicaRouter("p", ["r"], probe_interval=v),
            BAD_SECONDS,
        ),
        Case(
            "ReplicaRouter.down_for",
            lambda: None,
            lambda _, v: ReplicaRouter("p", ["r"], down_for=v),
            BAD_SECONDS,
        ),
        Case(
            "ReplicaRouter.read_your_writes",
            lambda: None,
            lambda _, v: ReplicaRouter("p", ["r"], read_your_writes=v),
            ["x", 5, True, "none"],
            names="read_your_writes",
        ),
        Case(
            "ReplicaRouter.replicas",
            lambda: None,
            lambda _, v: ReplicaRouter("p", ["r", v]),
            BAD_NODE,
            names="replica",
        ),
        Case(
            "ReplicaRouter.primary",
            lambda: None,
            lambda _, v: ReplicaRouter(v, ["r"]),
            [None, NAN],
            names="primary",
        ),
        Case(
            "ReplicaRouter.add_replica.replica",
            replicas,
            lambda o, v: o.add_replica(v),
            BAD_NODE,
            _router_state,
            names="replica",
        ),
        Case(
            "ReplicaRouter.add_replica.weight",
            replicas,
            lambda o, v: o.add_replica("r3", v),
            BAD_WEIGHT,
            _router_state,
        ),
    ]

    store = lambda: MemorySessionStore(clock=FakeClock(1000.0))  # noqa: E731
    cases += [
        Case(
            "MemorySessionStore.idle_timeout",
            lambda: None,
            lambda _, v: MemorySessionStore(idle_timeout=v),
            [*BAD_SECONDS, 0],
        ),
        Case(
            "MemorySessionStore.absolute_timeout",
            lambda: None,
            lambda _, v: MemorySessionStore(absolute_timeout=v),
            [*BAD_SECONDS, 0],
        ),
        Case(
            "MemorySessionStore.max_bytes",
            lambda: None,
            lambda _, v: MemorySessionStore(max_bytes=v),
            [*BAD_COUNT, 0],
        ),
        Case(
            "MemorySessionStore.load.session_id",
            store,
            lambda o, v: o.load(v),
            [None, 5, b"x", []],
            names="session_id",
        ),
        Case(
            "MemorySessionStore.rotate.session",
            store,
            lambda o, v: o.rotate(v),
            [None, 1, "id"],
            names="session",
        ),
        Case(
            "MemorySessionStore.save.session",
            store,
            lambda o, v: o.save(v),
            [None, 1, "id", {}],
            names="session",
        ),
        Case(
            "MemorySessionStore.touch.session_id",
            store,
            lambda o, v: o.touch(v),
            [None, 5, []],
            names="session_id",
        ),
        Case(
            "MemorySessionStore.create.data",
            store,
            lambda o, v: o.create(v),
            [5, "x", {1: 2}, {"k": object()}, {"k": NAN}, {"k": SURROGATE}],
            names="data",
        ),
    ]
    return cases


# -- the scale-out blocks: stores on servers, near caches, sharded stores ------------

_SERVERS: dict[str, Any] = {}
_PREFIX = "scalekit-hostile:"

# A key of a store on a server (any str is one, lone surrogates included).
BAD_STORE_KEY = [None, 5, b"k", 1.5, NAN, [], object()]
# A batch of such keys.
BAD_KEYS = [None, 5, "ab", b"ab", [None], [5], [b"k"], ["a", 5], object()]
# A value strict JSON cannot keep.
BAD_JSON_VALUE = [object(), {1, 2}, NAN, INF, SURROGATE, b"x", {"k": SURROGATE}, {SURROGATE: 1}]
# A batch of items.
BAD_ITEMS = [None, 5, "ab", [("k", 1)], {5: 1}, {b"k": 1}, {"k": object()}, {"a": 1, "k": NAN}]
# A client object of a server.
BAD_CLIENT = [None, 5, "redis://127.0.0.1", object()]


class _Counting:
    """A client that counts the calls made through it: a refused call makes none."""

    def __init__(self, client: Any, prefix: str = "") -> None:
        self.client = client
        self.prefix = prefix
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.client, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return attr(*args, **kwargs)

        return call


def _redis_store(**kwargs: Any) -> Any:
    raw = _SERVERS["redis"]
    prefix = f"{_PREFIX}{uuid.uuid4().hex}:"
    RedisCache(raw, prefix=prefix).set_many({"a": 1, "b": [2], SURROGATE: 3}, ttl=300)
    return RedisCache(_Counting(raw), prefix=prefix, **kwargs)


def _redis_state(store: Any) -> object:
    raw = _SERVERS["redis"]
    prefix = store.prefix.encode("utf-8", "surrogatepass")
    held = sorted(
        (name, raw.get(name), raw.pttl(name) > 0) for name in raw.scan_iter(match=prefix + b"*")
    )
    return held, store.client.calls, store.stats()


_MEMCACHED_KEYS = ["a", "b", "k", "", SURROGATE, "x" * 300]


def _memcached_store(**kwargs: Any) -> Any:
    raw = _SERVERS["memcached"]
    prefix = f"h{uuid.uuid4().hex}:"
    MemcachedCache(raw, prefix=prefix).set_many({"a": 1, "b": [2], SURROGATE: 3}, ttl=300)
    return MemcachedCache(_Counting(raw, prefix), prefix=prefix, **kwargs)


def _memcached_state(store: Any) -> object:
    raw = MemcachedCache(_SERVERS["memcached"], prefix=store.client.prefix)
    return raw.get_many(_MEMCACHED_KEYS), store.client.calls, store.stats()


def _tiered() -> Any:
    tiered = TieredCache(LRUCache(100), _redis_store())
    tiered.get("a")
    return tiered


def _tiered_state(tiered: Any) -> object:
    return sorted(tiered.l1.items()), _redis_state(tiered.l2), tiered.stats()


def _sharded(cls: type = ShardedStore) -> Any:
    return cls(HashRing(["n1", "n2"]), {"n1": _redis_store(), "n2": _redis_store()})


def _sharded_state(store: Any) -> object:
    shards = store.stores
    return (
        sorted(shards),
        store.sharder.nodes,
        [_redis_state(shard) for _, shard in sorted(shards.items())],
        store.stats(),
    )


def _async_redis_store() -> Any:
    import redis.asyncio

    raw = _SERVERS["redis"]
    prefix = f"{_PREFIX}{uuid.uuid4().hex}:"
    RedisCache(raw, prefix=prefix).set_many({"a": 1, "b": [2], SURROGATE: 3}, ttl=300)
    client = redis.asyncio.Redis(
        connection_pool=redis.asyncio.ConnectionPool.from_url(_SERVERS["url"])
    )
    return AsyncRedisCache(_Counting(client), prefix=prefix)


def _async_sharded() -> Any:
    return AsyncShardedStore(
        HashRing(["n1", "n2"]), {"n1": _async_redis_store(), "n2": _async_redis_store()}
    )


def _awaited(call: Callable[[Any, Any], Any]) -> Callable[[Any, Any], object]:
    return lambda o, v: asyncio.run(call(o, v))


def _growing(store: Any) -> tuple[Any, dict[str, Any]]:
    """A plan that brings node ``n3`` in, and its store."""
    return store.sharder.plan_add("n3"), {"n3": _redis_store()}


def _invalidation(**kwargs: Any) -> Any:
    import redis

    return RedisInvalidation(_Counting(redis.Redis()), **kwargs)


def _cluster_plan() -> Any:
    nodes = ["127.0.0.1:7000", "127.0.0.1:7001"]
    return SlotMap(nodes, redis_cluster=True).plan_add("127.0.0.1:7002")


def _cluster_map() -> Any:
    return SlotMap(["127.0.0.1:7000", "127.0.0.1:7001"], redis_cluster=True)


class _Factory:
    """A client factory of a cluster's nodes that keeps what it made."""

    def __init__(self) -> None:
        self.made: list[_Counting] = []

    def __call__(self, host: str, port: int) -> Any:
        import redis

        client = _Counting(redis.Redis(host=host, port=port, socket_connect_timeout=0.2))
        self.made.append(client)
        return client


def _router() -> tuple[Any, _Factory]:
    factory = _Factory()
    return ClusterRouter(_cluster_map(), factory), factory


def _router_calls(pair: tuple[Any, _Factory]) -> object:
    router, factory = pair
    return (
        router.moved,
        router.asked,
        _sharder_state(router.slot_map),
        [client.calls for client in factory.made],
    )


def _scale_out_cases() -> list[Case]:
    import redis
    import redis.asyncio

    cases: list[Case] = []
    for cls in (RedisCache, AsyncRedisCache):
        name = cls.__name__
        make_client = redis.Redis if cls is RedisCache else redis.asyncio.Redis
        cases += [
            Case(f"{name}.client", lambda: None, lambda _, v, c=cls: c(v), BAD_CLIENT),
            Case(
                f"{name}.prefix",
                lambda: None,
                lambda _, v, c=cls, m=make_client: c(m(), prefix=v),
                [None, 5, b"p:", []],
            ),
            Case(
                f"{name}.ttl",
                lambda: None,
                lambda _, v, c=cls, m=make_client: c(m(), ttl=v),
                [*BAD_SECONDS, 0],
            ),
            Case(
                f"{name}.serializer",
                lambda: None,
                lambda _, v, c=cls, m=make_client: c(m(), serializer=v),
                [None, 5, "json", JSON.dumps],
            ),
            Case(
                f"{name}.cluster",
                lambda: None,
                lambda _, v, c=cls, m=make_client: c(m(), cluster=v),
                [None, 1, 0, "yes"],
            ),
        ]
    cases.append(
        Case(
            "MemcachedCache.client",
            lambda: None,
            lambda _, v: MemcachedCache(v),
            BAD_CLIENT,
        )
    )
    for name, make, state, needs in (
        ("RedisCache", _redis_store, _redis_state, "redis"),
        ("MemcachedCache", _memcached_store, _memcached_state, "memcached"),
    ):
        store_cases = list(STORE_CASES)
        if name == "RedisCache":
            store_cases += [
                ("get_with_ttl.key", lambda o, v: o.get_with_ttl(v), BAD_STORE_KEY, "key"),
                *SET_IF_CASES,
                ("get_many_with_ttl.keys", lambda o, v: o.get_many_with_ttl(v), BAD_KEYS, "key"),
                ("keys.count", lambda o, v: o.keys(count=v), [*BAD_COUNT, 0], "count"),
                (
                    "asking.method",
                    lambda o, v: o.asking(v, "a"),
                    [None, 5, "", "flushdb", "keys", "__init__", "asking"],
                    "method",
                ),
                ("asking.key", lambda o, v: o.asking("get", v), BAD_STORE_KEY, "key"),
                (
                    "asking.arguments",
                    lambda o, v: o.asking("set", *v),
                    [(), ("a",), ("a", 1, 2, 3)],
                    "arguments",
                ),
            ]
        else:
            store_cases += [
                (
                    "prefix",
                    lambda o, v: MemcachedCache(o.client, prefix=v),
                    [None, 5, SURROGATE, "a b", "~x", "x" * 300, b"p"],
                    "prefix",
                ),
                ("ttl", lambda o, v: MemcachedCache(o.client, ttl=v), [*BAD_SECONDS, 0], "ttl"),
            ]
        for suffix, call, values, word in store_cases:
            cases.append(Case(f"{name}.{suffix}", make, call, values, state, word, needs))

    cases += [
        Case(
            "JSONSerializer.dumps",
            lambda: None,
            lambda _, v: JSON.dumps(v),
            BAD_JSON_VALUE,
            names="value",
        ),
        Case(
            "BytesSerializer.dumps",
            lambda: None,
            lambda _, v: BYTES.dumps(v),
            [None, "x", SURROGATE, 5, [], bytearray],
            names="value",
        ),
    ]
    for field in ("hits", "misses", "writes", "deletes", "errors"):
        cases.append(
            Case(
                f"StoreStats.{field}",
                lambda: None,
                lambda _, v, f=field: StoreStats(
                    **{"hits": 0, "misses": 0, "writes": 0, "deletes": 0, "errors": 0, f: v}
                ),
                [*BAD_COUNT, None],
            )
        )

    tiered_cases = [
        ("get.key", lambda o, v: o.get(v), [*BAD_STORE_KEY, _Unhashable()], "key"),
        ("set.key", lambda o, v: o.set(v, 1), [*BAD_STORE_KEY, _Unhashable()], "key"),
        ("set.ttl", lambda o, v: o.set("a", 1, ttl=v), [*BAD_SECONDS, 0], "ttl"),
        ("set.value", lambda o, v: o.set("a", v), BAD_JSON_VALUE, "value"),
        ("add.key", lambda o, v: o.add(v, 1), [*BAD_STORE_KEY, _Unhashable()], "key"),
        ("add.ttl", lambda o, v: o.add("k", 1, ttl=v), [*BAD_SECONDS, 0], "ttl"),
        ("add.value", lambda o, v: o.add("a", v), BAD_JSON_VALUE, "value"),
        ("delete.key", lambda o, v: o.delete(v), [*BAD_STORE_KEY, _Unhashable()], "key"),
        ("ttl_of.key", lambda o, v: o.ttl_of(v), BAD_STORE_KEY, "key"),
        ("get_many.keys", lambda o, v: o.get_many(v), [*BAD_KEYS, ["a", []]], "key"),
        ("set_many.items", lambda o, v: o.set_many(v), BAD_ITEMS, "item"),
        ("set_many.ttl", lambda o, v: o.set_many({"a": 1}, ttl=v), BAD_SECONDS, "ttl"),
    ]
    for suffix, call, values, word in tiered_cases:
        cases.append(
            Case(f"TieredCache.{suffix}", _tiered, call, values, _tiered_state, word, "redis")
        )
    cases += [
        Case(
            "TieredCache.l1",
            lambda: None,
            lambda _, v: TieredCache(v, LRUCache(2)),
            [None, 5, "x", {}],
        ),
        Case(
            "TieredCache.l2",
            lambda: None,
            lambda _, v: TieredCache(LRUCache(2), v),
            [None, 5, "x", {}],
        ),
        Case(
            "TieredCache.invalidation",
            lambda: None,
            lambda _, v: TieredCache(LRUCache(2), LRUCache(2), invalidation=v),
            [5, "x", [None], [5], object()],
        ),
        Case(
            "TieredCache.l1_ttl",
            lambda: None,
            lambda _, v: TieredCache(LRUCache(2), LRUCache(2), l1_ttl=v),
            [*BAD_SECONDS, 0],
        ),
        Case(
            "RedisInvalidation.client", lambda: None, lambda _, v: RedisInvalidation(v), BAD_CLIENT
        ),
        Case(
            "RedisInvalidation.prefix",
            lambda: None,
            lambda _, v: _invalidation(prefix=v),
            [None, 5, b"p", []],
        ),
        Case(
            "RedisInvalidation.mode",
            lambda: None,
            lambda _, v: _invalidation(mode=v),
            [None, 5, "", "PUBSUB", SURROGATE, [], _Unhashable()],
        ),
        Case(
            "RedisInvalidation.channel",
            lambda: None,
            lambda _, v: _invalidation(channel=v),
            [5, "", b"c", []],
        ),
        Case(
            "RedisInvalidation.reconnect_delay",
            lambda: None,
            lambda _, v: _invalidation(reconnect_delay=v),
            [*BAD_SECONDS, 0, INF],
        ),
        Case(
            "RedisInvalidation.heartbeat",
            lambda: None,
            lambda _, v: _invalidation(heartbeat=v),
            [*BAD_SECONDS, 0, INF],
        ),
        Case(
            "RedisInvalidation.wait_ready.timeout",
            _invalidation,
            lambda o, v: o.wait_ready(v),
            [True, "1", NAN, -INF, HUGE_INT, HUGE_FLOAT, -1, [], None],
            lambda o: (o._client.calls, o.stats(), o.ready),
        ),
    ]
    for mode in ("pubsub", "tracking", "auto"):
        cases.append(
            Case(
                f"RedisInvalidation[{mode}].publish.keys",
                lambda m=mode: _invalidation(mode=m),
                lambda o, v: o.publish(v),
                BAD_KEYS,
                lambda o: (o._client.calls, o.stats(), o.mode),
                "key",
            )
        )

    cases += [
        Case(
            "cached.store.lease",
            _redis_store,
            lambda o, v: cached(o, lease=v),
            [*BAD_SECONDS, 0],
            _redis_state,
            needs="redis",
        ),
        Case(
            "cached.store.ttl",
            _redis_store,
            lambda o, v: cached(o, ttl=v),
            [*BAD_SECONDS, 0],
            _redis_state,
            needs="redis",
        ),
        Case(
            "cached.store.poll",
            _redis_store,
            lambda o, v: cached(o, poll=v),
            [*BAD_SECONDS, 0, INF, None],
            _redis_state,
            needs="redis",
        ),
        Case(
            "cached.store.key",
            _redis_store,
            lambda o, v: cached(o, key=v),
            [None, 5, "x"],
            _redis_state,
            needs="redis",
        ),
        Case(
            "cached.store.call.arguments",
            _redis_store,
            lambda o, v: cached(o)(lambda x: x)(v),
            [object(), {1, 2}, NAN, b"x", {"k": SURROGATE}],
            _redis_state,
            needs="redis",
        ),
    ]

    sharded_cases = [
        ("get.key", lambda o, v: o.get(v), BAD_STORE_KEY, "key"),
        ("set.key", lambda o, v: o.set(v, 1), BAD_STORE_KEY, "key"),
        ("set.ttl", lambda o, v: o.set("a", 1, ttl=v), [*BAD_SECONDS, 0], "ttl"),
        ("set.value", lambda o, v: o.set("a", v), BAD_JSON_VALUE, "value"),
        ("add.key", lambda o, v: o.add(v, 1), BAD_STORE_KEY, "key"),
        ("add.ttl", lambda o, v: o.add("k", 1, ttl=v), [*BAD_SECONDS, 0], "ttl"),
        ("add.value", lambda o, v: o.add("k", v), BAD_JSON_VALUE, "value"),
        ("delete.key", lambda o, v: o.delete(v), BAD_STORE_KEY, "key"),
        ("ttl_of.key", lambda o, v: o.ttl_of(v), BAD_STORE_KEY, "key"),
        ("get_with_ttl.key", lambda o, v: o.get_with_ttl(v), BAD_STORE_KEY, "key"),
        ("get_many.keys", lambda o, v: o.get_many(v), BAD_KEYS, "key"),
        ("get_many_with_ttl.keys", lambda o, v: o.get_many_with_ttl(v), BAD_KEYS, "key"),
        ("set_many.items", lambda o, v: o.set_many(v), BAD_ITEMS, "item"),
        ("set_many.ttl", lambda o, v: o.set_many({"a": 1}, ttl=v), BAD_SECONDS, "ttl"),
        ("follow.plan", lambda o, v: o.follow(v), [None, 5, "plan", object()], "plan"),
        (
            "follow.stores",
            lambda o, v: o.follow(_growing(o)[0], v),
            [5, "x", [("n3", 1)], {"n3": 5}, {"n3": None}],
            "store",
        ),
        (
            "follow.batch_size",
            lambda o, v: o.follow(*_growing(o), batch_size=v),
            [*BAD_COUNT, 0],
            "batch_size",
        ),
        (
            "follow.progress",
            lambda o, v: o.follow(*_growing(o), progress=v),
            [5, "x", object()],
            "progress",
        ),
        ("complete.plan", lambda o, v: o.complete(v), [None, 5, "plan"], "plan"),
        ("reshard.plan", lambda o, v: o.reshard(v), [None, 5, "plan"], "plan"),
        (
            "reshard.stores",
            lambda o, v: o.reshard(_growing(o)[0], v),
            [5, "x", {"n3": 5}],
            "store",
        ),
        (
            "reshard.batch_size",
            lambda o, v: o.reshard(*_growing(o), batch_size=v),
            [*BAD_COUNT, 0],
            "batch_size",
        ),
        (
            "reshard.progress",
            lambda o, v: o.reshard(*_growing(o), progress=v),
            [5, "x"],
            "progress",
        ),
    ]
    for suffix, call, values, word in sharded_cases:
        cases.append(
            Case(f"ShardedStore.{suffix}", _sharded, call, values, _sharded_state, word, "redis")
        )
        if not suffix.startswith(("follow", "complete", "reshard", "get_with", "get_many_with")):
            cases.append(
                Case(
                    f"AsyncShardedStore.{suffix}",
                    _async_sharded,
                    _awaited(call),
                    values,
                    _sharded_state,
                    word,
                    "redis",
                )
            )
    for cls in (ShardedStore, AsyncShardedStore):
        name = cls.__name__
        cases += [
            Case(
                f"{name}.sharder",
                lambda: None,
                lambda _, v, c=cls: c(v, {"a": LRUCache(2)}),
                [None, 5, "a", ["a"], HashRing],
            ),
            Case(
                f"{name}.stores",
                lambda: None,
                lambda _, v, c=cls: c(HashRing(["a", "b"]), v),
                [None, 5, [("a", 1)], {"a": LRUCache(2)}, {"a": 5, "b": 5}, {"a": None}],
                names="store",
            ),
            Case(
                f"{name}.replicas",
                lambda: None,
                lambda _, v, c=cls: c(
                    HashRing(["a", "b"]), {"a": LRUCache(2), "b": LRUCache(2)}, replicas=v
                ),
                [*BAD_COUNT, 2],
            ),
        ]
    cases.append(
        Case(
            "ShardedStore.store_factory",
            lambda: None,
            lambda _, v: ShardedStore(HashRing(["a"]), {"a": LRUCache(2)}, store_factory=v),
            [5, "x", LRUCache],
        )
    )
    cases.append(
        Case(
            "ShardedStore.max_workers",
            lambda: None,
            lambda _, v: ShardedStore(HashRing(["a"]), {"a": LRUCache(2)}, max_workers=v),
            [*BAD_COUNT, 0],
        )
    )

    cases += [
        Case(
            "KetamaRing.points",
            lambda: None,
            lambda _, v: KetamaRing(["a"], points=v),
            [None, 5, "", SURROGATE, "LIBKETAMA", [], _Unhashable()],
        ),
        Case(
            "KetamaRing.hash",
            lambda: None,
            lambda _, v: KetamaRing(["a"], hash=v),
            [None, 5, "", SURROGATE, "nope", [], b"md5", _Unhashable()],
        ),
        Case(
            "SlotMap.from_cluster.client",
            lambda: None,
            lambda _, v: SlotMap.from_cluster(v),
            BAD_CLIENT,
        ),
        Case(
            "SlotMap.reload.client",
            _cluster_map,
            lambda o, v: o.reload(v),
            BAD_CLIENT,
            _sharder_state,
        ),
        Case(
            "SlotMap.assign_slot.slot",
            _cluster_map,
            lambda o, v: o.assign_slot(v, "127.0.0.1:7001"),
            [*BAD_COUNT, 16384],
            _sharder_state,
        ),
        Case(
            "SlotMap.assign_slot.node",
            _cluster_map,
            lambda o, v: o.assign_slot(0, v),
            BAD_NODE,
            _sharder_state,
        ),
        Case(
            "SlotMap.assign_slots.owners",
            _cluster_map,
            lambda o, v: o.assign_slots(v),
            [None, 5, "ab", [(0, "127.0.0.1:7001")]],
            _sharder_state,
        ),
        Case(
            "SlotMap.assign_slots.slot",
            _cluster_map,
            lambda o, v: o.assign_slots({1: "127.0.0.1:7001", v: "127.0.0.1:7001"}),
            [1.5, "3", NAN, INF, HUGE_INT, -1, object(), 16384],
            _sharder_state,
        ),
        Case(
            "SlotMap.assign_slots.node",
            _cluster_map,
            lambda o, v: o.assign_slots({0: "127.0.0.1:7001", 1: v}),
            BAD_NODE,
            _sharder_state,
        ),
        Case(
            "SlotMap.assign_slot.join",
            _cluster_map,
            lambda o, v: o.assign_slot(0, "127.0.0.1:7009", join=v),
            [None, 1, "yes"],
            _sharder_state,
        ),
        Case(
            "ClusterResharder.client_factory",
            lambda: None,
            lambda _, v: ClusterResharder(v, _cluster_plan()),
            [None, 5, "x"],
        ),
        Case(
            "ClusterResharder.plan",
            lambda: None,
            lambda _, v: ClusterResharder(redis.Redis, v),
            [
                None,
                5,
                HashRing(["a"]).plan_add("b"),
                SlotMap(["a", "b"]).plan_add("c"),
                SlotMap(["a", "b"], redis_cluster=True).plan_add("c"),
                SlotMap(["127.0.0.1:1"], redis_cluster=True).plan_add("127.0.0.1:x"),
            ],
        ),
        Case(
            "ClusterResharder.slot_map",
            lambda: None,
            lambda _, v: ClusterResharder(redis.Redis, _cluster_plan(), v),
            [5, "x", HashRing(["a"])],
        ),
    ]
    for param, values in (
        ("batch_size", [*BAD_COUNT, 0]),
        ("timeout_ms", [*BAD_COUNT, 0]),
        ("on_slot", [5, "x"]),
        ("progress", [5, "x"]),
    ):
        cases.append(
            Case(
                f"ClusterResharder.{param}",
                lambda: None,
                lambda _, v, p=param: ClusterResharder(redis.Redis, _cluster_plan(), **{p: v}),
                values,
            )
        )
    cases += [
        Case(
            "ClusterRouter.slot_map",
            lambda: None,
            lambda _, v: ClusterRouter(v, redis.Redis),
            [None, 5, HashRing(["a"]), SlotMap(["a"])],
        ),
        Case(
            "ClusterRouter.client_factory",
            lambda: None,
            lambda _, v: ClusterRouter(_cluster_map(), v),
            [None, 5, "x"],
        ),
        Case(
            "ClusterRouter.redirects",
            lambda: None,
            lambda _, v: ClusterRouter(_cluster_map(), redis.Redis, redirects=v),
            [*BAD_COUNT, 0],
        ),
        Case(
            "ClusterRouter.execute.key",
            _router,
            lambda o, v: o[0].execute(v, "GET", "k"),
            BAD_KEY,
            _router_calls,
        ),
        Case(
            "ClusterRouter.execute.command",
            _router,
            lambda o, v: o[0].execute("k", *v),
            [(), ("",), (None,), (5, "k"), ([], "k"), (b"GET", "k", object()), ("SET", "k", True)],
            _router_calls,
        ),
        Case(
            "ketama_hash.key",
            lambda: None,
            lambda _, v: ketama_hash(v),
            [None, 1.5, NAN, True, [], object(), _Unhashable()],
        ),
        Case(
            "hashkit_hash.name",
            lambda: None,
            lambda _, v: hashing.hashkit_hash(v),
            [None, 5, "", SURROGATE, "MD5", [], b"md5", _Unhashable()],
        ),
    ]
    for hash_name, function in hashing.HASHKIT_HASHES.items():
        cases.append(
            Case(
                f"hashkit[{hash_name}].key",
                lambda: None,
                lambda _, v, f=function: f(v),
                [None, 1.5, NAN, True, [], object(), _Unhashable()],
            )
        )
    return cases


def _web_cases() -> list[Case]:
    from scalekit.web import CacheMiddleware, HttpCache, WSGICacheMiddleware

    async def asgi_app(scope: Any, receive: Any, send: Any) -> None: ...

    def wsgi_app(environ: Any, start_response: Any) -> list[bytes]:
        return []

    def cache(**options: Any) -> Any:
        return HttpCache(clock=FakeClock(1_700_000_000.0), **options)

    def web_state(cache: Any) -> object:
        return repr(cache.stats())

    strings = ["x", 5, None, [5], [None], [SURROGATE], [b"x"]]
    return [
        Case(
            "HttpCache.store",
            lambda: None,
            lambda _, v: cache(store=v),
            [5, "x", object(), LRUCache, {}],
        ),
        Case("HttpCache.shared", lambda: None, lambda _, v: cache(shared=v), [1, None, "yes"]),
        Case(
            "HttpCache.default_ttl",
            lambda: None,
            lambda _, v: cache(default_ttl=v),
            [*BAD_SECONDS, 0, INF],
        ),
        Case("HttpCache.heuristic", lambda: None, lambda _, v: cache(heuristic=v), [1, None]),
        Case(
            "HttpCache.max_heuristic",
            lambda: None,
            lambda _, v: cache(max_heuristic=v),
            [*BAD_SECONDS, None, 0],
        ),
        Case(
            "HttpCache.allow_hosts",
            lambda: None,
            lambda _, v: cache(allow_hosts=v),
            [*[v for v in strings if v is not None], [], ["a b"], ["a/b"], [""]],
        ),
        Case(
            "HttpCache.ignore_params",
            lambda: None,
            lambda _, v: cache(ignore_params=v),
            [*strings, [""]],
        ),
        Case(
            "HttpCache.public", lambda: None, lambda _, v: cache(public=v), [*strings, ["a"], [""]]
        ),
        Case(
            "HttpCache.max_body",
            lambda: None,
            lambda _, v: cache(max_body=v),
            [*BAD_COUNT, None, 2**41],
        ),
        Case("HttpCache.coalesce", lambda: None, lambda _, v: cache(coalesce=v), [1, None, "y"]),
        Case(
            "HttpCache.lease",
            lambda: None,
            lambda _, v: cache(lease=v),
            [*BAD_SECONDS, None, 0, INF, 3601],
        ),
        Case("HttpCache.clock", lambda: None, lambda _, v: HttpCache(clock=v), [5, "x", []]),
        Case("HttpCache.prefix", lambda: None, lambda _, v: cache(prefix=v), [*BAD_NAME, ""]),
        Case(
            "HttpCache.purge.tag",
            cache,
            lambda o, v: o.purge(v),
            [*BAD_NAME, ""],
            web_state,
            names="tag",
        ),
        Case(
            "CacheMiddleware.app",
            lambda: None,
            lambda _, v: CacheMiddleware(v, cache()),
            [None, 5, "x"],
        ),
        Case(
            "CacheMiddleware.cache",
            lambda: None,
            lambda _, v: CacheMiddleware(asgi_app, v),
            [None, 5, LRUCache(10)],
        ),
        Case(
            "WSGICacheMiddleware.app",
            lambda: None,
            lambda _, v: WSGICacheMiddleware(v, cache()),
            [None, 5, "x"],
        ),
        Case(
            "WSGICacheMiddleware.cache",
            lambda: None,
            lambda _, v: WSGICacheMiddleware(wsgi_app, v),
            [None, 5, LRUCache(10)],
        ),
    ]


STORE_CASES: list[tuple[str, Any, Any, str]] = [
    ("get.key", lambda o, v: o.get(v), BAD_STORE_KEY, "key"),
    ("set.key", lambda o, v: o.set(v, 1), BAD_STORE_KEY, "key"),
    ("set.ttl", lambda o, v: o.set("k", 1, ttl=v), [*BAD_SECONDS, 0], "ttl"),
    ("set.value", lambda o, v: o.set("a", v), BAD_JSON_VALUE, "value"),
    ("add.key", lambda o, v: o.add(v, 1), BAD_STORE_KEY, "key"),
    ("add.ttl", lambda o, v: o.add("k", 1, ttl=v), [*BAD_SECONDS, 0], "ttl"),
    ("add.value", lambda o, v: o.add("k", v), BAD_JSON_VALUE, "value"),
    ("delete.key", lambda o, v: o.delete(v), BAD_STORE_KEY, "key"),
    ("ttl_of.key", lambda o, v: o.ttl_of(v), BAD_STORE_KEY, "key"),
    ("get_many.keys", lambda o, v: o.get_many(v), BAD_KEYS, "key"),
    ("set_many.items", lambda o, v: o.set_many(v), BAD_ITEMS, "item"),
    ("set_many.ttl", lambda o, v: o.set_many({"k": 1}, ttl=v), BAD_SECONDS, "ttl"),
    ("check_items.items", lambda o, v: o.check_items(v), BAD_ITEMS, "item"),
]
"""Hostile arguments of the methods every remote `Store` has."""

SET_IF_CASES: list[tuple[str, Any, Any, str]] = [
    (
        "set_if.key",
        lambda o, v: o.set_if(v, 1, guard="g", expected="t"),
        BAD_STORE_KEY,
        "key",
    ),
    (
        "set_if.guard",
        lambda o, v: o.set_if("k", 1, guard=v, expected="t"),
        BAD_STORE_KEY,
        "guard",
    ),
    (
        "set_if.expected",
        lambda o, v: o.set_if("k", 1, guard="g", expected=v),
        BAD_JSON_VALUE,
        "expected",
    ),
    (
        "set_if.value",
        lambda o, v: o.set_if("k", v, guard="g", expected="t"),
        BAD_JSON_VALUE,
        "value",
    ),
    (
        "set_if.ttl",
        lambda o, v: o.set_if("k", 1, guard="g", expected="t", ttl=v),
        [*BAD_SECONDS, 0],
        "ttl",
    ),
]
"""Hostile arguments of ``set_if`` (every store with an atomic one)."""


def value_id(value: Any) -> str:
    """A test id for ``value``, the same in every process (no object addresses:
    pytest-xdist's workers must collect the same ids)."""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(value))[:24]


PARAMS = [
    pytest.param(case, value, id=f"{case.id}={value_id(value)}")
    for case in [*_cases(), *_scale_out_cases(), *_web_cases()]
    for value in case.values
]


@pytest.fixture(scope="module")
def _hostile_redis(redis_url: str) -> Iterator[None]:
    import redis

    client = redis.Redis.from_url(redis_url)
    _SERVERS["redis"] = client
    _SERVERS["url"] = redis_url
    try:
        yield
    finally:
        del _SERVERS["redis"], _SERVERS["url"]
        for name in client.scan_iter(match=_PREFIX + "*"):
            client.delete(name)
        client.close()


@pytest.fixture(scope="module")
def _hostile_memcached() -> Iterator[None]:
    from pymemcache.client.base import Client

    with memcached_server() as port:
        client = Client(("127.0.0.1", port))
        _SERVERS["memcached"] = client
        try:
            yield
        finally:
            del _SERVERS["memcached"]
            client.close()


@pytest.mark.parametrize(("case", "value"), PARAMS)
def test_hostile_value_is_refused_and_changes_nothing(
    case: Case, value: Any, request: pytest.FixtureRequest
) -> None:
    if case.needs:
        request.getfixturevalue(f"_hostile_{case.needs}")
    obj = case.make()
    before = case.snapshot(obj)
    with pytest.raises(errors.ScalekitError) as caught:
        case.call(obj, value)
    assert isinstance(caught.value, (TypeError, ValueError)), type(caught.value).__mro__
    word = case.names or case.id.rsplit(".", 1)[-1]
    assert word in str(caught.value), f"{str(caught.value)!r} does not name {word!r}"
    assert case.snapshot(obj) == before


# -- lone surrogates are keys like any other: valid, kept apart, read back -----------


def _surrogate_stores() -> dict[str, Callable[[], Any]]:
    return {
        "RedisCache": _redis_store,
        "MemcachedCache": _memcached_store,
        "ShardedStore": _sharded,
        "TieredCache": _tiered,
    }


@pytest.mark.parametrize("kind", list(_surrogate_stores()))
def test_lone_surrogate_keys_are_valid_and_read_back(
    kind: str, request: pytest.FixtureRequest
) -> None:
    request.getfixturevalue("_hostile_memcached" if kind == "MemcachedCache" else "_hostile_redis")
    store = _surrogate_stores()[kind]()
    keys = [SURROGATE, "\udfff", "a\ud800b", SURROGATE + SURROGATE]
    for n, key in enumerate(keys):
        store.set(key, n, ttl=60)
    assert [store.get(key) for key in keys] == list(range(len(keys)))
    assert store.get_many(keys) == {key: n for n, key in enumerate(keys)}
    assert 0 < store.ttl_of(keys[1]) <= 62  # memcached adds a second
    assert store.add(keys[0], 9) is False
    store.set_many({keys[2]: "x", "\udc80": "y"})
    assert store.get_many([keys[2], "\udc80"]) == {keys[2]: "x", "\udc80": "y"}
    assert store.delete(keys[3]) is True
    assert store.get(keys[3], "gone") == "gone"
    assert store.get("a") == 1  # the filled key is untouched


@pytest.mark.usefixtures("_hostile_redis")
def test_pubsub_invalidation_carries_lone_surrogate_keys() -> None:

    raw = _SERVERS["redis"]
    received: list[list[str]] = []
    arrived = threading.Event()

    def on_keys(keys: list[str]) -> None:
        received.append(keys)
        arrived.set()

    with RedisInvalidation(raw, prefix=f"{_PREFIX}{uuid.uuid4().hex}:", mode="pubsub") as inv:
        inv.attach(on_keys, lambda: None)
        assert inv.wait_ready(5)
        inv.publish([SURROGATE, "a\udfffb", "plain"])
        assert arrived.wait(5)
    assert received == [[SURROGATE, "a\udfffb", "plain"]]
