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

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from scalekit import errors
from scalekit.balancing import (
    FailoverGroups,
    HealthChecker,
    LeastConnections,
    OutlierEjection,
    PeakEwma,
    RoundRobin,
)
from scalekit.cache import FIFOCache, LFUCache, LRUCache, TinyLFUCache, TTLCache, cached
from scalekit.mq import Backoff, Broker, Consumer
from scalekit.replication import ReplicaRouter
from scalekit.sessions import MemorySessionStore
from scalekit.sharding import (
    BoundedLoads,
    HashRing,
    HotKeyDetector,
    JumpHash,
    KetamaRing,
    MaglevHash,
    RendezvousHash,
    SlotMap,
)
from scalekit.testing import FakeClock

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


PARAMS = [
    pytest.param(case, value, id=f"{case.id}={value!r:.24}")
    for case in _cases()
    for value in case.values
]


@pytest.mark.parametrize(("case", "value"), PARAMS)
def test_hostile_value_is_refused_and_changes_nothing(case: Case, value: Any) -> None:
    obj = case.make()
    before = case.snapshot(obj)
    with pytest.raises(errors.ScalekitError) as caught:
        case.call(obj, value)
    assert isinstance(caught.value, (TypeError, ValueError)), type(caught.value).__mro__
    word = case.names or case.id.rsplit(".", 1)[-1]
    assert word in str(caught.value), f"{str(caught.value)!r} does not name {word!r}"
    assert case.snapshot(obj) == before
