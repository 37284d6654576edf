"""``check_cache``: the contract of a cache, as a function anyone can run.

scalekit's own caches pass it (``tests/cache/test_contract.py`` calls it for
every class); run it on your own cache or :class:`~scalekit.protocols.Store`
implementation to check that it keeps the same promises, under any test runner::

    from scalekit.testing import check_cache

    def test_my_cache_keeps_the_contract():
        check_cache(lambda maxsize, timer: MyCache(maxsize, timer=timer))

It imports no test framework and raises :class:`AssertionError` naming the first
broken promise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, MutableMapping
from functools import partial
from typing import Any

from scalekit.errors import ScalekitError
from scalekit.protocols import Clock
from scalekit.testing._clock import FakeClock

__all__ = ["check_cache"]

CacheFactory = Callable[[int, Clock], MutableMapping[Any, Any]]

_MISSING: Any = object()

BAD_TTLS: tuple[object, ...] = (
    0,
    -1,
    math.nan,
    -math.inf,
    10**400,
    1e308,
    True,
    "1",
    [1],
)
"""TTLs every cache must refuse: zero, negative, NaN, overflowing, too large
to add to a clock, and values that are not numbers (``bool`` is not one)."""


class _Checker:
    """The checks of :func:`check_cache`, sharing the factory and its options."""

    def __init__(self, make: CacheFactory, *, bounded: bool, expiring: bool) -> None:
        self.make = make
        self.bounded = bounded
        self.expiring = expiring

    def build(self, maxsize: int = 64) -> tuple[MutableMapping[Any, Any], FakeClock]:
        clock = FakeClock()
        cache = self.make(maxsize, clock)
        _expect(isinstance(cache, MutableMapping), "make() returns a MutableMapping")
        _expect(len(cache) == 0, "make() returns an empty cache")
        return cache, clock

    def run(self) -> None:
        self.mapping()
        self.store()
        self.refusals()
        if self.bounded:
            self.capacity()
        if self.expiring:
            self.expiry()

    def mapping(self) -> None:
        cache, _ = self.build()
        _raises(KeyError, lambda: cache["a"], "cache[missing] raises KeyError")
        _raises(KeyError, lambda: cache.__delitem__("a"), "del cache[missing] raises KeyError")
        _raises(KeyError, lambda: cache.pop("a"), "pop(missing) raises KeyError")
        _raises(KeyError, cache.popitem, "popitem() of an empty cache raises KeyError")
        _expect(cache.get("a") is None, "get(missing) returns None")
        _expect(cache.get("a", 5) == 5, "get(missing, default) returns the default")
        _expect(cache.pop("a", 5) == 5, "pop(missing, default) returns the default")
        cache["a"] = 1
        cache["b"] = 2
        _checked(cache)
        _expect(cache["a"] == 1 and cache.get("b") == 2, "a stored value is read back")
        _expect("a" in cache and "z" not in cache, "`in` tells stored keys from missing ones")
        _expect(len(cache) == 2, "len() counts the stored items")
        _expect(sorted(cache) == ["a", "b"], "iteration gives the stored keys")
        _expect(dict(cache.items()) == {"a": 1, "b": 2}, "items() gives the stored items")
        cache["a"] = 10
        _expect(cache["a"] == 10 and len(cache) == 2, "writing a key again overwrites it")
        del cache["a"]
        _expect("a" not in cache and len(cache) == 1, "del removes the key")
        _expect(cache.pop("b") == 2 and len(cache) == 0, "pop() returns and removes the value")
        _checked(cache)
        before = dict(cache.items())
        unhashable: list[Any] = [[], {}, {1}]
        for key in unhashable:
            _raises(TypeError, partial(cache.__setitem__, key, 1), "an unhashable key is refused")
        _expect(dict(cache.items()) == before, "a refused key changes nothing")
        _checked(cache)

    def store(self) -> None:
        cache, _ = self.build()
        store: Any = cache
        for name in ("set", "add", "delete", "ttl_of"):
            _expect(callable(getattr(store, name, None)), f"the cache has Store.{name}()")
        store.set("k", 1)
        _expect(cache["k"] == 1, "set(key, value) stores the value")
        _raises(KeyError, lambda: store.ttl_of("missing"), "ttl_of(missing) raises KeyError")
        _expect(store.add("k", 2) is False, "add() of a present key returns False")
        _expect(cache["k"] == 1, "add() of a present key leaves its value")
        _expect(store.add("n", 3) is True, "add() of an absent key returns True")
        _expect(cache["n"] == 3, "add() of an absent key stores it")
        _expect(store.delete("n") is True, "delete() of a present key returns True")
        _expect(store.delete("n") is False, "delete() of a missing key returns False")
        store.set("t", 4, ttl=30)
        remaining = store.ttl_of("t")
        _expect(
            remaining is not None and 0 < remaining <= 30,
            f"ttl_of() of an item set with ttl=30 is in (0, 30], got {remaining!r}",
        )
        store.set("inf", 5, ttl=math.inf)
        _expect(store.ttl_of("inf") is None, "ttl=math.inf stores an item that never expires")
        if hasattr(store, "get_many") and hasattr(store, "set_many"):
            store.set_many({"x": 1, "y": 2})
            _expect(
                store.get_many(["x", "y", "missing"]) == {"x": 1, "y": 2},
                "get_many() returns the present keys among those asked",
            )
        _checked(cache)

    def refusals(self) -> None:
        cache, _ = self.build()
        store: Any = cache
        store.set("k", 1, ttl=30)
        cache["other"] = 2
        items, remaining = dict(cache.items()), store.ttl_of("k")
        for ttl in BAD_TTLS:
            calls: list[Callable[[], object]] = [
                partial(store.set, "k", 9, ttl=ttl),
                partial(store.set, "new", 9, ttl=ttl),
                partial(store.add, "new", 9, ttl=ttl),
            ]
            for call in calls:
                try:
                    call()
                except ScalekitError as exc:
                    _expect(
                        isinstance(exc, (TypeError, ValueError)),
                        f"ttl={ttl!r} is refused with a TypeError or ValueError, got {exc!r}",
                    )
                except Exception as exc:
                    raise AssertionError(
                        f"ttl={ttl!r} must be refused with an error of scalekit.errors, "
                        f"got {type(exc).__name__}: {exc}"
                    ) from exc
                else:
                    raise AssertionError(f"ttl={ttl!r} must be refused, it was accepted")
                now_remaining = store.ttl_of("k") if "k" in cache else None
                _expect(
                    dict(cache.items()) == items
                    and now_remaining is not None
                    and math.isclose(now_remaining, remaining, abs_tol=1.0),
                    f"a call refused for ttl={ttl!r} changes nothing",
                )
        _checked(cache)

    def capacity(self) -> None:
        cache, _ = self.build(maxsize=3)
        for i in range(12):
            cache[i] = i
            _expect(
                len(cache) <= 3, f"a cache of maxsize 3 holds at most 3 items, got {len(cache)}"
            )
            _expect(cache.get(i) == i, "the item just written is kept")
            _checked(cache)

    def expiry(self) -> None:
        cache, clock = self.build()
        store: Any = cache
        store.set("t", 1, ttl=1)
        store.set("forever", 2, ttl=math.inf)
        clock.advance(0.5)
        _expect("t" in cache and cache["t"] == 1, "an item is live before its ttl runs out")
        remaining = store.ttl_of("t")
        _expect(
            remaining is not None and math.isclose(remaining, 0.5),
            f"ttl_of() counts down with the timer, got {remaining!r}",
        )
        clock.advance(0.5)
        _expect("t" not in cache, "an item is gone once timer() reaches its deadline (`in`)")
        _expect(list(iter(cache)) == ["forever"], "iteration skips expired items")
        _expect(len(cache) == 1, "len() does not count expired items")
        _raises(KeyError, lambda: store.ttl_of("t"), "ttl_of() of an expired item raises KeyError")
        _expect(cache.get("t", _MISSING) is _MISSING, "an expired item is missing for get()")
        _raises(KeyError, lambda: cache["t"], "an expired item raises KeyError")
        _expect(store.add("t", 3) is True, "add() of an expired key stores it")
        _checked(cache)


def _expect(condition: bool, promise: str) -> None:
    if not condition:
        raise AssertionError(f"check_cache: {promise}")


def _raises(error: type[BaseException], call: Callable[[], object], promise: str) -> None:
    try:
        call()
    except error:
        return
    except Exception as exc:
        raise AssertionError(f"check_cache: {promise}; got {type(exc).__name__}: {exc}") from exc
    raise AssertionError(f"check_cache: {promise}; nothing was raised")


def _checked(cache: object) -> None:
    check = getattr(cache, "_check", None)
    if callable(check):
        check()


def check_cache(make: CacheFactory, *, bounded: bool = True, expiring: bool = True) -> None:
    """Check that the caches ``make`` builds keep scalekit's cache contract.

    ``make(maxsize, timer)`` must return a new, empty cache: a
    :class:`~collections.abc.MutableMapping` with the
    :class:`~scalekit.protocols.Store` methods (``set(key, value, ttl=)``,
    ``add``, ``delete``, ``ttl_of``), holding at most ``maxsize`` items and
    reading time from ``timer`` (a :class:`~scalekit.testing.FakeClock`).

    Checked: the mapping operations and their ``KeyError``\\ s; the ``Store``
    methods; that a bad ``ttl`` (zero, negative, NaN, ``10**400``, ``1e308``,
    ``True``, a string) is refused with an error of :mod:`scalekit.errors` that
    is also a ``TypeError`` or ``ValueError``, and changes nothing; that an
    unhashable key is refused and changes nothing; with ``bounded``, that
    ``maxsize`` is never exceeded and the item just written is kept; with
    ``expiring``, that items expire exactly when ``timer()`` reaches their
    deadline, for every way of reading. A cache with a ``_check()`` method has
    it called after each group of steps.

    Args:
        make: builds the cache under test.
        bounded: the cache honours ``maxsize`` (``False`` for a store without one).
        expiring: the cache reads time from ``timer`` (``False`` for a store whose
            clock is elsewhere, a server's say; TTLs are then only checked as
            accepted, refused and reported by ``ttl_of``).

    Raises:
        AssertionError: a promise is broken; the message names it.

    >>> from scalekit.cache import LRUCache
    >>> check_cache(lambda maxsize, timer: LRUCache(maxsize, timer=timer))
    >>> check_cache(lambda maxsize, timer: dict())
    Traceback (most recent call last):
    ...
    AssertionError: check_cache: the cache has Store.set()
    """
    _Checker(make, bounded=bounded, expiring=expiring).run()
