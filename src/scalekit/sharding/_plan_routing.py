"""Routing async reads and writes by a reshard plan while its keys move.

The rules of :class:`~scalekit.sharding.Migration`, for
:class:`~scalekit.protocols.AsyncStore` shards: a read of a moving key tries its
source, then its target (a mover deletes the source only after the target has
the key, and a write lands at the target before it deletes the source); a write
goes to the target, then removes any copy at the source; a delete removes both.
The keys themselves are moved by a sync :class:`~scalekit.sharding.Migration`
(or :meth:`ShardedStore.reshard <scalekit.sharding.ShardedStore.reshard>`) in any
process; an async app server only routes by the same plan meanwhile.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from typing import Any, Generic, TypeVar

from scalekit.sharding._plan import ReshardPlan

__all__ = ["AsyncPlanRoute"]

N = TypeVar("N", bound=Hashable)
_MISSING: Any = object()


class AsyncPlanRoute(Generic[N]):
    """Async reads and writes routed by ``plan`` over ``stores`` (node -> AsyncStore).

    Runtime complexity: two sharder lookups a key, and one store call (two for a
    moving key that is not at its source yet, or for a write of a moving key).
    """

    def __init__(self, plan: ReshardPlan[N], stores: Mapping[N, Any]) -> None:
        self.plan = plan
        self._stores = stores

    def _route(self, key: str) -> tuple[N, N | None]:
        """``(where it is written, where an older copy may be)``."""
        move = self.plan.move_for(key)
        if move is None:
            return self.plan.after.node_for(key), None
        return move[1], move[0]

    async def get(self, key: str, default: Any) -> Any:
        target, source = self._route(key)
        if source is not None:
            value = await self._stores[source].get(key, _MISSING)
            if value is not _MISSING:
                return value
        return await self._stores[target].get(key, default)

    async def ttl_of(self, key: str) -> float | None:
        target, source = self._route(key)
        if source is not None:
            try:
                left: float | None = await self._stores[source].ttl_of(key)
            except KeyError:
                pass
            else:
                return left
        return await self._stores[target].ttl_of(key)  # type: ignore[no-any-return]

    async def set(self, key: str, value: Any, kwargs: dict[str, Any]) -> None:
        target, source = self._route(key)
        await self._stores[target].set(key, value, **kwargs)
        if source is not None:
            await self._stores[source].delete(key)

    async def add(self, key: str, value: Any, kwargs: dict[str, Any]) -> bool:
        """Absent at the source too, then added at the target."""
        target, source = self._route(key)
        if source is not None and await self._stores[source].get(key, _MISSING) is not _MISSING:
            return False
        return bool(await self._stores[target].add(key, value, **kwargs))

    async def delete(self, key: str) -> bool:
        target, source = self._route(key)
        present = False
        for node in (source, target):
            if node is not None and await self._stores[node].delete(key):
                present = True
        return present

    async def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        found = {}
        for key in keys:
            value = await self.get(key, _MISSING)
            if value is not _MISSING:
                found[key] = value
        return found

    async def set_many(self, items: Mapping[str, Any], kwargs: dict[str, Any]) -> None:
        for key, value in items.items():
            await self.set(key, value, kwargs)
