"""SQLiteCache against diskcache, the file cache a user would otherwise pick to
share a cache between the processes of one host, in the same run.

- ``sqlite-get``: a hit of a small JSON object (about 120 bytes), among 1,000
  items with a TTL, against ``diskcache.Cache.get`` of the same object.
- ``sqlite-set``: an overwrite of that object with a TTL, against
  ``diskcache.Cache.set(..., expire=600)``.
- ``sqlite-get_many``: 100 present keys in one call, against 100 ``get`` calls
  (diskcache has no batch read).

Both stores are on files of the same temporary directory, with their defaults
(WAL, ``synchronous=NORMAL`` for both); diskcache pickles the value, SQLiteCache
writes its JSON. Each pair is measured interleaved (``benchmarks.timing.record``)
and the median ratio ours / diskcache is kept in ``extra_info["ratio"]``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.timing import record
from scalekit.cache import SQLiteCache

VALUE = {"id": 48213, "name": "Ada Lovelace", "roles": ["customer", "reviewer"], "score": 9.5}
ITEMS = 1000
BATCH = 100


def rounds(benchmark: Any, batch: int = 100) -> dict[str, int]:
    return {"rounds": 2, "batch": 5} if benchmark.disabled else {"batch": batch}


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[tuple[SQLiteCache[Any], Any]]:
    import diskcache

    ours: SQLiteCache[Any] = SQLiteCache(tmp_path / "ours.db", ttl=600)
    rival = diskcache.Cache(str(tmp_path / "diskcache"))
    ours.set_many({f"k{i}": VALUE for i in range(ITEMS)})
    for i in range(ITEMS):
        rival.set(f"k{i}", VALUE, expire=600)
    yield ours, rival
    ours.close()
    rival.close()


def test_sqlite_get(benchmark: Any, stores: tuple[SQLiteCache[Any], Any]) -> None:
    benchmark.group = "sqlite-get"
    ours, rival = stores
    assert ours.get("k7") == rival.get("k7") == VALUE
    record(benchmark, lambda: ours.get("k7"), lambda: rival.get("k7"), **rounds(benchmark))


def test_sqlite_set(benchmark: Any, stores: tuple[SQLiteCache[Any], Any]) -> None:
    benchmark.group = "sqlite-set"
    ours, rival = stores
    record(
        benchmark,
        lambda: ours.set("k7", VALUE),
        lambda: rival.set("k7", VALUE, expire=600),
        **rounds(benchmark),
    )
    assert ours.get("k7") == rival.get("k7") == VALUE


def test_sqlite_get_many(benchmark: Any, stores: tuple[SQLiteCache[Any], Any]) -> None:
    benchmark.group = "sqlite-get_many"
    ours, rival = stores
    keys = [f"k{i}" for i in range(0, ITEMS, ITEMS // BATCH)]
    assert ours.get_many(keys) == {key: rival.get(key) for key in keys}
    record(
        benchmark,
        lambda: ours.get_many(keys),
        lambda: {key: rival.get(key) for key in keys},
        **rounds(benchmark, batch=10),
    )
