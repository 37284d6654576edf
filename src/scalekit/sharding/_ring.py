"""The classic consistent-hash ring, with virtual nodes and weights."""

from __future__ import annotations

import itertools
from bisect import bisect_left
from collections.abc import Hashable, Iterable, Mapping
from typing import Any, NamedTuple, TypeVar

import mmh3

from scalekit._validate import check_callable, check_count, check_weight
from scalekit.errors import ConfigurationError
from scalekit.hashing import DEFAULT_SEED, murmur3_32
from scalekit.protocols import HashFunction
from scalekit.sharding._base import Key, ShardingScheme, key_bytes
from scalekit.sharding._plan import Move

__all__ = ["DEFAULT_VNODES", "HashRing"]

N = TypeVar("N", bound=Hashable)

DEFAULT_VNODES = 1024
"""Points per unit of weight; measured to keep max/mean load under 1.10 at 10 nodes
and each node's share of the ring under 1.15 x the mean at 100 (docs/performance.md)."""

MAX_POINTS = 1 << 20
"""The most points one node may have (``vnodes`` times its weight over the unit): a
million points take about a second to place, and balance no better than 10,000."""

_mmh3_32 = mmh3.hash


class _Ring(NamedTuple):
    points: list[int]  # sorted hash points
    owners: list[Any]  # owners[i] owns the arc (points[i-1], points[i]]
    lookup: list[Any]  # [table or None, shift]: built on the first lookup (_bucket_table)
    weights: dict[Any, float]  # the nodes and weights this ring was built from
    contested: frozenset[int]  # points that two nodes hash to (the lower name holds them)


class HashRing(ShardingScheme[N, _Ring]):
    """A consistent-hash ring: each node owns the arcs that end at its points.

    A key belongs to the first point at or after its hash, wrapping around.
    Each node gets ``vnodes * weight / weight_unit`` points. ``weight_unit``
    defaults to the first weight the ring sees, so weights are relative and 10
    nodes of weight 1,000 cost as much as 10 of weight 1; pass it explicitly when
    rings built by different processes, in different orders, must agree. A node's
    points depend only on its own name and weight, so adding or removing a node
    moves keys only to or from it.

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
        weight_unit: float | None = None,
    ) -> None:
        vnodes = check_count(vnodes, "vnodes", minimum=1, maximum=MAX_POINTS)
        check_callable(hash, "hash", allow_none=True)
        unit = None if weight_unit is None else check_weight(weight_unit, "weight_unit")
        self._vnodes = vnodes
        # The default places points and keys with 32-bit MurmurHash3, one C call
        # (as ketama does, on a 2**32 circle); a custom hash gives 64-bit positions.
        # Either way it is given bytes: every key and node name is encoded first
        # (scalekit.hashing.key_bytes), so no str reaches a C hash.
        self._hash: HashFunction = murmur3_32 if hash is None else hash
        self._space = 1 << 32 if hash is None else 1 << 64
        self._default_hash = hash is None
        self._unit: float | None = unit
        self._points_of: dict[tuple[str, int], list[int]] = {}
        super().__init__(nodes)

    def _settings(self) -> dict[str, Any]:
        if not self._default_hash:
            raise ConfigurationError("a ring with a custom hash cannot be written out")
        return {"vnodes": self._vnodes, "weight_unit": self._unit}

    @property
    def weight_unit(self) -> float | None:
        """The weight that gets ``vnodes`` points (``None`` until the first node)."""
        return self._unit

    @property
    def vnodes(self) -> int:
        """Points per unit of weight."""
        return self._vnodes

    def points_of(self, node: N) -> int:
        """How many points ``node`` has on the ring."""
        return self._point_count(self.weight_of(node))

    def _point_count(self, weight: float) -> int:
        unit = weight if self._unit is None else self._unit
        count = max(1, round(self._vnodes * weight / unit))
        if count > MAX_POINTS:
            raise ConfigurationError(
                f"weight {weight!r} gives a node {count} points at vnodes={self._vnodes} and "
                f"weight_unit={unit!r}; at most {MAX_POINTS} (raise weight_unit)"
            )
        self._unit = unit
        return count

    def _node_points(self, node: N, weight: float) -> list[int]:
        count = self._point_count(weight)
        name = str(node)
        cached = self._points_of.get((name, count))
        if cached is None:
            prefix = key_bytes(name) + b"#"  # a lone surrogate in a name is its own bytes
            hash_function = self._hash
            cached = [hash_function(b"%s%d" % (prefix, i)) for i in range(count)]
            self._points_of[(name, count)] = cached
        return cached

    def _build(self, weights: dict[N, float]) -> _Ring:
        """The ring of ``weights``: from the current ring when only whole nodes were
        added or removed (the common case, O(P) in C), else from scratch."""
        current: _Ring | None = getattr(self, "_state", None)
        holders: dict[int, Any]
        contested: set[int]
        if current is not None and self._incremental(current, weights):
            holders = dict(zip(current.points, current.owners, strict=True))
            contested = set(current.contested)
            for node in current.weights.keys() - weights.keys():
                for point in self._node_points(node, current.weights[node]):
                    if holders.get(point) == node:
                        del holders[point]
            adding = {node: weights[node] for node in weights.keys() - current.weights.keys()}
        else:
            holders, contested, adding = {}, set(), dict(weights)
        for node, weight in adding.items():
            name = str(node)
            for point in self._node_points(node, weight):
                # Two nodes on one point: the lower name wins, so order does not matter.
                holder = holders.get(point)
                if holder is not None:
                    contested.add(point)
                if holder is None or name < str(holder):
                    holders[point] = node
        points = sorted(holders)  # two sorted runs when incremental: linear in timsort
        owners = [holders[point] for point in points]
        return _Ring(points, owners, [None, 0], dict(weights), frozenset(contested))

    def _incremental(self, current: _Ring, weights: dict[N, float]) -> bool:
        """Whether ``weights`` only adds or removes whole nodes, none on a contested point."""
        kept = current.weights.keys() & weights.keys()
        if any(current.weights[node] != weights[node] for node in kept):
            return False
        if not current.contested:
            return True
        for node in current.weights.keys() - weights.keys():
            if not current.contested.isdisjoint(self._node_points(node, current.weights[node])):
                return False  # a removed point may uncover another node's point
        return True

    def _owner(self, state: _Ring, key: bytes) -> N:
        points = state.points
        index = bisect_left(points, self._hash(key))
        owner: N = state.owners[index if index < len(points) else 0]
        return owner

    def node_for(self, key: Key) -> N:
        """The node whose point comes first at or after the hash of ``key``.

        ``key`` is a ``str``, ``bytes`` or ``int``, hashed as its bytes
        (:func:`scalekit.hashing.key_bytes`): ``node_for(42) == node_for("42")``.

        Runtime complexity: O(1) expected (a bucket table answers most keys at
        once; the rest take a binary search, O(log P)).
        """
        points, owners, lookup, _, _ = self._state  # one read: add() publishes a new one
        if not points:
            return super().node_for(key)  # raises NoNodeAvailable
        # No str that may hold a lone surrogate reaches mmh3 (it crashes the
        # interpreter on one): an ASCII str cannot, and mmh3 hashes it as its bytes
        # without a copy (isascii() is O(1)); any other key is encoded first, str
        # as UTF-8 with surrogatepass (plain UTF-8 for valid text: Redis and ketama
        # agree), int as its digits. Measured: 1 ns over the unchecked call for an
        # ASCII key, where encoding every str cost 100 ns (docs/sharding.md).
        if type(key) is str and key.isascii() and self._default_hash:
            position = _mmh3_32(key, DEFAULT_SEED, False)
        else:
            # key_bytes(key), inlined on purpose in every node_for: a shared helper's call
            # adds 25-35 ns a lookup (timeit of the step: 115 ns inline, 137-152 ns via a helper).
            if type(key) is str:
                try:
                    data = key.encode()  # the fast path: no arguments to parse
                except UnicodeEncodeError:  # a lone surrogate: its surrogatepass bytes
                    data = key.encode("utf-8", "surrogatepass")
            elif type(key) is bytes:
                data = key
            else:
                data = key_bytes(key)  # int as its digits; ArgumentTypeError for the rest
            position = (
                _mmh3_32(data, DEFAULT_SEED, False) if self._default_hash else self._hash(data)
            )
        table, shift = lookup
        if table is None:
            table, shift = lookup[:] = _bucket_table(points, owners, self._space)
        owner: N = table[position >> shift]
        if owner is _SPLIT:
            index = bisect_left(points, position)
            owner = owners[index if index < len(points) else 0]
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

    def _check(self) -> None:
        """Assert the invariants: sorted distinct points, each held by a node that
        has it (a shared point by the lower name), every node's points on the
        ring, a bucket table that agrees with the binary search, and a ring a
        fresh build agrees with.

        Runtime complexity: O(P log P).
        """
        super()._check()
        state = self._state
        points, owners = state.points, state.owners
        assert state.weights == self._weights
        assert len(points) == len(owners)
        assert bool(points) == bool(self._weights)
        assert all(a < b for a, b in itertools.pairwise(points))
        assert all(0 <= point < self._space for point in points[:1] + points[-1:])
        holder = dict(zip(points, owners, strict=True))
        claimed: dict[int, list[Any]] = {}
        for node, weight in self._weights.items():
            for point in self._node_points(node, weight):
                claimed.setdefault(point, []).append(node)
        assert set(claimed) == set(holder)
        for point, nodes in claimed.items():
            assert holder[point] == min(nodes, key=str)
            assert (len(nodes) > 1) <= (point in state.contested)
        fresh = self._fresh_state()
        assert (fresh.points, fresh.owners) == (points, owners)
        table, shift = state.lookup
        if table is not None:
            for bucket in range(0, len(table), max(1, len(table) // 1024)):
                if table[bucket] is not _SPLIT:
                    start = bucket << shift
                    index = bisect_left(points, start)
                    assert table[bucket] == owners[index if index < len(points) else 0]

    @property
    def space(self) -> int:
        """The size of the circle: 2**32 with the default hash, 2**64 with a custom one."""
        return self._space

    def hash_of(self, key: Key) -> int:
        """The position of ``key`` on the ring (what the ranges of a plan refer to)."""
        return self._hash(key_bytes(key))

    def _moves(self, old: _Ring, new: _Ring) -> list[Move[N]]:
        """The arcs whose owner differs, merged into ranges per (source, target).

        Only an arc that ends at a point of one ring but not the other, or at a
        point whose holder changed, can change owner: O(D log P) for D such points.
        """
        if not old.points or not new.points:
            return []
        ends: set[int] = set()
        for node in old.weights.keys() | new.weights.keys():
            before, after = old.weights.get(node), new.weights.get(node)
            if before != after:  # only the points of changed nodes can change hands
                for weight in (before, after):
                    if weight is not None:
                        ends.update(self._node_points(node, weight))
        return arc_moves(old.points, old.owners, new.points, new.owners, ends, self._space)

    def _shares(self, state: _Ring) -> dict[N, float]:
        shares: dict[N, float] = {}
        points, owners = state.points, state.owners
        for index, point in enumerate(points):
            length = _arc_length(points[index - 1], point, self._space)
            shares[owners[index]] = shares.get(owners[index], 0.0) + length / self._space
        return shares


_SPLIT: Any = object()  # a bucket that holds a point: its keys need the binary search


def _bucket_table(points: list[int], owners: list[Any], space: int) -> tuple[list[Any], int]:
    """Split the circle into 2**k equal buckets (about 8 per point); for each bucket
    with no point inside, the one owner of all its keys, else ``_SPLIT``.

    Built with one slice assignment per point: O(P + buckets).
    """
    bits = max(10, min(20, (8 * len(points)).bit_length()))
    size = 1 << bits
    shift = space.bit_length() - 1 - bits
    table: list[Any] = [_SPLIT] * size
    previous = -1  # the last bucket that holds a point
    for index, point in enumerate(points):
        bucket = point >> shift
        if bucket > previous + 1:
            table[previous + 1 : bucket] = [owners[index]] * (bucket - previous - 1)
        previous = bucket
    if previous + 1 < size:
        table[previous + 1 :] = [owners[0]] * (size - previous - 1)  # wraps to the first
    return table, shift


def arc_moves(
    old_points: list[int],
    old_owners: list[Any],
    new_points: list[int],
    new_owners: list[Any],
    ends: Iterable[int],
    space: int,
) -> list[Move[Any]]:
    """The moves between two rings on a circle of ``space``, merged into ranges per
    (source, target), looking only at the arcs that end at ``ends``.

    ``ends`` must hold every point where the rings differ (a point of one ring but
    not the other, or held by another node); elsewhere both rings agree. Each such
    arc starts at the nearest point of either ring before it, and its owner in
    each ring is that of the first point at or after its end. O(D log P).
    """
    flows: dict[tuple[Any, Any], list[tuple[int, int]]] = {}
    for end in sorted(ends):
        old_index = bisect_left(old_points, end)
        new_index = bisect_left(new_points, end)
        before = old_owners[old_index % len(old_points)]
        after = new_owners[new_index % len(new_points)]
        if before == after:
            continue
        start = min(  # index -1 wraps to the last point
            old_points[old_index - 1],
            new_points[new_index - 1],
            key=lambda point: (end - point) % space or space,
        )
        ranges = flows.setdefault((before, after), [])
        if ranges and ranges[-1][1] == start:
            ranges[-1] = (ranges[-1][0], end)  # extend the previous range
        else:
            ranges.append((start, end))
    return [
        Move(
            source, target, sum(_arc_length(s, e, space) for s, e in ranges) / space, tuple(ranges)
        )
        for (source, target), ranges in flows.items()
    ]


def _arc_length(start: int, end: int, space: int) -> int:
    """The length of the arc ``(start, end]``; equal ends mean the whole circle."""
    return (end - start) % space or space
