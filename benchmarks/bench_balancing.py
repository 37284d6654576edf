"""Pick and lease cost of the balancers at 10, 100 and 1,000 backends, beside a
naive ``min(backends, key=in_flight)`` least-connections in the same run.

Each round makes 1,000 leases (pick, count in flight, release).
"""

from __future__ import annotations

from typing import Any

import pytest

from scalekit.balancing import LeastConnections, PeakEwma, RoundRobin

SIZES = [10, 100, 1000]
ROUNDS = 1_000


class NaiveLeastConnections:
    """What a balancer written in an afternoon does: scan for the least loaded."""

    def __init__(self, backends: list[str]) -> None:
        self.in_flight = dict.fromkeys(backends, 0)

    def lease_and_release(self) -> str:
        backend = min(self.in_flight, key=self.in_flight.__getitem__)
        self.in_flight[backend] += 1
        self.in_flight[backend] -= 1
        return backend


def _balancer(kind: str, size: int) -> Any:
    backends = [f"10.0.{i // 250}.{i % 250}:8080" for i in range(size)]
    if kind == "RoundRobin":
        return RoundRobin(backends)
    if kind == "RoundRobin weighted":
        return RoundRobin(backends, weights={b: 1 + i % 3 for i, b in enumerate(backends)})
    if kind == "LeastConnections":
        return LeastConnections(backends)
    if kind == "LeastConnections choices=2":
        return LeastConnections(backends, choices=2)
    if kind == "PeakEwma":
        return PeakEwma(backends)
    return NaiveLeastConnections(backends)


KINDS = [
    "RoundRobin",
    "RoundRobin weighted",
    "LeastConnections",
    "LeastConnections choices=2",
    "PeakEwma",
    "naive min()",
]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kind", KINDS)
def test_lease(benchmark: Any, kind: str, size: int) -> None:
    benchmark.group = f"{ROUNDS:,} leases, {kind}"
    balancer = _balancer(kind, size)

    if kind == "naive min()":
        run = lambda: [balancer.lease_and_release() for _ in range(ROUNDS)]  # noqa: E731
    else:

        def run() -> list[Any]:
            chosen = []
            for _ in range(ROUNDS):
                with balancer.lease() as backend:
                    chosen.append(backend)
            return chosen

    chosen = benchmark(run)
    assert len(chosen) == ROUNDS


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kind", KINDS[:-1])
def test_pick(benchmark: Any, kind: str, size: int) -> None:
    benchmark.group = f"{ROUNDS:,} picks, {kind}"
    balancer = _balancer(kind, size)
    chosen = benchmark(lambda: [balancer.pick() for _ in range(ROUNDS)])
    assert len(set(chosen)) == min(size, ROUNDS) or kind.endswith("=2")
