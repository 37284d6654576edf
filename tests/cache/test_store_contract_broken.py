"""Plausible broken stores each fail :func:`scalekit.testing.check_store`."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

import pytest

from scalekit.cache import LRUCache
from scalekit.errors import ArgumentTypeError
from scalekit.testing import check_async_store, check_store


class JsonStore(LRUCache[Any, Any]):
    """An in-memory store that refuses what is not JSON, as the remote ones do."""

    def __init__(self) -> None:
        super().__init__(10_000)

    @staticmethod
    def _json(value: Any) -> None:
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ArgumentTypeError(f"not JSON: {exc}") from None
        if isinstance(value, bytes):
            raise ArgumentTypeError("not JSON: bytes")

    def set(self, key: Any, value: Any, *, ttl: Any = None) -> None:
        self._json(value)
        super().set(key, value, ttl=ttl)

    def add(self, key: Any, value: Any, *, ttl: Any = None) -> bool:
        self._json(value)
        return super().add(key, value, ttl=ttl)

    def set_many(self, items: Mapping[Any, Any], *, ttl: Any = None) -> None:
        if isinstance(items, Mapping):
            for value in items.values():
                self._json(value)
        super().set_many(items, ttl=ttl)


class AddOverwrites(JsonStore):
    def add(self, key: Any, value: Any, *, ttl: Any = None) -> bool:
        self.set(key, value, ttl=ttl)
        return True


class TtlInMilliseconds(JsonStore):
    def ttl_of(self, key: Any) -> float | None:
        left = super().ttl_of(key)
        return None if left is None else left * 1000


class MissingAsNone(JsonStore):
    def get_many(self, keys: Iterable[Any]) -> dict[Any, Any]:
        if isinstance(keys, (str, bytes)) or not isinstance(keys, Iterable):
            return super().get_many(keys)
        keys = list(keys)
        found = super().get_many(keys)
        return {key: found.get(key) for key in keys}


class PartialSetMany(JsonStore):
    def set_many(self, items: Mapping[Any, Any], *, ttl: Any = None) -> None:
        if not isinstance(items, Mapping):
            super().set_many(items, ttl=ttl)
            return
        for key, value in items.items():  # one by one: the batch is not all or nothing
            self.set(key, value, ttl=ttl)


class OverwriteKeepsDeadline(JsonStore):
    """``set`` without ``ttl`` over a key with one keeps the old deadline."""

    def set(self, key: Any, value: Any, *, ttl: Any = None) -> None:
        if ttl is None and key in self:
            left = self.ttl_of(key)
            ttl = math.inf if left is None else left
        super().set(key, value, ttl=None if ttl == math.inf else ttl)


class SetManyKeepsDeadline(JsonStore):
    """``set_many`` without ``ttl`` keeps the deadlines of the keys it overwrites."""

    def set_many(self, items: Mapping[Any, Any], *, ttl: Any = None) -> None:
        if ttl is None and isinstance(items, Mapping):
            for value in items.values():
                self._json(value)
            for key, value in items.items():
                left = self.ttl_of(key) if key in self else None
                super().set(key, value, ttl=left)
            return
        super().set_many(items, ttl=ttl)


BROKEN = [
    (AddOverwrites, "add_only_if_absent"),
    (TtlInMilliseconds, "ttls"),
    (MissingAsNone, "items_expire|many_at_once"),
    (PartialSetMany, "bad_values_store_nothing"),
    (OverwriteKeepsDeadline, "overwrites_reset_the_ttl"),
    (SetManyKeepsDeadline, "overwrites_reset_the_ttl"),
]


def test_a_json_store_keeps_the_contract() -> None:
    check_store(JsonStore)


@pytest.mark.parametrize(("kind", "check"), BROKEN, ids=[kind.__name__ for kind, _ in BROKEN])
def test_a_broken_store_fails_the_contract(kind: type[JsonStore], check: str) -> None:
    with pytest.raises(AssertionError, match=check):
        check_store(kind)


class Async:
    """An async face of a sync store."""

    def __init__(self, store: Any) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._store, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            return method(*args, **kwargs)

        return call


@pytest.mark.parametrize(("kind", "check"), BROKEN, ids=[kind.__name__ for kind, _ in BROKEN])
def test_a_broken_async_store_fails_the_contract(kind: type[JsonStore], check: str) -> None:
    with pytest.raises(AssertionError, match=check):
        asyncio.run(check_async_store(lambda: Async(kind())))
