"""How each building block's ``stats()`` becomes flat samples: one small adapter
per kind of block, found in two tables by class name, so that no block is
imported here (``import scalekit.metrics`` loads none of them).

An adapter takes the registered name, the object and the ``label_of`` function
(which turns a backend, replica or shard into its label value) and returns the
samples. The object table is searched first by the object's class and its bases
(blocks without a ``stats()`` of their own, or whose ``stats()`` does I/O), then
the snapshot table by the class of what ``stats()`` returned.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any, NamedTuple

from scalekit._validate import type_name
from scalekit.errors import ArgumentTypeError
from scalekit.metrics._sample import Kind, Sample, label_value, number

__all__ = ["METRICS", "LabelOf", "adapter_for", "samples_of"]

LabelOf = Callable[[Any], str]
Labels = tuple[tuple[str, str], ...]
Adapter = Callable[[str, Any, LabelOf], list[Sample]]

METRICS: dict[str, tuple[Kind, str]] = {}
"""Every conventional metric name: its kind and help text (the generic adapter's
``scalekit_<name>_<field>`` gauges are not listed)."""


def _metric(name: str, kind: Kind, help_text: str) -> str:
    METRICS[name] = (kind, help_text)
    return name


class _Out:
    """The samples an adapter builds: ``add`` drops values that are not numbers."""

    __slots__ = ("samples",)

    def __init__(self) -> None:
        self.samples: list[Sample] = []

    def add(self, metric: str, labels: Labels, value: object) -> None:
        if type(value) is int:  # the common case, first
            self.samples.append(Sample(metric, labels, METRICS[metric][0], float(value)))
            return
        figure = number(value)
        if figure is not None:
            self.samples.append(Sample(metric, labels, METRICS[metric][0], figure))


def _names(keys: Iterable[Hashable], label_of: LabelOf) -> dict[Any, str]:
    """Each key's label value; keys whose labels coincide get ``#2``, ``#3``... so no
    two series of one metric share their labels."""
    result: dict[Any, str] = {}
    taken: set[str] = set()
    for key in keys:
        text = label_value(label_of(key))
        candidate, n = text, 1
        while candidate in taken:
            n += 1
            candidate = f"{text}#{n}"
        taken.add(candidate)
        result[key] = candidate
    return result


# -- caches -------------------------------------------------------------------

_CACHE_COUNTERS = {
    field: _metric(f"scalekit_cache_{field}_total", "counter", help_text)
    for field, help_text in (
        ("hits", "Cache hits."),
        ("misses", "Cache misses."),
        ("evictions", "Items removed to make room (in-process caches)."),
        ("expirations", "Items removed because their TTL ran out (in-process caches)."),
        ("writes", "Items written (remote caches)."),
        ("deletes", "Deletes (remote caches)."),
        ("errors", "Calls that raised a `BackendError` (remote caches)."),
    )
}
_CACHE_SIZE = _metric("scalekit_cache_size", "gauge", "Items (or their total size) in the cache.")
_CACHE_MAXSIZE = _metric("scalekit_cache_maxsize", "gauge", "The capacity of the cache.")


def _cache(name: str, obj: Any, snapshot: Any, label_of: LabelOf) -> list[Sample]:
    """CacheStats (in-process caches, ThreadSafeCache) and StoreStats (RedisCache,
    MemcachedCache): one label, ``cache``."""
    out, labels = _Out(), (("cache", name),)
    for field in dataclasses.fields(snapshot):
        out.add(_CACHE_COUNTERS[field.name], labels, getattr(snapshot, field.name))
    out.add(_CACHE_SIZE, labels, _size(obj))
    out.add(_CACHE_MAXSIZE, labels, getattr(obj, "maxsize", None))
    return out.samples


def _size(cache: Any) -> object:
    """The cache's ``currsize``, but read without purging a plain (unlocked) cache:
    a scrape runs in another thread, and a purge there would change the cache
    under its owner's feet. So a plain cache's size may count expired items not
    purged yet; a ``ThreadSafeCache`` purges under its lock."""
    data = getattr(cache, "_data", None)
    if isinstance(data, dict) and isinstance(getattr(cache, "_sized", None), bool):
        return cache._currsize if cache._sized else len(data)
    return getattr(cache, "currsize", None)


_TIERED_HITS = _metric(
    "scalekit_tiered_cache_hits_total",
    "counter",
    'Reads answered by the tier (`tier="l1"` or `"l2"`).',
)
_TIERED_COUNTERS = {
    field: _metric(f"scalekit_tiered_cache_{field}_total", "counter", help_text)
    for field, help_text in (
        ("misses", "Reads answered by neither tier."),
        ("invalidated", "l1 entries dropped by invalidations."),
        ("flushes", "Whole-l1 flushes."),
        ("not_kept", "Values read from l2 not kept in l1 (invalidated while read)."),
    )
}


def _tiered(name: str, obj: Any, snapshot: Any, label_of: LabelOf) -> list[Sample]:
    out, labels = _Out(), (("cache", name),)
    out.add(_TIERED_HITS, (*labels, ("tier", "l1")), snapshot.l1_hits)
    out.add(_TIERED_HITS, (*labels, ("tier", "l2")), snapshot.l2_hits)
    for field, metric in _TIERED_COUNTERS.items():
        out.add(metric, labels, getattr(snapshot, field))
    return out.samples


_WEB_COUNTERS = {
    field: _metric(f"scalekit_web_cache_{field}_total", "counter", help_text)
    for field, help_text in (
        ("hits", "Fresh responses served from the store."),
        ("stale_hits", "Stale responses served."),
        ("coalesced", "Requests answered by another request's fetch."),
        ("misses", "Cacheable requests without a usable stored response."),
        ("revalidations", "Revalidations the app answered 304."),
        ("refreshes", "Background refreshes started."),
        ("stores", "Responses stored."),
        ("bypasses", "Requests the cache did not serve by rule."),
        ("not_modified", "304s answered from the store."),
        ("purges", "Tags purged."),
        ("errors", "Store calls and refreshes that failed."),
    )
}


def _web_cache(name: str, obj: Any, snapshot: Any, label_of: LabelOf) -> list[Sample]:
    out, labels = _Out(), (("cache", name),)
    for field, metric in _WEB_COUNTERS.items():
        out.add(metric, labels, getattr(snapshot, field))
    return out.samples


_CACHED_HITS = _metric(
    "scalekit_cached_hits_total", "counter", "Calls of a cached function served without a call."
)
_CACHED_MISSES = _metric(
    "scalekit_cached_misses_total", "counter", "Calls of the function a cached wrapper made."
)
_CACHED_SIZE = _metric("scalekit_cached_size", "gauge", "Entries in a cached function's cache.")
_CACHED_MAXSIZE = _metric(
    "scalekit_cached_maxsize", "gauge", "The capacity of a cached function's cache."
)


def _cached_function(name: str, obj: Any, label_of: LabelOf) -> list[Sample]:
    """A ``cached`` wrapper (or ``functools.lru_cache``): its ``cache_info()``."""
    info = obj.cache_info()
    out, labels = _Out(), (("function", name),)
    out.add(_CACHED_HITS, labels, info.hits)
    out.add(_CACHED_MISSES, labels, info.misses)
    out.add(_CACHED_SIZE, labels, info.currsize)
    out.add(_CACHED_MAXSIZE, labels, info.maxsize)
    return out.samples


# -- balancers ------------------------------------------------------------------

_BACKEND_GAUGES = {
    field: _metric(f"scalekit_balancer_{field}", "gauge", help_text)
    for field, help_text in (
        ("weight", "The backend's weight."),
        ("share", "The weight picks use now (lower while slow start ramps up)."),
        ("in_flight", "Requests in flight on the backend."),
        ("down", "1 while the backend is marked down."),
        ("ejected", "1 while the backend is ejected by outlier detection."),
    )
}
_BACKEND_COUNTERS = {
    field: _metric(f"scalekit_balancer_{field}_total", "counter", help_text)
    for field, help_text in (
        ("picks", "Picks of the backend."),
        ("successes", "Successes reported for the backend."),
        ("failures", "Failures reported for the backend."),
        ("ejections", "Times the backend was ejected."),
    )
}
_BACKEND_LATENCY = _metric(
    "scalekit_balancer_latency_seconds",
    "gauge",
    "Moving average of the backend's reported latencies (absent before the first).",
)
_BALANCER_NO_BACKEND = _metric(
    "scalekit_balancer_no_backend_total", "counter", "Picks that found no backend."
)
_BALANCER_PANIC_PICKS = _metric(
    "scalekit_balancer_panic_picks_total", "counter", "Picks made in panic mode."
)
_BALANCER_PANICKING = _metric(
    "scalekit_balancer_panicking", "gauge", "1 if the last pick was in panic mode."
)


def _backends(out: _Out, name: str, backends: Mapping[Any, Any], label_of: LabelOf) -> None:
    names = _names(backends, label_of)
    for backend, record in backends.items():
        labels = (("balancer", name), ("backend", names[backend]))
        for field, metric in _BACKEND_GAUGES.items():
            out.add(metric, labels, getattr(record, field))
        for field, metric in _BACKEND_COUNTERS.items():
            out.add(metric, labels, getattr(record, field))
        out.add(_BACKEND_LATENCY, labels, record.latency)


def _balancer(name: str, obj: Any, snapshot: Any, label_of: LabelOf) -> list[Sample]:
    """BalancerStats (RoundRobin, LeastConnections, PeakEwma...): per backend, and in all."""
    out, labels = _Out(), (("balancer", name),)
    _backends(out, name, snapshot.backends, label_of)
    out.add(_BALANCER_NO_BACKEND, labels, snapshot.no_backend)
    out.add(_BALANCER_PANIC_PICKS, labels, snapshot.panic_picks)
    out.add(_BALANCER_PANICKING, labels, snapshot.panicking)
    return out.samples


_FAILOVER_PICKS = _metric(
    "scalekit_failover_group_picks_total", "counter", "Picks routed to each group."
)
_FAILOVER_GROUP_NO_BACKEND = _metric(
    "scalekit_failover_group_no_backend_total", "counter", "Picks a group found no backend for."
)
_FAILOVER_GROUP_PANICKING = _metric(
    "scalekit_failover_group_panicking", "gauge", "1 if the group's last pick was in panic mode."
)
_FAILOVER_FAILOVERS = _metric(
    "scalekit_failover_failovers_total", "counter", "Picks routed to a group other than the first."
)
_FAILOVER_NO_BACKEND = _metric(
    "scalekit_failover_no_backend_total", "counter", "Picks that found no group to route to."
)


def _failover(name: str, obj: Any, snapshot: Any, label_of: LabelOf) -> list[Sample]:
    """FailoverStats: each group's backends as one balancer's (a backend belongs to
    one group only), and the groups' own counters with a ``group`` label (0 first)."""
    out, labels = _Out(), (("balancer", name),)
    merged: dict[Any, Any] = {}
    for group in snapshot.groups:
        merged.update(group.backends)
    _backends(out, name, merged, label_of)
    for index, (group, picks) in enumerate(zip(snapshot.groups, snapshot.picks, strict=True)):
        group_labels = (*labels, ("group", str(index)))
        out.add(_FAILOVER_PICKS, group_labels, picks)
        out.add(_FAILOVER_GROUP_NO_BACKEND, group_labels, group.no_backend)
        out.add(_FAILOVER_GROUP_PANICKING, group_labels, group.panicking)
    out.add(_FAILOVER_FAILOVERS, labels, snapshot.failovers)
    out.add(_FAILOVER_NO_BACKEND, labels, snapshot.no_backend)
    return out.samples


_HEALTH_RUNNING = _metric(
    "scalekit_health_checker_running", "gauge", "1 while the health checker runs."
)


def _health_checker(name: str, obj: Any, label_of: LabelOf) -> list[Sample]:
    """A HealthChecker: its balancer's samples (under this name) and whether it runs."""
    out = _Out()
    out.add(_HEALTH_RUNNING, (("balancer", name),), obj.running)
    return samples_of(name, obj.balancer, label_of) + out.samples


# -- sharding, replication --------------------------------------------------------

_SHARD_CALLS = _metric("scalekit_shard_calls_total", "counter", "Store calls sent to the shard.")
_SHARD_ERRORS = _metric("scalekit_shard_errors_total", "counter", "Store calls the shard failed.")
_SHARDED_COUNTERS = {
    field: _metric(f"scalekit_sharded_store_{field}_total", "counter", help_text)
    for field, help_text in (
        ("failovers", "Calls served by a replica because an earlier node failed."),
        ("moved", "Redis Cluster MOVED redirections followed."),
        ("asked", "Redis Cluster ASK redirections followed."),
        ("retried", "Batches split to single keys after TRYAGAIN."),
    )
}


def _sharded_store(name: str, obj: Any, snapshot: Any, label_of: LabelOf) -> list[Sample]:
    out, labels = _Out(), (("store", name),)
    names = _names({**snapshot.calls, **snapshot.errors}, label_of)
    for shard, calls in snapshot.calls.items():
        out.add(_SHARD_CALLS, (*labels, ("shard", names[shard])), calls)
    for shard, errors in snapshot.errors.items():
        out.add(_SHARD_ERRORS, (*labels, ("shard", names[shard])), errors)
    for field, metric in _SHARDED_COUNTERS.items():
        out.add(metric, labels, getattr(snapshot, field))
    return out.samples


_REPLICA_READS = _metric("scalekit_replica_reads_total", "counter", "Reads sent to the replica.")
_REPLICA_LAG = _metric(
    "scalekit_replica_lag_seconds",
    "gauge",
    "The replica's last measured lag (absent while unknown).",
)
_REPLICA_LAGGING = _metric(
    "scalekit_replica_lagging", "gauge", "1 while reads avoid the replica for its lag."
)
_REPLICA_DOWN = _metric("scalekit_replica_down", "gauge", "1 while the replica is marked down.")
_ROUTER_COUNTERS = {
    field: _metric(f"scalekit_router_{field}_total", "counter", help_text)
    for field, help_text in (
        ("reads", "Reads routed."),
        ("writes", "Writes routed."),
        ("pinned", "Reads sent to the primary inside a transaction or `use_primary()`."),
        ("read_your_writes", "Reads sent to the primary to see the context's own write."),
        ("fallbacks", "Reads sent to the primary because no replica qualified."),
        ("failures", "Replica failures reported."),
        ("retries", "Reads retried after a replica failed."),
        ("probe_errors", "Lag or position probes that raised."),
    )
}


def _router(name: str, obj: Any, snapshot: Any, label_of: LabelOf) -> list[Sample]:
    """RouterStats: per replica (reads, lag, lagging, down) and the router's counters."""
    out, labels = _Out(), (("router", name),)
    replicas = dict.fromkeys([*snapshot.replica_reads, *snapshot.lag])
    names = _names(replicas, label_of)
    lagging, down = set(snapshot.lagging), set(snapshot.down)
    for replica in replicas:
        replica_labels = (*labels, ("replica", names[replica]))
        out.add(_REPLICA_READS, replica_labels, snapshot.replica_reads.get(replica, 0))
        out.add(_REPLICA_LAG, replica_labels, snapshot.lag.get(replica))
        out.add(_REPLICA_LAGGING, replica_labels, replica in lagging)
        out.add(_REPLICA_DOWN, replica_labels, replica in down)
    for field, metric in _ROUTER_COUNTERS.items():
        out.add(metric, labels, getattr(snapshot, field))
    return out.samples


# -- queues -----------------------------------------------------------------------

_QUEUE_GAUGES = {
    field: _metric(f"scalekit_mq_{metric}", "gauge", help_text)
    for field, metric, help_text in (
        ("ready", "depth", "Messages ready for delivery now: the number to scale consumers on."),
        ("delayed", "delayed", "Messages put with a delay not yet due."),
        ("in_flight", "in_flight", "Messages delivered and not yet settled."),
        ("dead_letters", "dead_letters", "Messages in the queue's dead letters."),
        (
            "oldest_age",
            "oldest_age_seconds",
            "Age of the oldest message in the queue (absent when empty).",
        ),
    )
}
_QUEUE_COUNTERS = {
    field: _metric(f"scalekit_mq_{field}_total", "counter", help_text)
    for field, help_text in (
        ("delivered", "Deliveries."),
        ("redelivered", "Deliveries of a message delivered before."),
        ("acked", "Messages acknowledged."),
        ("dead_lettered", "Messages moved to the dead letters."),
    )
}


def _queue_snapshot(name: str, snapshot: Any) -> list[Sample]:
    out, labels = _Out(), (("broker", name), ("queue", label_value(snapshot.name)))
    for field, metric in _QUEUE_GAUGES.items():
        out.add(metric, labels, getattr(snapshot, field))
    for field, metric in _QUEUE_COUNTERS.items():
        out.add(metric, labels, getattr(snapshot, field))
    return out.samples


def _queue_stats(name: str, obj: Any, snapshot: Any, label_of: LabelOf) -> list[Sample]:
    return _queue_snapshot(name, snapshot)


def _queue(name: str, obj: Any, label_of: LabelOf) -> list[Sample]:
    """A Queue: ``broker`` is the registered name."""
    return _queue_snapshot(name, obj.stats())


def _async_queue(name: str, obj: Any, label_of: LabelOf) -> list[Sample]:
    """An AsyncQueue: the queue it wraps."""
    return _queue_snapshot(name, obj.queue.stats())


def _broker(name: str, obj: Any, label_of: LabelOf) -> list[Sample]:
    """Every queue opened through a Broker so far (its ``_queues``: the broker has no
    public list of them)."""
    with obj._lock:
        queues = list(obj._queues.values())
    samples: list[Sample] = []
    for queue in queues:
        samples += _queue_snapshot(name, queue.stats())
    return samples


# -- sessions ------------------------------------------------------------------------

_SESSION_COUNTERS = {
    field: _metric(f"scalekit_sessions_{field}_total", "counter", help_text)
    for field, help_text in (
        ("created", "Sessions stored for the first time."),
        ("loaded", "Loads that found a live session."),
        ("not_found", "Loads of an unknown, malformed or expired session id."),
        ("saved", "Saves that stored changes."),
        ("merged", "Concurrent saves merged into a save."),
        ("conflicts", "Saves and rotations refused with SessionConflict."),
        ("touched", "Idle expiries extended without changes."),
        ("rotated", "Sessions moved to a new id."),
        ("deleted", "Sessions deleted (logouts)."),
        ("purged", "Expired sessions purged."),
    )
}


def _session_store(name: str, obj: Any, snapshot: Any, label_of: LabelOf) -> list[Sample]:
    """SessionStats (every session store, sync or async): one label, ``store``."""
    out, labels = _Out(), (("store", name),)
    for field in dataclasses.fields(snapshot):
        out.add(_SESSION_COUNTERS[field.name], labels, getattr(snapshot, field.name))
    return out.samples


# -- any other object with stats() --------------------------------------------------

_NOT_NAME = re.compile(r"[^a-zA-Z0-9_]")


def _generic(name: str, snapshot: Any) -> list[Sample]:
    """A dataclass (or a mapping of str) from an unknown ``stats()``: every numeric
    field as a gauge ``scalekit_<name>_<field>``."""
    if dataclasses.is_dataclass(snapshot) and not isinstance(snapshot, type):
        fields = {
            field.name: getattr(snapshot, field.name) for field in dataclasses.fields(snapshot)
        }
    elif isinstance(snapshot, Mapping):
        fields = {key: value for key, value in snapshot.items() if isinstance(key, str)}
    else:
        raise ArgumentTypeError(
            f"obj.stats() must return a dataclass or a mapping, got {type_name(snapshot)}"
        )
    samples = []
    for field, value in fields.items():
        figure = number(value)
        if figure is not None and field:
            metric = f"scalekit_{name}_{_NOT_NAME.sub('_', field)}"
            samples.append(Sample(metric, (), "gauge", figure))
    return samples


# -- the tables ----------------------------------------------------------------------

ObjectAdapter = Callable[[str, Any, LabelOf], list[Sample]]
SnapshotAdapter = Callable[[str, Any, Any, LabelOf], list[Sample]]


class _ObjectEntry(NamedTuple):
    adapter: ObjectAdapter
    probe: bool  # whether ``register`` may read it once to check it (False: it does I/O)


OBJECT_ADAPTERS: dict[str, _ObjectEntry] = {
    "scalekit.mq._broker.Broker": _ObjectEntry(_broker, probe=False),
    "scalekit.mq._queue.Queue": _ObjectEntry(_queue, probe=False),
    "scalekit.mq._async.AsyncQueue": _ObjectEntry(_async_queue, probe=False),
    "scalekit.balancing._health.HealthChecker": _ObjectEntry(_health_checker, probe=True),
}
"""Adapters by the object's class (or a base), ``module.qualname``."""

SNAPSHOT_ADAPTERS: dict[str, SnapshotAdapter] = {
    "scalekit.cache._base.CacheStats": _cache,
    "scalekit.cache._remote.StoreStats": _cache,
    "scalekit.cache._tiered.TieredStats": _tiered,
    "scalekit.web._cache.CacheStats": _web_cache,
    "scalekit.balancing._base.BalancerStats": _balancer,
    "scalekit.balancing._failover.FailoverStats": _failover,
    "scalekit.sharding._store.ShardedStoreStats": _sharded_store,
    "scalekit.replication._router.RouterStats": _router,
    "scalekit.mq._queue.QueueStats": _queue_stats,
    "scalekit.sessions._stats.SessionStats": _session_store,
}
"""Adapters by the class of what ``stats()`` returns, ``module.qualname``."""


def _class_names(value: object) -> list[str]:
    return [f"{cls.__module__}.{cls.__qualname__}" for cls in type(value).__mro__]


def adapter_for(obj: object) -> tuple[ObjectAdapter, bool] | None:
    """The adapter that reads ``obj`` and whether ``register`` may probe it, or None
    if ``obj`` has neither ``stats()`` nor ``cache_info()``.

    Runtime complexity: O(length of the object's MRO).
    """
    for class_name in _class_names(obj):
        entry = OBJECT_ADAPTERS.get(class_name)
        if entry is not None:
            return entry.adapter, entry.probe
    if callable(getattr(obj, "stats", None)) and not isinstance(obj, type):
        return _stats, True
    if callable(getattr(obj, "cache_info", None)):
        return _cached_function, True
    return None


def _stats(name: str, obj: Any, label_of: LabelOf) -> list[Sample]:
    snapshot = obj.stats()
    for class_name in _class_names(snapshot):
        adapter = SNAPSHOT_ADAPTERS.get(class_name)
        if adapter is not None:
            return adapter(name, obj, snapshot, label_of)
    return _generic(name, snapshot)


def samples_of(name: str, obj: object, label_of: LabelOf) -> list[Sample]:
    """Read ``obj`` once into samples (raises what its ``stats()`` raises)."""
    found = adapter_for(obj)
    if found is None:
        raise ArgumentTypeError(
            f"obj must have stats() or cache_info() (a scalekit block), got {type_name(obj)}"
        )
    return found[0](name, obj, label_of)
