"""An ``invalidate()`` by another app server while ``cached`` stores a result over
a shared ``Store``: it drops the lease, and the holder must not store the old
result after it.

Checking the lease and storing the result as two calls leaves a window between
them; a store with an atomic ``set_if`` (``SQLiteCache``, ``RedisCache``; a
``TieredCache`` over one) closes it. Each test lands the other server's
invalidation at the last moment before the store: after the lease check on the
two-call path, just before the ``set_if`` on the atomic one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from scalekit.cache import LRUCache, RedisCache, SQLiteCache, TieredCache, cached

Write = Callable[[], None]


class _SQLiteLate(SQLiteCache[Any]):
    """Runs ``late`` once, at the last moment before the holder stores."""

    late: Write | None = None

    def _fire(self) -> None:
        late, self.late = self.late, None
        if late is not None:
            late()

    def get(self, key: str, default: Any = None, /) -> Any:
        value = super().get(key, default)
        if key.endswith("#lease") and value is not default:
            self._fire()  # the two-call path: right after the lease check
        return value

    def set_if(self, key: str, value: Any, /, **kwargs: Any) -> bool:
        self._fire()  # the atomic path: just before it
        return super().set_if(key, value, **kwargs)


class _SQLiteWithoutSetIf(_SQLiteLate):
    """A store whose ``set_if`` is not atomic: ``cached`` takes the two calls."""

    @property
    def atomic_set_if(self) -> bool:
        return False


class _RedisLate(RedisCache[Any]):
    late: Write | None = None

    def set_if(self, key: str, value: Any, /, **kwargs: Any) -> bool:
        late, self.late = self.late, None
        if late is not None:
            late()
        return super().set_if(key, value, **kwargs)


def _another_servers_write(store: Any, price: Any, database: dict[str, int]) -> Write:
    """What a write and ``price.invalidate(7)`` on another app server do to the store
    (in this process, ``invalidate`` would also mark the local call stale)."""

    def write() -> None:
        database["price"] = 2
        key = price.cache_key(7)
        store.delete(key + "#lease")
        store.delete(key)

    return write


def _race(store: Any) -> tuple[int, int]:
    database = {"price": 1}

    @cached(store, lease=5)
    def price(product: int) -> int:
        return database["price"]

    store.late = _another_servers_write(store, price, database)
    first = price(7)
    assert store.late is None, "the write never landed"
    return first, price(7)


def test_an_invalidation_during_the_call_keeps_the_old_result_out(tmp_path: Path) -> None:
    store: SQLiteCache[Any] = SQLiteCache(tmp_path / "c.db")
    database = {"price": 1}

    @cached(store, lease=5)
    def price(product: int) -> int:
        old = database["price"]
        database["price"] = 2  # a write and its invalidation, while this call runs
        price.invalidate(product)  # type: ignore[attr-defined]
        return old

    assert price(7) == 1  # the caller gets what it computed...
    assert price(7) == 2  # ...but it was not stored: the next call sees the write


def test_an_invalidation_just_before_the_store_is_kept_with_set_if(tmp_path: Path) -> None:
    assert _race(_SQLiteLate(tmp_path / "c.db")) == (1, 2)


@pytest.mark.redis
def test_an_invalidation_just_before_the_store_is_kept_with_set_if_on_redis(
    redis_client: Any,
) -> None:
    assert _race(_RedisLate(redis_client, prefix="window:")) == (1, 2)


def test_a_tiered_cache_passes_set_if_to_its_shared_tier(tmp_path: Path) -> None:
    shared = _SQLiteLate(tmp_path / "c.db")
    near: TieredCache[Any] = TieredCache(LRUCache(10), shared)
    assert near.atomic_set_if
    database = {"price": 1}

    @cached(near, lease=5)
    def price(product: int) -> int:
        return database["price"]

    shared.late = _another_servers_write(shared, price, database)
    assert price(7) == 1
    assert shared.late is None
    assert price(7) == 2
    assert shared.get(price.cache_key(7)) == 2  # type: ignore[attr-defined]


@pytest.mark.xfail(strict=True, reason="the two-call window of docs/scale-out.md")
def test_without_an_atomic_set_if_the_window_stays(tmp_path: Path) -> None:
    assert _race(_SQLiteWithoutSetIf(tmp_path / "c.db")) == (1, 2)
