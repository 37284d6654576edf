"""A prometheus-client collector over a :class:`~scalekit.metrics.Registry`
(extra ``prometheus``), and a helper that serves it on its own endpoint.

Samples are read from the blocks at scrape time: the collector keeps no
counter of its own, so nothing is counted twice. Each process serves its own
endpoint (no multiprocess directory); :func:`serve` uses a
``CollectorRegistry`` of its own, never prometheus-client's global one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from scalekit._validate import check_count, check_str, type_name
from scalekit.errors import ArgumentTypeError
from scalekit.metrics._adapters import METRICS
from scalekit.metrics._registry import Registry

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client.metrics_core import Metric

__all__ = ["Collector", "serve"]


class Collector:
    """A custom collector for prometheus-client: ``collect()`` yields one metric
    family per sample name, built from ``registry.collect()`` at that moment.

    Counters become ``CounterMetricFamily`` (named without ``_total``, which
    prometheus-client appends to the sample); gauges ``GaugeMetricFamily``.
    ``describe()`` returns nothing, so registering it reads no block.

    Runtime complexity: ``collect`` O(samples) plus each block's ``stats()``.
    """

    def __init__(self, registry: Registry) -> None:
        if not isinstance(registry, Registry):
            raise ArgumentTypeError(
                f"registry must be a scalekit.metrics.Registry, got {type_name(registry)}"
            )
        self.registry = registry

    def describe(self) -> list[Metric]:
        """Nothing: the series are known only when the blocks are read."""
        return []

    def collect(self) -> Iterator[Metric]:
        """The metric families of every registered block, read now."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        from prometheus_client.samples import Sample as PromSample

        families: dict[str, Metric] = {}
        for sample in self.registry.collect():
            family = families.get(sample.name)
            if family is None:
                help_text = METRICS.get(sample.name, (sample.kind, "scalekit metric."))[1]
                if sample.kind == "counter":
                    family = CounterMetricFamily(sample.name, help_text)
                else:
                    family = GaugeMetricFamily(sample.name, help_text)
                families[sample.name] = family
            name = family.name + "_total" if sample.kind == "counter" else family.name
            family.samples.append(PromSample(name, dict(sample.labels), sample.value))
        yield from families.values()


def serve(registry: Registry, port: int = 0, addr: str = "127.0.0.1") -> tuple[WSGIServer, int]:
    """Serve ``registry`` at ``http://addr:port/metrics`` from a daemon thread with
    prometheus-client's HTTP server; ``port=0`` picks a free one. Returns the
    server and its port; ``server.shutdown(); server.server_close()`` stops it.
    """
    from prometheus_client import CollectorRegistry, start_http_server

    if not isinstance(registry, Registry):
        raise ArgumentTypeError(
            f"registry must be a scalekit.metrics.Registry, got {type_name(registry)}"
        )
    check_count(port, "port", maximum=65535)
    check_str(addr, "addr")
    own: Any = CollectorRegistry(auto_describe=False)
    own.register(Collector(registry))
    server, _ = start_http_server(port, addr, registry=own)
    return server, int(server.server_port)
