"""scalekit.sharding lookups against uhashring, on the same 10 nodes and keys.

Each round looks up 10,000 string keys. ``pytest benchmarks --benchmark-only``
prints scalekit and the rival side by side in each group.
"""

from __future__ import annotations

from typing import Any

import pytest
from uhashring import HashRing as UHashRing

from scalekit.sharding import HashRing

NODES = [f"node-{i}" for i in range(10)]
KEYS = [f"user:{i}:profile" for i in range(10_000)]

LOOKUPS = {
    "scalekit HashRing": HashRing(NODES).node_for,
    "uhashring": UHashRing(nodes=NODES).get_node,
}


@pytest.mark.parametrize("name", list(LOOKUPS))
def test_ring_lookup(benchmark: Any, name: str) -> None:
    benchmark.group = "ring node_for (10 nodes, 10,000 keys)"
    lookup = LOOKUPS[name]
    owners = benchmark(lambda: [lookup(key) for key in KEYS])
    assert set(owners) == set(NODES)


def test_plan_one_more_node_at_100(benchmark: Any) -> None:
    benchmark.group = "plan_add at 100 nodes"
    ring = HashRing([f"node-{i}" for i in range(100)])
    plan = benchmark(ring.plan_add, "node-new")
    assert plan.targets == {"node-new"}
