"""Least frequently used: evicts the item with the fewest uses.

The structure is the O(1) LFU of Shah, Mitra and Matani (2010): a ring of
buckets ordered by use count, each holding a ring of key nodes, least recently
used first. A use moves a key's node from its bucket to the tail of the next
one (made if missing); the victim is the first node of the first bucket. Every
step is a handful of pointer writes, with no hashing beyond the key lookup.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from scalekit.cache._base import Cache, EvictionListener, K, V, builtin_popitem
from scalekit.protocols import Clock

__all__ = ["LFUCache"]


class _Node:
    """A key in its bucket's ring; a bucket's sentinel ``head`` is a node too."""

    __slots__ = ("bucket", "key", "next", "prev", "value")

    key: Any
    value: Any
    bucket: _Bucket
    prev: _Node
    next: _Node


class _Bucket:
    """The keys used ``count`` times; a node of the ring of buckets."""

    __slots__ = ("count", "head", "next", "prev")

    def __init__(self, count: int) -> None:
        self.count = count
        head = _Node()
        head.prev = head.next = head
        self.head = head
        self.prev: _Bucket = self
        self.next: _Bucket = self

    def insert_after(self, other: _Bucket) -> None:
        following = other.next
        self.prev = other
        self.next = following
        following.prev = self
        other.next = self

    def unlink(self) -> None:
        self.prev.next = self.next
        self.next.prev = self.prev

    def append(self, node: _Node) -> None:
        head = self.head
        last = head.prev
        last.next = node
        node.prev = last
        node.next = head
        head.prev = node
        node.bucket = self


class LFUCache(Cache[K, V]):
    """A Least Frequently Used cache: when full, the item with the fewest uses goes first.

    Storing a key counts one use; each read (``cache[key]``, ``get``) or overwrite
    one more. Among items with equally few uses, the least recently used goes
    first. A drop-in for :class:`cachetools.LFUCache`.

    Runtime complexity: O(1) for every read and write, eviction included.

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
        ttl: float | timedelta | None = None,
        timer: Clock = time.monotonic,
        on_evict: EvictionListener | None = None,
        stats: bool = False,
    ) -> None:
        super().__init__(maxsize, getsizeof, ttl=ttl, timer=timer, on_evict=on_evict, stats=stats)
        self._data = {}
        self._root = _Bucket(0)  # sentinel: root.next holds the fewest uses
        self._nodes: dict[K, _Node] = {}

    def _use(self, key: K) -> None:
        """Count one more use of ``key``: move it to the tail of the next bucket up."""
        node = self._nodes[key]
        bucket = node.bucket
        count = bucket.count + 1
        higher = bucket.next
        before = node.prev
        after = node.next
        if higher.count != count:
            if before is after:  # the only key of its bucket: relabel the bucket
                bucket.count = count
                return
            higher = _Bucket(count)
            higher.insert_after(bucket)
        before.next = after
        after.prev = before
        if before is after:  # the bucket is empty now
            bucket.unlink()
        higher.append(node)

    def _policy_added(self, key: K) -> None:
        root = self._root
        ones = root.next
        if ones.count != 1:
            ones = _Bucket(1)
            ones.insert_after(root)
        node = _Node()
        node.key = key
        node.value = self._data[key]
        ones.append(node)
        self._nodes[key] = node

    _policy_read = _use

    def _policy_written(self, key: K) -> None:
        self._nodes[key].value = self._data[key]
        self._use(key)

    def _policy_removed(self, key: K) -> None:
        node = self._nodes.pop(key)
        before = node.prev
        after = node.next
        before.next = after
        after.prev = before
        if before is after:
            node.bucket.unlink()

    def _policy_victim(self) -> K:
        key: K = self._root.next.head.next.key
        return key

    def _policy_cleared(self) -> None:
        self._root = _Bucket(0)
        self._nodes.clear()

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
        return self._nodes[key].bucket.count

    def _buckets(self) -> list[tuple[int, list[K]]]:
        """The buckets from the fewest uses up, each with its keys, least recent first."""
        buckets = []
        bucket = self._root.next
        while bucket is not self._root:
            keys = []
            node = bucket.head.next
            while node is not bucket.head:
                keys.append(node.key)
                node = node.next
            buckets.append((bucket.count, keys))
            bucket = bucket.next
        return buckets

    def _rebuild(self, buckets: list[tuple[int, list[K]]]) -> None:
        self._root = root = _Bucket(0)
        self._nodes = nodes = {}
        for count, keys in buckets:
            bucket = _Bucket(count)
            bucket.insert_after(root.prev)
            for key in keys:
                node = _Node()
                node.key = key
                node.value = self._data[key]
                bucket.append(node)
                nodes[key] = node

    def _copy_policy_from(self, other: Cache[K, V]) -> None:
        assert isinstance(other, LFUCache)
        self._rebuild(other._buckets())

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        del state["_root"], state["_nodes"]
        state["_lfu_buckets"] = self._buckets()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        buckets = state.pop("_lfu_buckets")
        super().__setstate__(state)
        self._rebuild(buckets)

    def _check_policy(self) -> None:
        assert set(self._nodes) == set(self._data)
        seen = 0
        previous = 0
        bucket = self._root.next
        while bucket is not self._root:
            assert bucket.count > previous, "bucket counts must increase along the ring"
            assert bucket.head.next is not bucket.head, "no empty bucket stays in the ring"
            assert bucket.next.prev is bucket
            node = bucket.head.next
            while node is not bucket.head:
                assert node.next.prev is node
                assert node.bucket is bucket
                assert self._nodes[node.key] is node
                assert node.value is self._data[node.key]
                seen += 1
                node = node.next
            previous = bucket.count
            bucket = bucket.next
        assert seen == len(self._data)


class _PlainLFUCache(LFUCache[K, V]):
    """The lean twin of :class:`LFUCache`: no sizes, TTLs, listener or stats to check."""

    _is_plain = True
    _general = LFUCache

    def __getitem__(self, key: K) -> V:
        try:
            node = self._nodes[key]
        except KeyError:
            return self.__missing__(key)
        value: V = node.value
        # LFUCache._use(key), written out: this is the hot path.
        bucket = node.bucket
        count = bucket.count + 1
        higher = bucket.next
        before = node.prev
        after = node.next
        if higher.count != count:
            if before is after:
                bucket.count = count
                return value
            higher = _Bucket(count)
            higher.insert_after(bucket)
        before.next = after
        after.prev = before
        if before is after:
            bucket.unlink()
        head = higher.head
        last = head.prev
        last.next = node
        node.prev = last
        node.next = head
        head.prev = node
        node.bucket = higher
        return value

    def get(self, key: K, default: Any = None) -> Any:
        if key in self._nodes:
            return self[key]
        return default

    def __setitem__(self, key: K, value: V) -> None:
        data = self._data
        if key in data:
            data[key] = value
            self._nodes[key].value = value
            self._use(key)
            return
        nodes = self._nodes
        root = self._root
        if len(data) >= self._maxlen:
            # Evict the first key of the first bucket, and reuse its node.
            lowest = root.next
            node = lowest.head.next
            old_key = node.key
            after = node.next
            lowest.head.next = after
            after.prev = lowest.head
            del data[old_key], nodes[old_key]
            if after is lowest.head:
                if lowest.count == 1:
                    node.key = key
                    node.value = value
                    lowest.append(node)
                    data[key] = value
                    nodes[key] = node
                    return
                lowest.unlink()
        else:
            node = _Node()
        node.key = key
        node.value = value
        ones = root.next
        if ones.count != 1:
            ones = _Bucket(1)
            ones.insert_after(root)
        head = ones.head
        last = head.prev
        last.next = node
        node.prev = last
        node.next = head
        head.prev = node
        node.bucket = ones
        data[key] = value
        nodes[key] = node


LFUCache._lean_variants = {"untimed": _PlainLFUCache}
