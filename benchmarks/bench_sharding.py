"""scalekit.sharding lookups against uhashring, on the same 10 nodes and keys.

Each round looks up 10,000 string keys. ``pytest benchmarks --benchmark-only``
prints each scheme beside uhashring (in ketama mode beside KetamaRing, also
beside KetamaRing's twemproxy options, which uhashring lacks).
``scalekit bench sharding`` prints the ratios, and balance and moves at 1M keys.
"""

from __future__ import annotations

from typing import Any

import pytest
from uhashring import HashRing as UHashRing

import scalekit.sharding as sh

NODES = [f"node-{i}" for i in range(10)]
KEYS = [f"user:{i}:profile" for i in range(10_000)]

LOOKUPS = {
    "HashRing": (sh.HashRing(NODES).node_for, UHashRing(nodes=NODES).get_node),
    "KetamaRing": (
        sh.KetamaRing(NODES).node_for,
        UHashRing(nodes=NODES, hash_fn="ketama").get_node,
    ),
    # twemproxy's point counts with its key hashes; uhashring has only libketama's
    "KetamaRing twemproxy md5": (
        sh.KetamaRing(NODES, points="twemproxy").node_for,
        UHashRing(nodes=NODES, hash_fn="ketama").get_node,
    ),
    "KetamaRing twemproxy fnv1a_64": (
        sh.KetamaRing(NODES, points="twemproxy", hash="fnv1a_64").node_for,
        UHashRing(nodes=NODES, hash_fn="ketama").get_node,
    ),
    "SlotMap": (sh.SlotMap(NODES).node_for, UHashRing(nodes=NODES).get_node),
    "JumpHash": (sh.JumpHash(NODES).node_for, UHashRing(nodes=NODES).get_node),
    "RendezvousHash": (sh.RendezvousHash(NODES).node_for, UHashRing(nodes=NODES).get_node),
    "MaglevHash": (sh.MaglevHash(NODES).node_for, UHashRing(nodes=NODES).get_node),
}


@pytest.mark.parametrize("library", ["scalekit", "uhashring"])
@pytest.mark.parametrize("scheme", list(LOOKUPS))
def test_lookup(benchmark: Any, scheme: str, library: str) -> None:
    benchmark.group = f"{scheme} node_for (10 nodes, 10,000 keys)"
    lookup = LOOKUPS[scheme][0 if library == "scalekit" else 1]
    owners = benchmark(lambda: [lookup(key) for key in KEYS])
    assert set(owners) == set(NODES)


@pytest.mark.parametrize("scheme", ["HashRing", "SlotMap", "MaglevHash"])
def test_plan_one_more_node_at_100(benchmark: Any, scheme: str) -> None:
    benchmark.group = "plan_add at 100 nodes"
    sharder = getattr(sh, scheme)([f"node-{i}" for i in range(100)])
    plan = benchmark(sharder.plan_add, "node-new")
    assert "node-new" in plan.targets
