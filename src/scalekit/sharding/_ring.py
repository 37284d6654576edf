"""The classic consistent-hash ring, with virtual nodes and weights."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Hashable, Iterable, Mapping
from typing import Any, NamedTuple, TypeVar

from scalekit.errors import ConfigurationError
from scalekit.hashing import murmur3_64
from scalekit.protocols import HashFunction
from scalekit.sharding._base import Key, ShardingScheme, check_key, key_bytes
from scalekit.sharding._plan import Move

__all__ = ["DEFAULT_VNODES", "HashRing"]

N = TypeVar("N", bound=Hashable)

DEFAULT_VNODES = 512
"""Points per unit of weight; measured to keep max/mean load under 1.10 at 10 nodes
and each node's share of the ring under 1.15 x the mean at 100 (docs/performance.md)."""

_SPACE = 1 << 64


class _Ring(NamedTuple):
    points: list[int]  # sorted hash points
    owners: list[Any]  # owners[i] owns the arc (points[i-1], points[i]]


class HashRing(ShardingScheme[N, _Ring]):
    """A consistent-hash ring: each node owns the arcs that end at its points.

    A key belongs to the first point at or after its hash, wrapping around.
    Each node gets ``vnodes * weight / unit`` points, where ``unit`` is the first
    weight the ring saw (so weights are relative, and 10 nodes of weight 1,000
    cost as much as 10 of weight 1). A node's points depend only on its own name
    and weight, so adding or removing a node moves keys only to or from it.

    Runtime complexity: ``node_for`` O(log P) for P points; ``add``/``remove``
    O(P log P) (the lookup arrays are rebuilt and published at once).

    >>> ring = HashRing(["cache-a", "cache-b", "cache-c"])
    >>> ring.node_for("user:42") in ring.nodes
    True
    >>> plan = ring.plan_add("cache-d")
    >>> plan.targets
    frozenset({'cache-d'})
    """

    def __init__(
        self,
        nodes: Iterable[N] | Mapping[N, float] = (),
        *,
        vnodes: int = DEFAULT_VNODES,
        hash: HashFunction | None = None,
    ) -> None:
        if isinstance(vnodes, bool) or not isinstance(vnodes, int) or vnodes < 1:
            raise ConfigurationError(f"vnodes must be a positive int, got {vnodes!r}")
        self._vnodes = vnodes
        self._hash: HashFunction = murmur3_64 if hash is None else hash
        self._unit: float | None = None
        self._points_of: dict[tuple[str, int], list[int]] = {}
        super().__init__(nodes)

    @property
    def vnodes(self) -> int:
        """Points per unit of weight."""
        return self._vnodes

    def points_of(self, node: N) -> int:
        """How many points ``node`` has on the ring."""
        return self._point_count(self.weight_of(node))

    def _point_count(self, weight: float) -> int:
        if self._unit is None:
            self._unit = weight
        return max(1, round(self._vnodes * weight / self._unit))

    def _node_points(self, node: N, weight: float) -> list[int]:
        count = self._point_count(weight)
        name = str(node)
        cached = self._points_of.get((name, count))
        if cached is None:
            hash_function = self._hash
            cached = [hash_function(f"{name}#{i}") for i in range(count)]
            self._points_of[(name, count)] = cached
        return cached

    def _build(self, weights: dict[N, float]) -> _Ring:
        holders: dict[int, Any] = {}
        for node, weight in weights.items():
            name = str(node)
            for point in self._node_points(node, weight):
                # Two nodes on one point: the lower name wins, so order does not matter.
                holder = holders.get(point)
                if holder is None or name < str(holder):
                    holders[point] = node
        points = sorted(holders)
        return _Ring(points, [holders[point] for point in points])

    def _owner(self, state: _Ring, key: bytes) -> N:
        points = state.points
        index = bisect_left(points, self._hash(key))
        owner: N = state.owners[index if index < len(points) else 0]
        return owner

    def node_for(self, key: Key) -> N:
        """The node whose point comes first at or after the hash of ``key``.

        Runtime complexity: O(log P).
        """
        state = self._state  # one read: a concurrent add() publishes a new state
        points = state.points
        if not points:
            return super().node_for(key)  # raises NoNodeAvailable
        check_key(key)
        index = bisect_left(points, self._hash(key))
        owner: N = state.owners[index if index < len(points) else 0]
        return owner

    def _owners(self, state: _Ring, key: bytes, n: int) -> list[N]:
        points, owners = state.points, state.owners
        start = bisect_left(points, self._hash(key))
        found: list[N] = []
        for step in range(len(points)):
            node = owners[(start + step) % len(points)]
            if node not in found:
                found.append(node)
                if len(found) == n:
                    break
        return found

    def hash_of(self, key: Key) -> int:
        """The position of ``key`` on the ring (what the ranges of a plan refer to)."""
        return self._hash(key_bytes(key))

    def _moves(self, old: _Ring, new: _Ring) -> list[Move[N]]:
        """The arcs whose owner differs, merged into ranges per (source, target).

        Only an arc that ends at a point of one ring but not the other, or at a
        point whose holder changed, can change owner: O(D log P) for D such points.
        """
        old_holder = dict(zip(old.points, old.owners, strict=True))
        new_holder = dict(zip(new.points, new.owners, strict=True))
        ends = {p for p in old_holder if new_holder.get(p, _NONE) != old_holder[p]}
        ends.update(p for p in new_holder if p not in old_holder)
        if not old.points or not new.points:
            return []
        flows: dict[tuple[Any, Any], list[tuple[int, int]]] = {}
        for end in sorted(ends):
            start = max(_before(old.points, end), _before(new.points, end), key=_distance_to(end))
            before = old.owners[bisect_left(old.points, end) % len(old.points)]
            after = new.owners[bisect_left(new.points, end) % len(new.points)]
            if before == after:
                continue
            ranges = flows.setdefault((before, after), [])
            if ranges and ranges[-1][1] == start:
                ranges[-1] = (ranges[-1][0], end)  # extend the previous range
            else:
                ranges.append((start, end))
        return [
            Move(source, target, sum(_arc_length(s, e) for s, e in ranges) / _SPACE, tuple(ranges))
            for (source, target), ranges in flows.items()
        ]

    def _shares(self, state: _Ring) -> dict[N, float]:
        shares: dict[N, float] = {}
        points, owners = state.points, state.owners
        for index, point in enumerate(points):
            length = _arc_length(points[index - 1], point)
            shares[owners[index]] = shares.get(owners[index], 0.0) + length / _SPACE
        return shares


_NONE: Any = object()


def _before(points: list[int], end: int) -> int:
    """The point of ``points`` just before ``end`` on the circle."""
    return points[bisect_left(points, end) - 1]


def _distance_to(end: int) -> Any:
    """Sort key: how far a point lies before ``end``, going backwards (0 is ``end``)."""
    return lambda point: -((end - point) % _SPACE or _SPACE)


def _arc_length(start: int, end: int) -> int:
    """The length of the arc ``(start, end]``; equal ends mean the whole circle."""
    return (end - start) % _SPACE or _SPACE
