"""Review of ``scalekit.metrics`` (issue 16): a block that cannot report is refused
with the documented error, and no collection exposes one series twice or one
name with two kinds (Prometheus refuses such a scrape whole)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from scalekit.cache import LRUCache
from scalekit.errors import ConfigurationError
from scalekit.metrics import Registry


class _Failing:
    def stats(self) -> Any:
        raise RuntimeError("backend down")


class _Fields:
    def __init__(self, fields: dict[str, float]) -> None:
        self.fields = fields

    def stats(self) -> dict[str, float]:
        return self.fields


def test_a_block_whose_stats_raise_is_refused_with_configuration_error() -> None:
    registry = Registry()
    with pytest.raises(ConfigurationError, match="broken") as caught:
        registry.register("broken", _Failing())
    assert isinstance(caught.value.__cause__, RuntimeError)
    assert "broken" not in registry


def _series_are_unique_and_of_one_kind(registry: Registry) -> None:
    samples = registry.collect()
    counts = Counter((sample.name, sample.labels) for sample in samples)
    assert [key for key, count in counts.items() if count > 1] == []
    kinds: dict[str, set[str]] = {}
    for sample in samples:
        kinds.setdefault(sample.name, set()).add(sample.kind)
    assert {name: kind for name, kind in kinds.items() if len(kind) > 1} == {}


def test_fields_that_sanitise_to_one_name_give_one_series() -> None:
    registry = Registry()
    registry.register("jobs", _Fields({"a-b": 1, "a_b": 2}))
    _series_are_unique_and_of_one_kind(registry)
    values = [s.value for s in registry.collect() if s.name == "scalekit_jobs_a_b"]
    assert values == [1.0]
    errors = [s for s in registry.collect() if s.name == "scalekit_metrics_collect_errors_total"]
    assert [dict(s.labels) for s in errors] == [{"block": "jobs"}]


def test_two_blocks_giving_the_same_series_give_it_once() -> None:
    registry = Registry()
    registry.register("a", _Fields({"b_c": 1}))
    registry.register("a_b", _Fields({"c": 2}))
    _series_are_unique_and_of_one_kind(registry)


def test_a_field_named_like_a_conventional_counter_does_not_change_its_kind() -> None:
    registry = Registry()
    registry.register("cache", _Fields({"hits_total": 1}))
    registry.register("users", LRUCache(maxsize=3, stats=True))
    registry.register("metrics", _Fields({"collect_errors_total": 5}))
    _series_are_unique_and_of_one_kind(registry)


def test_the_exposition_of_clashing_blocks_parses_with_one_type_per_family() -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    from prometheus_client.parser import text_string_to_metric_families

    from scalekit.metrics.prometheus import Collector

    registry = Registry()
    registry.register("cache", _Fields({"hits_total": 1}))
    registry.register("users", LRUCache(maxsize=3, stats=True))
    own = prometheus_client.CollectorRegistry(auto_describe=False)
    own.register(Collector(registry))
    text = prometheus_client.generate_latest(own).decode()
    assert "_total_total" not in text
    families = list(text_string_to_metric_families(text))
    names = [family.name for family in families]
    assert len(names) == len(set(names))
