"""A small :class:`~scalekit.protocols.Store` over Redis, for the cross-process
migration test: ``add`` is ``SET NX``, ``ttl_of`` is ``PTTL``, values are JSON."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import redis


class RedisStore:
    """The keys of one node, under ``prefix:`` in one Redis database.

    ``delay`` seconds are slept after each read: it widens the window between a
    mover's read and its copy, where a lost update would happen.
    """

    def __init__(self, url: str, prefix: str, *, delay: float = 0.0) -> None:
        self.client = redis.Redis.from_url(url)
        self.prefix = prefix
        self.delay = delay

    def _k(self, key: str) -> str:
        return f"{self.prefix}:{key}"

    def get(self, key: str, default: Any = None, /) -> Any:
        raw = self.client.get(self._k(key))
        if self.delay:
            time.sleep(self.delay)
        return default if raw is None else json.loads(raw)

    def set(self, key: str, value: Any, /, *, ttl: float | None = None) -> None:
        px = None if ttl is None or ttl == math.inf else max(1, int(ttl * 1000))
        self.client.set(self._k(key), json.dumps(value), px=px)

    def add(self, key: str, value: Any, /, *, ttl: float | None = None) -> bool:
        px = None if ttl is None or ttl == math.inf else max(1, int(ttl * 1000))
        return bool(self.client.set(self._k(key), json.dumps(value), px=px, nx=True))

    def ttl_of(self, key: str, /) -> float | None:
        left = self.client.pttl(self._k(key))
        if left == -2:
            raise KeyError(key)
        return None if left == -1 else left / 1000

    def delete(self, key: str, /) -> bool:
        return bool(self.client.delete(self._k(key)))

    def get_many(self, keys: Iterable[str], /) -> dict[str, Any]:
        return {k: v for k in keys if (v := self.get(k, self)) is not self}

    def set_many(self, items: Mapping[str, Any], /, *, ttl: float | None = None) -> None:
        for key, value in items.items():
            self.set(key, value, ttl=ttl)

    def __iter__(self) -> Iterator[str]:
        start = len(self.prefix) + 1
        for raw in self.client.scan_iter(match=f"{self.prefix}:*", count=1000):
            yield raw.decode()[start:]
