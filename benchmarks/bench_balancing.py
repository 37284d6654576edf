"""Pick and lease cost of the balancers at 10, 100 and 1,000 backends, beside a
naive ``min(backends, key=in_flight)`` least-connections in the same run.

Each round makes 1,000 leases (pick, count in flight, release), or 1,000 picks.
The workloads are shared with ``scalekit bench balancing`` (scalekit._bench).
"""

from __future__ import annotations

from typing import Any

import pytest

from scalekit._bench import BALANCER_KINDS, BALANCER_SIZES, lease_workload, make_balancer

ROUNDS = 1_000


@pytest.mark.parametrize("size", BALANCER_SIZES)
@pytest.mark.parametrize("kind", BALANCER_KINDS)
def test_lease(benchmark: Any, kind: str, size: int) -> None:
    benchmark.group = f"{ROUNDS:,} leases, {kind}"
    chosen = benchmark(lease_workload(make_balancer(kind, size), ROUNDS))
    assert len(chosen) == ROUNDS


@pytest.mark.parametrize("size", BALANCER_SIZES)
@pytest.mark.parametrize("kind", BALANCER_KINDS[:-1])
def test_pick(benchmark: Any, kind: str, size: int) -> None:
    benchmark.group = f"{ROUNDS:,} picks, {kind}"
    balancer = make_balancer(kind, size)
    chosen = benchmark(lambda: [balancer.pick() for _ in range(ROUNDS)])
    assert len(chosen) == ROUNDS
    if kind in ("RoundRobin", "LeastConnections"):
        assert len(set(chosen)) == min(size, ROUNDS)  # in turn: every backend, once
