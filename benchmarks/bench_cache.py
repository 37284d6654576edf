"""scalekit.cache against cachetools, on the same workloads in the same run.

A 1,000-entry cache with string keys; each round does 10,000 operations:

- ``cache[key] hit`` and ``get(key) hit``: reads of keys drawn from the 1,000 keys
  the cache holds.
- ``set with eviction``: writes of keys the full cache does not hold, so each
  write evicts one item.

Each group holds one policy and one operation for both libraries, so
``pytest benchmarks --benchmark-only`` prints them side by side. ``scalekit bench``
prints the same comparison as ratios.
"""

from __future__ import annotations

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
