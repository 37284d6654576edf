"""Hot keys: finding the keys that take most of the traffic, and spreading their reads.

:class:`HotKeyDetector` keeps the approximate top-k of a stream of keys in O(k)
memory (Space-Saving). :class:`KeySplitter` spreads the reads of a key over its
first ``replicas`` preference nodes, and :class:`HotKeyRouter` does that only
for the keys the detector finds hot, sending every other read to its owner.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from scalekit._validate import check_count, check_node, check_number, type_name
from scalekit.errors import ArgumentTypeError, NoNodeAvailable
from scalekit.sharding._base import Key, Sharder, check_key

__all__ = ["Estimate", "HotKeyDetector", "HotKeyRouter", "KeySplitter"]

K = TypeVar("K", bound=Hashable)
N = TypeVar("N", bound=Hashable)

_ATTEMPTS = 4  # lookups retried when the sharder's nodes change under them


@dataclass(frozen=True)
class Estimate:
    """A key's estimated count: the true count lies in ``[count - error, count]``."""

    __slots__ = ("count", "error")

    count: int
    error: int

    @property
    def guaranteed(self) -> int:
        """The least the true count can be: ``count - error``."""
        return self.count - self.error


class _Bucket:
    """The keys whose estimated count is ``count``; a node of the ascending list."""

    __slots__ = ("count", "keys", "next", "prev")

    def __init__(self, count: int) -> None:
        self.count = count
        self.keys: dict[Any, None] = {}  # an ordered set
        self.prev: _Bucket | None = None
        self.next: _Bucket | None = None


class _Entry:
    """A monitored key: its bucket and the overestimation it came in with."""

    __slots__ = ("bucket", "error")

    def __init__(self, bucket: _Bucket, error: int) -> None:
        self.bucket = bucket
        self.error = error


_NOWHERE = _Bucket(0)  # the bucket of an entry not yet placed


class HotKeyDetector(Generic[K]):
    """The heavy hitters of a stream of keys, in O(k) memory: Space-Saving.

    The Space-Saving algorithm of Metwally, Agrawal and El Abbadi (2005)
    monitors at most ``k`` keys with a counter each. A monitored key's counter
    grows with it; an unmonitored key takes the place of a key with the least
    count ``m`` and starts from ``m`` plus its count, with an ``error`` of ``m``.
    After a stream of total weight ``total``:

    - every key seen more than ``total / k`` times is monitored;
    - a key's :class:`Estimate` brackets its true count:
      ``count - error <= true count <= count`` (for a key that is not
      monitored the estimate is ``(m, m)``, or ``(0, 0)`` while fewer than ``k``
      keys were ever seen);
    - the monitored counts add up to ``total``.

    The counters live in a *stream summary*: buckets of equal count in a
    doubly linked list in ascending order, so the least count is the first
    bucket and a unit increment moves a key to the next bucket (or a new one
    beside it). Keys may be any hashable values. The detector is thread-safe.
    Counts only grow: :meth:`clear` starts a new window.

    Runtime complexity: :meth:`add` O(1) for a count of 1, O(min(k, count)) in
    general (the buckets passed have distinct counts); :meth:`estimate` O(1);
    :meth:`top` O(n) for the first ``n``. Memory O(k).

    >>> detector = HotKeyDetector(2)
    >>> for key in ["a", "b", "a", "c", "a"]:
    ...     detector.add(key)
    >>> detector.top()
    [('a', 3), ('c', 2)]
    >>> detector.estimate("c")  # came in over "b", which had a count of 1
    Estimate(count=2, error=1)
    >>> detector.estimate("b")  # not monitored: at most the least count
    Estimate(count=2, error=2)
    """

    def __init__(self, k: int) -> None:
        self._k = check_count(k, "k", minimum=1)
        self._lock = threading.Lock()
        self._entries: dict[K, _Entry] = {}
        self._first: _Bucket | None = None  # least count
        self._last: _Bucket | None = None  # greatest count
        self._total = 0

    # -- the stream summary -----------------------------------------------------

    def _put(self, key: K, entry: _Entry, count: int, start: _Bucket | None) -> None:
        """Put ``key`` in the bucket of ``count``, searching forward from ``start``
        (a bucket whose count is at most ``count``; ``None`` for the first)."""
        before: _Bucket | None = None
        bucket = self._first if start is None else start
        while bucket is not None and bucket.count < count:
            before, bucket = bucket, bucket.next
        if bucket is None or bucket.count != count:
            new = _Bucket(count)
            new.prev, new.next = before, bucket
            if before is None:
                self._first = new
            else:
                before.next = new
            if bucket is None:
                self._last = new
            else:
                bucket.prev = new
            bucket = new
        bucket.keys[key] = None
        entry.bucket = bucket

    def _unlink_if_empty(self, bucket: _Bucket) -> None:
        if bucket.keys:
            return
        before, after = bucket.prev, bucket.next
        if before is None:
            self._first = after
        else:
            before.next = after
        if after is None:
            self._last = before
        else:
            after.prev = before

    # -- updates ------------------------------------------------------------------

    def add(self, key: K, count: int = 1) -> None:
        """Count ``count`` more occurrences of ``key``.

        Raises :class:`~scalekit.errors.ConfigurationError` unless ``count`` is
        a positive int, and :class:`TypeError` for an unhashable key; either way
        nothing changes.

        Runtime complexity: O(1) for a count of 1, O(min(k, count)) in general.
        """
        count = check_count(count, "count", minimum=1)
        check_node(key, "key")
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                old = entry.bucket
                del old.keys[key]
                self._put(key, entry, old.count + count, old)
                self._unlink_if_empty(old)
            elif len(self._entries) < self._k:
                entry = _Entry(_NOWHERE, 0)
                self._put(key, entry, count, None)
                self._entries[key] = entry
            else:  # take the place of a key with the least count
                first = self._first
                assert first is not None
                victim, _ = first.keys.popitem()
                entry = self._entries.pop(victim)
                entry.error = first.count
                self._put(key, entry, first.count + count, first)
                self._entries[key] = entry
                self._unlink_if_empty(first)
            self._total += count

    def clear(self) -> None:
        """Forget every key and count (start a new window).

        Runtime complexity: O(1) (the old summary is left to the collector).
        """
        with self._lock:
            self._entries = {}
            self._first = self._last = None
            self._total = 0

    # -- reading --------------------------------------------------------------------

    def estimate(self, key: K) -> Estimate:
        """The estimated count of ``key`` and its possible overestimation.

        The true count lies in ``[count - error, count]``.

        Runtime complexity: O(1).
        """
        check_node(key, "key")
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                return Estimate(entry.bucket.count, entry.error)
            if len(self._entries) < self._k or self._first is None:
                return Estimate(0, 0)  # no key was ever evicted: never seen
            least = self._first.count
            return Estimate(least, least)

    def top(self, n: int | None = None) -> list[tuple[K, int]]:
        """The monitored keys with their estimated counts, greatest first.

        At most ``n`` of them (all with ``None``); keys of equal count come in
        the order they reached it. Raises
        :class:`~scalekit.errors.ConfigurationError` unless ``n`` is ``None`` or
        a non-negative int.

        Runtime complexity: O(n).
        """
        if n is not None:
            n = check_count(n, "n")
        with self._lock:
            wanted = len(self._entries) if n is None else min(n, len(self._entries))
            found: list[tuple[K, int]] = []
            bucket = self._last
            while bucket is not None and len(found) < wanted:
                count = bucket.count
                for key in bucket.keys:
                    found.append((key, count))
                    if len(found) == wanted:
                        break
                bucket = bucket.prev
            return found

    @property
    def k(self) -> int:
        """How many keys are monitored at most."""
        return self._k

    @property
    def total(self) -> int:
        """The total count added since the start (or the last :meth:`clear`)."""
        return self._total

    def __len__(self) -> int:
        """How many keys are monitored (at most ``k``)."""
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` is monitored."""
        try:
            return key in self._entries
        except TypeError:  # unhashable: never monitored
            return False

    def _check(self) -> None:
        """Assert the invariants of the stream summary: buckets in strictly
        ascending count, linked both ways, none empty; every monitored key in the
        bucket of its count and nowhere else; at most ``k`` keys; each error below
        its count; the counts adding up to the total. Runtime complexity: O(k)."""
        with self._lock:
            seen: dict[Any, _Bucket] = {}
            previous: _Bucket | None = None
            bucket = self._first
            while bucket is not None:
                assert bucket.prev is previous
                assert bucket.keys, "an empty bucket is linked"
                if previous is not None:
                    assert previous.count < bucket.count
                for key in bucket.keys:
                    assert key not in seen
                    seen[key] = bucket
                previous, bucket = bucket, bucket.next
            assert self._last is previous
            assert seen.keys() == self._entries.keys()
            assert len(self._entries) <= self._k
            for key, entry in self._entries.items():
                assert entry.bucket is seen[key]
                assert 0 <= entry.error < entry.bucket.count
            assert sum(entry.bucket.count for entry in self._entries.values()) == self._total

    def __repr__(self) -> str:
        return f"{type(self).__name__}(k={self._k}, monitored={len(self)}, total={self._total})"


def _check_sharder(sharder: object) -> None:
    if not isinstance(sharder, Sharder):
        raise ArgumentTypeError(f"sharder must be a Sharder, got {type_name(sharder)}")


def _check_rng(rng: object) -> None:
    if rng is not None and not isinstance(rng, random.Random):
        raise ArgumentTypeError(f"rng must be a random.Random or None, got {type_name(rng)}")


class KeySplitter(Generic[N]):
    """Spreads one key over ``replicas`` nodes: reads from any copy, writes to all.

    A key's copies are the first ``replicas`` nodes of its preference list
    (``sharder.nodes_for(key, replicas)``, the owner first), or every node when
    the sharder has fewer. :meth:`read_node` picks one copy at random (from
    ``rng``, a :class:`random.Random` you may pass for repeatable runs);
    :meth:`write_nodes` lists them all, since a write (or invalidation) must
    reach every copy a read may come from. When nodes come and go, a key's
    copies change as its preference list does.

    Runtime complexity: one ``nodes_for(key, replicas)`` lookup per call.

    >>> from scalekit.sharding import HashRing
    >>> ring = HashRing(["a", "b", "c", "d"])
    >>> splitter = KeySplitter(ring, replicas=3)
    >>> copies = splitter.write_nodes("config")
    >>> copies == ring.nodes_for("config", 3)
    True
    >>> splitter.read_node("config") in copies
    True
    """

    def __init__(
        self, sharder: Sharder[N], replicas: int = 3, *, rng: random.Random | None = None
    ) -> None:
        _check_sharder(sharder)
        replicas = check_count(replicas, "replicas", minimum=1)
        _check_rng(rng)
        self._sharder = sharder
        self._replicas = replicas
        self._rng = random.Random() if rng is None else rng

    def write_nodes(self, key: Key) -> list[N]:
        """Every copy of ``key``, the owner first: where its writes go.

        Raises :class:`~scalekit.errors.NoNodeAvailable` when the sharder has no
        nodes, and :class:`TypeError` for a key that is not ``str`` or ``bytes``.
        """
        check_key(key)
        sharder = self._sharder
        for _ in range(_ATTEMPTS):
            wanted = min(self._replicas, len(sharder.nodes))
            if wanted == 0:
                raise NoNodeAvailable("the sharder has no nodes")
            try:
                return sharder.nodes_for(key, wanted)
            except NoNodeAvailable:  # a node went away between the two reads
                continue
        raise NoNodeAvailable("the sharder's nodes kept changing")

    def read_node(self, key: Key) -> N:
        """One copy of ``key``, at random: where a read goes."""
        copies = self.write_nodes(key)
        return copies[self._rng.randrange(len(copies))]

    @property
    def replicas(self) -> int:
        """How many nodes each key is spread over (at most)."""
        return self._replicas

    @property
    def sharder(self) -> Sharder[N]:
        """The sharder that gives each key its preference list."""
        return self._sharder

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._sharder!r}, replicas={self._replicas})"


class HotKeyRouter(KeySplitter[N]):
    """Sends the reads of hot keys to any of ``replicas`` copies, others to the owner.

    Every :meth:`read_node` call counts one read of the key in ``detector``,
    then checks whether the key is *hot*: its guaranteed count (``count -
    error``) is at least ``threshold`` of all the reads counted. A hot key's
    read goes to one of its copies at random, like :class:`KeySplitter`; any
    other read goes to the key's owner. With ``threshold >= 1 / detector.k``,
    every key above the threshold is monitored, so none is missed for want of
    room; a key is never hot by overestimation alone. While the detector has
    counted few reads, a few reads make a key hot: :meth:`HotKeyDetector.clear`
    the detector now and then to follow a changing workload. The detector
    counts keys as given, so ``"k"`` and ``b"k"`` are counted apart.

    :meth:`write_nodes` returns all the copies of every key, hot or not: a key
    may turn hot at any time, and a copy written while it was hot must not be
    read stale when it turns hot again.

    Runtime complexity: :meth:`read_node` O(1) in the detector plus one
    ``node_for`` lookup (a cold key) or ``nodes_for(key, replicas)`` (a hot one).

    >>> from scalekit.sharding import HashRing
    >>> ring = HashRing(["a", "b", "c", "d"])
    >>> router = HotKeyRouter(ring, HotKeyDetector(100), replicas=3, threshold=0.2)
    >>> for i in range(50):
    ...     _ = router.read_node(f"user:{i}")
    >>> router.is_hot("user:7")
    False
    >>> router.read_node("user:7") == ring.node_for("user:7")
    True
    >>> for _ in range(50):
    ...     _ = router.read_node("trending")
    >>> router.is_hot("trending")
    True
    >>> router.read_node("trending") in ring.nodes_for("trending", 3)
    True
    """

    def __init__(
        self,
        sharder: Sharder[N],
        detector: HotKeyDetector[Any],
        *,
        replicas: int = 3,
        threshold: float = 0.01,
        rng: random.Random | None = None,
    ) -> None:
        if not isinstance(detector, HotKeyDetector):
            raise ArgumentTypeError(f"detector must be a HotKeyDetector, got {type_name(detector)}")
        threshold = check_number(threshold, "threshold", minimum=0, maximum=1, min_inclusive=False)
        super().__init__(sharder, replicas, rng=rng)
        self._detector = detector
        self._threshold = threshold

    def is_hot(self, key: Key) -> bool:
        """Whether ``key``'s guaranteed count is at least ``threshold`` of the total.

        Runtime complexity: O(1).
        """
        check_key(key)
        guaranteed = self._detector.estimate(key).guaranteed
        return guaranteed > 0 and guaranteed >= self._threshold * self._detector.total

    def read_node(self, key: Key) -> N:
        """Count a read of ``key``; return one of its copies if it is hot, else its owner.

        Raises :class:`~scalekit.errors.NoNodeAvailable` when the sharder has no
        nodes, and :class:`TypeError` for a key that is not ``str`` or ``bytes``
        (and then counts nothing).
        """
        check_key(key)
        self._detector.add(key)
        if self.is_hot(key):
            return super().read_node(key)
        return self._sharder.node_for(key)

    @property
    def detector(self) -> HotKeyDetector[Any]:
        """The detector that counts the reads."""
        return self._detector

    @property
    def threshold(self) -> float:
        """The share of all reads that makes a key hot."""
        return self._threshold

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self._sharder!r}, {self._detector!r}, "
            f"replicas={self._replicas}, threshold={self._threshold!r})"
        )
