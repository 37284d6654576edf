"""scalekit.cache against cachetools, on the same workloads in the same run.

A 1,000-entry cache with string keys; each round does 10,000 operations:

- ``cache[key] hit`` and ``get(key) hit``: reads of keys drawn from the 1,000 keys
  the cache holds.
- ``set with eviction``: writes of keys the full cache does not hold, so each
  write evicts one item.

Each group holds one policy and one operation for both libraries, so
``pytest benchmarks --benchmark-only`` prints them side by side. ``scalekit bench``
prints the same comparison as ratios.

The two TTL hit groups have a third participant, ``floor``
(:class:`scalekit._bench.FloorTTLCache`): the minimal correct TTL hit, a small
Python class over an ``OrderedDict`` whose hit is one lookup, one read of the
clock compared with a stored lower bound of the earliest deadline, and one
``move_to_end``. No TTL cache written in Python can hit much faster: scalekit's
time over the floor's is what is left to gain.

``TTL memory`` times filling a 10,000-entry ``TTLCache`` and records, in each
result's ``extra_info``, the bytes per entry that ``tracemalloc`` sees for the
cache's own structures (keys made beforehand, every value ``None``).
"""

from __future__ import annotations

import gc
import tracemalloc
from typing import Any, cast

import pytest

from scalekit._bench import (
    BATCH,
    CACHE_SIZE,
    POLICIES,
    TTL,
    WORKLOADS,
    FloorTTLCache,
    cache_factories,
)

LIBRARIES = ("scalekit", "cachetools")
FACTORIES = {library: cache_factories(library) for library in LIBRARIES}
FACTORIES["floor"] = {"TTL": lambda: cast(Any, FloorTTLCache(CACHE_SIZE, TTL))}
CASES = [
    (policy, workload, library)
    for policy in POLICIES
    for workload in WORKLOADS
    for library in LIBRARIES + (("floor",) if policy == "TTL" and "hit" in workload else ())
]


@pytest.mark.parametrize(("policy", "workload", "library"), CASES, ids=["-".join(c) for c in CASES])
def test_cache(benchmark: Any, policy: str, workload: str, library: str) -> None:
    benchmark.group = f"{policy} {workload} ({BATCH:,} ops)"
    run = WORKLOADS[workload](FACTORIES[library][policy])
    cache = benchmark(run)
    assert len(cache) == 1_000  # type: ignore[arg-type]


MEMORY_ENTRIES = 10_000
MEMORY_KEYS = [f"user:{i}:profile" for i in range(MEMORY_ENTRIES)]


def bytes_per_entry(library: str) -> float:
    """What one more entry of a full ``TTLCache`` of ``library`` costs, in bytes."""
    module: Any = pytest.importorskip("scalekit.cache" if library == "scalekit" else library)
    gc.collect()
    tracemalloc.start()
    try:
        cache = module.TTLCache(MEMORY_ENTRIES, 3600.0)
        for key in MEMORY_KEYS:
            cache[key] = None
        size = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return size / MEMORY_ENTRIES


@pytest.mark.parametrize("library", LIBRARIES)
def test_ttl_memory(benchmark: Any, library: str) -> None:
    benchmark.group = f"TTL memory ({MEMORY_ENTRIES:,} entries)"
    benchmark.extra_info["bytes_per_entry"] = round(bytes_per_entry(library), 1)
    module: Any = pytest.importorskip("scalekit.cache" if library == "scalekit" else library)

    def fill() -> Any:
        cache = module.TTLCache(MEMORY_ENTRIES, 3600.0)
        for key in MEMORY_KEYS:
            cache[key] = None
        return cache

    assert len(benchmark(fill)) == MEMORY_ENTRIES
