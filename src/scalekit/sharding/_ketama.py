"""Ketama: the consistent-hash ring of libketama, placed exactly as libketama places it.

libketama (Last.fm, 2007) is the ring most memcached clients implement. A
scalekit :class:`KetamaRing` and a libketama-based client given the same servers
and weights send every key to the same server, so the two can share a pool.

How libketama places a server (``ketama_create_continuum`` in ``ketama.c``)::

    pct = (float)memory / (float)total_memory;         /* single precision */
    ks  = floorf(pct * 40.0 * (float)numservers);      /* hashes of the server */
    for k in 0 .. ks-1:
        digest = md5("%s-%d" % (address, k))
        4 points: bytes 4i..4i+3 of digest, little-endian, i = 0..3

and finds a key's server (``ketama_get_server``): the first point at or after
the little-endian first 4 bytes of ``md5(key)``, wrapping to the first point.
Here a node's address is ``str(node)`` and its memory is its weight.

Details that decide placement, and that other ports get wrong:

* ``ks`` is computed in single precision, so it is sometimes one less than the
  exact ``40 * n * weight / total``: 61 servers of equal weight get 39 hashes
  each, not 40, and weights ``21, 10, 9`` give the first server 62, not 63.
  :func:`hash_count` reproduces the C arithmetic bit for bit.
* A key whose hash equals a point belongs to that point (libketama's binary
  search returns the first point ``>= hash``; ``bisect_right`` would skip it).
* Two servers on one point: libketama ``qsort``-s the points, so the tie goes to
  whichever comes first after the sort. glibc's ``qsort`` (a merge sort; checked
  on glibc 2.36) keeps equal points in server order, so the server listed first
  wins; scalekit gives the point to the node added first. (Ties are rare: about
  3 in 10,000 rings of 10 servers have one.)

Keys are hashed whole; libketama hashes C strings, which end at a NUL byte.

uhashring's ``hash_fn='ketama'`` mode agrees with all this except these three
points: it computes ``ks`` in exact integers, looks up with ``bisect_right``, and
gives a shared point to the server listed last.

twemproxy (nutcracker's ``distribution: ketama``) and libmemcached's weighted
ketama (``MEMCACHED_BEHAVIOR_KETAMA_WEIGHTED``) place the same md5 points and look
keys up the same way, but count a server's hashes differently, all in single
precision (``ketama_update`` in twemproxy's ``nc_ketama.c``)::

    pct = (float)weight / (float)total_weight;
    points = floorf((float)(pct * 160 / 4 * (float)nservers + 0.0000000001)) * 4;

``pct * 160`` and ``* (float)nservers`` are rounded to ``float`` one at a time, so
where libketama rounds ``62.99999714`` down to 62 hashes, twemproxy gets 63: with
weights ``21, 10, 9`` the first server has 252 points there and 248 here, and
pools of 25, 47, 50, 55, 71, 94 or 100 equal servers differ too.
``KetamaRing(points="twemproxy")`` counts as they do, and ``hash=`` picks the key
hash (twemproxy's ``hash:`` setting, :data:`scalekit.hashing.HASHKIT_HASHES`);
the points stay md5, as in twemproxy.
"""

from __future__ import annotations

import hashlib
import importlib
import math
import struct
from bisect import bisect_left
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any, NamedTuple, TypeVar

from scalekit.errors import ArgumentTypeError, ConfigurationError, DuplicateNode
from scalekit.hashing import hashkit_hash
from scalekit.sharding._base import Key, ShardingScheme, key_bytes
from scalekit.sharding._plan import Move
from scalekit.sharding._ring import _arc_length, arc_moves

__all__ = ["HASHES_PER_SERVER", "POINT_COUNTS", "KetamaRing", "hash_count", "ketama_hash"]

N = TypeVar("N", bound=Hashable)

HASHES_PER_SERVER = 40
"""libketama's hashes per server of average weight (4 points each: 160 points)."""

POINT_COUNTS = ("libketama", "twemproxy")
"""How :class:`KetamaRing` may count a server's points: libketama's arithmetic, or
the one twemproxy and libmemcached's weighted ketama share."""

_SPACE = 1 << 32  # the ketama circle: points and key hashes are unsigned 32-bit


def _find_md5() -> Callable[[bytes], Any]:
    """CPython's built-in MD5 (about twice as fast as OpenSSL's on short keys, and
    allowed under FIPS), else :func:`hashlib.md5`."""
    try:
        md5: Callable[[bytes], Any] = importlib.import_module("_md5").md5
    except (ImportError, AttributeError):  # pragma: no cover - a build without it
        return hashlib.md5
    return md5


_md5 = _find_md5()
_first_u32 = struct.Struct("<I").unpack_from
_four_u32 = struct.Struct("<4I").unpack
_FLOAT32 = struct.Struct("f")


def ketama_hash(key: Key) -> int:
    """libketama's ``ketama_hashi``: the first 4 bytes of ``md5(key)``, little-endian.

    Runtime complexity: O(len(key)).

    >>> ketama_hash("test")  # the vector of libketama's python binding tests
    3446378249
    """
    value: int = _first_u32(_md5(key_bytes(key)).digest())[0]
    return value


def _float32(value: float) -> float:
    """``value`` rounded to single precision, as a C ``float`` would hold it."""
    try:
        rounded: float = _FLOAT32.unpack(_FLOAT32.pack(value))[0]
    except OverflowError:
        return math.inf
    return rounded


def hash_count(weight: float, total: float, servers: int, *, points: str = "libketama") -> int:
    """How many md5 hashes (4 points each) libketama, or twemproxy, gives a server.

    Both start from ``float pct = (float)weight / (float)total``. libketama takes
    ``floorf(pct * 40.0 * (float)numservers)``: the product in double precision,
    rounded back to single precision by ``floorf``'s parameter, so the result can
    be one less than the exact quotient. twemproxy (``points="twemproxy"``) takes
    ``floorf((float)(pct * 160 / 4 * (float)nservers + 0.0000000001))``, each
    product rounded to single precision in turn (as x86-64 and arm64 builds
    compute), which lands on the other side of a whole number now and then.

    Runtime complexity: O(1).

    >>> hash_count(1, 3, 3), hash_count(1, 61, 61), hash_count(21, 40, 3)
    (40, 39, 62)
    >>> hash_count(21, 40, 3, points="twemproxy"), hash_count(1, 25, 25, points="twemproxy")
    (63, 39)
    """
    _check_points(points)
    pct = _float32(_float32(weight) / _float32(total))
    if points == "twemproxy":
        per_hash = _float32(_float32(pct * 4 * HASHES_PER_SERVER) / 4)
        return math.floor(_float32(_float32(per_hash * _float32(servers)) + 0.0000000001))
    return math.floor(_float32(pct * HASHES_PER_SERVER * _float32(servers)))


def _check_points(points: object) -> str:
    """``points`` if it names a way of counting points, else the error saying which do."""
    if not isinstance(points, str):
        raise ArgumentTypeError(f"points must be a str, not {type(points).__name__}")
    if points not in POINT_COUNTS:
        choices = ", ".join(repr(choice) for choice in POINT_COUNTS)
        raise ConfigurationError(f"unknown points {points!r}; choose one of {choices}")
    return points


def _key_hash_called(name: str) -> Callable[[Key], int]:
    """The key hash ``name`` stands for: :func:`ketama_hash` for ``"md5"`` (the
    faster md5), else the hashkit function of that name."""
    if name == "md5" and type(name) is str:
        return ketama_hash
    return hashkit_hash(name)


def _server_points(name: str, hashes: int, start: int = 0) -> list[int]:
    """The points of hashes ``start .. hashes-1`` of the server called ``name``."""
    points: list[int] = []
    for k in range(start, hashes):
        points.extend(_four_u32(_md5(key_bytes(f"{name}-{k}")).digest()))
    return points


class _Continuum(NamedTuple):
    points: list[int]  # sorted, distinct
    owners: list[Any]  # owners[i] holds points[i]; one more entry, owners[0], for the wrap
    nodes: tuple[Any, ...]  # every node in order, also those too light to get a point


class KetamaRing(ShardingScheme[N, _Continuum]):
    """A consistent-hash ring that places keys exactly as libketama does.

    Each node ``x`` of weight ``w`` gets ``hash_count(w, W, n)`` md5 digests of
    ``f"{x}-{k}"`` (about ``40 * n * w / W`` for ``n`` nodes of total weight
    ``W``), 4 points per digest, on a circle of ``2**32``; a key belongs to the
    first point at or after ``ketama_hash(key)``. Use the server addresses
    (``"10.0.1.1:11211"``) as nodes to agree with libketama clients; libketama
    keeps addresses in 22-byte buffers, so it handles names of up to 21 bytes.

    ``points="twemproxy"`` counts each node's points as twemproxy and
    libmemcached's weighted ketama do (see :func:`hash_count`), and ``hash=``
    names the key hash, one of :data:`scalekit.hashing.HASHKIT_HASHES` (twemproxy's
    ``hash:`` setting; ``"md5"``, libketama's, by default). Both name a server
    differently from libketama: an unnamed server on port 11211 is hashed as
    ``"host-k"``, without the port, any other as ``"host:port-k"``, and a named
    one (``- 127.0.0.1:22122:1 server1``) as ``"server1-k"``; so the nodes must be
    ``"10.0.1.1"``, ``"127.0.0.1:22122"`` or ``"server1"`` (a node called
    ``"10.0.1.1:11211"`` shares a twemproxy pool's placement for 1 key in n).

    Ketama's point counts depend on the node count and the total weight, so with
    unequal weights (or when libketama's rounding drops a hash) adding a node
    also moves some keys between other nodes; plans show exactly which.
    A node too light to get a single point owns no key, and comes last in
    :meth:`nodes_for`. Plans' ranges are arcs ``(start, end]`` of the 32-bit
    ketama circle (see :meth:`hash_of`).

    Runtime complexity: ``node_for`` O(log P) for P (about 160 n) points;
    ``add``/``remove`` O(P log P) (the continuum is rebuilt, point lists cached).

    >>> ring = KetamaRing({"127.0.0.1:11211": 600, "127.0.0.1:11212": 400})
    >>> ring.node_for("test")  # libketama's python binding test agrees
    '127.0.0.1:11211'
    >>> ring.points_of("127.0.0.1:11211"), ring.points_of("127.0.0.1:11212")
    (192, 128)
    >>> ring = KetamaRing(["10.0.1.1:11211", "10.0.1.2:11211", "10.0.1.3:11211"])
    >>> ring.plan_add("10.0.1.4:11211").targets
    frozenset({'10.0.1.4:11211'})
    >>> pool = KetamaRing({"a": 21, "b": 10, "c": 9}, points="twemproxy", hash="fnv1a_64")
    >>> pool.points_of("a"), KetamaRing({"a": 21, "b": 10, "c": 9}).points_of("a")
    (252, 248)
    """

    def __init__(
        self,
        nodes: Iterable[N] | Mapping[N, float] = (),
        *,
        points: str = "libketama",
        hash: str = "md5",
    ) -> None:
        self._points = _check_points(points)
        self._key_hash: Callable[[Key], int] = _key_hash_called(hash)
        self._hash_name = hash
        self._points_by_name: dict[str, list[int]] = {}
        super().__init__(nodes)

    @property
    def points(self) -> str:
        """How this ring counts points: ``"libketama"`` or ``"twemproxy"``."""
        return self._points

    @property
    def hash(self) -> str:
        """The name of the key hash (``"md5"`` unless given ``hash=``)."""
        return self._hash_name

    def _settings(self) -> dict[str, Any]:
        return {"points": self._points, "hash": self._hash_name}

    # -- the continuum ----------------------------------------------------------

    def _check_new(self, weights: dict[N, float], node: N) -> None:
        super()._check_new(weights, node)
        name = str(node)
        for other in weights:
            if str(other) == name:
                raise DuplicateNode(
                    f"{node!r} has the same name as {other!r}; ketama places a node by str(node)"
                )

    def _hashes(self, weights: dict[N, float]) -> dict[N, int]:
        total = _float32(math.fsum(weights.values()))
        if not 0 < total < math.inf:
            raise ConfigurationError(
                "ketama computes weight shares in single precision: the total weight "
                f"must lie within (1e-38, 3e38), got {math.fsum(weights.values())!r}"
            )
        count, points = len(weights), self._points
        return {
            node: hash_count(weight, total, count, points=points)
            for node, weight in weights.items()
        }

    def _points_of_name(self, name: str, hashes: int) -> list[int]:
        cache = self._points_by_name
        points = cache.get(name)
        if points is None or len(points) < 4 * hashes:
            known = [] if points is None else points
            points = known + _server_points(name, hashes, len(known) // 4)
            cache[name] = points
        return points[: 4 * hashes]

    def _build(self, weights: dict[N, float]) -> _Continuum:
        holders: dict[int, Any] = {}
        if weights:
            for node, hashes in self._hashes(weights).items():
                for point in self._points_of_name(str(node), hashes):
                    holders.setdefault(point, node)  # a tie: the node added first keeps it
            if len(self._points_by_name) > 2 * len(weights) + 64:  # forget removed nodes
                names = {str(node) for node in weights}
                cache = self._points_by_name
                self._points_by_name = {n: p for n, p in cache.items() if n in names}
        points = sorted(holders)
        owners = [holders[point] for point in points]
        owners += owners[:1]
        return _Continuum(points, owners, tuple(weights))

    def points_of(self, node: N) -> int:
        """How many points ``node`` has on the continuum (4 per md5 hash).

        Runtime complexity: O(n) for n nodes.

        >>> KetamaRing(["a", "b", "c"]).points_of("b")
        160
        """
        weight = self.weight_of(node)
        total = _float32(math.fsum(self._weights.values()))
        return 4 * hash_count(weight, total, len(self._weights), points=self._points)

    def hash_of(self, key: Key) -> int:
        """The position of ``key`` on the circle (what the ranges of a plan refer to):
        ``ketama_hash(key)``, or the hash ``hash=`` named.

        Runtime complexity: O(len(key)).
        """
        return self._key_hash(key)

    # -- lookups ------------------------------------------------------------------

    def _owner(self, state: _Continuum, key: bytes) -> N:
        owner: N = state.owners[bisect_left(state.points, self._key_hash(key))]
        return owner

    def node_for(self, key: Key) -> N:
        """The node of the first point at or after ``hash_of(key)``, wrapping around.

        Raises :class:`~scalekit.errors.NoNodeAvailable` when there is no node.

        Runtime complexity: O(log P).
        """
        state = self._state  # one read: a concurrent add() publishes a new state
        owners = state.owners
        if not owners:
            return super().node_for(key)  # raises NoNodeAvailable
        key_hash = self._key_hash
        if key_hash is not ketama_hash:
            owner: N = owners[bisect_left(state.points, key_hash(key))]
            return owner
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
            data = key_bytes(key)  # int as its digits, a subclass; ArgumentTypeError else
        found: N = owners[bisect_left(state.points, _first_u32(_md5(data).digest())[0])]
        return found

    def _owners(self, state: _Continuum, key: bytes, n: int) -> list[N]:
        points, owners = state.points, state.owners
        start = bisect_left(points, self._key_hash(key))
        found: list[N] = []
        count = len(points)
        for step in range(count):
            node = owners[(start + step) % count]
            if node not in found:
                found.append(node)
                if len(found) == n:
                    return found
        found += [node for node in state.nodes if node not in found]  # nodes with no point
        return found[:n]

    # -- plans and shares ---------------------------------------------------------

    def _moves(self, old: _Continuum, new: _Continuum) -> list[Move[N]]:
        """The arcs whose owner differs, merged into ranges per (source, target).

        Only an arc that ends at a point of one continuum but not the other, or at
        a point whose holder changed, can change owner: O(D log P) for D such points.
        """
        if not old.points or not new.points:
            return []
        old_holder = dict(zip(old.points, old.owners, strict=False))
        new_holder = dict(zip(new.points, new.owners, strict=False))
        ends = {p for p, node in old_holder.items() if new_holder.get(p, _NONE) != node}
        ends.update(p for p in new_holder if p not in old_holder)
        return arc_moves(old.points, old.owners, new.points, new.owners, ends, _SPACE)

    def _check(self) -> None:
        """Assert the invariants: sorted distinct points, the wrap entry, every
        point held by a node that has it, and a continuum a fresh build agrees with."""
        super()._check()
        assert _check_points(self._points) == self._points
        assert self._key_hash is _key_hash_called(self._hash_name)
        state = self._state
        assert state.nodes == tuple(self._weights)
        assert state.points == sorted(set(state.points))
        assert len(state.owners) == len(state.points) + (1 if state.points else 0)
        assert bool(state.points) == bool(self._weights)
        if state.points:
            assert state.owners[-1] == state.owners[0]
        assert len(state.points) <= sum(self.points_of(node) for node in self._weights)
        assert self._build(self._weights) == state

    def _shares(self, state: _Continuum) -> dict[N, float]:
        shares: dict[N, float] = dict.fromkeys(state.nodes, 0.0)
        points, owners = state.points, state.owners
        for index, point in enumerate(points):
            shares[owners[index]] += _arc_length(points[index - 1], point, _SPACE) / _SPACE
        return shares


_NONE: Any = object()
