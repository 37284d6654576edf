"""Jump consistent hashing (Lamping & Veach, 2014): no table, numbered buckets."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, TypeVar

from scalekit._validate import check_count, type_name
from scalekit.errors import ArgumentTypeError, ConfigurationError
from scalekit.hashing import murmur3_64
from scalekit.sharding._base import Key, ShardingScheme
from scalekit.sharding._plan import Move

__all__ = ["JumpHash", "jump_bucket"]

N = TypeVar("N", bound=Hashable)

_MASK = (1 << 64) - 1
_LCG = 2862933555777941757  # the multiplier of the published algorithm (Figure 1 of the paper)
_TWO_31 = float(1 << 31)
_GOLDEN = 0x9E3779B97F4A7C15

_MAX_TRIES_PER_NODE = 32
"""``nodes_for`` of JumpHash and MaglevHash draws at most this many times per node before
it fills the list deterministically; with equal shares the cap is a ~e**-32 event per key,
kept only to bound the work."""


def jump_bucket(key: int, buckets: int) -> int:
    """The bucket in ``[0, buckets)`` of the unsigned 64-bit ``key``: the published algorithm.

    It is ``JumpConsistentHash`` of Lamping & Veach, "A Fast, Minimal Memory,
    Consistent Hash Algorithm" (arXiv:1406.2294), step for step: the 64-bit LCG
    ``key = key * 2862933555777941757 + 1 (mod 2**64)`` draws where the key jumps
    next, ``j = (b + 1) * (2**31 / ((key >> 33) + 1))`` in double precision, so it
    gives the same buckets as the C++ of the paper (and Guava-free ports of it).

    Runtime complexity: O(log buckets) expected.

    >>> jump_bucket(42, 57), jump_bucket(256, 1024), jump_bucket(16045690984833335023, 255)
    (43, 520, 237)
    """
    if isinstance(key, bool) or not isinstance(key, int):
        raise ArgumentTypeError(f"key must be an int, got {type_name(key)}")
    if not 0 <= key <= _MASK:
        raise ConfigurationError(f"key must be an unsigned 64-bit int, got {_described(key)}")
    return _jump(key, check_count(buckets, "buckets", minimum=1))


def _described(number: int) -> str:
    """``number`` for a message (a negative one, or its size when it is long)."""
    return repr(number) if number.bit_length() <= 128 else f"an int of {number.bit_length()} bits"


def _jump(key: int, buckets: int) -> int:
    """:func:`jump_bucket` on arguments known to be good."""
    b, j = -1, 0
    while j < buckets:
        b = j
        key = (key * _LCG + 1) & _MASK
        j = int((b + 1) * (_TWO_31 / ((key >> 33) + 1)))
    return b


def _remix(value: int) -> int:
    """The next 64-bit draw of a key's replica sequence (the splitmix64 step)."""
    value = (value + _GOLDEN) & _MASK
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK
    return value ^ (value >> 31)


class JumpHash(ShardingScheme[N, tuple[Any, ...]]):
    """Jump consistent hash: the nodes are numbered buckets, and a key jumps among them.

    A key's 64-bit hash (:func:`~scalekit.hashing.murmur3_64`) drives the
    published jump algorithm (:func:`jump_bucket`), which picks bucket ``b`` in
    ``[0, N)``; the owner is the ``b``-th node, in the order nodes were added.
    It needs no memory beyond the node list, balances as well as a uniform hash
    (every bucket gets ``1/N`` of the keys in expectation), and when a bucket is
    appended exactly the keys that land on it move, ``1/(N+1)`` of them, an equal
    share from every old bucket.

    The price is that buckets are numbered: :meth:`add` appends a node at the end,
    :meth:`remove` removes only the last node (removing another would renumber the
    buckets after it and move most keys; it raises
    :class:`~scalekit.errors.ConfigurationError`), and nodes are unweighted (any
    weight but 1 raises :class:`~scalekit.errors.ConfigurationError`). Use
    ``RendezvousHash`` or ``MaglevHash`` where any node can leave.

    Plans are described by their expected flows (:meth:`plan_add` moves an
    expected ``1/(N(N+1))`` of the key space from each old bucket to the new
    one); ``plan.move_for(key)`` is exact, as for every scheme.

    Runtime complexity: ``node_for`` O(log N) (about ``ln N + 1`` LCG steps);
    ``nodes_for(key, n)`` O(n log N) expected for ``n`` well below ``N`` (each
    replica is one more jump; ``n = N`` takes about ``N ln N`` jumps);
    ``add``/``remove`` O(N).

    >>> sharder = JumpHash(["db-0", "db-1", "db-2"])
    >>> sharder.node_for("user:42") in sharder.nodes
    True
    >>> plan = sharder.plan_add("db-3")
    >>> sorted(plan.sources), sorted(plan.targets)
    (['db-0', 'db-1', 'db-2'], ['db-3'])
    >>> round(plan.moved_fraction, 4)  # 1/4 of the keys, in expectation
    0.25
    >>> sharder.remove("db-0")
    Traceback (most recent call last):
      ...
    scalekit.errors.ConfigurationError: JumpHash can only remove its last node ('db-2'), ...
    """

    # -- the structure --------------------------------------------------------

    def _build(self, weights: dict[N, float]) -> tuple[Any, ...]:
        for node, weight in weights.items():
            if weight != 1:
                raise ConfigurationError(
                    f"JumpHash is unweighted: every bucket gets 1/N of the keys, so the weight "
                    f"of {node!r} must be 1, not {weight!r} (use RendezvousHash or MaglevHash "
                    f"for weights)"
                )
        return tuple(weights)

    def _without(self, node: N) -> dict[N, float]:
        weights = super()._without(node)  # UnknownNode if absent
        last = next(reversed(self._weights))
        if node != last:
            raise ConfigurationError(
                f"JumpHash can only remove its last node ({last!r}), not {node!r}: buckets are "
                f"numbered in the order nodes were added, and removing bucket "
                f"{self.nodes.index(node)} of {len(self._weights)} would renumber every bucket "
                f"after it and move most keys. Remove the nodes after it first, or use "
                f"RendezvousHash or MaglevHash, where any node can leave"
            )
        return weights

    def _owner(self, state: tuple[Any, ...], key: bytes) -> N:
        owner: N = state[_jump(murmur3_64(key), len(state))]
        return owner

    def node_for(self, key: Key) -> N:
        """The node of the bucket that ``key`` jumps to last.

        Runtime complexity: O(log N).
        """
        buckets = self._state  # one read: a concurrent add() publishes a new state
        count = len(buckets)
        if not count:
            return super().node_for(key)  # raises NoNodeAvailable
        h = murmur3_64(key)  # encodes key (key_bytes): no str reaches mmh3
        b, j = -1, 0
        while j < count:  # jump_bucket, inlined
            b = j
            h = (h * _LCG + 1) & _MASK
            j = int((b + 1) * (_TWO_31 / ((h >> 33) + 1)))
        owner: N = buckets[b]
        return owner

    def _owners(self, state: tuple[Any, ...], key: bytes, n: int) -> list[N]:
        """The owner, then nodes drawn by jumping with fresh hashes, skipping repeats.

        Draw ``t`` is ``jump_bucket(h_t, N)`` where ``h_0`` is the key's hash (so
        the first node is the owner) and ``h_{t+1} = splitmix64(h_t)``; a node
        already listed is skipped. Each listed node is uniform over the nodes not
        yet listed, so replicas balance like owners, and a draw depends only on
        the key and ``N``. Appending a bucket can only turn some draws into the
        new bucket, so the new node takes the place of the old node it drew over
        (which drops back to its next draw): a key's first ``n`` nodes change only
        if the new node joins them, and then almost always by that one node (by
        two for about 1% of keys at ``n = 3, N = 10``, when it takes two draws).
        A key whose draws fail to cover the list after ``32 * N`` tries
        (probability about ``e**-32``) gets the missing nodes in bucket order
        after its last draw.
        """
        count = len(state)
        chosen: list[int] = []
        seen: set[int] = set()
        h = murmur3_64(key)
        for _ in range(max(1, _MAX_TRIES_PER_NODE * count)):
            bucket = _jump(h, count)
            if bucket not in seen:
                seen.add(bucket)
                chosen.append(bucket)
                if len(chosen) == n:
                    return [state[b] for b in chosen]
            h = _remix(h)
        start = chosen[-1]  # a 1 in e**32 event (the tests lower the cap to reach it)
        for step in range(1, count):
            bucket = (start + step) % count
            if bucket not in seen:
                seen.add(bucket)
                chosen.append(bucket)
                if len(chosen) == n:
                    break
        return [state[b] for b in chosen]

    def _check(self) -> None:
        """Assert the invariants: the buckets are the nodes in the order they were
        added, every weight 1. Runtime complexity: O(N)."""
        super()._check()
        assert self._state == tuple(self._weights)
        assert all(weight == 1 for weight in self._weights.values())

    def _moves(self, old: tuple[Any, ...], new: tuple[Any, ...]) -> list[Move[N]]:
        """The expected flows between two bucket lists (exact per key is ``move_for``).

        From ``A`` buckets to ``B > A``, a key stays in its bucket with
        probability ``A/B`` and otherwise lands uniformly on a new bucket, so old
        bucket ``i`` sends ``1/(A*B)`` of the key space to each new bucket (for
        one added bucket: ``1/(N(N+1))`` from each). Shrinking is the mirror
        image: each removed bucket sends ``1/(A*B)`` to each surviving one. A
        bucket whose node differs between the lists (not reachable through
        ``add``/``remove``) sends its whole share along. ``fraction`` is the
        expected share of the key space; the realized share of any finite key set
        scatters around it.
        """
        a, b = len(old), len(new)
        if not a or not b:
            return []
        flows: dict[tuple[Any, Any], float] = {}

        def flow(source: Any, target: Any, fraction: float) -> None:
            if source != target:
                flows[source, target] = flows.get((source, target), 0.0) + fraction

        low, high = min(a, b), max(a, b)
        for i in range(low):
            flow(old[i], new[i], 1 / high)
            for extra in range(low, high):
                if a < b:
                    flow(old[i], new[extra], 1 / (a * b))
                else:
                    flow(old[extra], new[i], 1 / (a * b))
        return [Move(source, target, fraction) for (source, target), fraction in flows.items()]

    def _shares(self, state: tuple[Any, ...]) -> dict[N, float]:
        """``1/N`` each: jump hashing is as even as the key hash."""
        return {node: 1 / len(state) for node in state}
