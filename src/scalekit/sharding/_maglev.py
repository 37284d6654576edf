"""Maglev hashing (Eisenbud et al., NSDI 2016): a prime-sized lookup table."""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Hashable, Iterable, Iterator, Mapping
from typing import Any, NamedTuple, TypeVar

from scalekit._validate import check_count
from scalekit.errors import ConfigurationError
from scalekit.hashing import murmur3_64
from scalekit.sharding._base import Key, ShardingScheme, key_bytes
from scalekit.sharding._jump import _MAX_TRIES_PER_NODE, _remix
from scalekit.sharding._plan import Move
from scalekit.sharding._rendezvous import _check_name, _unique_names

__all__ = ["DEFAULT_TABLE_SIZE", "MaglevHash"]

N = TypeVar("N", bound=Hashable)

DEFAULT_TABLE_SIZE = 65537
"""The lookup table size: the paper's small size, a prime well over 100 x the node counts
a pure-Python sharder serves, so every node's share is within 1% of its weight's share."""

MAX_TABLE_SIZE = 1 << 24
"""The largest table: filling one of 2**24 entries takes several seconds in Python."""

_OFFSET_SEED = 0x6D61676C  # "magl"
_SKIP_SEED = 0x736B6970  # "skip"


class _Table(NamedTuple):
    entries: tuple[Any, ...]  # entries[i] is the node of table index i; () without nodes
    present: int  # how many distinct nodes hold an entry
    absent: tuple[Any, ...]  # nodes too light to hold any entry, by name


class MaglevHash(ShardingScheme[N, _Table]):
    """Maglev hashing: a key's hash picks an entry of a prime-sized table of nodes.

    Each node has a pseudo-random permutation of the ``M`` table indexes,
    ``offset + j * skip (mod M)``, with ``offset = h1(name) % M`` and
    ``skip = h2(name) % (M - 1) + 1`` (``M`` prime, so every skip walks all
    indexes). The table is filled in rounds: in turn, each node claims the next
    index of its permutation that is still free, until the table is full. Nodes
    take their turns in name order, so the table depends only on the nodes and
    weights, not on the order they were added in. A key is owned by
    ``table[murmur3_64(key) % M]``.

    Weights: turns are scheduled in time, node ``i`` taking its ``k``-th turn at
    time ``k * w_max / w_i`` (ties go by name), so the heaviest nodes take a turn
    every round and a node of half their weight every other round; with equal
    weights this is the paper's round robin exactly. Each turn fills one entry,
    so a node holds its share ``M * w_i / W`` of the entries to within a couple
    of entries (one, with equal weights), and the fill is O(M log N) whatever the
    weights.

    Lookups are one hash and one index, and the table is as even as it can be
    (each node holds its weight's share of the ``M`` entries, give or take one).
    The price is disruption: a change moves a little more than the minimum,
    some of it between two nodes that both stay (at ``M = 65537``, adding an
    11th node moves about 1.03 x the ideal ``1/11``, a 51st about 1.2 x the
    ideal ``1/51``); a plan lists exactly which table indexes move, as
    ``slots`` (see :meth:`table_index`). A key's preference list
    (:meth:`nodes_for`) is its owner, then the nodes of further table lookups
    with fresh hashes.

    Runtime complexity: ``node_for`` O(1); ``add``/``remove`` O(M log M)
    (the table is rebuilt: about 20 ms at ``M = 65537``).

    >>> sharder = MaglevHash(["lb-a", "lb-b", "lb-c"], table_size=251)
    >>> sharder.node_for("flow:10.0.0.1:443") in sharder.nodes
    True
    >>> plan = sharder.plan_add("lb-d")
    >>> "lb-d" in plan.targets and all(move.slots for move in plan.moves)
    True
    >>> MaglevHash(table_size=100)
    Traceback (most recent call last):
      ...
    scalekit.errors.ConfigurationError: table_size must be prime, got 100 (...)
    """

    def __init__(
        self,
        nodes: Iterable[N] | Mapping[N, float] = (),
        *,
        table_size: int = DEFAULT_TABLE_SIZE,
    ) -> None:
        table_size = check_count(table_size, "table_size", minimum=2, maximum=MAX_TABLE_SIZE)
        if not _is_prime(table_size):
            raise ConfigurationError(
                f"table_size must be prime, got {table_size!r} (Maglev's permutations "
                f"only cover the whole table when its size is prime; try 251, 4099, 65537)"
            )
        self._table_size = table_size
        super().__init__(nodes)

    def _settings(self) -> dict[str, Any]:
        return {"table_size": self._table_size}

    @property
    def table_size(self) -> int:
        """``M``, the number of entries of the lookup table."""
        return self._table_size

    def entries_of(self, node: N) -> int:
        """How many table entries ``node`` holds (its share is this over ``M``)."""
        self.weight_of(node)  # UnknownNode if absent
        return sum(1 for entry in self._state.entries if entry == node)

    def table_index(self, key: Key) -> int:
        """The table index of ``key`` (what the ``slots`` of a plan's moves refer to)."""
        return murmur3_64(key_bytes(key)) % self._table_size

    # -- the structure --------------------------------------------------------

    def _check_new(self, weights: dict[N, float], node: N) -> None:
        super()._check_new(weights, node)
        _check_name(node)

    def _build(self, weights: dict[N, float]) -> _Table:
        size = self._table_size
        if not weights:
            return _Table((), 0, ())
        if len(weights) > size:
            raise ConfigurationError(
                f"a Maglev table of {size} entries cannot hold {len(weights)} nodes; "
                f"use a prime table_size of at least 100 x the node count"
            )
        names = _unique_names(weights)
        order = sorted(names)
        nodes = [names[name] for name in order]
        heaviest = max(weights.values())
        turns = _turns([heaviest / weights[node] for node in nodes])
        positions = [murmur3_64(name, _OFFSET_SEED) % size for name in order]
        skips = [murmur3_64(name, _SKIP_SEED) % (size - 1) + 1 for name in order]
        entry = [-1] * size
        for filled, i in enumerate(turns, 1):
            index, skip = positions[i], skips[i]
            while entry[index] >= 0:  # the next free index of i's permutation
                index += skip
                if index >= size:
                    index -= size
            entry[index] = i
            index += skip
            positions[i] = index - size if index >= size else index
            if filled == size:
                break
        held = set(entry)
        absent = tuple(node for i, node in enumerate(nodes) if i not in held)
        return _Table(tuple([nodes[i] for i in entry]), len(held), absent)

    def _owner(self, state: _Table, key: bytes) -> N:
        owner: N = state.entries[murmur3_64(key) % len(state.entries)]
        return owner

    def node_for(self, key: Key) -> N:
        """The node of the table entry that ``key`` hashes to.

        Runtime complexity: O(1).
        """
        entries = self._state.entries  # one read: a concurrent add() publishes a new state
        if not entries:
            return super().node_for(key)  # raises NoNodeAvailable
        owner: N = entries[murmur3_64(key) % len(entries)]  # murmur3_64 encodes key
        return owner

    def _owners(self, state: _Table, key: bytes, n: int) -> list[N]:
        """The owner, then the nodes of further table lookups with fresh hashes.

        Draw ``t`` is ``table[h_t % M]``, where ``h_0`` is the key's hash (so the
        owner comes first) and ``h_{t+1} = splitmix64(h_t)``; a node already
        listed is skipped. Each draw lands on a node with its share of the
        table, so replicas balance like owners (walking the table instead would
        not: Maglev's entries are correlated with their neighbours), and a
        draw changes only where the table does, so a change of nodes changes a
        replica list only where a draw's entry changed. After ``32 * N`` draws
        (reached only for nodes of tiny share) the list is completed by walking
        the table from the last draw, then with the nodes too light to hold any
        entry, by name. Runtime complexity: O(N log N) expected for equal shares.
        """
        entries = state.entries
        size = len(entries)
        wanted = min(n, state.present)
        found: list[N] = []
        h = murmur3_64(key)
        index = h % size
        for _ in range(max(1, _MAX_TRIES_PER_NODE * len(self._weights))):
            index = h % size
            node = entries[index]
            if node not in found:
                found.append(node)
                if len(found) == wanted:
                    break
            h = _remix(h)
        while len(found) < wanted:  # rare: walk on from the last draw
            index = index + 1 if index + 1 < size else 0
            node = entries[index]
            if node not in found:
                found.append(node)
        found.extend(state.absent[: n - len(found)])
        return found

    def _check(self) -> None:
        """Assert the invariants: a full table of nodes (or none), the count of
        nodes holding an entry, the nodes too light for one listed by name, each
        node's entries within 2 of its weight's share, and a table a fresh build
        agrees with. Runtime complexity: O(M log N)."""
        super()._check()
        state = self._state
        if not self._weights:
            assert state == _Table((), 0, ())
            return
        assert len(state.entries) == self._table_size
        counts = Counter(state.entries)
        assert set(counts) <= set(self._weights)
        assert state.present == len(counts)
        assert state.absent == tuple(
            sorted((node for node in self._weights if node not in counts), key=str)
        )
        total = sum(self._weights.values())
        for node, weight in self._weights.items():
            assert abs(counts.get(node, 0) - self._table_size * weight / total) <= 2 + 1e-9
        assert self._fresh_state() == state

    # -- plans ----------------------------------------------------------------

    def _moves(self, old: _Table, new: _Table) -> list[Move[N]] | None:
        """One move per (source, target) pair of the entries whose node changed.

        Exact: ``fraction`` is the count of such entries over ``M`` (the share of
        the key space, as every key hashes to one entry), and ``slots`` lists
        the table indexes, which :meth:`table_index` gives for a key.
        """
        if not old.entries or not new.entries:
            return []
        if len(old.entries) != len(new.entries):
            return None  # tables of different sizes do not line up
        flows: dict[tuple[Any, Any], list[int]] = {}
        for index, (before, after) in enumerate(zip(old.entries, new.entries, strict=True)):
            if before is not after and before != after:
                flows.setdefault((before, after), []).append(index)
        size = len(new.entries)
        return [
            Move(source, target, len(slots) / size, slots=tuple(slots))
            for (source, target), slots in flows.items()
        ]

    def _shares(self, state: _Table) -> dict[N, float]:
        """Entries per node over ``M`` (0 for a node too light to hold one)."""
        size = len(state.entries)
        shares: dict[N, float] = dict.fromkeys(state.absent, 0.0)
        for node, count in Counter(state.entries).items():
            shares[node] = count / size
        return shares


def _turns(intervals: list[float]) -> Iterator[int]:
    """Who takes each turn, forever: node ``i`` at times ``k * intervals[i]``, ties by ``i``."""
    if max(intervals) == 1.0:  # equal weights: plain round robin
        while True:
            yield from range(len(intervals))
    taken = [1] * len(intervals)
    queue = [(interval, i) for i, interval in enumerate(intervals)]
    heapq.heapify(queue)
    while True:
        i = queue[0][1]
        yield i
        taken[i] += 1
        heapq.heapreplace(queue, (taken[i] * intervals[i], i))


def _is_prime(number: int) -> bool:
    """Deterministic Miller-Rabin, exact for every ``number < 3.3 * 10**24``."""
    if number < 2:
        return False
    small = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41)
    for prime in small:
        if number % prime == 0:
            return number == prime
    odd, twos = number - 1, 0
    while odd % 2 == 0:
        odd, twos = odd // 2, twos + 1
    for base in small:
        x = pow(base, odd, number)
        if x in (1, number - 1):
            continue
        for _ in range(twos - 1):
            x = x * x % number
            if x == number - 1:
                break
        else:
            return False
    return True
