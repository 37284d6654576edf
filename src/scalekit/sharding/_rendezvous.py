"""Rendezvous (highest random weight) hashing, weighted by the logarithmic method."""

from __future__ import annotations

import heapq
import math
import re
from collections.abc import Hashable, Iterable
from typing import Any, NamedTuple, TypeVar

import mmh3

from scalekit.errors import ConfigurationError, DuplicateNode
from scalekit.hashing import DEFAULT_SEED
from scalekit.sharding._base import Key, ShardingScheme, key_bytes
from scalekit.sharding._plan import Move

__all__ = ["RendezvousHash"]

N = TypeVar("N", bound=Hashable)

# A node's draw for a key is the top 52 bits of murmur3_64(name + ":" + key). Lookups
# compute it inline as mmh3.hash128(data, DEFAULT_SEED, signed=False) >> 76 (murmur3_64
# is the high half of that hash), saving a Python call per node; the tests pin it to
# murmur3_64. u = (draw + 0.5) / 2**52 then lies strictly inside (0, 1).
_TO_UNIT = 2.0**-52
_UNSTABLE_NAME = re.compile(r" at 0x[0-9a-fA-F]+>")


class _Scores(NamedTuple):
    """The nodes sorted by name, with what scoring needs precomputed."""

    pairs: tuple[tuple[bytes, Any], ...]  # (name prefix, node)
    triples: tuple[tuple[bytes, float, Any], ...]  # (name prefix, 1 / weight, node)
    weights: dict[Any, float]
    uniform: bool  # all weights equal: the largest hash wins, no logarithm needed


class RendezvousHash(ShardingScheme[N, _Scores]):
    """Rendezvous hashing: every node scores the key, and the highest score owns it.

    Node ``i`` draws ``u`` in ``(0, 1)`` from the 64-bit hash of its name and the
    key (:func:`~scalekit.hashing.murmur3_64` of ``name + ":" + key``, top 52
    bits) and scores ``-weight_i / ln(u)``: the logarithmic method of weighted
    rendezvous hashing (Schindelhauer & Schomaker, 2005), under which node ``i``
    wins with probability exactly ``weight_i / W``. A node's score for a key
    depends only on its name, weight and the key, so adding a node moves keys
    only to it and removing one moves only its keys; no key ever moves between
    two nodes that stay, whatever their weights.

    There is no table to build, and the preference list of a key is simply its
    nodes by score (:meth:`nodes_for`). The price is a lookup that scores every
    node: O(N) hashes, fine for tens of nodes. When all weights are equal the
    largest draw wins and no logarithm is taken. Node names (``str(node)``) must
    be unique, since they are what is hashed.

    Runtime complexity: ``node_for`` O(N); ``nodes_for(key, n)`` O(N log n);
    ``add``/``remove`` O(N log N).

    >>> sharder = RendezvousHash({"cache-a": 1, "cache-b": 1, "cache-c": 2})
    >>> sharder.node_for("user:42") in sharder.nodes
    True
    >>> plan = sharder.plan_remove("cache-c")
    >>> sorted(plan.targets)
    ['cache-a', 'cache-b']
    >>> round(plan.moved_fraction, 4)  # cache-c held 2/4 of the keys
    0.5
    """

    # -- the structure --------------------------------------------------------

    def _check_new(self, weights: dict[N, float], node: N) -> None:
        super()._check_new(weights, node)
        _check_name(node)

    def _build(self, weights: dict[N, float]) -> _Scores:
        names = _unique_names(weights)
        pairs = tuple((key_bytes(name) + b":", names[name]) for name in sorted(names))
        triples = tuple((prefix, 1 / weights[node], node) for prefix, node in pairs)
        uniform = len(set(weights.values())) <= 1
        return _Scores(pairs, triples, dict(weights), uniform)

    def _owner(self, state: _Scores, key: bytes) -> N:
        return self._owners(state, key, 1)[0]

    def node_for(self, key: Key) -> N:
        """The node with the highest score for ``key``.

        Runtime complexity: O(N), one hash per node (and one logarithm if the
        weights differ).
        """
        state = self._state  # one read: a concurrent add() publishes a new state
        if not state.pairs:
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
        hash128, seed = mmh3.hash128, DEFAULT_SEED
        owner: Any = None
        if state.uniform:
            best = -1
            for prefix, node in state.pairs:
                draw = hash128(prefix + data, seed, signed=False) >> 76  # see _TO_UNIT
                if draw > best:
                    best, owner = draw, node
        else:
            log, to_unit, top = math.log, _TO_UNIT, -math.inf
            for prefix, inverse_weight, node in state.triples:
                draw = hash128(prefix + data, seed, signed=False) >> 76
                # ln(u) / w: the larger, the larger the score -w / ln(u)
                score = log((draw + 0.5) * to_unit) * inverse_weight
                if score > top:
                    top, owner = score, node
        result: N = owner
        return result

    def _scores(self, state: _Scores, key: bytes) -> list[float]:
        """Per node, in name order: what ``node_for`` compares (the larger wins)."""
        hash128, seed = mmh3.hash128, DEFAULT_SEED
        if state.uniform:
            return [
                float(hash128(prefix + key, seed, signed=False) >> 76) for prefix, _ in state.pairs
            ]
        log, to_unit = math.log, _TO_UNIT
        return [
            log(((hash128(prefix + key, seed, signed=False) >> 76) + 0.5) * to_unit) * inverse
            for prefix, inverse, _ in state.triples
        ]

    def _owners(self, state: _Scores, key: bytes, n: int) -> list[N]:
        """The ``n`` nodes of highest score, highest first (ties: by name, as ``node_for``)."""
        scores = self._scores(state, key)
        top = heapq.nlargest(n, range(len(scores)), key=scores.__getitem__)
        return [state.pairs[index][1] for index in top]

    def _check(self) -> None:
        """Assert the invariants: one entry per node, by distinct name in order,
        each with its encoded name and inverse weight, and the uniform flag true
        exactly when the weights are equal. Runtime complexity: O(N log N)."""
        super()._check()
        state = self._state
        assert state.weights == self._weights
        assert len(state.pairs) == len(state.triples) == len(self._weights)
        names = [str(node) for _, node in state.pairs]
        assert names == sorted(set(names))
        for (prefix, node), (prefix3, inverse, node3) in zip(
            state.pairs, state.triples, strict=True
        ):
            assert prefix == prefix3 == key_bytes(str(node)) + b":"
            assert node == node3
            assert inverse == 1 / self._weights[node]
        assert state.uniform == (len(set(self._weights.values())) <= 1)

    # -- plans ----------------------------------------------------------------

    def _moves(self, old: _Scores, new: _Scores) -> list[Move[N]] | None:
        """The expected flows when one node is added, removed or reweighted.

        Scores are exponential races: node ``j``'s ``-ln(u)/w_j`` is exponential
        with rate ``w_j``, and the smallest wins. When one node ``x`` changes
        weight from ``a`` to ``b`` (0 meaning absent) and the others weigh ``R``
        in all, node ``i`` trades ``w_i * |1/(R + a) - 1/(R + b)|`` of the key
        space with ``x``: to ``x`` if it grew, from it if it shrank. For an add
        that is ``share_i * b / W_new`` from each node; for a remove, ``x``'s
        share spread over the others in proportion to weight. ``fraction`` is the
        expected share of the key space. Placements that differ in more than one
        node get no moves (``None``); ``move_for`` stays exact either way.
        """
        before, after = old.weights, new.weights
        changed = [x for x in before.keys() | after.keys() if before.get(x) != after.get(x)]
        if not changed:
            return []
        if len(changed) > 1:
            return None
        (x,) = changed
        a, b = before.get(x, 0.0), after.get(x, 0.0)
        rest = {node: weight for node, weight in before.items() if node != x}
        total = sum(rest.values())
        if not total:
            return []
        per_weight = abs(1 / (total + a) - 1 / (total + b))
        if b > a:
            return [Move(node, x, weight * per_weight) for node, weight in rest.items()]
        return [Move(x, node, weight * per_weight) for node, weight in rest.items()]

    def _shares(self, state: _Scores) -> dict[N, float]:
        """Each node's weight over the total: what the logarithmic method gives exactly."""
        total = sum(state.weights.values())
        return {node: weight / total for node, weight in state.weights.items()}


def _check_name(node: object) -> None:
    """Refuse a node whose ``str`` embeds a memory address (it differs per process)."""
    name = str(node)
    if _UNSTABLE_NAME.search(name):
        raise ConfigurationError(
            f"the name of node {name} holds a memory address, which differs between "
            f"processes, so keys would land elsewhere in each; use a node whose str() is "
            f"stable, such as a host name"
        )


def _unique_names(nodes: Iterable[Any]) -> dict[str, Any]:
    """``{str(node): node}``; :class:`~scalekit.errors.DuplicateNode` if two nodes share a name."""
    names: dict[str, Any] = {}
    for node in nodes:
        name = str(node)
        if name in names:
            raise DuplicateNode(
                f"{node!r} and {names[name]!r} are both named {name!r}: placement hashes "
                f"str(node), so they would collide; give each node a distinct name"
            )
        names[name] = node
    return names
