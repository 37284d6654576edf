"""The prometheus-client collector, scraped from a real endpoint on 127.0.0.1."""

from __future__ import annotations

import math
import pathlib
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("prometheus_client")

import prometheus_client
from prometheus_client.parser import text_string_to_metric_families

from scalekit.balancing import RoundRobin
from scalekit.cache import LRUCache
from scalekit.errors import ArgumentTypeError, ConfigurationError
from scalekit.metrics import Registry
from scalekit.metrics.prometheus import Collector, serve
from scalekit.mq import Broker
from scalekit.replication import ReplicaRouter


@pytest.fixture
def endpoint() -> Iterator[tuple[Registry, str]]:
    registry = Registry()
    server, port = serve(registry)
    try:
        yield registry, f"http://127.0.0.1:{port}/metrics"
    finally:
        server.shutdown()
        server.server_close()


def _scrape(url: str) -> dict[str, Any]:
    """Every family of the exposition, by name, with its samples by (name, labels)."""
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    families = {}
    for family in text_string_to_metric_families(text):
        families[family.name] = (
            family.type,
            {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples},
        )
    return families


def test_a_scrape_reads_the_blocks_stats(endpoint: tuple[Registry, str]) -> None:
    registry, url = endpoint
    cache: LRUCache[str, int] = LRUCache(maxsize=100, stats=True)
    cache["ada"] = 1
    for key in ("ada", "ada", "bob"):
        cache.get(key)
    balancer = RoundRobin(["app-1", "app-2"])
    broker = Broker()
    emails = broker.queue("emails")
    for n in range(4):
        emails.put({"n": n})
    lags = {"replica-a": 0.25}
    router = ReplicaRouter("primary", ["replica-a"], lag_probe=lags.__getitem__)
    router.for_read()
    registry.register("users", cache)
    registry.register("web", balancer)
    registry.register("jobs", broker)
    registry.register("db", router)
    with balancer.lease() as backend:
        families = _scrape(url)
    kind, samples = families["scalekit_cache_hits"]
    assert kind == "counter"
    assert samples[("scalekit_cache_hits_total", (("cache", "users"),))] == cache.stats().hits == 2
    assert families["scalekit_cache_misses"][1][
        ("scalekit_cache_misses_total", (("cache", "users"),))
    ] == (cache.stats().misses)
    assert families["scalekit_cache_size"] == (
        "gauge",
        {("scalekit_cache_size", (("cache", "users"),)): 1.0},
    )
    in_flight = families["scalekit_balancer_in_flight"][1]
    assert in_flight[
        ("scalekit_balancer_in_flight", (("backend", backend), ("balancer", "web")))
    ] == (1)
    assert sum(in_flight.values()) == 1
    assert families["scalekit_mq_depth"][1] == {
        ("scalekit_mq_depth", (("broker", "jobs"), ("queue", "emails"))): 4.0
    }
    assert families["scalekit_replica_lag_seconds"][1] == {
        ("scalekit_replica_lag_seconds", (("replica", "replica-a"), ("router", "db"))): 0.25
    }
    # Read at scrape time: the next scrape sees the next values.
    cache.get("ada")
    emails.get(timeout=0)
    families = _scrape(url)
    assert families["scalekit_cache_hits"][1][
        ("scalekit_cache_hits_total", (("cache", "users"),))
    ] == (3)
    assert families["scalekit_mq_depth"][1] == {
        ("scalekit_mq_depth", (("broker", "jobs"), ("queue", "emails"))): 3.0
    }
    assert families["scalekit_balancer_in_flight"][1][
        ("scalekit_balancer_in_flight", (("backend", backend), ("balancer", "web")))
    ] == (0)
    broker.close()


def test_every_sample_of_the_registry_is_exposed_once(endpoint: tuple[Registry, str]) -> None:
    registry, url = endpoint
    registry.register("users", LRUCache(maxsize=math.inf, stats=True))
    registry.register("web", RoundRobin(["a", 'quote"and\\slash\nnewline']))
    exposed = {
        (name, labels): value
        for _, samples in _scrape(url).values()
        for (name, labels), value in samples.items()
    }
    expected = {(s.name, tuple(sorted(s.labels))): s.value for s in registry.collect()}
    assert exposed == expected
    assert exposed[("scalekit_cache_maxsize", (("cache", "users"),))] == math.inf


def test_the_global_registry_and_a_multiprocess_dir_are_left_alone(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    registry = Registry()
    registry.register("users", LRUCache(maxsize=10, stats=True))
    before = prometheus_client.generate_latest(prometheus_client.REGISTRY)
    server, port = serve(registry)
    try:
        families = _scrape(f"http://127.0.0.1:{port}/metrics")
    finally:
        server.shutdown()
        server.server_close()
    assert "scalekit_cache_hits" in families
    assert b"scalekit" not in before
    assert b"scalekit" not in prometheus_client.generate_latest(prometheus_client.REGISTRY)
    assert list(tmp_path.iterdir()) == []


def test_the_collector_in_a_users_own_registry() -> None:
    registry = Registry()
    cache: LRUCache[str, int] = LRUCache(maxsize=10, stats=True)
    registry.register("users", cache)
    own = prometheus_client.CollectorRegistry()
    own.register(Collector(registry))
    cache.get("x")
    assert own.get_sample_value("scalekit_cache_misses_total", {"cache": "users"}) == 1
    assert own.get_sample_value("scalekit_cache_hits_total", {"cache": "users"}) == 0
    assert Collector(registry).describe() == []


@pytest.mark.parametrize("registry", [None, "registry", prometheus_client.REGISTRY, object()])
def test_a_collector_needs_a_scalekit_registry(registry: object) -> None:
    with pytest.raises(ArgumentTypeError, match="registry"):
        Collector(registry)  # type: ignore[arg-type]
    with pytest.raises(ArgumentTypeError, match="registry"):
        serve(registry)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("port", "addr", "error"),
    [
        (None, "127.0.0.1", ArgumentTypeError),
        (True, "127.0.0.1", ArgumentTypeError),
        (1.5, "127.0.0.1", ArgumentTypeError),
        (-1, "127.0.0.1", ConfigurationError),
        (65536, "127.0.0.1", ConfigurationError),
        (2**80, "127.0.0.1", ConfigurationError),
        (0, None, ArgumentTypeError),
        (0, "", ConfigurationError),
        (0, b"127.0.0.1", ArgumentTypeError),
    ],
)
def test_serve_refuses_hostile_arguments(port: object, addr: object, error: type) -> None:
    with pytest.raises(error, match="port" if addr == "127.0.0.1" else "addr"):
        serve(Registry(), port, addr)  # type: ignore[arg-type]
