"""Client-side load balancers: spread requests over backends, route around failures.

:class:`RoundRobin` (smooth weighted, nginx's algorithm),
:class:`LeastConnections` (exact, or power of two choices) and :class:`PeakEwma`
(latency-aware, Finagle's) implement the
:class:`Balancer` protocol: ``pick()``, ``lease()`` (sync and async), ``report()``,
health marks and passive outlier ejection (:class:`OutlierEjection`).
"""

from scalekit.balancing._base import BackendStats, Balancer, BalancerStats, Lease, OutlierEjection
from scalekit.balancing._failover import FailoverGroups, FailoverStats
from scalekit.balancing._health import HealthChecker
from scalekit.balancing._least_connections import LeastConnections
from scalekit.balancing._peak_ewma import PeakEwma
from scalekit.balancing._round_robin import RoundRobin

__all__ = [
    "BackendStats",
    "Balancer",
    "BalancerStats",
    "FailoverGroups",
    "FailoverStats",
    "HealthChecker",
    "Lease",
    "LeastConnections",
    "OutlierEjection",
    "PeakEwma",
    "RoundRobin",
]
