"""The registry: hostile arguments, errors while collecting, and a property over
random registrations."""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scalekit.balancing import LeastConnections, RoundRobin
from scalekit.cache import LRUCache, TTLCache
from scalekit.errors import (
    ArgumentTypeError,
    BackendError,
    ConfigurationError,
    DuplicateNode,
    ScalekitError,
    UnknownNode,
)
from scalekit.metrics import Registry, Sample
from scalekit.mq import Broker
from scalekit.replication import ReplicaRouter

METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def _cache() -> LRUCache[Any, Any]:
    return LRUCache(maxsize=10, stats=True)


@pytest.mark.parametrize(
    ("name", "error"),
    [
        (None, ArgumentTypeError),
        (1, ArgumentTypeError),
        (True, ArgumentTypeError),
        (b"users", ArgumentTypeError),
        ("", ConfigurationError),
        ("users-cache", ConfigurationError),
        ("1users", ConfigurationError),
        ("__users", ConfigurationError),
        ("users cache", ConfigurationError),
        ("x" * 101, ConfigurationError),
        ("caf\u00e9", ConfigurationError),
        ("users\ud800", ConfigurationError),
    ],
)
def test_a_name_that_prometheus_refuses_is_refused(name: object, error: type[Exception]) -> None:
    registry = Registry()
    with pytest.raises(error, match="name"):
        registry.register(name, _cache())  # type: ignore[arg-type]
    assert len(registry) == 0


def test_the_longest_name_and_underscores_are_accepted() -> None:
    registry = Registry()
    registry.register("x" * 100, _cache())
    registry.register("_users_2", _cache())
    assert registry.names() == ["x" * 100, "_users_2"]


class _NoStats:
    pass


class _StatsOfInt:
    def stats(self) -> int:
        return 3


@pytest.mark.parametrize(
    "obj", [None, 3, "cache", _NoStats(), LRUCache, _StatsOfInt(), math.nan, object()]
)
def test_an_object_without_stats_is_refused(obj: object) -> None:
    registry = Registry()
    with pytest.raises(ArgumentTypeError, match="obj"):
        registry.register("users", obj)
    assert "users" not in registry


def test_a_cache_without_stats_is_refused_at_registration() -> None:
    with pytest.raises(ConfigurationError, match="stats=True"):
        Registry().register("users", LRUCache(maxsize=10))


def test_a_duplicate_name_is_refused_and_the_first_kept() -> None:
    registry = Registry()
    first = _cache()
    registry.register("users", first)
    with pytest.raises(DuplicateNode, match="users"):
        registry.register("users", RoundRobin(["a"]))
    first["a"] = 1
    assert {s.name for s in registry.collect()} >= {"scalekit_cache_hits_total"}
    assert registry.names() == ["users"]


@pytest.mark.parametrize("label_of", [None, 3, "str"])
def test_label_of_must_be_callable(label_of: object) -> None:
    with pytest.raises(ArgumentTypeError, match="label_of"):
        Registry().register("web", RoundRobin(["a"]), label_of=label_of)  # type: ignore[arg-type]


def test_unregister() -> None:
    registry = Registry()
    registry.register("users", _cache())
    registry.unregister("users")
    assert registry.collect() == []
    with pytest.raises(UnknownNode, match="users"):
        registry.unregister("users")
    with pytest.raises(KeyError):
        registry.unregister("other")
    with pytest.raises(ArgumentTypeError, match="name"):
        registry.unregister(None)  # type: ignore[arg-type]
    registry.register("users", _cache())  # the name is free again
    assert registry.names() == ["users"]


class _Flaky:
    """Reports once (the registration's probe), then its backend is down."""

    def __init__(self) -> None:
        self.reads = 0

    def stats(self) -> _OddStats:
        self.reads += 1
        if self.reads > 1:
            raise BackendError("the server went away", backend="redis")
        return _OddStats(1, 0.5)


def test_a_block_that_fails_is_counted_and_the_others_still_read(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = Registry()
    registry.register("flaky", _Flaky())
    registry.register("users", _cache())
    with caplog.at_level(logging.WARNING, logger="scalekit.metrics"):
        registry.collect()
        samples = registry.collect()
    assert "reading 'flaky' failed" in caplog.text
    assert not any(s.name.startswith("scalekit_flaky_") for s in samples)
    assert any(s.name == "scalekit_cache_hits_total" for s in samples)
    errors = [s for s in samples if s.name == "scalekit_metrics_collect_errors_total"]
    assert errors == [Sample(errors[0].name, (("block", "flaky"),), "counter", 2.0)]
    registry.unregister("flaky")
    assert not any(s.name.startswith("scalekit_metrics_") for s in registry.collect())


def test_label_of_that_raises_at_collect_time_is_a_collect_error() -> None:
    balancer = RoundRobin(["a"])
    calls = []

    def label_of(backend: object) -> str:
        calls.append(backend)
        if len(calls) > 1:
            raise RuntimeError("boom")
        return str(backend)

    registry = Registry()
    registry.register("web", balancer, label_of=label_of)
    samples = registry.collect()
    assert [s.labels for s in samples if s.name.startswith("scalekit_metrics_")] == [
        (("block", "web"),)
    ]


def test_a_lone_surrogate_in_a_backend_is_escaped() -> None:
    registry = Registry()
    registry.register("web", RoundRobin(["app"]), label_of=lambda backend: backend + "\ud800")
    values = {dict(s.labels)["backend"] for s in registry.collect() if len(s.labels) == 2}
    assert values == {"app\\ud800"}
    for value in values:
        value.encode()


def test_a_sample_is_immutable() -> None:
    sample = Sample("scalekit_cache_size", (("cache", "users"),), "gauge", 1.0)
    with pytest.raises(AttributeError):
        sample.value = 2.0  # type: ignore[misc]
    assert hash(sample) == hash(Sample("scalekit_cache_size", (("cache", "users"),), "gauge", 1.0))


@dataclasses.dataclass(frozen=True)
class _OddStats:
    count: int
    ratio: float


class _Odd:
    def __init__(self, count: int, ratio: float) -> None:
        self.count, self.ratio = count, ratio

    def stats(self) -> _OddStats:
        return _OddStats(self.count, self.ratio)


_backend = st.one_of(
    st.text(st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=8),
    st.integers(),
    st.tuples(st.text(max_size=3), st.integers(0, 9)),
)


@st.composite
def _block(draw: st.DrawFn) -> Any:
    kind = draw(st.sampled_from(["lru", "ttl", "rr", "lc", "router", "broker", "odd"]))
    if kind in ("lru", "ttl"):
        cache = LRUCache(maxsize=4, stats=True) if kind == "lru" else TTLCache(4, 60, stats=True)
        for key in draw(st.lists(st.integers(0, 6), max_size=10)):
            if cache.get(key) is None:
                cache[key] = key
        return cache
    if kind in ("rr", "lc"):
        backends = draw(st.lists(_backend, min_size=1, max_size=4, unique=True))
        balancer = (RoundRobin if kind == "rr" else LeastConnections)(backends)
        for _ in range(draw(st.integers(0, 5))):
            balancer.report(balancer.pick(), draw(st.booleans()), latency=draw(st.floats(0, 5)))
        return balancer
    if kind == "router":
        replicas = draw(st.lists(_backend, min_size=1, max_size=3, unique=True))
        router = ReplicaRouter("primary", replicas)
        for _ in range(draw(st.integers(0, 4))):
            router.for_read()
        return router
    if kind == "broker":
        broker = Broker()
        for name in draw(st.lists(st.from_regex(r"[a-z]{1,5}", fullmatch=True), max_size=3)):
            broker.queue(name).put({"x": 1})
        return broker
    return _Odd(
        draw(st.integers(-(2**70), 2**70)),
        draw(st.floats(allow_nan=True, allow_infinity=True)),
    )


@given(
    st.lists(
        st.tuples(
            st.text(max_size=12) | st.from_regex(r"[a-z_][a-z0-9_]{0,10}", fullmatch=True), _block()
        ),
        max_size=6,
    ),
    st.text(max_size=4),
)
def test_collect_never_raises_and_every_series_is_valid(
    registrations: list[Any], label: str
) -> None:
    registry = Registry()
    for name, block in registrations:
        try:
            registry.register(name, block, label_of=lambda backend: label + repr(backend))
        except ScalekitError:
            assert (
                name in registry.names()
                or not LABEL_NAME.fullmatch(name)
                or len(name) > 100
                or name.startswith("__")
            )
    samples = registry.collect()
    keys = [(s.name, s.labels) for s in samples]
    assert len(keys) == len(set(keys))
    for sample in samples:
        assert METRIC_NAME.fullmatch(sample.name)
        assert sample.kind in ("counter", "gauge")
        assert isinstance(sample.value, float)
        assert not math.isnan(sample.value)
        assert sample.kind != "counter" or (sample.name.endswith("_total") and sample.value >= 0)
        for label, value in sample.labels:
            assert LABEL_NAME.fullmatch(label)
            assert not label.startswith("__")
            value.encode()
    assert not any(s.name == "scalekit_metrics_collect_errors_total" for s in samples)
