"""A lock around any cache, for sharing one between threads."""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from contextlib import AbstractContextManager
from datetime import timedelta
from typing import Any, Generic

from scalekit._validate import type_name
from scalekit.cache._base import Cache, CacheStats, K, V
from scalekit.errors import ArgumentTypeError

__all__ = ["ThreadSafeCache"]


class ThreadSafeCache(MutableMapping[K, V], Generic[K, V]):
    """Wraps a cache so every operation runs under one lock.

    The cache classes are not locked themselves (a lock would slow every
    single-threaded user down, as in cachetools). Wrap a cache that threads share::

        cache = ThreadSafeCache(LRUCache(maxsize=10_000))

    ``lock`` defaults to a :class:`threading.RLock`; pass your own to share it.
    Iteration walks a snapshot of the keys, taken under the lock. For
    read-modify-write sequences, hold ``cache.lock`` yourself.

    Copies (``copy.copy``, ``copy.deepcopy``, pickling) copy the wrapped cache;
    a copy gets a lock of its own, unless ``lock`` was given (a copy shares it;
    pickling then needs a picklable lock).

    Runtime complexity: that of the wrapped operation, plus one lock acquisition.

    Raises:
        ArgumentTypeError: ``cache`` is not a mutable mapping or ``lock`` is not a
            context manager.
    """

    def __init__(self, cache: Cache[K, V], lock: AbstractContextManager[Any] | None = None) -> None:
        if not isinstance(cache, MutableMapping):
            raise ArgumentTypeError(f"cache must be a cache, got {type_name(cache)}")
        if lock is not None and not (hasattr(lock, "__enter__") and hasattr(lock, "__exit__")):
            raise ArgumentTypeError(
                f"lock must be a context manager (a lock), got {type_name(lock)}"
            )
        self.cache = cache
        self._given_lock = lock
        self.lock: AbstractContextManager[Any] = lock if lock is not None else threading.RLock()

    def __copy__(self) -> ThreadSafeCache[K, V]:
        with self.lock:
            return ThreadSafeCache(copy.copy(self.cache), self._given_lock)

    def copy(self) -> ThreadSafeCache[K, V]:
        """A copy wrapping a shallow copy of the cache, taken under the lock."""
        return self.__copy__()

    def __getstate__(self) -> dict[str, Any]:
        with self.lock:
            return {"cache": self.cache, "lock": self._given_lock}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.cache = state["cache"]
        self._given_lock = state["lock"]
        self.lock = self._given_lock if self._given_lock is not None else threading.RLock()

    @property
    def ttl(self) -> float | None:
        """The wrapped cache's ``ttl``."""
        return self.cache.ttl

    @property
    def timer(self) -> Any:
        """The wrapped cache's ``timer``."""
        return self.cache.timer

    def getsizeof(self, value: V) -> float:
        """The wrapped cache's ``getsizeof(value)``."""
        return self.cache.getsizeof(value)

    def __getitem__(self, key: K) -> V:
        with self.lock:
            return self.cache[key]

    def __setitem__(self, key: K, value: V) -> None:
        with self.lock:
            self.cache[key] = value

    def __delitem__(self, key: K) -> None:
        with self.lock:
            del self.cache[key]

    def __contains__(self, key: object) -> bool:
        with self.lock:
            return key in self.cache

    def __len__(self) -> int:
        with self.lock:
            return len(self.cache)

    def __iter__(self) -> Iterator[K]:
        with self.lock:
            return iter(list(self.cache))

    def __repr__(self) -> str:
        with self.lock:
            return f"ThreadSafeCache({self.cache!r})"

    def get(self, key: K, default: Any = None) -> Any:
        """``cache.get(key, default)`` under the lock."""
        with self.lock:
            return self.cache.get(key, default)

    def peek(self, key: K, default: Any = None) -> Any:
        """``cache.peek(key, default)`` under the lock."""
        with self.lock:
            return self.cache.peek(key, default)

    def set(self, key: K, value: V, *, ttl: float | timedelta | None = None) -> None:
        """``cache.set(key, value, ttl=ttl)`` under the lock."""
        with self.lock:
            self.cache.set(key, value, ttl=ttl)

    def get_many(self, keys: Iterable[K]) -> dict[K, V]:
        """``cache.get_many(keys)`` under the lock, as one atomic step."""
        with self.lock:
            return self.cache.get_many(keys)

    def set_many(self, items: Mapping[K, V], *, ttl: float | timedelta | None = None) -> None:
        """``cache.set_many(items, ttl=ttl)`` under the lock, as one atomic step."""
        with self.lock:
            self.cache.set_many(items, ttl=ttl)

    def delete(self, key: K) -> bool:
        """``cache.delete(key)`` under the lock."""
        with self.lock:
            return self.cache.delete(key)

    def pop(self, key: K, *default: Any) -> Any:
        """``cache.pop(key[, default])`` under the lock."""
        with self.lock:
            return self.cache.pop(key, *default)

    def popitem(self) -> tuple[K, V]:
        """``cache.popitem()`` under the lock."""
        with self.lock:
            return self.cache.popitem()

    def setdefault(self, key: K, default: V = None) -> V:  # type: ignore[assignment]
        """``cache.setdefault(key, default)`` under the lock."""
        with self.lock:
            return self.cache.setdefault(key, default)

    def clear(self) -> None:
        """``cache.clear()`` under the lock."""
        with self.lock:
            self.cache.clear()

    def items(self) -> Any:
        """A snapshot list of the live ``(key, value)`` pairs, taken under the lock."""
        with self.lock:
            return list(self.cache.items())

    def values(self) -> Any:
        """A snapshot list of the live values, taken under the lock."""
        with self.lock:
            return list(self.cache.values())

    def keys(self) -> Any:
        """A snapshot list of the live keys, taken under the lock."""
        with self.lock:
            return list(self.cache)

    def add(self, key: K, value: V, *, ttl: float | timedelta | None = None) -> bool:
        """``cache.add(key, value, ttl=ttl)`` under the lock: set only if absent."""
        with self.lock:
            return self.cache.add(key, value, ttl=ttl)

    def ttl_of(self, key: K) -> float | None:
        """``cache.ttl_of(key)`` under the lock."""
        with self.lock:
            return self.cache.ttl_of(key)

    def expire(self, time: float | None = None) -> list[tuple[K, V]]:
        """``cache.expire(time)`` under the lock."""
        with self.lock:
            return self.cache.expire(time)

    def stats(self) -> CacheStats:
        """``cache.stats()`` under the lock."""
        with self.lock:
            return self.cache.stats()

    def reset_stats(self) -> None:
        """``cache.reset_stats()`` under the lock."""
        with self.lock:
            self.cache.reset_stats()

    @property
    def maxsize(self) -> float:
        """The wrapped cache's ``maxsize``."""
        return self.cache.maxsize

    @property
    def currsize(self) -> float:
        """The wrapped cache's ``currsize``, read under the lock."""
        with self.lock:
            return self.cache.currsize

    def _check(self) -> None:
        """Assert the wrapped cache's invariants, under the lock."""
        with self.lock:
            self.cache._check()
