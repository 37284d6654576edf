"""Least frequently used: evicts the item with the fewest uses."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from scalekit.cache._base import Cache, EvictionListener, K, V, builtin_popitem
from scalekit.protocols import Clock

__all__ = ["LFUCache"]


class _Bucket:
    """The keys used ``count`` times, least recently used first; a node of a ring."""

    __slots__ = ("count", "keys", "next", "prev")

    def __init__(self, count: int) -> None:
        self.count = count
        self.keys: OrderedDict[Any, None] = OrderedDict()
        self.prev: _Bucket = self
        self.next: _Bucket = self

    def insert_after(self, other: _Bucket) -> None:
        self.prev = other
        self.next = other.next
        other.next.prev = self
        other.next = self

    def unlink(self) -> None:
        self.prev.next = self.next
        self.next.prev = self.prev


class LFUCache(Cache[K, V]):
    """A Least Frequently Used cache: when full, the item with the fewest uses goes first.

    Storing a key counts one use; each read (``cache[key]``, ``get``) or overwrite
    one more. Among items with equally few uses, the least recently used goes
    first. A drop-in for :class:`cachetools.LFUCache`.

    Runtime complexity: O(1) for every read and write, eviction included (keys
    sit in buckets of equal use count, kept in a ring ordered by count).

    >>> cache = LFUCache(maxsize=2)
    >>> cache["a"] = 1
    >>> cache["b"] = 2
    >>> cache["a"], cache["a"]
    (1, 1)
    >>> cache["c"] = 3          # "b" was used once, "a" three times
    >>> sorted(cache)
    ['a', 'c']
    """

    def __init__(
        self,
        maxsize: float,
        getsizeof: Callable[[V], float] | None = None,
        *,
        ttl: float | None = None,
        timer: Clock = time.monotonic,
        on_evict: EvictionListener | None = None,
    ) -> None:
        super().__init__(maxsize, getsizeof, ttl=ttl, timer=timer, on_evict=on_evict)
        self._data = {}
        self._root = _Bucket(0)  # sentinel: root.next has the fewest uses
        self._links: dict[K, _Bucket] = {}

    def _use(self, key: K) -> None:
        """Count one more use of ``key``: move it to the next bucket up."""
        bucket = self._links[key]
        count = bucket.count + 1
        higher = bucket.next
        if higher.count != count:
            if len(bucket.keys) == 1:
                bucket.count = count
                return
            higher = _Bucket(count)
            higher.insert_after(bucket)
        del bucket.keys[key]
        higher.keys[key] = None
        self._links[key] = higher
        if not bucket.keys:
            bucket.unlink()

    def __getitem__(self, key: K) -> V:
        try:
            value = self._data[key]
        except KeyError:
            self._misses += 1
            return self.__missing__(key)
        expires = self._expires
        if expires:
            expires_at = expires.get(key)
            if expires_at is not None and expires_at <= self._timer():
                return self._expired_miss(key)
        # _use(key), written out: this is the hot path.
        links = self._links
        bucket = links[key]
        count = bucket.count + 1
        higher = bucket.next
        if higher.count != count:
            if len(bucket.keys) == 1:
                bucket.count = count
                self._hits += 1
                return value
            higher = _Bucket(count)
            higher.insert_after(bucket)
        keys = bucket.keys
        del keys[key]
        higher.keys[key] = None
        links[key] = higher
        if not keys:
            bucket.unlink()
        self._hits += 1
        return value

    def get(self, key: K, default: Any = None) -> Any:
        try:
            value = self._data[key]
        except KeyError:
            self._misses += 1
            return default
        expires = self._expires
        if expires:
            expires_at = expires.get(key)
            if expires_at is not None and expires_at <= self._timer():
                self._expired_miss(key, call_missing=False)
                return default
        self._use(key)
        self._hits += 1
        return value

    def __setitem__(self, key: K, value: V) -> None:
        data = self._data
        if not self._plain or self._expires or key in data:
            self._store(key, value, self._ttl)
            return
        evicted = None
        root = self._root
        if len(data) >= self._maxlen:
            lowest = root.next
            old_key = lowest.keys.popitem(last=False)[0]
            if not lowest.keys:
                lowest.unlink()
            del self._links[old_key]
            evicted = (old_key, data.pop(old_key))
            self._evictions += 1
        data[key] = value
        ones = root.next
        if ones.count != 1:
            ones = _Bucket(1)
            ones.insert_after(root)
        ones.keys[key] = None
        self._links[key] = ones
        if evicted is not None and self._on_evict is not None:
            self._notify([(evicted[0], evicted[1], "size")])

    def _policy_added(self, key: K) -> None:
        root = self._root
        ones = root.next
        if ones.count != 1:
            ones = _Bucket(1)
            ones.insert_after(root)
        ones.keys[key] = None
        self._links[key] = ones

    _policy_read = _use
    _policy_written = _use

    def _policy_removed(self, key: K) -> None:
        bucket = self._links.pop(key)
        del bucket.keys[key]
        if not bucket.keys:
            bucket.unlink()

    def _policy_victim(self) -> K:
        key: K = next(iter(self._root.next.keys))
        return key

    def _policy_cleared(self) -> None:
        self._root = _Bucket(0)
        self._links.clear()

    @builtin_popitem
    def popitem(self) -> tuple[K, V]:
        """Remove and return the least frequently used item (expired items first).

        Raises :class:`KeyError` when empty. Runtime complexity: O(1) amortized.
        """
        return super().popitem()

    def use_count(self, key: K) -> int:
        """How many uses ``key`` has: 1 for the write, one more per read or overwrite.

        Raises :class:`KeyError` if ``key`` is missing. Runtime complexity: O(1).
        """
        if key not in self:
            raise KeyError(key)
        return self._links[key].count

    def _buckets(self) -> list[tuple[int, list[K]]]:
        buckets = []
        bucket = self._root.next
        while bucket is not self._root:
            buckets.append((bucket.count, list(bucket.keys)))
            bucket = bucket.next
        return buckets

    def _rebuild(self, buckets: list[tuple[int, list[K]]]) -> None:
        self._root = root = _Bucket(0)
        self._links = {}
        for count, keys in buckets:
            bucket = _Bucket(count)
            bucket.keys = OrderedDict.fromkeys(keys)
            bucket.insert_after(root.prev)
            self._links.update(dict.fromkeys(keys, bucket))

    def _copy_policy_from(self, other: Cache[K, V]) -> None:
        assert isinstance(other, LFUCache)
        self._rebuild(other._buckets())

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_root"], state["_links"]
        state["_lfu_buckets"] = self._buckets()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        buckets = state.pop("_lfu_buckets")
        self.__dict__.update(state)
        self._rebuild(buckets)

    def _check_policy(self) -> None:
        assert set(self._links) == set(self._data)
        seen = 0
        previous = 0
        bucket = self._root.next
        while bucket is not self._root:
            assert bucket.count > previous, "bucket counts must increase along the ring"
            assert bucket.keys, "no empty bucket stays in the ring"
            assert bucket.next.prev is bucket
            for key in bucket.keys:
                assert self._links[key] is bucket
            seen += len(bucket.keys)
            previous = bucket.count
            bucket = bucket.next
        assert seen == len(self._data)
