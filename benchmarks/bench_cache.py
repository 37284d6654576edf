"""scalekit.cache against cachetools, on the same workloads in the same run.

A 1,000-entry cache with string keys; each round does 10,000 operations:

- ``cache[key] hit`` and ``get(key) hit``: reads of keys drawn from the 1,000 keys
  the cache holds.
- ``set with eviction``: writes of keys the full cache does not hold, so each
  write evicts one item.

Each group holds one policy and one operation for both libraries, so
``pytest benchmarks --benchmark-only`` prints them side by side. ``scalekit bench``
prints the same comparison as ratios.

``TTL memory`` times filling a 10,000-entry ``TTLCache`` and records, in each
result's ``extra_info``, the bytes per entry that ``tracemalloc`` sees for the
cache's own structures (keys made beforehand, every value ``None``).
"""

from __future__ import annotations

import gc
import tracemalloc
from typing import Any

import pytest

from scalekit._bench import BATCH, POLICIES, WORKLOADS, cache_factories

LIBRARIES = ("scalekit", "cachetools")
FACTORIES = {library: cache_factories(library) for library in LIBRARIES}


@pytest.mark.parametrize("library", LIBRARIES)
@pytest.mark.parametrize("workload", list(WORKLOADS))
@pytest.mark.parametrize("policy", POLICIES)
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
