"""The registry of named blocks whose counters one ``collect()`` reads."""

from __future__ import annotations

import logging
import threading
from typing import Any

from scalekit._validate import check_callable, check_str, type_name
from scalekit.errors import (
    ArgumentTypeError,
    ConfigurationError,
    DuplicateNode,
    ScalekitError,
    UnknownNode,
)
from scalekit.metrics._adapters import METRICS, LabelOf, adapter_for, samples_of
from scalekit.metrics._sample import (
    Sample,
    is_label_name,
    is_metric_name,
    label_value,
)

__all__ = ["Registry"]

_log = logging.getLogger("scalekit.metrics")
_MAX_NAME = 100
_COLLECT_ERRORS = "scalekit_metrics_collect_errors_total"
METRICS[_COLLECT_ERRORS] = (
    "counter",
    "Collections in which the block failed to report (`block=`).",
)


_checked: set[tuple[str, tuple[str, ...]]] = set()
"""Metric names with their label names found valid already (a scrape checks each once)."""


def _check_samples(name: str, samples: list[Sample]) -> list[Sample]:
    """``samples`` if every name and label is valid for Prometheus, else a ConfigurationError."""
    for sample in samples:
        shape = (sample.name, tuple(label for label, _ in sample.labels))
        if shape in _checked:
            continue
        if not is_metric_name(sample.name):
            raise ConfigurationError(f"{name!r} gave an invalid metric name {sample.name!r}")
        for label in shape[1]:
            if not is_label_name(label):
                raise ConfigurationError(f"{name!r} gave an invalid label name {label!r}")
        if len(_checked) > 10_000:  # names made from unknown blocks' fields: keep it bounded
            _checked.clear()
        _checked.add(shape)
    return samples


class Registry:
    """Named building blocks whose ``stats()`` are read into one flat list of samples.

    ``register(name, obj)`` takes any block with counters: caches (``LRUCache``
    and the other policies built with ``stats=True``, ``ThreadSafeCache``,
    ``TieredCache``, ``RedisCache``, ``MemcachedCache``), ``cached`` wrappers,
    ``ShardedStore``, balancers, ``FailoverGroups``, ``HealthChecker``,
    ``ReplicaRouter``, ``Broker`` and queues, ``HttpCache``; any other object whose
    ``stats()`` returns a dataclass gets its numeric fields as gauges
    ``scalekit_<name>_<field>``. :meth:`collect` reads them all at that moment
    (nothing is kept between two calls, so nothing is counted twice).

    A name is what a Prometheus label name may be (letters, digits, ``_``, not
    starting with a digit or ``__``), at most 100 characters. Backends, replicas
    and shards are labelled ``label_of(backend)`` (``str`` by default).

    >>> from scalekit.cache import LRUCache
    >>> users = LRUCache(maxsize=100, stats=True)
    >>> users["ada"] = 1
    >>> _ = users.get("ada"), users.get("bob")
    >>> registry = Registry()
    >>> registry.register("users", users)
    >>> for sample in registry.collect():
    ...     print(sample.name, dict(sample.labels), sample.value)
    scalekit_cache_hits_total {'cache': 'users'} 1.0
    scalekit_cache_misses_total {'cache': 'users'} 1.0
    scalekit_cache_evictions_total {'cache': 'users'} 0.0
    scalekit_cache_expirations_total {'cache': 'users'} 0.0
    scalekit_cache_size {'cache': 'users'} 1.0
    scalekit_cache_maxsize {'cache': 'users'} 100.0
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[Any, LabelOf]] = {}
        self._errors: dict[str, int] = {}

    def register(self, name: str, obj: object, *, label_of: LabelOf = str) -> None:
        """Add ``obj`` under ``name``. Blocks read without I/O are read once now,
        so a cache built without ``stats=True`` is refused here, not at scrape time.

        Runtime complexity: O(1) plus one read of ``obj``.

        Raises:
            ArgumentTypeError: ``name`` is not a str, ``obj`` has no ``stats()``, or
                ``label_of`` is not callable.
            ConfigurationError: ``name`` breaks the naming rule, or ``obj`` cannot
                report (its ``stats()`` raised it).
            DuplicateNode: ``name`` is registered already.
        """
        _check_name(name)
        check_callable(label_of, "label_of")
        if obj is None or isinstance(obj, type):
            raise ArgumentTypeError(f"obj must be a block instance, got {type_name(obj)}")
        found = adapter_for(obj)
        if found is None:
            raise ArgumentTypeError(
                f"obj must have stats() or cache_info() (a scalekit block), got {type_name(obj)}"
            )
        with self._lock:
            if name in self._entries:
                raise DuplicateNode(f"a block is registered as {name!r} already")
        if found[1]:
            try:
                samples = found[0](name, obj, label_of)
            except ScalekitError:
                raise
            except Exception as exc:
                raise ConfigurationError(
                    f"{name!r} cannot report: its stats() raised {type(exc).__name__}: {exc}"
                ) from exc
            _check_samples(name, samples)
        with self._lock:
            if name in self._entries:
                raise DuplicateNode(f"a block is registered as {name!r} already")
            self._entries[name] = (obj, label_of)

    def unregister(self, name: str) -> None:
        """Remove the block registered as ``name``. Runtime complexity: O(1).

        Raises:
            UnknownNode: nothing is registered as ``name``.
        """
        check_str(name, "name")
        with self._lock:
            if self._entries.pop(name, None) is None:
                raise UnknownNode(f"no block is registered as {label_value(name)!r}")
            self._errors.pop(name, None)

    def names(self) -> list[str]:
        """The registered names, in the order registered. Runtime complexity: O(n)."""
        with self._lock:
            return list(self._entries)

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def collect(self) -> list[Sample]:
        """Read every registered block now, in the order registered.

        A block that fails to report (a queue whose Redis is down, a label that
        breaks the rules) is logged on ``scalekit.metrics`` and counted in
        ``scalekit_metrics_collect_errors_total{block=...}``; the others are read
        anyway, so a scrape never fails for one block. Series that clash with an
        earlier block's (the same name and labels, or a name of another kind, as a
        generic block's field can make) are left out and counted the same way, so
        the exposition stays one Prometheus accepts.

        Runtime complexity: O(samples) plus each block's ``stats()``.
        """
        with self._lock:
            entries = list(self._entries.items())
        samples: list[Sample] = []
        series: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
        kinds: dict[str, str] = {_COLLECT_ERRORS: "counter"}
        for name, (obj, label_of) in entries:
            try:
                block = _check_samples(name, samples_of(name, obj, label_of))
            except Exception:
                _log.warning("metrics: reading %r failed", name, exc_info=True)
                self._count_error(name)
                continue
            clashes = 0
            for sample in block:
                # two series with one name and labels, or one name of two kinds (a generic
                # block's field named like another block's metric), make Prometheus refuse
                # the whole scrape: the first block registered keeps the series
                key = (sample.name, sample.labels)
                if key in series or kinds.setdefault(sample.name, sample.kind) != sample.kind:
                    clashes += 1
                    continue
                series.add(key)
                samples.append(sample)
            if clashes:
                _log.warning(
                    "metrics: %r gave %d series that an earlier block gave already "
                    "(or a metric name of another kind): left out",
                    name,
                    clashes,
                )
                self._count_error(name)
        with self._lock:
            errors = [(name, count) for name, count in self._errors.items() if count]
        for name, count in errors:
            samples.append(Sample(_COLLECT_ERRORS, (("block", name),), "counter", float(count)))
        return samples

    def _count_error(self, name: str) -> None:
        with self._lock:
            if name in self._entries:
                self._errors[name] = self._errors.get(name, 0) + 1

    def __repr__(self) -> str:
        return f"Registry({self.names()!r})"


def _check_name(name: object) -> str:
    text = check_str(name, "name")
    if len(text) > _MAX_NAME or not is_label_name(text):
        raise ConfigurationError(
            "name must be 1 to 100 letters, digits and underscores, not starting with a "
            f"digit or '__' (a Prometheus label name), got {label_value(text)[:120]!r}"
        )
    return text
