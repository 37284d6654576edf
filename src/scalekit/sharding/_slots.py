"""Slot maps: a fixed space of slots, each owned by one node, as in Redis Cluster.

Keys map to slots by a hash that never changes; nodes own slots. A change of
nodes reassigns as few slots as possible, so the assignment depends on history:
two slot maps with the same nodes may own different slots (as two Redis
Clusters do), and the table itself is the state that is published, planned,
copied and pickled.
"""

from __future__ import annotations

import binascii
import itertools
import math
import struct
from bisect import bisect_right
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping
from fractions import Fraction
from typing import Any, NamedTuple, TypeVar

from scalekit._validate import check_callable, check_count, check_node
from scalekit.errors import ArgumentTypeError, ConfigurationError, UnknownNode
from scalekit.hashing import murmur3_64
from scalekit.protocols import HashFunction
from scalekit.sharding._base import Key, ShardingScheme, key_bytes
from scalekit.sharding._plan import Move

__all__ = [
    "REDIS_CLUSTER_SLOTS",
    "SlotMap",
    "crc16_xmodem",
    "redis_cli_split",
    "redis_key_slot",
]

N = TypeVar("N", bound=Hashable)

REDIS_CLUSTER_SLOTS = 16384
"""The slot count of Redis Cluster (``CLUSTER KEYSLOT`` answers 0..16383)."""

MAX_SLOTS = 1 << 24
"""The most slots a map may have: its table is rebuilt in O(slots) on every change."""


def _crc16_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021 if crc & 0x8000 else crc << 1) & 0xFFFF
        table.append(crc)
    return tuple(table)


_CRC16_TABLE = _crc16_table()


def crc16_xmodem(data: bytes) -> int:
    """CRC16-XMODEM (polynomial 0x1021, initial value 0, no reflection), by table.

    The CRC Redis Cluster hashes keys with. :func:`redis_key_slot` computes the
    same CRC with :func:`binascii.crc_hqx`, the C implementation in the standard
    library, which is about 20 times faster; this one is its readable reference.

    Runtime complexity: O(len(data)).

    >>> hex(crc16_xmodem(b"123456789"))  # the check value of CRC-16/XMODEM
    '0x31c3'
    """
    crc = 0
    table = _CRC16_TABLE
    for byte in data:
        crc = ((crc << 8) & 0xFF00) ^ table[(crc >> 8) ^ byte]
    return crc


def redis_key_slot(key: Key) -> int:
    """The Redis Cluster slot of ``key`` (0..16383), as ``CLUSTER KEYSLOT`` answers.

    The CRC16 of the key mod 16384, except that if the key has a ``{`` and, after
    it, a ``}`` with at least one byte between the first ``{`` and the first ``}``
    after it, only those bytes are hashed (a hash tag), so ``{user1000}.following``
    and ``{user1000}.followers`` share a slot (Redis' ``keyHashSlot``).

    Runtime complexity: O(len(key)).

    >>> redis_key_slot("foo"), redis_key_slot("{user1000}.following")
    (12182, 3443)
    """
    data = key_bytes(key)
    start = data.find(b"{")
    if start >= 0:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1 : end]
    return binascii.crc_hqx(data, 0) & 0x3FFF


def _float32(value: float) -> float:
    """``value`` rounded to the nearest C ``float`` (IEEE single precision)."""
    rounded: float = struct.unpack("f", struct.pack("f", value))[0]
    return rounded


def redis_cli_split(masters: int, slots: int = REDIS_CLUSTER_SLOTS) -> list[range]:
    """The slot ranges ``redis-cli --cluster create`` gives ``masters`` masters, in order.

    redis-cli (``clusterManagerCommandCreate``) steps a C ``float`` cursor by
    ``slots / masters`` and ends master ``i``'s range at
    ``lround(cursor + slots_per_node - 1)``; the last master takes the rest. The
    arithmetic is single precision there, and here: from 78 masters on, doubles
    would place some boundaries one slot off. (redis-cli itself refuses fewer than
    3 masters; the formula is the same for any count.)

    Runtime complexity: O(masters).

    >>> [(r.start, r.stop - 1) for r in redis_cli_split(3)]
    [(0, 5460), (5461, 10922), (10923, 16383)]
    """
    slots = check_count(slots, "slots", minimum=1, maximum=MAX_SLOTS)
    masters = check_count(masters, "masters", minimum=1, maximum=slots)
    per_node = _float32(slots / masters)
    cursor = 0.0
    first = 0
    ranges = []
    for index in range(masters):
        last = math.floor(_float32(_float32(cursor + per_node) - 1) + 0.5)  # lround, x > 0
        if last > slots or index == masters - 1:
            last = slots - 1
        last = max(last, first)
        ranges.append(range(first, last + 1))
        first = last + 1
        cursor = _float32(cursor + per_node)
    return ranges


class _SlotTable(NamedTuple):
    table: tuple[Any, ...]  # table[slot] is the slot's owner; () when there is no node
    nodes: tuple[Any, ...]  # every node in order, also those with no slot
    run_starts: list[int]  # the first slot of each run of slots with one owner
    run_owners: list[Any]  # the owner of each run
    adopted: bool = False  # taken as it is (from a cluster), not built from the weights


class SlotMap(ShardingScheme[N, _SlotTable]):
    """A fixed number of slots, shared among the nodes in proportion to their weights.

    A key belongs to slot ``hash(key) % slots`` (MurmurHash3 by default; see
    :meth:`redis_cluster`, or ``redis_cluster=True``, for Redis Cluster's CRC16),
    and a slot to one node.

    Each node's quota is its exact share ``slots * weight / total`` rounded down
    or up, so equal weights differ by at most one slot. The slots left over after
    rounding down go first to nodes that already hold the rounded-up count
    (keeping a slot is free), then to nodes under quota anyway, then by largest
    remainder, then by the lower ``str(node)``. A change then moves only the
    slots over a node's quota (its highest-numbered ones, and all of a removed
    node's) to the nodes under quota (in node order, lowest slots first): no
    slot moves between two nodes that both stay within quota, and no placement
    with quotas rounded this way moves fewer slots.

    So when adding or removing a node changes every other node's exact share by
    a slot or more, slots move only to the added node or from the removed one.
    A smaller change can also shift one slot between two other nodes whose
    rounding flips (a node whose share is 0.6 slot owns 0 or 1). A node whose
    share rounds to 0 owns no slot and comes last in :meth:`nodes_for`.

    The first table gives the nodes contiguous ranges, in node order (for a
    Redis Cluster map of equal weights, exactly those of ``redis-cli --cluster
    create``: :func:`redis_cli_split`); later tables depend on history, like a
    Redis Cluster's. :meth:`from_cluster` and :meth:`reload` take a live
    cluster's table as it is, and :meth:`assign_slot` moves one slot, as a
    cluster does while it reshards; quotas hold again after the next change.

    Runtime complexity: ``node_for`` O(1) after hashing the key;
    ``add``/``remove``/``set_weight`` O(S + n log n) for S slots and n nodes.

    >>> slots = SlotMap(["a", "b", "c"], slots=12)
    >>> [sorted(slots.slots_of(node)) for node in slots.nodes]
    [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    >>> plan = slots.plan_add("d")
    >>> [(m.source, m.target, m.slots) for m in plan.moves]
    [('a', 'd', (3,)), ('b', 'd', (7,)), ('c', 'd', (11,))]
    >>> slots.add("d")
    >>> sorted(slots.slots_of("d"))
    [3, 7, 11]
    """

    def __init__(
        self,
        nodes: Iterable[N] | Mapping[N, float] = (),
        *,
        slots: int = REDIS_CLUSTER_SLOTS,
        hash: HashFunction | None = None,
        redis_cluster: bool = False,
    ) -> None:
        slots = check_count(slots, "slots", minimum=1, maximum=MAX_SLOTS)
        check_callable(hash, "hash", allow_none=True)
        if redis_cluster is True:
            if hash is not None:
                raise ConfigurationError("give hash= or redis_cluster=True, not both")
            hash = redis_key_slot
        elif redis_cluster is not False:
            raise ArgumentTypeError(f"redis_cluster must be a bool, got {redis_cluster!r}")
        self._slot_count = slots
        self._hash: HashFunction = murmur3_64 if hash is None else hash
        super().__init__(nodes)

    @classmethod
    def redis_cluster(cls, nodes: Iterable[N] | Mapping[N, float] = ()) -> SlotMap[N]:
        """A slot map that maps keys to slots exactly as Redis Cluster does.

        16384 slots; a key's slot is the CRC16 of the key (or of its hash tag)
        mod 16384, what ``CLUSTER KEYSLOT`` answers (see :func:`redis_key_slot`).
        Nodes of equal weight get the ranges ``redis-cli --cluster create`` gives
        the same masters in the same order (:func:`redis_cli_split`), so a map
        made with a cluster's masters in creation order owns every slot as the
        cluster does; weighted nodes get ranges in proportion. Later changes are
        this map's own (see :meth:`from_cluster` and :meth:`reload` to follow a
        live cluster instead).

        Runtime complexity: O(S + n log n).

        >>> SlotMap.redis_cluster(["m1", "m2", "m3"]).quotas()
        {'m1': 5461, 'm2': 5462, 'm3': 5461}

        >>> cluster = SlotMap.redis_cluster(["m1", "m2", "m3"])
        >>> cluster.slot_of("{user1000}.following") == cluster.slot_of("{user1000}.followers")
        True
        >>> cluster.slot_of("foo"), cluster.node_for("foo")
        (12182, 'm3')
        """
        return cls(nodes, slots=REDIS_CLUSTER_SLOTS, hash=redis_key_slot)

    def _settings(self) -> dict[str, Any]:
        if self._hash is murmur3_64:
            return {"slots": self._slot_count}
        if self._hash is redis_key_slot:
            return {"slots": self._slot_count, "redis_cluster": True}
        raise ConfigurationError("a slot map with a custom hash cannot be written out")

    def to_dict(self) -> dict[str, Any]:
        """As :meth:`ShardingScheme.to_dict`, with the slot table, which depends on
        history, as runs ``[first slot, index of its node]``.

        Runtime complexity: O(S).
        """
        spec = super().to_dict()
        state = self._state
        index = {node: i for i, node in enumerate(state.nodes)}
        spec["runs"] = [
            [start, index[owner]]
            for start, owner in zip(state.run_starts, state.run_owners, strict=True)
        ]
        if state.adopted:
            spec["adopted"] = True
        return spec

    def _restore(self, spec: Mapping[str, Any]) -> None:
        nodes = tuple(self._weights)
        runs = [*list(spec.get("runs", ())), [self._slot_count, None]]
        table: list[Any] = []
        for (start, owner), (end, _) in itertools.pairwise(runs):
            if not (isinstance(start, int) and isinstance(end, int) and start == len(table)):
                raise ConfigurationError(f"slot runs do not cover the slots: {spec['runs']!r}")
            if isinstance(owner, bool) or not isinstance(owner, int) or not 0 <= owner < len(nodes):
                raise ConfigurationError(f"slot run owner {owner!r} is not a node index")
            table += [nodes[owner]] * (end - start)
        if len(table) != self._slot_count or (nodes and not table):
            raise ConfigurationError("slot runs do not cover the slots")
        if table:
            state = self._state_of(tuple(table), nodes, spec.get("adopted") is True)
            self._state = state
            self._published = (self._weights, state)

    # -- slots --------------------------------------------------------------------

    @property
    def slots(self) -> int:
        """How many slots there are."""
        return self._slot_count

    def slot_of(self, key: Key) -> int:
        """The slot of ``key``.

        Runtime complexity: O(len(key)).
        """
        return self._hash(key_bytes(key)) % self._slot_count

    def slots_of(self, node: N) -> frozenset[int]:
        """The slots ``node`` owns; :class:`~scalekit.errors.UnknownNode` if absent.

        Runtime complexity: O(S).
        """
        check_node(node)
        state = self._state  # one read: nodes and table that match
        if node not in state.nodes:
            raise UnknownNode(f"{node!r} is not a node")
        return frozenset(slot for slot, owner in enumerate(state.table) if owner == node)

    def node_for(self, key: Key) -> N:
        """The owner of the slot of ``key``.

        Raises :class:`~scalekit.errors.NoNodeAvailable` when there is no node.

        Runtime complexity: O(1) after hashing ``key``.
        """
        table = self._state.table  # one read: a concurrent add() publishes a new state
        if not table:
            return super().node_for(key)  # raises NoNodeAvailable
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
        owner: N = table[self._hash(data) % self._slot_count]
        return owner

    def _owner(self, state: _SlotTable, key: bytes) -> N:
        owner: N = state.table[self._hash(key) % self._slot_count]
        return owner

    def _owners(self, state: _SlotTable, key: bytes, n: int) -> list[N]:
        """The owner, then the owners of the following slots, then nodes without a slot."""
        starts, owners = state.run_starts, state.run_owners
        start = bisect_right(starts, self._hash(key) % self._slot_count) - 1
        found: list[N] = []
        for step in range(len(owners)):
            node = owners[(start + step) % len(owners)]
            if node not in found:
                found.append(node)
                if len(found) == n:
                    return found
        found += [node for node in state.nodes if node not in found]
        return found[:n]

    # -- the table ----------------------------------------------------------------

    def quotas(self) -> dict[N, int]:
        """How many slots each node owns, in node order.

        Runtime complexity: O(S).
        """
        state = self._state  # one read: nodes and table that match
        counts = Counter(state.table)
        return {node: counts.get(node, 0) for node in state.nodes}

    def _targets(self, weights: dict[N, float], held: Mapping[N, int]) -> dict[N, int]:
        """Each node's quota: its exact share rounded down or up, ``slots`` in all.

        The slots left after rounding down go first to nodes that already hold
        the rounded-up count (keeping a slot is free, giving one to another node
        is a move), then to nodes under their rounded-down count (they receive
        slots anyway), then by largest remainder, then by ``str(node)``.
        """
        slots = self._slot_count
        total = sum(Fraction(weight) for weight in weights.values())
        exact = {node: Fraction(weight) * slots / total for node, weight in weights.items()}
        targets = {node: math.floor(share) for node, share in exact.items()}
        spare = slots - sum(targets.values())
        candidates = sorted(
            (node for node in weights if exact[node] != targets[node]),
            key=lambda node: (
                _tier(held.get(node, 0), targets[node]),
                targets[node] - exact[node],  # the largest remainder first
                str(node),
            ),
        )
        for node in candidates[:spare]:
            targets[node] += 1
        return targets

    def _build(self, weights: dict[N, float]) -> _SlotTable:
        if not weights:
            return _SlotTable((), (), [], [])
        restoring = self.__dict__.get("_restoring")
        if restoring is not None:
            return self._state_of(restoring, tuple(weights), self.__dict__["_restoring_adopted"])
        current = self.__dict__.get("_state")  # absent while __init__ builds the first
        old: tuple[Any, ...] = () if current is None else current.table
        if not old:
            split = self._create_split(weights)
            if split is not None:
                return self._state_of(split, tuple(weights))
            targets = self._targets(weights, {})
            table: list[Any] = []
            for node, count in targets.items():
                table += [node] * count
            return self._state_of(tuple(table), tuple(weights))
        held = Counter(owner for owner in old if owner in weights)
        targets = self._targets(weights, held)
        kept = dict.fromkeys(weights, 0)
        released: list[int] = []  # ascending: a node over quota keeps its lowest slots
        for slot, owner in enumerate(old):
            holding = kept.get(owner)
            if holding is not None and holding < targets[owner]:
                kept[owner] = holding + 1
            else:
                released.append(slot)
        table = list(old)
        position = 0
        for node, target in targets.items():
            need = target - kept[node]
            for slot in released[position : position + need]:
                table[slot] = node
            position += need
        return self._state_of(tuple(table), tuple(weights))

    def _create_split(self, weights: dict[N, float]) -> tuple[Any, ...] | None:
        """The table ``redis-cli --cluster create`` makes, for a Redis Cluster map
        of equal weights (when each node's count stays within its quota, true up
        to 2,687 nodes); else None."""
        if self._hash is not redis_key_slot or len(set(weights.values())) != 1:
            return None
        slots = self._slot_count
        if len(weights) > slots:
            return None
        floor, ceiling = slots // len(weights), -(-slots // len(weights))
        table: list[Any] = []
        for node, owned in zip(weights, redis_cli_split(len(weights), slots), strict=True):
            if not floor <= len(owned) <= ceiling:
                return None
            table += [node] * len(owned)
        return tuple(table)

    @staticmethod
    def _state_of(
        table: tuple[Any, ...], nodes: tuple[Any, ...], adopted: bool = False
    ) -> _SlotTable:
        starts: list[int] = []
        owners: list[Any] = []
        previous: Any = _NONE
        for slot, owner in enumerate(table):
            if owner is not previous:
                starts.append(slot)
                owners.append(owner)
                previous = owner
        return _SlotTable(table, nodes, starts, owners, adopted)

    # -- following a live Redis Cluster ------------------------------------------------

    @classmethod
    def from_cluster(cls, client: Any) -> SlotMap[str]:
        """The slot table of the live Redis Cluster ``client`` talks to.

        ``client`` is a redis-py ``Redis`` of any node of the cluster. The table
        comes from ``CLUSTER SHARDS`` (``CLUSTER SLOTS`` on servers without it);
        nodes are the masters that own slots, named ``"host:port"`` (the address
        the cluster announces), in the order of their first slot, each of weight
        1. The table is the cluster's as it is, even if uneven, until a change
        (``add``, ``remove``, ``set_weight``) rebalances it by the weights, as
        ``redis-cli --cluster rebalance`` would, with minimal moves. Errors of
        redis are raised as :class:`~scalekit.errors.BackendError`.

        Runtime complexity: one round trip, then O(S + n log n).
        """
        slot_map: SlotMap[str] = SlotMap(redis_cluster=True)
        slot_map.reload(client)
        return slot_map

    def reload(self, client: Any) -> None:
        """Adopt the live cluster's slot table in place, so that this map follows a
        reshard or a ``redis-cli --cluster rebalance`` made elsewhere.

        Nodes that are still masters of the cluster stay, in their order and with
        their weights (also with no slot left, as the target of a reshard in
        progress); masters that own slots and are not nodes yet come after them,
        of weight 1; other nodes leave. Lookups see the old table or the new one,
        never a mix. See :meth:`from_cluster`.

        Runtime complexity: one round trip, then O(S + n).
        """
        if self._hash is not redis_key_slot or self._slot_count != REDIS_CLUSTER_SLOTS:
            raise ConfigurationError("only a Redis Cluster slot map can follow a cluster")
        from scalekit.sharding._cluster import read_cluster_table

        table, masters = read_cluster_table(client)
        with self._lock:
            known = set(masters)
            weights: dict[Any, float] = {n: w for n, w in self._weights.items() if n in known}
            for owner in table:
                if owner not in weights:
                    weights[owner] = 1
            self._adopt(weights, tuple(table), adopted=True)

    def assign_slot(self, slot: int, node: N, *, join: bool = False) -> None:
        """Hand ``slot`` to ``node``, as a cluster does when one slot has finished
        moving; the rest of the table stays as it is. ``node`` must be a node
        already, unless ``join=True``: then a new node joins, of weight 1 (a
        master a cluster's ``MOVED`` named, which the map did not know).

        Raises :class:`~scalekit.errors.UnknownNode` or
        :class:`~scalekit.errors.ConfigurationError` (no such slot) and changes
        nothing.

        Runtime complexity: O(1) when ``node`` owns the slot already, else O(S).
        """
        slot = check_count(slot, "slot", maximum=self._slot_count - 1)
        self.assign_slots({slot: check_node(node)}, join=join)

    def assign_slots(self, owners: Mapping[int, N], *, join: bool = False) -> None:
        """Hand each slot of ``owners`` (``slot -> node``) to its node at once, in
        one new table (see :meth:`assign_slot`): what a client does with the
        ``MOVED`` answers of one batch.

        Runtime complexity: O(len(owners)) when every slot is owned so already,
        else O(S).
        """
        if not isinstance(owners, Mapping):
            raise ArgumentTypeError(f"owners must map slots to nodes, got {type(owners).__name__}")
        if not isinstance(join, bool):
            raise ArgumentTypeError(f"join must be a bool, got {join!r}")
        for slot, node in owners.items():
            check_count(slot, "slot", maximum=self._slot_count - 1)
            check_node(node)
        with self._lock:
            weights = self._weights
            table = self._state.table
            changed = {slot: node for slot, node in owners.items() if table[slot] != node}
            if not changed:
                return
            for node in changed.values():
                if node not in weights:
                    if not join:
                        raise UnknownNode(f"{node!r} is not a node")
                    weights = {**weights, node: 1}
            new = list(table)
            for slot, node in changed.items():
                new[slot] = node
            self._adopt(weights, tuple(new), adopted=True)

    def _adopt(
        self,
        weights: dict[N, float],
        table: tuple[Any, ...],
        *,
        adopted: bool,
        epoch: int | None = None,
    ) -> None:
        """Publish ``weights`` with ``table`` as it is; the caller holds the lock."""
        if weights and len(table) != self._slot_count:
            raise ConfigurationError(f"a table of {len(table)} slots, not {self._slot_count}")
        if not set(table) <= set(weights):
            raise ConfigurationError("a slot owner that is not a node")
        state = self._state_of(table, tuple(weights), adopted)
        self._weights, self._state = weights, state
        self._published = (weights, state)
        if epoch is not None:
            self._epoch = epoch

    # -- plans, shares, pickles -----------------------------------------------------

    def _moves(self, old: _SlotTable, new: _SlotTable) -> list[Move[N]]:
        """One move per (source, target), listing its slots. O(S)."""
        if not old.table or not new.table:
            return []
        flows: dict[tuple[Any, Any], list[int]] = {}
        for slot, (before, after) in enumerate(zip(old.table, new.table, strict=True)):
            if before != after:
                flows.setdefault((before, after), []).append(slot)
        slots = self._slot_count
        return [
            Move(source, target, len(moved) / slots, slots=tuple(moved))
            for (source, target), moved in flows.items()
        ]

    def _shares(self, state: _SlotTable) -> dict[N, float]:
        counts = Counter(state.table)
        return {node: counts.get(node, 0) / self._slot_count for node in state.nodes}

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_table"] = self._state.table  # the assignment depends on history: keep it
        state["_adopted"] = self._state.adopted
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        self._restoring = state.pop("_table")  # what _build returns while unpickling
        self._restoring_adopted = state.pop("_adopted", False)
        try:
            super().__setstate__(state)
        finally:
            del self._restoring, self._restoring_adopted

    def _check(self) -> None:
        """Assert the invariants: every slot owned by a node, quotas within one slot."""
        super()._check()
        state = self._state
        assert state.nodes == tuple(self._weights)
        if not self._weights:
            assert state.table == ()
            return
        assert len(state.table) == self._slot_count
        counts = Counter(state.table)
        assert set(counts) <= set(self._weights)
        assert self._state_of(state.table, state.nodes, state.adopted) == state
        if state.adopted:
            return  # a cluster's table, as it is: quotas hold after the next change
        total = sum(Fraction(weight) for weight in self._weights.values())
        for node, weight in self._weights.items():
            share = Fraction(weight) * self._slot_count / total
            assert math.floor(share) <= counts.get(node, 0) <= math.ceil(share)


_NONE: Any = object()


def _tier(held: int, floor: int) -> int:
    """Who gets a spare slot first: 0, a node holding more than its rounded-down
    quota (it keeps a slot: no move); 1, a node under it (it receives slots
    anyway); 2, a node holding exactly it (the slot makes it a receiver)."""
    if held > floor:
        return 0
    return 1 if held < floor else 2
