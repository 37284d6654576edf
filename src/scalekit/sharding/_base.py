"""The ``Sharder`` protocol and the copy-on-write base every scheme shares.

A scheme keeps its lookup structure in an immutable *state*, rebuilt whole on
each change and published with one attribute store. A lookup reads
``self._state`` once and works on that snapshot, so lookups need no lock and
never see a half-built structure, while writers (``add``/``remove``) take a lock
among themselves. Plans are made by building the next state without publishing
it, so ``plan_add`` and ``add`` always agree.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Iterable, Mapping
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from scalekit._validate import check_count, check_node, check_weight
from scalekit.errors import ConfigurationError, DuplicateNode, NoNodeAvailable, UnknownNode
from scalekit.hashing import Key, key_bytes

__all__ = ["Key", "Sharder", "ShardingScheme", "key_bytes"]

N = TypeVar("N", bound=Hashable)
S = TypeVar("S")


@runtime_checkable
class Sharder(Protocol[N]):
    """Maps keys to nodes, and says what moves when the nodes change."""

    def node_for(self, key: Key) -> N:
        """The node that owns ``key``."""
        ...

    def nodes_for(self, key: Key, n: int) -> list[N]:
        """``n`` distinct nodes for ``key``, the owner first: a replica preference list."""
        ...

    def add(self, node: N, weight: float = 1) -> None:
        """Add ``node`` with a relative ``weight``."""
        ...

    def remove(self, node: N) -> None:
        """Remove ``node``."""
        ...

    @property
    def nodes(self) -> tuple[N, ...]:
        """The nodes, in the order they were added."""
        ...

    def weight_of(self, node: N) -> float:
        """The weight ``node`` was added with."""
        ...

    def plan_add(self, node: N, weight: float = 1) -> Any:
        """The ``ReshardPlan`` of ``add(node, weight)``, without doing it."""
        ...

    def plan_remove(self, node: N) -> Any:
        """The ``ReshardPlan`` of ``remove(node)``, without doing it."""
        ...

    def copy(self) -> Sharder[N]:
        """An independent sharder with the same nodes and placement."""
        ...


def check_key(key: object) -> None:
    """Raise :class:`~scalekit.errors.ArgumentTypeError` (a ``TypeError``) naming
    "str, bytes or int" unless ``key`` is a key :func:`key_bytes` encodes."""
    if type(key) is not str and type(key) is not bytes:
        key_bytes(key)


class ShardingScheme(Generic[N, S]):
    """Base of the schemes: node bookkeeping, validation, snapshots and plans.

    A subclass implements ``_build(weights) -> state`` (any immutable object),
    ``_owner(state, key_bytes) -> node`` and ``_owners(state, key_bytes, n)``,
    and may override ``_moves(old, new)`` to describe a plan structurally.
    """

    def __init__(self, nodes: Iterable[N] | Mapping[N, float] = ()) -> None:
        self._lock = threading.Lock()
        weights: dict[N, float] = {}
        items = nodes.items() if isinstance(nodes, Mapping) else ((node, 1) for node in nodes)
        for node, weight in items:
            self._check_new(weights, node)
            weights[node] = check_weight(weight)
        self._weights = weights
        self._state: S = self._build(weights)
        self._published = (weights, self._state)

    # -- what a scheme provides ---------------------------------------------

    def _build(self, weights: dict[N, float]) -> S:  # pragma: no cover - abstract
        raise NotImplementedError

    def _owner(self, state: S, key: bytes) -> N:  # pragma: no cover - abstract
        raise NotImplementedError

    def _owners(self, state: S, key: bytes, n: int) -> list[N]:  # pragma: no cover
        raise NotImplementedError

    def _check_new(self, weights: dict[N, float], node: N) -> None:
        """Refuse ``node`` before it is added (None, NaN, unhashable, a duplicate,
        an unstable name)."""
        check_node(node)
        if node in weights:
            raise DuplicateNode(f"{node!r} is already a node")

    # -- lookups --------------------------------------------------------------

    def node_for(self, key: Key) -> N:
        """The node that owns ``key``.

        Raises :class:`~scalekit.errors.NoNodeAvailable` when there is no node.
        """
        weights, state = self._published  # one read: nodes and structure that match
        if not weights:
            raise NoNodeAvailable("the sharder has no nodes")
        return self._owner(state, key_bytes(key))

    def nodes_for(self, key: Key, n: int) -> list[N]:
        """``n`` distinct nodes for ``key``, the owner first (a replica preference list).

        Raises :class:`~scalekit.errors.NoNodeAvailable` when ``n`` exceeds the node count.
        """
        n = check_count(n, "n")
        weights, state = self._published  # one read: nodes and structure that match
        if n > len(weights):
            raise NoNodeAvailable(f"{n} nodes asked for, {len(weights)} there")
        if n == 0:
            return []
        return self._owners(state, key_bytes(key), n)

    @property
    def nodes(self) -> tuple[N, ...]:
        """The nodes, in the order they were added."""
        return tuple(self._weights)

    def weight_of(self, node: N) -> float:
        """The weight of ``node``; :class:`~scalekit.errors.UnknownNode` if absent."""
        check_node(node)
        try:
            return self._weights[node]
        except KeyError:
            raise UnknownNode(f"{node!r} is not a node") from None

    def __len__(self) -> int:
        return len(self._weights)

    def __contains__(self, node: object) -> bool:
        try:
            return node in self._weights
        except TypeError:  # unhashable: not a node
            return False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({list(self._weights)!r})"

    # -- changes --------------------------------------------------------------

    def _with_added(self, node: N, weight: float) -> dict[N, float]:
        self._check_new(self._weights, node)
        weights = dict(self._weights)
        weights[node] = check_weight(weight)
        return weights

    def _without(self, node: N) -> dict[N, float]:
        if check_node(node) not in self._weights:
            raise UnknownNode(f"{node!r} is not a node")
        weights = dict(self._weights)
        del weights[node]
        return weights

    def _publish(self, weights: dict[N, float]) -> None:
        state = self._build(weights)
        self._weights, self._state = weights, state
        self._published = (weights, state)  # what lookups read, in one attribute store
        self._epoch = self.epoch + 1

    @property
    def epoch(self) -> int:
        """How many changes this placement has been through (0 when built).

        Each ``add``, ``remove`` and ``set_weight`` adds one, and a plan's
        ``after`` has the epoch its change will have, so processes that share a
        placement through :meth:`to_dict` and plans can tell which is newer.
        """
        epoch: int = self.__dict__.get("_epoch", 0)
        return epoch

    # -- a serialisable form ----------------------------------------------------

    def _settings(self) -> dict[str, Any]:
        """The constructor settings :meth:`to_dict` records (none by default)."""
        return {}

    def _restore(self, spec: Mapping[str, Any]) -> None:
        """Adopt the structure ``spec`` records beyond nodes and settings (none)."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description of this placement: scheme, settings, nodes with
        weights in order, epoch. :meth:`from_dict` rebuilds the same placement in
        any process. Nodes must be ``str`` or ``int``; a custom hash cannot be
        described, and raises :class:`~scalekit.errors.ConfigurationError`.

        Runtime complexity: O(n) (O(S) for a slot map, which records its table).

        >>> from scalekit.sharding import HashRing
        >>> ring = HashRing(["a", "b"], vnodes=64)
        >>> ring.to_dict()
        {'scheme': 'HashRing', 'epoch': 0, 'settings': {'vnodes': 64, 'weight_unit': 1}, \
'nodes': [['a', 1], ['b', 1]]}
        """
        for node in self._weights:
            if isinstance(node, bool) or not isinstance(node, (str, int)):
                raise ConfigurationError(
                    f"only str and int nodes can be written out, not {type(node).__name__}"
                )
        return {
            "scheme": type(self).__name__,
            "epoch": self.epoch,
            "settings": self._settings(),
            "nodes": [[node, weight] for node, weight in self._weights.items()],
        }

    @staticmethod
    def from_dict(spec: Mapping[str, Any]) -> ShardingScheme[Any, Any]:
        """The placement :meth:`to_dict` described, of the scheme it names.

        Raises :class:`~scalekit.errors.ConfigurationError` for a description that
        is not one.

        Runtime complexity: that of building the scheme.
        """
        from scalekit.sharding import _SCHEMES

        try:
            cls = _SCHEMES[spec["scheme"]]
            settings = dict(spec["settings"])
            nodes = dict(spec["nodes"])
            epoch = check_count(spec["epoch"], "epoch")
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigurationError(f"not a sharder description: {exc!r}") from None
        sharder: ShardingScheme[Any, Any] = cls(nodes, **settings)
        sharder._restore(spec)
        sharder._epoch = epoch
        return sharder

    def add(self, node: N, weight: float = 1) -> None:
        """Add ``node`` with a relative ``weight`` (default 1).

        Raises :class:`~scalekit.errors.DuplicateNode` or
        :class:`~scalekit.errors.ConfigurationError` (a weight that is not
        positive) and changes nothing.
        """
        with self._lock:
            self._publish(self._with_added(node, weight))

    def remove(self, node: N) -> None:
        """Remove ``node``; :class:`~scalekit.errors.UnknownNode` if it is not there."""
        with self._lock:
            self._publish(self._without(node))

    def set_weight(self, node: N, weight: float) -> None:
        """Change the weight of ``node``."""
        with self._lock:
            if check_node(node) not in self._weights:
                raise UnknownNode(f"{node!r} is not a node")
            weights = dict(self._weights)
            weights[node] = check_weight(weight)
            self._publish(weights)

    # -- plans and copies -----------------------------------------------------

    def _snapshot(self, weights: dict[N, float]) -> ShardingScheme[N, S]:
        twin = self._empty_twin()
        twin._weights = weights
        twin._state = self._build(weights) if weights is not self._weights else self._state
        twin._published = (weights, twin._state)
        return twin

    def _empty_twin(self) -> ShardingScheme[N, S]:
        """A new instance of this scheme with the same settings and no nodes."""
        twin = type(self).__new__(type(self))
        twin.__dict__.update(self.__dict__)
        twin._lock = threading.Lock()
        return twin

    def copy(self) -> ShardingScheme[N, S]:
        """An independent sharder with the same nodes, settings and placement.

        Runtime complexity: O(1) (the immutable state is shared).
        """
        return self._snapshot(self._weights)

    def __copy__(self) -> ShardingScheme[N, S]:
        return self.copy()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"], state["_state"], state["_published"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._state = self._build(self._weights)
        self._published = (self._weights, self._state)

    def plan_add(self, node: N, weight: float = 1) -> Any:
        """What ``add(node, weight)`` would move, exactly, without doing it."""
        from scalekit.sharding._plan import ReshardPlan

        with self._lock:  # before and after from the same moment
            after = self._snapshot(self._with_added(node, weight))
            after._epoch = self.epoch + 1
            return ReshardPlan.between(self.copy(), after)

    def plan_remove(self, node: N) -> Any:
        """What ``remove(node)`` would move, exactly, without doing it."""
        from scalekit.sharding._plan import ReshardPlan

        with self._lock:  # before and after from the same moment
            after = self._snapshot(self._without(node))
            after._epoch = self.epoch + 1
            return ReshardPlan.between(self.copy(), after)

    def plan_weight(self, node: N, weight: float) -> Any:
        """What ``set_weight(node, weight)`` would move, exactly, without doing it."""
        from scalekit.sharding._plan import ReshardPlan

        with self._lock:  # before and after from the same moment
            if check_node(node) not in self._weights:
                raise UnknownNode(f"{node!r} is not a node")
            weights = dict(self._weights)
            weights[node] = check_weight(weight)
            after = self._snapshot(weights)
            after._epoch = self.epoch + 1
            return ReshardPlan.between(self.copy(), after)

    def _check(self) -> None:
        """Assert the invariants every scheme shares: the published pair is the
        current weights and state, every node is a valid node with a valid
        weight; a scheme adds its own (its structure against a fresh build).

        Runtime complexity: O(n) here; a scheme's own checks rebuild its structure.
        """
        weights, state = self._published
        assert weights is self._weights
        assert state is self._state
        for node, weight in weights.items():
            check_node(node)
            assert check_weight(weight) == weight

    def _fresh_state(self) -> S:
        """The state of the current weights built from scratch (no incremental reuse)."""
        twin = self._empty_twin()
        for name in ("_state", "_published"):
            twin.__dict__.pop(name, None)
        return twin._build(dict(self._weights))

    def _moves(self, old: S, new: S) -> list[Any] | None:
        """The moves from ``old`` to ``new`` as :class:`Move` objects, or ``None``
        when the scheme cannot describe them (the plan then lists no moves, while
        ``move_for`` stays exact)."""
        return None

    def _shares(self, state: S) -> dict[N, float] | None:
        """Each node's exact share of the key space, when the structure tells it."""
        return None
