"""Every block's counters in one flat shape, and a Prometheus exporter.

:class:`Registry` holds named blocks (``registry.register("users", cache)``);
``registry.collect()`` reads each one's ``stats()`` into :class:`Sample` values
with conventional names (``scalekit_cache_hits_total{cache="users"}``,
``scalekit_mq_depth{broker="jobs",queue="emails"}``,
``scalekit_balancer_in_flight{balancer="web",backend="..."}``,
``scalekit_replica_lag_seconds{router="db",replica="..."}``). :data:`METRICS`
lists every conventional name with its kind and help text.
:mod:`scalekit.metrics.prometheus` (extra ``prometheus``) serves them.
No block is imported by this package: each is recognised by its class name.
"""

from __future__ import annotations

from scalekit.metrics._adapters import METRICS
from scalekit.metrics._registry import Registry
from scalekit.metrics._sample import Sample

__all__ = ["METRICS", "Registry", "Sample"]
