"""W-TinyLFU: admission by estimated frequency, as in Caffeine.

New items enter a small LRU *window* (1% of the capacity). An item pushed out of
the window is admitted to the *main* space only if it has been asked for more
often than the item main would evict for it; otherwise it is the one that goes.
Frequencies come from a count-min sketch of 4-bit-range counters that is halved
periodically, so it forgets old popularity. Main is a segmented LRU: items read
while on *probation* are promoted to *protected* (80% of main).

The effect: a burst of one-off keys (a scan, a crawler, a batch job) passes
through the window without flushing the items that are really hot, where LRU
would lose them all. See Einziger, Friedman and Manes, "TinyLFU: A Highly
Efficient Cache Admission Policy" (2017).
"""

from __future__ import annotations

import copy
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from scalekit._validate import check_count, check_number
from scalekit.cache._base import Cache, EvictionListener, K, V, builtin_popitem
from scalekit.protocols import Clock

__all__ = ["FrequencySketch", "TinyLFUCache"]

_MASK64 = (1 << 64) - 1
_MIX = 0x9E3779B97F4A7C15  # an odd 64-bit constant (the golden ratio's bits)
_SEED_PROBE = "scalekit.cache.FrequencySketch"
_HALVED = bytes(count >> 1 for count in range(256))
_MAX_CAPACITY = 1 << 26  # 4 rows of 2**28 one-byte counters: 1 GiB, already absurd
_UNBOUNDED_CAPACITY = 1 << 20  # what the sketch of an unbounded cache is sized for


class FrequencySketch:
    """A count-min sketch of how often each key was seen, that slowly forgets.

    Four rows of small counters (saturating at 15); a key's estimate is the
    smallest of its four counters, which over-counts only on collisions. Each
    row has at least ``4 * capacity`` counters (16 bytes per cached item in
    all), so that a hot set filling the cache occupies a quarter of a row at
    most and a one-off key rarely hits hot counters in all four rows (with one
    counter per item, an unlucky hash seed let a scan flush the hot set).
    After ``10 * capacity`` increments every counter is halved, so yesterday's
    hits fade. Runtime complexity: O(1) per increment and per estimate;
    O(width) per halving, amortized O(1).

    Keys are placed by the builtin :func:`hash` (mixed by one multiply), never by
    a C hash of their text: any hashable key works, a ``str`` holding a lone
    surrogate included. The counters are only valid in the process that counted
    them (``str`` hashes are salted per process); see ``__setstate__``.

    >>> sketch = FrequencySketch(capacity=100)
    >>> for _ in range(3):
    ...     sketch.increment("hot")
    >>> sketch.frequency("hot"), sketch.frequency("cold")
    (3, 0)
    """

    __slots__ = ("_additions", "_mask", "_rows", "_sample_size")

    def __init__(self, capacity: int) -> None:
        check_count(capacity, "capacity", minimum=1, maximum=_MAX_CAPACITY)
        width = 16
        while width < 4 * capacity:
            width *= 2
        self._mask = width - 1
        self._rows = [bytearray(width) for _ in range(4)]
        self._sample_size = max(10 * capacity, 16)
        self._additions = 0

    def increment(self, key: Any) -> None:
        """Count one more sighting of ``key``."""
        # One multiply mixes the key's hash (ints hash to themselves); each row
        # reads a different 16-bit slice of the result.
        mixed = hash(key) * _MIX & _MASK64
        mask = self._mask
        row0, row1, row2, row3 = self._rows
        index = mixed & mask
        if row0[index] < 15:
            row0[index] += 1
        index = (mixed >> 16) & mask
        if row1[index] < 15:
            row1[index] += 1
        index = (mixed >> 32) & mask
        if row2[index] < 15:
            row2[index] += 1
        index = (mixed >> 48 ^ mixed) & mask
        if row3[index] < 15:
            row3[index] += 1
        self._additions += 1
        if self._additions >= self._sample_size:
            self._halve()

    def frequency(self, key: Any) -> int:
        """The estimated number of recent sightings of ``key`` (at most 15)."""
        mixed = hash(key) * _MIX & _MASK64
        mask = self._mask
        row0, row1, row2, row3 = self._rows
        count = row0[mixed & mask]
        other = row1[(mixed >> 16) & mask]
        if other < count:
            count = other
        other = row2[(mixed >> 32) & mask]
        if other < count:
            count = other
        other = row3[(mixed >> 48 ^ mixed) & mask]
        return other if other < count else count

    def __copy__(self) -> FrequencySketch:
        twin = FrequencySketch.__new__(FrequencySketch)
        twin._mask = self._mask
        twin._rows = [bytearray(row) for row in self._rows]
        twin._sample_size = self._sample_size
        twin._additions = self._additions
        return twin

    # Counters are indexed by hash(), which for str and bytes is salted per
    # process: unpickled under another seed they would describe other keys.
    def __getstate__(self) -> tuple[int, int, list[bytes], int, int]:
        rows = [bytes(row) for row in self._rows]
        return (hash(_SEED_PROBE), self._mask, rows, self._sample_size, self._additions)

    def __setstate__(self, state: tuple[int, int, list[bytes], int, int]) -> None:
        probe, self._mask, rows, self._sample_size, self._additions = state
        if probe == hash(_SEED_PROBE):
            self._rows = [bytearray(row) for row in rows]
        else:
            self._rows = [bytearray(len(row)) for row in rows]
            self._additions = 0

    def _halve(self) -> None:
        self._rows = [row.translate(_HALVED) for row in self._rows]
        self._additions //= 2


class TinyLFUCache(Cache[K, V]):
    """A W-TinyLFU cache: the best hit ratio of the policies here on skewed traffic.

    Like Caffeine's policy: an LRU window takes new items, and an item leaving it
    displaces an item of the main space only if it is estimated to be used more
    often. Scans of one-off keys cannot flush the hot set, which is where LRU
    fails. With ``getsizeof`` the capacity is counted in sizes (the window and
    the protected segment are still counted in items). Reads and writes cost
    more than LRU (a sketch update each), still O(1).

    Args:
        maxsize: as for every cache (``math.inf``: unbounded, the sketch sized
            for 2**20 items).
        window_fraction: the share of ``maxsize`` the LRU window takes, in (0, 1).

    Runtime complexity: O(1) amortized for every read and write.

    >>> cache = TinyLFUCache(maxsize=100)
    >>> for _ in range(10):
    ...     cache["hot"] = cache.get("hot", 0) + 1
    >>> for i in range(1000):            # a scan of one-off keys
    ...     cache[f"scan:{i}"] = i
    >>> cache["hot"]
    10
    """

    def __init__(
        self,
        maxsize: float,
        getsizeof: Callable[[V], float] | None = None,
        *,
        ttl: float | timedelta | None = None,
        timer: Clock = time.monotonic,
        on_evict: EvictionListener | None = None,
        stats: bool = False,
        window_fraction: float = 0.01,
    ) -> None:
        check_number(
            window_fraction,
            "window_fraction",
            minimum=0,
            maximum=1,
            min_inclusive=False,
            max_inclusive=False,
        )
        super().__init__(maxsize, getsizeof, ttl=ttl, timer=timer, on_evict=on_evict, stats=stats)
        self._data = {}
        capacity = min(int(maxsize), _MAX_CAPACITY) if maxsize != math.inf else _UNBOUNDED_CAPACITY
        self._window_max = max(1, int(capacity * window_fraction))
        self._protected_max = int((capacity - self._window_max) * 0.8)
        self._window: OrderedDict[K, None] = OrderedDict()
        self._probation: OrderedDict[K, None] = OrderedDict()
        self._protected: OrderedDict[K, None] = OrderedDict()
        self._where: dict[K, OrderedDict[K, None]] = {}  # key -> the segment it is in
        self._sketch = FrequencySketch(max(capacity, 1))

    # A read: count it, and move the key up its segment.
    def _policy_read(self, key: K) -> None:
        self._sketch.increment(key)
        segment = self._where[key]
        if segment is not self._probation:
            segment.move_to_end(key)
            return
        del segment[key]
        protected = self._protected
        protected[key] = None
        self._where[key] = protected
        if len(protected) > self._protected_max:
            demoted, _ = protected.popitem(False)
            segment[demoted] = None
            self._where[demoted] = segment

    _policy_written = _policy_read

    def _policy_added(self, key: K) -> None:
        self._sketch.increment(key)
        window = self._window
        window[key] = None
        self._where[key] = window
        while len(window) > self._window_max:
            moved, _ = window.popitem(False)
            self._probation[moved] = None
            self._where[moved] = self._probation

    def _policy_removed(self, key: K) -> None:
        del self._where.pop(key)[key]

    def _policy_victim(self) -> K:
        """Choose what leaves so that a new item fits in the window.

        When the window is full, its oldest item (the candidate) either moves to
        main's probation, displacing main's victim, or is itself the victim.
        """
        window = self._window
        main_victim = self._main_victim()
        if len(window) < self._window_max or main_victim is None:
            if main_victim is not None:
                return main_victim
            return next(iter(window))
        candidate = next(iter(window))
        sketch = self._sketch
        if sketch.frequency(candidate) > sketch.frequency(main_victim):
            del window[candidate]
            self._probation[candidate] = None
            self._where[candidate] = self._probation
            return main_victim
        return candidate

    def _main_victim(self) -> K | None:
        for segment in (self._probation, self._protected):
            if segment:
                key: K = next(iter(segment))
                return key
        return None

    def _policy_cleared(self) -> None:
        self._where.clear()
        self._window.clear()
        self._probation.clear()
        self._protected.clear()

    @builtin_popitem
    def popitem(self) -> tuple[K, V]:
        """Remove and return the item the policy would evict next (expired items first).

        Raises :class:`KeyError` when empty. Runtime complexity: O(1) amortized.
        """
        return super().popitem()

    def _copy_policy_from(self, other: Cache[K, V]) -> None:
        assert isinstance(other, TinyLFUCache)
        self._window = other._window.copy()
        self._probation = other._probation.copy()
        self._protected = other._protected.copy()
        self._where = {}
        for segment in (self._window, self._probation, self._protected):
            self._where.update(dict.fromkeys(segment, segment))
        self._sketch = copy.copy(other._sketch)

    def _check_policy(self) -> None:
        segments = (self._window, self._probation, self._protected)
        keys = [key for segment in segments for key in segment]
        assert len(keys) == len(set(keys)), "a key sits in two segments"
        assert set(keys) == set(self._data)
        for segment in segments:
            for key in segment:
                assert self._where[key] is segment
        assert len(self._where) == len(keys)
        assert len(self._window) <= self._window_max
        assert len(self._protected) <= self._protected_max
