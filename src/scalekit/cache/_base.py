"""The shared base of every cache policy: sizes, expiry, stats and listeners.

A policy subclass keeps its eviction order and implements four hooks, called on
the slow paths only (the hot paths of each policy are written out inline):

- ``_policy_added(key)``: a new key was stored in ``self._data``.
- ``_policy_read(key)``: an existing key was read (a hit).
- ``_policy_written(key)``: an existing key was overwritten.
- ``_policy_removed(key)``: a key was deleted from ``self._data``.
- ``_policy_victim()``: the key the policy evicts next (the cache is not empty).

A key with a deadline is expired once ``timer() >= deadline``. Deadlines live in
one of two places, so that the expired keys are found without scanning the live
ones:

- ``_expires``: a dict ``key -> deadline`` of the keys written with the cache's
  own ``ttl``, in write order (an overwrite re-inserts its key), with
  ``_expiry_queue``, a deque of ``key, deadline, key, deadline, ...`` in the same
  order, holding the very float object that ``_expires`` holds. A deadline is
  only appended when it is at least ``_queue_tail``, the last one appended, so
  the queue is in deadline order: the expired keys are a prefix, each found and
  removed in O(1). Queue deletion is lazy: an entry counts only while
  ``_expires[key] is deadline`` (each deadline is a float of its own, computed
  by one write); an overwritten or removed key leaves a stale entry, dropped at
  the front, or all at once when the queue holds more than
  ``2 * len(_expires) + 64`` entries. A plain dict and a deque of two pointers
  per entry take about 28 bytes less per key than an ordered dict (a full
  ``TTLCache``: 128 bytes per entry instead of 156, on CPython 3.11).
- ``_own_expires``: ``key -> deadline`` for keys given their own ``ttl`` (or
  written while the clock went backwards), with ``_expiry_heap`` of
  ``(deadline, seq, key)`` to find them in O(log n). Heap deletion is lazy: an
  entry counts only while ``_own_expires[key]`` still equals its deadline, and
  stale entries are dropped at the front or all at once when they outnumber
  the live ones.
"""

from __future__ import annotations

import heapq
import inspect
import itertools
import math
import time
from collections import deque
from collections.abc import (
    Callable,
    Hashable,
    ItemsView,
    Iterable,
    Iterator,
    Mapping,
    MutableMapping,
    ValuesView,
)
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, TypeVar, cast

from scalekit._validate import (
    MAX_COUNT,
    check_bool,
    check_callable,
    check_number,
    check_seconds,
    type_name,
)
from scalekit.errors import ArgumentTypeError, ConfigurationError, ItemTooLarge
from scalekit.protocols import Clock

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
D = TypeVar("D")

EvictionCause = Literal["size", "expired"]
EvictionListener = Callable[[Any, Any, EvictionCause], object]

_MISSING: Any = object()
_DEFAULT_TTL: Any = object()
_INF = math.inf


@dataclass(frozen=True)
class CacheStats:
    """A snapshot of a cache's counters, taken by :meth:`Cache.stats`.

    ``hits`` and ``misses`` count lookups (``cache[key]``, ``get``, ``get_many``);
    ``evictions`` counts items removed to make room; ``expirations`` counts items
    removed because their TTL ran out.
    """

    hits: int
    misses: int
    evictions: int
    expirations: int

    @property
    def lookups(self) -> int:
        """``hits + misses``."""
        return self.hits + self.misses

    @property
    def hit_ratio(self) -> float:
        """``hits / lookups``, or 0.0 before the first lookup."""
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0


def _check_ttl(ttl: object, what: str = "ttl") -> float:
    """A TTL in seconds (a number or a timedelta), > 0, at most a century, or ``math.inf``."""
    return check_seconds(ttl, what, allow_inf=True)


def _check_maxsize(maxsize: object) -> None:
    if not (isinstance(maxsize, float) and maxsize == _INF):
        check_number(maxsize, "maxsize", minimum=0, maximum=MAX_COUNT)


_EPOCH = datetime(1970, 1, 1)
_EPOCH_UTC = datetime(1970, 1, 1, tzinfo=timezone.utc)
_DATETIME_MAX = (datetime.max - _EPOCH).total_seconds()


def _datetime_seconds(moment: datetime) -> float:
    """A datetime as seconds since 1970 (naive and aware ones each on their own scale)."""
    return (moment - (_EPOCH if moment.tzinfo is None else _EPOCH_UTC)).total_seconds()


class _DatetimeClock:
    """The clock a cache reads when its ``timer`` returns datetimes: their seconds."""

    __slots__ = ("timer",)

    def __init__(self, timer: Callable[[], datetime]) -> None:
        self.timer = timer

    def __call__(self) -> float:
        return _datetime_seconds(self.timer())

    def __getstate__(self) -> Any:
        return self.timer

    def __setstate__(self, timer: Callable[[], datetime]) -> None:
        self.timer = timer


class _FrozenClock:
    """The clock a cache reads while ``with cache.timer:`` holds its time still."""

    __slots__ = ("now",)

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def __getstate__(self) -> Any:
        return self.now

    def __setstate__(self, now: float) -> None:
        self.now = now


class _Timer:
    """What ``cache.timer`` is: the cache's clock, which ``with cache.timer:`` stops.

    Calling it returns the time of the ``timer`` the cache was built with. Inside
    ``with cache.timer as now:`` the cache's time stands still at ``now``: every
    operation of the block sees the same instant (as in cachetools, to make a
    sequence of steps atomic with respect to expiry). Other attributes are those of
    the wrapped timer (a fake clock's ``tick()``). Each cache, and each copy of a
    cache, has one of its own over the same wrapped timer.

    >>> from scalekit.cache import TTLCache
    >>> from scalekit.testing import FakeClock
    >>> clock = FakeClock()
    >>> cache = TTLCache(maxsize=10, ttl=1, timer=clock)
    >>> cache["k"] = 1
    >>> with cache.timer as now:
    ...     clock.advance(5)
    ...     ("k" in cache, cache.timer() == now)
    5.0
    (True, True)
    >>> "k" in cache
    False
    """

    __slots__ = ("_cache", "_frozen", "_nesting", "_timer")

    def __init__(self, cache: Cache[Any, Any], timer: Callable[[], Any]) -> None:
        self._cache = cache
        self._timer = timer
        self._nesting = 0
        self._frozen: Any = None

    def __call__(self) -> Any:
        return self._frozen if self._nesting else self._timer()

    def __enter__(self) -> Any:
        if not self._nesting:
            self._frozen = now = self._timer()
            cache = self._cache
            cache._timer = _FrozenClock(
                _datetime_seconds(now) if isinstance(now, datetime) else now
            )
        self._nesting += 1
        return self._frozen

    def __exit__(self, *exc_info: object) -> None:
        self._nesting -= 1
        if not self._nesting:
            self._frozen = None
            self._cache._timer = self._cache._clock

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in _Timer.__slots__:
            raise AttributeError(name)
        return getattr(self._timer, name)

    def __repr__(self) -> str:
        return f"Timer({self._timer!r})"

    def __getstate__(self) -> Any:
        return (self._cache, self._timer)

    def __setstate__(self, state: Any) -> None:
        self._cache, self._timer = state
        self._nesting = 0
        self._frozen = None


class Cache(MutableMapping[K, V], Generic[K, V]):
    """Base class of the cache policies; a bounded :class:`~collections.abc.MutableMapping`.

    Args:
        maxsize: the capacity, counted in items, or in the units of ``getsizeof``
            (a number >= 0 up to 2**63 - 1, or ``math.inf``).
        getsizeof: returns the size of a value (default: every value has size 1).
        ttl: seconds an item lives after it is written (default: forever): a
            number or a :class:`~datetime.timedelta`, > 0 and at most a century,
            or ``math.inf``.
        timer: the clock for ``ttl`` (default :func:`time.monotonic`). With a
            ``timedelta`` ttl it may return :class:`~datetime.datetime` objects
            (``timer=datetime.now``), as in cachetools.
        on_evict: called as ``on_evict(key, value, cause)`` for every item removed
            to make room (``cause="size"``) or because it expired
            (``cause="expired"``), after the cache is consistent again.
        stats: record hits and misses for :meth:`stats` (off by default, as in
            Caffeine: counting costs every read a little).

    A cache built with none of ``getsizeof``, ``ttl``, ``on_evict`` and ``stats``
    runs on a leaner private subclass (``_Plain...``) whose reads and writes skip
    every check those features need; it turns back into its public class the
    first time an item is given its own TTL. ``isinstance`` is unaffected.

    Raises:
        ArgumentTypeError: an argument has the wrong type (``bool`` is no number).
        ConfigurationError: ``maxsize`` is negative, NaN or too large, or ``ttl``
            is not positive, NaN or longer than a century.
    """

    _builtin_popitems: ClassVar[set[Any]] = set()

    def __new__(cls, *args: Any, **kwargs: Any) -> Cache[K, V]:
        # Pick the lean twin before __init__ sets any attribute, so that the
        # interpreter's attribute caches see one class for the object's whole life.
        variants = cls.__dict__.get("_lean_variants")
        if variants:
            lean = _lean_variant(cls, variants, args, kwargs)
            if lean is not None:
                return super().__new__(lean)
        return super().__new__(cls)

    def __init__(
        self,
        maxsize: float,
        getsizeof: Callable[[V], float] | None = None,
        *,
        ttl: float | timedelta | None = None,
        timer: Clock = time.monotonic,
        on_evict: EvictionListener | None = None,
        stats: bool = False,
    ) -> None:
        _check_maxsize(maxsize)
        seconds = None if ttl is None else _check_ttl(ttl)
        check_callable(timer, "timer")
        check_callable(on_evict, "on_evict", allow_none=True)
        check_callable(getsizeof, "getsizeof", allow_none=True)
        check_bool(stats, "stats")
        clock: Callable[[], float] = timer
        if isinstance(ttl, timedelta) and isinstance(cast(Any, timer)(), datetime):
            # cachetools' TTLCache(ttl=timedelta(...), timer=datetime.now): read the
            # datetimes as seconds, and take the general paths, which check that a
            # deadline stays within datetime.max.
            clock = _DatetimeClock(cast(Any, timer))
            general = type(self).__dict__.get("_general")
            if general is not None:
                self.__class__ = general
        if getsizeof is not None:
            self.getsizeof = getsizeof  # type: ignore[method-assign, assignment]
        self._maxsize = maxsize
        # The most unit-sized items that fit: what the inline __setitem__ compares with.
        self._maxlen = maxsize if maxsize == _INF else int(maxsize)
        self._ttl: float | None = None if seconds == _INF else seconds
        self._clock = clock  # the clock while no `with cache.timer:` holds it still
        self._timer = clock  # the clock every operation reads
        self._timer_view = _Timer(self, timer)
        self._datetime_clock = clock is not timer
        self._on_evict = on_evict
        self._sized = self.getsizeof is not Cache.getsizeof
        self._sizes: dict[K, float] = {}
        self._currsize: float = 0
        # A subclass that overrides popitem() sees every eviction, as in cachetools.
        self._evict_via_popitem = type(self).popitem not in Cache._builtin_popitems
        self._record_stats = bool(stats)
        self._deferred_errors: list[Exception] | None = None
        # New unit-sized items take the short path of _store().
        self._fast_store = (
            not self._sized
            and not self._evict_via_popitem
            and self._maxlen >= 1
            and not self._datetime_clock
        )
        self._expires: dict[K, float] = {}
        self._expiry_queue: deque[Any] = deque()  # key, deadline, key, deadline, ...
        self._queue_tail = -_INF  # the last deadline appended to _expiry_queue
        self._own_expires: dict[K, float] = {}
        self._expiry_heap: list[tuple[float, int, K]] = []
        self._seq = 0
        self._next_expiry = _INF
        self._hits = 0
        self._misses = 0
        self._evictions = 0
        self._expirations = 0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        general = cls.__dict__.get("_general")
        if general is not None:
            # A lean twin answers type(cache).__name__ (and so repr) with its public
            # name, as cachetools' tests expect; its __qualname__ stays its own, for pickle.
            cls.__name__ = general.__name__

    _lean_variants: ClassVar[dict[str, type[Cache[Any, Any]]]] = {}
    """Set on each public policy class: its lean twins for caches with no extras,
    ``"untimed"`` (no ``ttl``) and ``"timed"`` (a ``ttl``)."""

    _is_plain: ClassVar[bool] = False
    """True on a lean twin that assumes no item ever expires."""

    _general: ClassVar[type[Cache[Any, Any]]]
    """On a lean twin: the public class it stands in for."""

    _ordered_data: ClassVar[bool] = False
    """True when ``_data`` itself is in eviction order (LRU, FIFO): the victim is
    its first key and the policy needs no hook when a key is added or removed."""

    # The storage of the policy. LRU and FIFO keep it in eviction order.
    _data: dict[K, V]

    # -- policy hooks -------------------------------------------------------

    def _policy_added(self, key: K) -> None:
        """A new key was stored in ``_data``."""

    def _policy_read(self, key: K) -> None:
        """An existing key was read (a hit)."""

    def _policy_written(self, key: K) -> None:
        """An existing key was overwritten."""

    def _policy_removed(self, key: K) -> None:
        """A key was deleted from ``_data``."""

    def _policy_victim(self) -> K:  # pragma: no cover - every policy overrides it
        """The key to evict next; the cache is not empty."""
        raise NotImplementedError

    # -- attributes ---------------------------------------------------------

    @property
    def maxsize(self) -> float:
        """The capacity of the cache."""
        return self._maxsize

    @property
    def currsize(self) -> float:
        """The total size of the live items (their count, without ``getsizeof``).

        Runtime complexity: O(1) amortized (expired items are purged first).
        """
        if self._next_expiry != _INF and self._next_expiry <= self._timer():
            self._purge_and_notify(self._timer())
        return self._currsize if self._sized else len(self._data)

    @property
    def ttl(self) -> float | None:
        """The TTL given to items written without their own, or ``None``."""
        return self._ttl

    @property
    def timer(self) -> _Timer:
        """The clock the TTLs are measured with; ``with cache.timer:`` stops it.

        See :class:`_Timer`."""
        return self._timer_view

    @staticmethod
    def getsizeof(value: Any) -> float:
        """Return the size of ``value``: 1, unless ``getsizeof=`` was given."""
        return 1

    # -- reading ------------------------------------------------------------

    def __missing__(self, key: K) -> V:
        """Called by ``cache[key]`` on a miss; raises :class:`KeyError`.

        Subclasses may override it to compute (and store) the value.
        """
        raise KeyError(key)

    def _deadline(self, key: K) -> float | None:
        """The deadline of ``key``, or ``None`` if it never expires."""
        deadline = self._expires.get(key)
        if deadline is None and self._own_expires:
            deadline = self._own_expires.get(key)
        return deadline

    def _expired(self, key: K) -> bool:
        """Whether ``key`` (present) has a deadline that has passed."""
        deadline = self._deadline(key)
        return deadline is not None and deadline <= self._timer()

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` is present and not expired; changes no order and no stats.

        Runtime complexity: O(1).
        """
        if key not in self._data:
            return False
        if self._next_expiry == _INF:
            return True
        deadline = self._deadline(key)
        return deadline is None or self._timer() < deadline

    def peek(self, key: K, default: D = None) -> V | D:  # type: ignore[assignment]
        """Return the value of ``key`` without counting a use or a hit.

        Runtime complexity: O(1).
        """
        if key in self:
            return self._data[key]
        return default

    def __len__(self) -> int:
        """The number of live items. Runtime complexity: O(1) amortized."""
        if self._next_expiry != _INF and self._next_expiry <= self._timer():
            self._purge_and_notify(self._timer())
        return len(self._data)

    def __iter__(self) -> Iterator[K]:
        """Iterate over the live keys, in eviction order where there is one.

        As in cachetools: the keys are those present when the iteration starts;
        keys inserted meanwhile are not visited, keys removed meanwhile are
        skipped, and so are expired keys (which stay until something purges them).
        Reading or writing the cache while iterating is safe. Runtime complexity:
        O(n) for the whole iteration.
        """
        data = self._data
        order = self._iteration_order()
        if self._next_expiry == _INF:
            for key in order:
                if key in data:
                    yield key
            return
        now = self._timer()  # one clock read: the iteration sees one instant
        deadline_of = self._deadline
        for key in order:
            if key in data:
                deadline = deadline_of(key)
                if deadline is None or now < deadline:
                    yield key

    def _iteration_order(self) -> list[K]:
        """The keys in the order iteration gives them (a snapshot)."""
        return list(self._data)

    @classmethod
    def _public_name(cls) -> str:
        general: type[Cache[Any, Any]] = cls.__dict__.get("_general", cls)
        return general.__name__

    def __repr__(self) -> str:
        items = ", ".join(f"{k!r}: {v!r}" for k, v in self.items())
        return (
            f"{self._public_name()}({{{items}}}, maxsize={self._maxsize!r}, "
            f"currsize={self.currsize!r})"
        )

    def _live_items(self) -> list[tuple[K, V]]:
        now = self._timer()
        if self._next_expiry <= now:
            self._purge_and_notify(now)
        data = self._data
        return [(key, data[key]) for key in self._iteration_order()]

    def items(self) -> ItemsView[K, V]:
        """A view of the live ``(key, value)`` pairs; reading it counts no use and no hit."""
        return _ItemsView(self)

    def values(self) -> ValuesView[V]:
        """A view of the live values; reading it counts no use and no hit."""
        return _ValuesView(self)

    def get(self, key: K, default: Any = None) -> Any:
        """Return the value of ``key`` (a use and a hit), or ``default`` (a miss).

        Unlike ``cache[key]``, never calls ``__missing__``. Runtime complexity: O(1).
        """
        try:
            value = self._data[key]
        except KeyError:
            self._misses += 1
            return default
        expires = self._expires
        if expires or self._own_expires:
            expires_at: float | None
            try:
                expires_at = expires[key]
            except KeyError:
                expires_at = self._own_expires.get(key)
            if expires_at is not None and expires_at <= self._timer():
                self._expired_miss(key, call_missing=False)
                return default
        self._policy_read(key)
        self._hits += 1
        return value

    def __getitem__(self, key: K) -> V:
        """Return the value of ``key`` (a use and a hit); on a miss, ``__missing__(key)``.

        Runtime complexity: O(1).
        """
        try:
            value = self._data[key]
        except KeyError:
            self._misses += 1
            return self.__missing__(key)
        expires = self._expires
        if expires or self._own_expires:
            expires_at: float | None
            try:
                expires_at = expires[key]
            except KeyError:
                expires_at = self._own_expires.get(key)
            if expires_at is not None and expires_at <= self._timer():
                return self._expired_miss(key)
        self._policy_read(key)
        self._hits += 1
        return value

    def get_many(self, keys: Iterable[K]) -> dict[K, V]:
        """Return the live keys among ``keys`` with their values (each a lookup).

        Runtime complexity: O(len(keys)).
        """
        if not isinstance(keys, Iterable) or isinstance(keys, (str, bytes)):
            raise ArgumentTypeError(f"keys must be an iterable of keys, got {type_name(keys)}")
        found: dict[K, V] = {}
        with _ListenerErrorsDeferred(self):
            for key in keys:
                value = self.get(key, _MISSING)
                if value is not _MISSING:
                    found[key] = value
        return found

    def ttl_of(self, key: K) -> float | None:
        """Seconds until ``key`` expires, or ``None`` if it never does.

        Raises :class:`KeyError` when ``key`` is missing or expired.
        Runtime complexity: O(1).
        """
        if key not in self._data:
            raise KeyError(key)
        expires_at = self._deadline(key)
        if expires_at is None:
            return None
        remaining = expires_at - self._timer()
        if remaining <= 0:
            raise KeyError(key)
        return remaining

    # -- writing ------------------------------------------------------------

    def set(self, key: K, value: V, *, ttl: float | timedelta | None = None) -> None:
        """Store ``value`` under ``key``, living ``ttl`` seconds (default: the cache's ``ttl``).

        ``ttl=math.inf`` stores an item that never expires, whatever the cache's ``ttl``;
        a :class:`~datetime.timedelta` is read as its seconds.

        Raises:
            ItemTooLarge: the value alone is larger than ``maxsize`` (a ``ValueError``).
            ValueError: ``getsizeof`` returned a negative size.
            ConfigurationError: ``ttl`` is not positive, NaN or above a century.
            ArgumentTypeError: ``ttl`` is not a number (``bool`` included).

        Runtime complexity: O(1) amortized; O(log n) with a per-item ``ttl``.
        """
        if ttl is None:
            self._store(key, value, self._ttl)
        else:
            seconds = _check_ttl(ttl)
            self._store(key, value, None if seconds == _INF else seconds, own_ttl=True)

    def add(self, key: K, value: V, *, ttl: float | timedelta | None = None) -> bool:
        """Store ``value`` only if ``key`` is absent or expired; return whether it did.

        The :class:`~scalekit.protocols.Store` primitive a live migration copies with
        (memcached's ``add``); atomic under :class:`ThreadSafeCache`'s lock.

        Runtime complexity: that of :meth:`set`.

        >>> from scalekit.cache import LRUCache
        >>> cache = LRUCache(2)
        >>> cache.add("k", 1), cache.add("k", 2), cache["k"]
        (True, False, 1)
        """
        if ttl is not None:
            _check_ttl(ttl)
        if key in self:
            return False
        self.set(key, value, ttl=ttl)
        return True

    def set_many(self, items: Mapping[K, V], *, ttl: float | timedelta | None = None) -> None:
        """Store every item of ``items`` with the same ``ttl``.

        Every item is checked first (size, hashability, ``ttl``), so a bad item
        stores nothing; an error of ``on_evict`` is raised after all are stored.

        Raises:
            ArgumentTypeError: ``items`` is not a mapping.

        Runtime complexity: O(len(items)).
        """
        if not isinstance(items, Mapping):
            raise ArgumentTypeError(f"items must be a mapping, got {type_name(items)}")
        if ttl is not None:
            _check_ttl(ttl)
        for key, value in items.items():
            hash(key)
            self._size_of(value)
        with _ListenerErrorsDeferred(self):
            for key, value in items.items():
                self.set(key, value, ttl=ttl)

    def _size_of(self, value: V) -> float:
        if not self._sized:
            if self._maxsize < 1:
                raise ItemTooLarge("value too large: the cache has maxsize 0")
            return 1
        size = self.getsizeof(value)
        if size > self._maxsize:
            raise ItemTooLarge(f"value too large: size {size!r} > maxsize {self._maxsize!r}")
        if not size >= 0:  # also refuses NaN, which would disable every size check
            raise ValueError(f"value size must be a non-negative number, got {size!r}")
        return size

    def _store(
        self, key: K, value: V, ttl: float | None = _DEFAULT_TTL, own_ttl: bool = False
    ) -> None:
        """Insert or overwrite ``key``; the write path every policy shares.

        ``cache[key] = value`` is this method itself (one call fewer on the hot path),
        with ``ttl`` left at the cache's default.
        """
        if ttl is _DEFAULT_TTL:
            ttl = self._ttl
        data = self._data
        if key in data or not self._fast_store:
            self._store_slow(key, value, ttl, own_ttl)
            return
        # The common case, written out: a new unit-sized item.
        expires = self._expires
        now = self._timer() if (ttl is not None or self._next_expiry != _INF) else 0.0
        removed = self._purge(now) if self._next_expiry <= now else None
        if len(data) >= self._maxlen:
            if self._ordered_data:
                old_key, old_value = data.popitem(False)  # type: ignore[call-arg]
                old_deadline = expires.pop(old_key, None)
                if old_deadline is not None:
                    self._unqueue(old_deadline)
                elif self._own_expires:
                    self._forget_own_expiry(old_key)
            else:
                old_key = self._policy_victim()
                old_value = self._remove(old_key)
            self._evictions += 1
            if self._on_evict is not None:
                if removed is None:
                    removed = []
                removed.append((old_key, old_value, "size"))
        data[key] = value
        if not self._ordered_data:
            self._policy_added(key)
        if ttl is not None:
            expires_at = now + ttl
            if own_ttl or expires_at < self._queue_tail or self._is_plain:
                self._add_expiry(key, expires_at, own_ttl)
            else:
                expires[key] = expires_at
                queue = self._expiry_queue
                queue.append(key)
                queue.append(expires_at)
                self._queue_tail = expires_at
                if expires_at < self._next_expiry:
                    self._next_expiry = expires_at
        if removed and self._on_evict is not None:
            self._notify(removed)

    if TYPE_CHECKING:

        def __setitem__(self, key: K, value: V) -> None: ...

    else:
        __setitem__ = _store

    def _store_slow(self, key: K, value: V, ttl: float | None, own_ttl: bool) -> None:
        hash(key)  # an unhashable key fails here, before anything changes
        size = self._size_of(value)
        if self._datetime_clock and ttl is not None and self._timer() + ttl > _DATETIME_MAX:
            raise OverflowError("date value out of range: the deadline is past datetime.max")
        # A popitem() overridden by a subclass may notify mid-way: finish first.
        with _ListenerErrorsDeferred(self):
            self._store_sized(key, value, size, ttl, own_ttl)

    def _store_sized(self, key: K, value: V, size: float, ttl: float | None, own_ttl: bool) -> None:
        now = self._timer() if (ttl is not None or self._next_expiry != _INF) else 0.0
        removed: list[tuple[K, V, EvictionCause]] = []
        if self._next_expiry <= now:
            removed.extend(self._purge(now))
        data = self._data
        old: float = 0
        if key in data and self._sized:
            old = self._sizes[key]
            while self._currsize - old + size > self._maxsize and key in data:
                removed.append(self._evict_one())
        if key in data:
            data[key] = value
            if self._sized:
                self._currsize += size - old
                self._sizes[key] = size
            self._policy_written(key)
        else:
            while data and self._currsize_raw() + size > self._maxsize:
                removed.append(self._evict_one())
            data[key] = value
            if self._sized:
                self._currsize += size
                self._sizes[key] = size
            self._policy_added(key)
        self._set_expiry(key, now, ttl, own_ttl)
        if removed:
            self._notify(removed)

    def _currsize_raw(self) -> float:
        return self._currsize if self._sized else len(self._data)

    def _set_expiry(self, key: K, now: float, ttl: float | None, own_ttl: bool) -> None:
        self._forget_expiry(key)
        if ttl is not None:
            self._add_expiry(key, now + ttl, own_ttl)

    def _add_expiry(self, key: K, expires_at: float, own_ttl: bool) -> None:
        """Record the deadline of ``key``, which has none yet."""
        if self._is_plain:
            # Reads of the lean twin do not look for deadlines: become the full class.
            self.__class__ = self._general
        if not own_ttl and expires_at >= self._queue_tail:
            self._expires[key] = expires_at
            queue = self._expiry_queue
            queue.append(key)
            queue.append(expires_at)
            self._queue_tail = expires_at
        else:
            self._own_expires[key] = expires_at
            self._seq += 1
            heapq.heappush(self._expiry_heap, (expires_at, self._seq, key))
            if len(self._expiry_heap) > 2 * len(self._own_expires) + 64:
                self._compact_heap()
        if expires_at < self._next_expiry:
            self._next_expiry = expires_at

    def _forget_expiry(self, key: K) -> None:
        """Drop the deadline of ``key`` if it has one (its queue or heap entry goes stale)."""
        deadline = self._expires.pop(key, None)
        if deadline is not None:
            self._unqueue(deadline)
        elif self._own_expires:
            self._forget_own_expiry(key)

    def _unqueue(self, deadline: float) -> None:
        """The key of ``deadline`` was just dropped from ``_expires``: drop its
        queue entry if it is the first, else leave it stale; compact the queue
        once it holds more than ``2 * len(_expires) + 64`` entries (O(1) amortized)."""
        queue = self._expiry_queue
        if queue[1] is deadline:
            queue.popleft()
            queue.popleft()
        if len(queue) > 4 * len(self._expires) + 128:
            self._compact_queue()

    def _compact_queue(self) -> None:
        """Drop the stale queue entries. Runtime complexity: O(n).

        The live entries are those of ``_expires``, in the same order (each write
        of a key both re-inserts it there and appends it here).
        """
        queue = self._expiry_queue
        queue.clear()
        queue.extend(itertools.chain.from_iterable(self._expires.items()))

    def _forget_own_expiry(self, key: K) -> None:
        """Drop ``key`` from ``_own_expires``; compact the heap once stale entries
        outnumber the live ones (by more than 64), so that it stays within
        ``2 * len(_own_expires) + 64`` entries: O(1) amortized."""
        own = self._own_expires
        if own.pop(key, None) is not None and len(self._expiry_heap) > 2 * len(own) + 64:
            self._compact_heap()

    def _compact_heap(self) -> None:
        """Drop the stale heap entries. Runtime complexity: O(n)."""
        own = self._own_expires
        self._expiry_heap = [e for e in self._expiry_heap if own.get(e[2]) == e[0]]
        heapq.heapify(self._expiry_heap)

    # -- removing -----------------------------------------------------------

    def _remove(self, key: K) -> V:
        """Delete ``key`` from every structure and return its value."""
        value = self._data.pop(key)
        self._policy_removed(key)
        if self._sized:
            self._currsize -= self._sizes.pop(key)
        if self._next_expiry != _INF:
            self._forget_expiry(key)
        return value

    def __delitem__(self, key: K) -> None:
        """Remove ``key``; :class:`KeyError` if it is missing or expired.

        Runtime complexity: O(1) amortized.
        """
        if key not in self._data:
            raise KeyError(key)
        expires_at = self._deadline(key)
        if expires_at is not None and expires_at <= self._timer():
            value = self._remove(key)
            self._expirations += 1
            self._notify([(key, value, "expired")])
            raise KeyError(key)
        self._remove(key)

    def delete(self, key: K) -> bool:
        """Remove ``key`` if present; return whether a live item was removed.

        Runtime complexity: O(1) amortized.
        """
        try:
            del self[key]
        except KeyError:
            return False
        return True

    def pop(self, key: K, default: Any = _MISSING) -> Any:
        """Remove ``key`` and return its value, or ``default`` (else :class:`KeyError`).

        Runtime complexity: O(1) amortized.
        """
        if key in self:
            value = self._data[key]
            self._remove(key)
            return value
        if default is _MISSING:
            raise KeyError(key)
        return default

    def setdefault(self, key: K, default: V = None) -> V:  # type: ignore[assignment]
        """Return the value of ``key``, storing ``default`` first if it is missing."""
        with _ListenerErrorsDeferred(self):
            value = self.get(key, _MISSING)
            if value is _MISSING:
                self[key] = value = default
        return value  # type: ignore[no-any-return]

    def popitem(self) -> tuple[K, V]:
        """Remove and return the item the policy evicts next (expired items first).

        Raises :class:`KeyError` when the cache is empty. Runtime complexity: O(1) amortized.
        """
        with _ListenerErrorsDeferred(self):
            now = self._timer()
            if self._next_expiry <= now:
                self._purge_and_notify(now)
            if not self._data:
                raise KeyError(f"{self._public_name()} is empty") from None
            key = self._policy_victim()
            return key, self._remove(key)

    def clear(self) -> None:
        """Remove every item; calls no listener and counts no eviction. Runtime complexity: O(n)."""
        self._data.clear()
        self._sizes.clear()
        self._currsize = 0
        self._expires.clear()
        self._expiry_queue.clear()
        self._queue_tail = -_INF
        self._own_expires.clear()
        self._expiry_heap.clear()
        self._next_expiry = _INF
        self._policy_cleared()

    def _policy_cleared(self) -> None:
        """Every key was removed from ``_data``."""

    def _evict_one(self) -> tuple[K, V, EvictionCause]:
        if self._evict_via_popitem:
            key, value = self.popitem()
        else:
            key = self._policy_victim()
            value = self._remove(key)
        self._evictions += 1
        return key, value, "size"

    # -- expiry -------------------------------------------------------------

    def _purge(self, now: float) -> list[tuple[K, V, EvictionCause]]:
        """Remove every item expired at ``now``; return them without notifying."""
        removed: list[tuple[K, V, EvictionCause]] = []
        expires = self._expires
        queue = self._expiry_queue
        while queue and queue[1] <= now:
            key = queue.popleft()
            deadline = queue.popleft()
            if expires.get(key) is deadline:
                del expires[key]  # its queue entry is gone already
                removed.append((key, self._remove(key), "expired"))
        if not expires:
            queue.clear()
        elif len(queue) > 4 * len(expires) + 128:
            self._compact_queue()  # fewer live keys: stale entries may be too many
        heap = self._expiry_heap
        own = self._own_expires
        while heap and heap[0][0] <= now:
            deadline, _, key = heapq.heappop(heap)
            if own.get(key) == deadline:
                removed.append((key, self._remove(key), "expired"))
        self._expirations += len(removed)
        if queue:
            head = queue[1]  # stale or not, no live deadline is earlier
        else:
            head = _INF
            self._queue_tail = -_INF
        self._next_expiry = min(head, heap[0][0]) if heap else head
        return removed

    def _purge_and_notify(self, now: float) -> list[tuple[K, V]]:
        removed = self._purge(now)
        if removed:
            self._notify(removed)
        return [(key, value) for key, value, _ in removed]

    def expire(self, time: float | datetime | None = None) -> list[tuple[K, V]]:
        """Remove the items expired at ``time`` (default: now) and return them.

        ``time`` is a number on the scale of ``timer`` (or a datetime, when
        ``timer`` returns datetimes).

        Raises:
            ConfigurationError: ``time`` is NaN or infinite (nothing is removed).

        Runtime complexity: O(1) amortized per expired item.
        """
        if time is None:
            return self._purge_and_notify(self._timer())
        if isinstance(time, datetime) and self._datetime_clock:
            return self._purge_and_notify(_datetime_seconds(time))
        return self._purge_and_notify(check_number(time, "time"))

    def _expired_miss(self, key: K, call_missing: bool = True) -> V:
        """A lookup found ``key`` expired: remove it, count a miss, call ``__missing__``."""
        value = self._remove(key)
        self._expirations += 1
        self._misses += 1
        self._notify([(key, value, "expired")])
        return self.__missing__(key) if call_missing else value

    # -- listeners ----------------------------------------------------------

    def _notify(self, removed: list[tuple[K, V, EvictionCause]]) -> None:
        """Call ``on_evict`` for each removal; re-raise the first error after all ran."""
        listener = self._on_evict
        if listener is None:
            return
        errors: list[Exception] = []
        for key, value, cause in removed:
            try:
                listener(key, value, cause)
            except Exception as exc:
                errors.append(exc)
        if errors:
            if self._deferred_errors is not None:
                self._deferred_errors.extend(errors)  # an outer operation raises them
            else:
                _raise_first(errors)

    # -- stats --------------------------------------------------------------

    def stats(self) -> CacheStats:
        """Return a snapshot of the counters. Runtime complexity: O(1).

        Raises:
            ConfigurationError: the cache was built without ``stats=True``.
        """
        if not self._record_stats:
            raise ConfigurationError(
                f"{self._public_name()} records no stats: build it with stats=True"
            )
        return CacheStats(
            hits=self._hits,
            misses=self._misses,
            evictions=self._evictions,
            expirations=self._expirations,
        )

    def reset_stats(self) -> None:
        """Set every counter back to zero."""
        self._hits = self._misses = self._evictions = self._expirations = 0

    # -- copying and pickling -------------------------------------------------

    def __copy__(self) -> Cache[K, V]:
        cls = type(self)
        clone = cls.__new__(cls)
        clone.__dict__.update(self.__dict__)
        clone._data = self._data.copy()
        clone._sizes = self._sizes.copy()
        clone._expires = self._expires.copy()
        clone._expiry_queue = self._expiry_queue.copy()
        clone._own_expires = self._own_expires.copy()
        clone._expiry_heap = self._expiry_heap.copy()
        clone._timer = clone._clock  # a copy made in `with cache.timer:` is not held
        clone._timer_view = _Timer(clone, self._timer_view._timer)
        clone._copy_policy_from(self)
        return clone

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_timer"] = self._clock  # a copy made in `with cache.timer:` is not held
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        # pickle stores a float once per reference: the queue's deadlines come back
        # as objects of their own, so rebuild it from _expires.
        self._expires = dict(self._expires)
        self._expiry_queue = deque()
        self._compact_queue()

    def copy(self) -> Cache[K, V]:
        """A shallow copy: new structures, the same keys and values."""
        return self.__copy__()

    def _copy_policy_from(self, other: Cache[K, V]) -> None:
        """Give this fresh copy its own policy structures, equal to ``other``'s."""

    # -- invariants -----------------------------------------------------------

    def _check(self) -> None:
        """Assert the internal invariants; for tests. Runtime complexity: O(n log n)."""
        data = self._data
        assert self._maxsize >= 0
        if self._sized:
            assert set(self._sizes) == set(data)
            assert math.isclose(self._currsize, math.fsum(self._sizes.values()), abs_tol=1e-9)
        else:
            assert not self._sizes
        assert self._currsize_raw() <= self._maxsize or not data
        expires = self._expires
        queued = set(expires)
        owned = set(self._own_expires)
        assert queued <= set(data)
        assert owned <= set(data)
        assert not queued & owned
        queue = list(self._expiry_queue)
        assert len(queue) % 2 == 0
        pairs = list(zip(queue[::2], queue[1::2], strict=True))
        live = [(k, d) for k, d in pairs if expires.get(k) is d]
        assert live == list(expires.items()), "the live queue entries are _expires, in order"
        deadlines = [d for _, d in pairs]
        assert deadlines == sorted(deadlines), "queued deadlines (stale ones too) are in order"
        if deadlines:
            assert self._queue_tail >= deadlines[-1]
        assert len(pairs) <= 2 * len(expires) + 64, f"queue {len(pairs)} > 2*{len(expires)}+64"
        live_heap = {k for d, _, k in self._expiry_heap if self._own_expires.get(k) == d}
        assert live_heap == owned, "every own deadline has a heap entry"
        assert len(self._expiry_heap) <= 2 * len(owned) + 64, (
            f"heap {len(self._expiry_heap)} > 2*{len(owned)}+64"
        )
        if queued or owned:
            assert self._next_expiry <= min([*expires.values(), *self._own_expires.values()])
        assert min(self._hits, self._misses, self._evictions, self._expirations) >= 0
        self._check_policy()

    def _check_policy(self) -> None:
        """Assert the policy's own invariants."""


_SIGNATURES: dict[type[Any], inspect.Signature] = {}


def _lean_variant(
    cls: type[Cache[Any, Any]],
    variants: dict[str, type[Cache[Any, Any]]],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> type[Cache[Any, Any]] | None:
    """The lean twin of ``cls`` for these constructor arguments, or ``None``."""
    signature = _SIGNATURES.get(cls)
    if signature is None:
        signature = _SIGNATURES[cls] = inspect.signature(cls.__init__)
    try:
        bound = signature.bind(None, *args, **kwargs)
    except TypeError:
        return None  # __init__ will explain
    bound.apply_defaults()
    given = bound.arguments
    maxsize = given["maxsize"]
    if (
        type(maxsize) is not int
        or maxsize < 1
        or given["getsizeof"] is not None
        or given["on_evict"] is not None
        or given["stats"]
    ):
        return None
    ttl = given["ttl"]
    return variants.get("untimed" if ttl is None or ttl == _INF else "timed")


def _raise_first(errors: list[Exception]) -> None:
    error = errors[0]
    for other in errors[1:]:
        if hasattr(error, "add_note"):
            error.add_note(f"on_evict also raised {other!r}")
    raise error


class _ListenerErrorsDeferred:
    """Within an operation made of several steps, hold back the errors of
    ``on_evict`` until every step has run; then raise the first."""

    __slots__ = ("_cache", "_owner")

    def __init__(self, cache: Cache[Any, Any]) -> None:
        self._cache = cache
        self._owner = False

    def __enter__(self) -> None:
        if self._cache._deferred_errors is None:
            self._cache._deferred_errors = []
            self._owner = True

    def __exit__(self, kind: object, error: object, traceback: object) -> None:
        if not self._owner:
            return
        errors = self._cache._deferred_errors or []
        self._cache._deferred_errors = None
        if not errors:
            return
        if kind is None:
            _raise_first(errors)
        if isinstance(error, BaseException) and hasattr(error, "add_note"):
            for other in errors:
                error.add_note(f"on_evict also raised {other!r}")


def builtin_popitem(function: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a policy's own ``popitem`` (a subclass overriding it sees every eviction)."""
    Cache._builtin_popitems.add(function)
    return function


Cache.popitem = builtin_popitem(Cache.popitem)  # type: ignore[method-assign]


class _ItemsView(ItemsView[K, V]):
    _mapping: Cache[K, V]

    def __iter__(self) -> Iterator[tuple[K, V]]:
        return iter(self._mapping._live_items())

    def __contains__(self, item: object) -> bool:
        if not isinstance(item, tuple) or len(item) != 2:
            return False
        key, value = item
        found = self._mapping.peek(key, _MISSING)
        return found is not _MISSING and (found is value or found == value)


class _ValuesView(ValuesView[V]):
    _mapping: Cache[Any, V]

    def __iter__(self) -> Iterator[V]:
        return iter([value for _, value in self._mapping._live_items()])
