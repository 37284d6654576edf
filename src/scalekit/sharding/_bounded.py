"""Consistent hashing with bounded loads (Mirrokni, Thorup and Zadimoghaddam, 2018).

Plain consistent hashing sends a key to its owner however busy the owner is. With
bounded loads every node has a *capacity*: a key goes to the first node of its
preference list (``sharder.nodes_for(key, ...)``, the owner first) whose load is
below capacity, so no node carries more than about ``c`` times its fair share,
and a key still lands on the same few nodes, which keeps caches warm. This is
what Vimeo and HAProxy (``hash-balance-factor``) use to spread connections.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Hashable
from typing import Generic, TypeVar

from scalekit._validate import check_bool, check_node, check_number, type_name
from scalekit.errors import ArgumentTypeError, ConfigurationError, NoNodeAvailable, UnknownNode
from scalekit.sharding._base import Key, Sharder, ShardingScheme, key_bytes

__all__ = ["BoundedLoads"]

N = TypeVar("N", bound=Hashable)

_ATTEMPTS = 4  # placements retried when the sharder's nodes change under a lookup
MAX_C = 1e6
"""The largest balance factor: beyond it no node is ever full (plain consistent hashing)."""


class BoundedLoads(Generic[N]):
    """Assigns keys to the nodes of ``sharder`` so that no node is overloaded.

    Each :meth:`acquire` adds one unit of load (a request, a connection, a
    client; a *ball* of the paper) and :meth:`release` takes it away. Every
    acquisition goes to the first node of the key's preference list whose load
    is below its *capacity*::

        capacity(node) = ceil(c * (load + 1) * weight(node) / total weight)

    where ``load`` is the load the sharder's current nodes carry before the
    acquisition; with equal weights that is ``ceil(c * (load + 1) / len(nodes))``,
    the paper's ``ceil(c * average)``. After an acquisition no node it went to
    carries more than its capacity, and since the capacities add up to more
    than the load some node always has room. A key whose owner has room goes to
    its owner, so with low load this is plain consistent hashing; a celebrity
    key acquired many times fills its owner up to the bound and then spills
    down its preference list, so one key cannot overload one node. So with
    acquisitions alone every node stays within ``ceil(c * average)`` at all
    times; a release lowers the average, and a node whose holders stay may then
    sit above the new bound until they release (nothing held is moved: the
    paper moves balls on deletion, a caller's open connection cannot be).
    In every case a node's load is at most the capacity it had at its last
    acquisition.

    ``sticky=True`` keeps a held key on the node it is on: acquiring it again
    counts on that node whatever its load (its holders share that node's cache)
    until its last holder releases it. That gives up the bound: only a key's
    first acquisition obeys it, so one key acquired 4,000 times puts all 4,000
    on one node. Use it only when each key is acquired by few holders at once.

    A key may thus be held on several nodes (always without ``sticky``, and with
    it when its node was removed): :meth:`assigned` names the node of its latest
    acquisition, and :meth:`release` takes the node the holder was given (pass
    what :meth:`acquire` returned) or, without it, the node the key reached
    first. When the sharder's nodes change, holders stay where they are until
    released (a removed node keeps its load, reported by :meth:`loads`, but no
    longer counts towards capacities), and acquisitions see the new nodes at once.

    ``c`` must be more than 1: 1.25 is the usual choice (HAProxy's default), and
    a smaller ``c`` balances better but moves more keys off their owner. Keys
    are compared as the sharder sees them, so ``"k"`` and ``b"k"`` are one key.
    All methods are thread-safe. With a :class:`ShardingScheme` sharder, changes
    of nodes and weights are seen at once; with another :class:`Sharder`, the
    nodes and their weights are read again on each call.

    Runtime complexity: :meth:`acquire` is one ``node_for`` lookup when the key
    is held or its owner has room; otherwise ``nodes_for`` lists of doubling
    length, at most about twice the first node with room. :meth:`release` O(1).

    >>> from scalekit.sharding import HashRing
    >>> ring = HashRing(["a", "b", "c"])
    >>> balancer = BoundedLoads(ring, c=2)
    >>> first = balancer.acquire("user:42")
    >>> first == ring.node_for("user:42")  # the owner has room
    True
    >>> balancer.acquire("user:42") == first  # the owner still has room
    True
    >>> balancer.load_of(first), balancer.total
    (2, 2)
    >>> balancer.capacity(first)  # ceil(2 * 3 / 3): full at 2
    2
    >>> second = balancer.acquire("user:42")  # the owner is full: the next node
    >>> second != first and second == ring.nodes_for("user:42", 2)[1]
    True
    >>> balancer.release("user:42", second) == second
    True
    >>> balancer.release("user:42") == first
    True
    >>> balancer.release("user:42") == first
    True
    >>> balancer.assigned("user:42") is None
    True
    """

    def __init__(self, sharder: Sharder[N], c: float = 1.25, *, sticky: bool = False) -> None:
        if not isinstance(sharder, Sharder):
            raise ArgumentTypeError(f"sharder must be a Sharder, got {type_name(sharder)}")
        c = check_number(c, "c", minimum=1, min_inclusive=False, maximum=MAX_C)
        check_bool(sticky, "sticky")
        self._sharder = sharder
        self._c = float(c)
        self._sticky = sticky
        self._lock = threading.Lock()
        # key -> {node: holds}, in the order the key reached each node; the last
        # entry is the key's current node. Most keys have exactly one entry.
        self._holds: dict[bytes, dict[N, int]] = {}
        self._loads: dict[N, int] = {}  # only nodes with load > 0, removed ones too
        self._total = 0
        # The sharder's nodes as last seen, and the load they carry.
        self._seen: object = None
        self._weights: dict[N, float] = {}
        self._total_weight = 0.0
        self._live_load = 0

    # -- reading the sharder -------------------------------------------------

    def _sync(self) -> None:
        """Bring the view of the sharder's nodes and weights up to date (under the lock)."""
        sharder = self._sharder
        if isinstance(sharder, ShardingScheme):
            # A scheme publishes a new weights dict on every change and never
            # mutates a published one: one read is a consistent snapshot.
            weights: dict[N, float] = sharder._weights
            if weights is self._seen:
                return
            self._seen = weights
        else:
            for _ in range(_ATTEMPTS):
                try:
                    weights = {node: sharder.weight_of(node) for node in sharder.nodes}
                    break
                except UnknownNode:  # removed between the two reads
                    continue
            else:
                raise NoNodeAvailable("the sharder's nodes kept changing")
            if weights == self._weights:
                return
        self._weights = weights
        self._total_weight = math.fsum(weights.values())
        self._live_load = sum(load for node, load in self._loads.items() if node in weights)

    def _limit(self, weight: float) -> float:
        """A node of ``weight`` has room for a new assignment while its load is below this."""
        return self._c * (self._live_load + 1) * weight / self._total_weight

    def _place(self, key: Key) -> N | None:
        """The first node of ``key``'s preference list with room, or ``None`` if the
        sharder changed under the lookup (the caller syncs and tries again)."""
        weights, loads, sharder = self._weights, self._loads, self._sharder
        if not weights:
            raise NoNodeAvailable("the sharder has no nodes")
        try:
            owner = sharder.node_for(key)
        except NoNodeAvailable:
            return None
        if owner in weights and loads.get(owner, 0) < self._limit(weights[owner]):
            return owner
        seen = {owner}
        count = len(weights)
        wanted = 2
        while True:
            wanted = min(wanted, count)
            try:
                preference = sharder.nodes_for(key, wanted)
            except NoNodeAvailable:
                return None
            for node in preference:
                if node in seen:
                    continue
                seen.add(node)
                if node in weights and loads.get(node, 0) < self._limit(weights[node]):
                    return node
            if wanted >= count:
                return None
            wanted *= 2

    # -- holding and releasing ------------------------------------------------

    def acquire(self, key: Key) -> N:
        """Count one more holder of ``key`` and return the node it is assigned to.

        The key goes to the first node of its preference list whose load is
        below its capacity (with ``sticky=True``, a held key stays on its node).
        Raises :class:`~scalekit.errors.NoNodeAvailable` when the sharder has no
        nodes, and :class:`~scalekit.errors.ArgumentTypeError` (a ``TypeError``)
        for a key that is not ``str``, ``bytes`` or ``int``; either way nothing
        changes. An ``int`` is the key of its decimal digits (``42`` is ``"42"``).

        Runtime complexity: one ``node_for`` lookup when the owner has room (or
        the key is held, with ``sticky``); at most about twice the preference
        list up to the first node with room otherwise.
        """
        raw = key_bytes(key)
        with self._lock:
            self._sync()
            holds = self._holds.get(raw)
            current: N | None = None if holds is None else next(reversed(holds))
            node = current if self._sticky and current in self._weights else None
            for _ in range(_ATTEMPTS):
                if node is not None:
                    break
                node = self._place(raw)
                if node is None:
                    self._seen = None  # the sharder changed: read it again
                    self._sync()
            if node is None:
                raise NoNodeAvailable("the sharder's nodes kept changing")
            if holds is None:
                self._holds[raw] = {node: 1}
            elif node == current:
                holds[node] += 1
            else:  # a new current node: move it last
                holds[node] = holds.pop(node, 0) + 1
            self._loads[node] = self._loads.get(node, 0) + 1
            self._total += 1
            self._live_load += 1
            return node

    def release(self, key: Key, node: N | None = None) -> N:
        """Take away one holder of ``key`` and return the node it was counted on.

        ``node`` says which node the holder was given (what :meth:`acquire`
        returned); left out, it is the node the key reached first among those
        that hold it. Raises :class:`~scalekit.errors.ConfigurationError` if
        ``key`` is not held (on ``node``), changing nothing.

        Runtime complexity: O(1).
        """
        raw = key_bytes(key)
        with self._lock:
            holds = self._holds.get(raw)
            if holds is None:
                raise ConfigurationError(f"{key!r} is not held")
            if node is None:
                node = next(iter(holds))
            elif check_node(node) not in holds:
                raise ConfigurationError(f"{key!r} is not held on {node!r}")
            if holds[node] == 1:
                del holds[node]
                if not holds:
                    del self._holds[raw]
            else:
                holds[node] -= 1
            load = self._loads[node] - 1
            if load:
                self._loads[node] = load
            else:
                del self._loads[node]
            self._total -= 1
            if node in self._weights:
                self._live_load -= 1
            return node

    # -- reading --------------------------------------------------------------

    def assigned(self, key: Key) -> N | None:
        """The node ``key`` is held on (its current node), or ``None`` if not held.

        Runtime complexity: O(1).
        """
        raw = key_bytes(key)
        with self._lock:
            holds = self._holds.get(raw)
            return None if holds is None else next(reversed(holds))

    def load_of(self, node: N) -> int:
        """How many holders ``node`` has; :class:`~scalekit.errors.UnknownNode` if
        it is neither a node of the sharder nor still holding keys.

        Runtime complexity: O(1) with a :class:`ShardingScheme`.
        """
        check_node(node)
        with self._lock:
            load = self._loads.get(node)
            if load is not None:
                return load
            self._sync()
            if node in self._weights:
                return 0
            raise UnknownNode(f"{node!r} is not a node")

    def loads(self) -> dict[N, int]:
        """The load of every node of the sharder (0 if idle), then of every removed
        node still holding keys.

        Runtime complexity: O(nodes).
        """
        with self._lock:
            self._sync()
            loads = {node: self._loads.get(node, 0) for node in self._weights}
            loads.update(self._loads)
            return loads

    def capacity(self, node: N) -> int:
        """The most load ``node`` may carry after the next new assignment.

        Raises :class:`~scalekit.errors.UnknownNode` if ``node`` is not a node of
        the sharder.

        Runtime complexity: O(1) with a :class:`ShardingScheme`.
        """
        check_node(node)
        with self._lock:
            self._sync()
            if node not in self._weights:
                raise UnknownNode(f"{node!r} is not a node")
            return math.ceil(self._limit(self._weights[node]))

    @property
    def total(self) -> int:
        """How many holders there are in all, on any node (removed ones too)."""
        return self._total

    @property
    def c(self) -> float:
        """The balance factor: a node's capacity over its fair share."""
        return self._c

    @property
    def sticky(self) -> bool:
        """Whether a held key stays on its node past the bound."""
        return self._sticky

    def _check(self) -> None:
        """Assert the invariants: loads are the holds per node, the total is their
        sum, the live load is that of the sharder's nodes as last seen, and no
        count is zero or negative."""
        with self._lock:
            per_node: dict[N, int] = {}
            for holds in self._holds.values():
                assert holds, "a key with no holder is kept"
                for node, count in holds.items():
                    assert count > 0
                    per_node[node] = per_node.get(node, 0) + count
            assert per_node == self._loads
            assert all(load > 0 for load in self._loads.values())
            assert self._total == sum(self._loads.values())
            live = sum(load for node, load in self._loads.items() if node in self._weights)
            assert self._live_load == live
            if self._weights:
                assert self._total_weight == math.fsum(self._weights.values())

    @property
    def sharder(self) -> Sharder[N]:
        """The sharder that gives each key its preference list."""
        return self._sharder

    def __repr__(self) -> str:
        sticky = ", sticky=True" if self._sticky else ""
        return (
            f"{type(self).__name__}({self._sharder!r}, c={self._c!r}{sticky}, total={self._total})"
        )
