"""The contract every scalekit cache meets, whatever its eviction policy.

:class:`CacheContract` is a mixin of tests; each takes ``make``, a
:class:`CacheFactory` that builds the cache under test as
``make(maxsize, **kwargs)``. ``tests/cache/test_contract.py`` runs it over every
cache class with ``pytest.mark.parametrize``; a new cache class adds one line there.

The few expectations that depend on the policy (which key goes first) are given
per policy with :func:`by_policy`; everything else holds for every cache.
"""

from __future__ import annotations

import copy
import inspect
import math
import pickle
from collections.abc import Callable, MutableMapping
from dataclasses import FrozenInstanceError, dataclass
from typing import Any

import pytest

from scalekit.cache import Cache, CacheStats
from scalekit.errors import ConfigurationError, ItemTooLarge
from scalekit.protocols import Clock, Store, SupportsStats
from scalekit.testing import FakeClock, check_cache

__all__ = ["CacheContract", "CacheFactory", "Listener", "by_policy", "stats_kwargs"]

_UNSET: Any = object()
BAD_TTLS = [0, 0.0, -1, -0.5, -math.inf, math.nan]


def stats_kwargs(cls: type[Any]) -> dict[str, Any]:
    """The constructor arguments that turn stats on.

    ``stats()`` is opt-in (``stats=True``) where the constructor has that switch;
    older versions recorded stats always and took no such argument.
    """
    if "stats" in inspect.signature(cls.__init__).parameters:
        return {"stats": True}
    return {}


@dataclass(frozen=True)
class CacheFactory:
    """Builds the cache under test: ``make(maxsize, **kwargs)``.

    Attributes:
        cls: the public class.
        policy: ``"lru"``, ``"lfu"``, ``"fifo"`` or ``"tinylfu"``: which key goes
            first (TinyLFU's choice depends on its frequency sketch: tests that
            need an exact victim give it with ``by_policy(..., tinylfu=...)``).
        ttl: the cache-wide ttl given when a test asks for none (``None``: no ttl).
        ttl_positional: the constructor is ``cls(maxsize, ttl, ...)`` (TTLCache).
        wrapper: a class that wraps the cache built (``ThreadSafeCache``).
    """

    cls: type[Cache[Any, Any]]
    policy: str
    ttl: float | None = None
    ttl_positional: bool = False
    wrapper: type[Any] | None = None

    @property
    def public(self) -> type[Any]:
        """The class of what ``make`` returns."""
        return self.wrapper or self.cls

    def __call__(
        self,
        maxsize: float,
        *,
        cls: type[Cache[Any, Any]] | None = None,
        ttl: float | None = _UNSET,
        timer: Clock | None = None,
        getsizeof: Callable[[Any], float] | None = None,
        on_evict: Callable[[Any, Any, str], object] | None = None,
        stats: bool = False,
    ) -> Cache[Any, Any]:
        cls = cls or self.cls
        ttl = self.ttl if ttl is _UNSET else ttl
        kwargs: dict[str, Any] = {}
        if timer is not None:
            kwargs["timer"] = timer
        if getsizeof is not None:
            kwargs["getsizeof"] = getsizeof
        if on_evict is not None:
            kwargs["on_evict"] = on_evict
        if stats:
            kwargs.update(stats_kwargs(cls))
        if self.ttl_positional:
            cache = cls(maxsize, ttl, **kwargs)  # type: ignore[call-arg]
        else:
            if ttl is not None:
                kwargs["ttl"] = ttl
            cache = cls(maxsize, **kwargs)
        return cache if self.wrapper is None else self.wrapper(cache)

    def default_ttl_of(self, elapsed: float = 0.0) -> float | None:
        """What ``ttl_of`` says of an item written with the cache's own ttl."""
        return None if self.ttl is None else self.ttl - elapsed


def by_policy(make: CacheFactory, *, lru: Any, lfu: Any, fifo: Any, tinylfu: Any = _UNSET) -> Any:
    """The expectation for the policy of ``make`` (a test with none for TinyLFU skips)."""
    expected = {"lru": lru, "lfu": lfu, "fifo": fifo, "tinylfu": tinylfu}[make.policy]
    if expected is _UNSET:
        pytest.skip(f"no exact expectation for the {make.policy} policy")
    return expected


class Listener:
    """An ``on_evict`` that records its calls and can raise on each of them."""

    def __init__(self, raises: type[Exception] | None = None) -> None:
        self.calls: list[tuple[Any, Any, str]] = []
        self.raises = raises

    def __call__(self, key: Any, value: Any, cause: str) -> None:
        self.calls.append((key, value, cause))
        if self.raises is not None:
            raise self.raises(key)


class Boom(Exception):
    """What a failing listener raises."""


def snapshot(cache: Cache[Any, Any]) -> tuple[Any, ...]:
    """Everything observable of ``cache`` that a refused call must leave alone."""
    stats = cache.stats()
    return (
        list(cache.items()),
        len(cache),
        cache.currsize,
        (stats.hits, stats.misses, stats.evictions, stats.expirations),
    )


EXTRAS = ["plain", "sized", "listener", "stats"]
"""Ways to build the same unit-sized cache: they may take different code paths."""


def make_with(make: CacheFactory, extras: str, maxsize: float) -> Cache[Any, Any]:
    """``make(maxsize)`` with the extra of ``extras``, none changing what fits."""
    if extras == "sized":
        return make(maxsize, getsizeof=lambda value: 1)
    if extras == "listener":
        return make(maxsize, on_evict=Listener())
    if extras == "stats":
        return make(maxsize, stats=True)
    return make(maxsize)


def fill(cache: Cache[Any, Any], keys: str) -> None:
    """Store each character of ``keys`` under itself, upper-cased as the value."""
    for key in keys:
        cache[key] = key.upper()


def drain(cache: Cache[Any, Any]) -> list[Any]:
    """Pop every item; return the keys in the order the policy gave them."""
    return [cache.popitem()[0] for _ in range(len(cache))]


class CacheContract:
    """Tests every cache passes; mix into a class parametrized with ``make``."""

    def test_the_shipped_contract(self, make: CacheFactory) -> None:
        """``scalekit.testing.check_cache``, the contract users run on their caches."""
        check_cache(lambda maxsize, timer: make(maxsize, timer=timer))

    # -- the mapping ------------------------------------------------------------

    def test_is_a_mutable_mapping_a_store_and_reports_stats(self, make: CacheFactory) -> None:
        cache = make(3, stats=True)
        assert isinstance(cache, MutableMapping)
        assert isinstance(cache, make.public)
        if make.wrapper is None:
            assert isinstance(cache, Cache)
        assert isinstance(cache, Store)
        assert isinstance(cache, SupportsStats)
        assert isinstance(cache.stats(), CacheStats)
        assert cache.maxsize == 3
        assert cache.currsize == 0
        assert len(cache) == 0
        assert cache.ttl == make.ttl

    def test_mapping_basics(self, make: CacheFactory) -> None:
        cache = make(10)
        cache["a"] = 1
        cache["b"] = 2
        assert cache["a"] == 1
        assert len(cache) == 2
        assert "a" in cache
        assert "z" not in cache
        assert sorted(cache) == ["a", "b"]
        assert sorted(cache.keys()) == ["a", "b"]
        assert sorted(cache.values()) == [1, 2]
        assert dict(cache.items()) == {"a": 1, "b": 2}
        assert cache == {"a": 1, "b": 2}
        assert ("a", 1) in cache.items()
        assert ("a", 2) not in cache.items()
        cache["a"] = 10  # overwrite
        assert cache["a"] == 10
        assert len(cache) == 2
        del cache["a"]
        assert "a" not in cache
        cache.update({"c": 3, "d": 4})
        assert cache == {"b": 2, "c": 3, "d": 4}
        assert cache.pop("b") == 2
        assert cache.pop("b", "gone") == "gone"
        assert cache.get("zz") is None
        assert cache.get("zz", 5) == 5
        assert cache.setdefault("c", 9) == 3
        assert cache.setdefault("n", 7) == 7
        assert cache["n"] == 7
        assert cache.peek("n") == 7
        assert cache.peek("zz") is None
        assert cache.peek("zz", "default") == "default"
        assert cache.currsize == len(cache) == 3
        assert repr(cache).startswith(f"{make.public.__name__}(")
        assert type(cache).__name__ == make.public.__name__
        assert "'c': 3" in repr(cache)

    def test_an_empty_cache(self, make: CacheFactory) -> None:
        cache = make(3)
        with pytest.raises(KeyError):
            cache["a"]
        with pytest.raises(KeyError):
            del cache["a"]
        with pytest.raises(KeyError):
            cache.pop("a")
        with pytest.raises(KeyError):
            cache.popitem()
        with pytest.raises(KeyError):
            cache.ttl_of("a")
        assert cache.get("a") is None
        assert cache.delete("a") is False
        assert cache.get_many(["a", "b"]) == {}
        assert list(cache) == []
        assert list(cache.items()) == []
        assert cache.expire() == []
        assert cache.setdefault("a", 1) == 1  # stores the default
        assert cache == {"a": 1}

    def test_iterating_while_reading_is_safe(self, make: CacheFactory) -> None:
        cache = make(5)
        fill(cache, "abcde")
        seen = []
        for key in cache:
            seen.append(cache[key])
            cache.get(key)
        assert sorted(seen) == ["A", "B", "C", "D", "E"]
        assert len(cache) == 5

    # -- capacity -----------------------------------------------------------------

    def test_capacity_counted_in_items(self, make: CacheFactory) -> None:
        listener = Listener()
        cache = make(3, on_evict=listener, stats=True)
        for i in range(10):
            cache[i] = i * 10
            assert len(cache) == min(i + 1, 3)
            assert cache.currsize == len(cache)
            assert cache[i] == i * 10  # the item just written is always kept
        assert cache.stats().evictions == 7
        assert len(listener.calls) == 7
        assert all(cause == "size" for _, _, cause in listener.calls)
        assert {key for key, _, _ in listener.calls} | set(cache) == set(range(10))

    def test_fractional_and_infinite_maxsize(self, make: CacheFactory) -> None:
        cache = make(2.5)
        fill(cache, "abc")
        assert len(cache) == 2
        unbounded = make(math.inf)
        for i in range(200):
            unbounded[i] = i
        assert len(unbounded) == 200

    def test_capacity_counted_in_sizes(self, make: CacheFactory) -> None:
        cache = make(10, getsizeof=len, stats=True)
        assert cache.getsizeof("abc") == 3
        assert make(3).getsizeof(object()) == 1
        for i, value in enumerate(["xxxx", "yyy", "zz", "wwwww", "v", "uuuuuuu", "", "tt"]):
            cache[i] = value
            assert cache[i] == value
            assert cache.currsize == sum(len(v) for v in cache.values()) <= 10
        assert cache.stats().evictions > 0

    def test_an_item_as_large_as_maxsize_fits_alone(self, make: CacheFactory) -> None:
        cache = make(5, getsizeof=len)
        cache["a"] = "xx"
        cache["b"] = "yy"
        cache["big"] = "x" * 5
        assert cache == {"big": "xxxxx"}
        assert cache.currsize == 5

    def test_a_too_large_item_is_refused_and_changes_nothing(self, make: CacheFactory) -> None:
        listener = Listener()
        cache = make(5, getsizeof=len, on_evict=listener, stats=True)
        cache["a"] = "xx"
        cache["b"] = "yy"
        before = snapshot(cache)
        for write in (
            lambda: cache.__setitem__("c", "x" * 6),
            lambda: cache.__setitem__("a", "x" * 6),  # an overwrite keeps the old value
            lambda: cache.set("c", "x" * 6, ttl=10),
            lambda: cache.set_many({"c": "x" * 6}),
            lambda: cache.setdefault("c", "x" * 6),
        ):
            with pytest.raises(ItemTooLarge) as excinfo:
                write()
            assert isinstance(excinfo.value, ValueError)
            after = snapshot(cache)
            assert after[:3] == before[:3]
            assert after[3][2:] == before[3][2:]  # no eviction, no expiration
        assert cache["a"] == "xx"
        assert listener.calls == []

    def test_a_negative_size_is_refused_and_changes_nothing(self, make: CacheFactory) -> None:
        cache = make(5, getsizeof=lambda value: value, stats=True)
        cache["a"] = 2
        before = snapshot(cache)
        with pytest.raises(ValueError):
            cache["b"] = -1
        with pytest.raises(ValueError):
            cache["a"] = -1
        with pytest.raises(ValueError):
            cache.set("b", -1, ttl=10)
        assert snapshot(cache) == before
        assert cache["a"] == 2

    def test_maxsize_zero(self, make: CacheFactory) -> None:
        cache = make(0)
        with pytest.raises(ItemTooLarge):
            cache["a"] = 1
        with pytest.raises(ItemTooLarge):
            cache.set("a", 1, ttl=10)
        with pytest.raises(ItemTooLarge):
            cache.setdefault("a", 1)
        assert len(cache) == 0
        assert "a" not in cache
        sized = make(0, getsizeof=len)
        sized["empty"] = ""  # size 0 fits in maxsize 0
        with pytest.raises(ItemTooLarge):
            sized["full"] = "x"
        assert sized == {"empty": ""}

    def test_overwriting_with_a_larger_value_evicts_until_it_fits(self, make: CacheFactory) -> None:
        listener = Listener()
        cache = make(6, getsizeof=len, on_evict=listener, stats=True)
        cache["a"] = "xx"
        cache["b"] = "yy"
        cache["c"] = "z"
        cache["c"] = "zz"  # 6 of 6: fits without evicting
        assert listener.calls == []
        cache["c"] = "zzzz"  # 8 of 6: "a" goes (least recent, least used, oldest)
        assert listener.calls == [("a", "xx", "size")]
        assert cache == {"b": "yy", "c": "zzzz"}
        assert cache.currsize == 6
        assert cache.stats().evictions == 1

    def test_overwriting_may_evict_the_key_itself(self, make: CacheFactory) -> None:
        listener = Listener()
        cache = make(4, getsizeof=len, on_evict=listener, stats=True)
        cache["c"] = "zz"
        cache["a"] = "x"
        cache["b"] = "y"
        # "c" is the first victim of every policy but TinyLFU (whose window item "b"
        # loses to it first); once it is gone the new value is stored fresh and
        # needs the whole cache.
        cache["c"] = "zzzz"
        ordinary = [("c", "zz", "size"), ("a", "x", "size"), ("b", "y", "size")]
        admission = [("b", "y", "size"), ("c", "zz", "size"), ("a", "x", "size")]
        assert listener.calls == by_policy(
            make, lru=ordinary, lfu=ordinary, fifo=ordinary, tinylfu=admission
        )
        assert cache == {"c": "zzzz"}
        assert cache.stats().evictions == 3
        cache._check()

    # -- eviction order -----------------------------------------------------------

    @pytest.mark.parametrize("extras", EXTRAS)
    def test_in_peek_and_views_are_no_use(self, make: CacheFactory, extras: str) -> None:
        cache = make_with(make, extras, 3)
        fill(cache, "abc")
        # LRU, LFU, FIFO: "a" stays the first victim. TinyLFU: "c", in the window,
        # would displace "a" (on probation) when "d" comes in if these counted.
        probe = "c" if make.policy == "tinylfu" else "a"
        for _ in range(3):
            assert probe in cache
            assert cache.peek(probe) == probe.upper()
            assert (probe, probe.upper()) in cache.items()
            list(cache)
            list(cache.items())
            list(cache.values())
            len(cache)
            cache.ttl_of(probe)
        cache["d"] = "D"
        assert probe not in cache
        assert sorted(cache) == sorted({"a", "b", "c", "d"} - {probe})

    @pytest.mark.parametrize("extras", EXTRAS)
    @pytest.mark.parametrize("use", ["getitem", "get", "overwrite", "setdefault", "get_many"])
    def test_what_counts_as_a_use(self, make: CacheFactory, use: str, extras: str) -> None:
        cache = make_with(make, extras, 3)
        fill(cache, "abc")
        # TinyLFU: "c", still in the window, displaces "a" (on probation) when "d"
        # comes in only if the use raised its estimated frequency above a's.
        used = "c" if make.policy == "tinylfu" else "a"
        if use == "getitem":
            cache[used]
        elif use == "get":
            cache.get(used)
        elif use == "overwrite":
            cache[used] = "A2"
        elif use == "setdefault":
            cache.setdefault(used, "ignored")
        else:
            cache.get_many([used])
        cache["d"] = "D"
        if make.policy == "tinylfu":
            assert "c" in cache
            assert "a" not in cache
            return
        # LRU and LFU keep the key just used; FIFO keeps it only if it was written again.
        if use == "overwrite":
            survivor_expected = True
        else:
            survivor_expected = by_policy(make, lru=True, lfu=True, fifo=False)
        assert ("a" in cache) == survivor_expected
        assert ("b" in cache) != survivor_expected

    @pytest.mark.parametrize("extras", EXTRAS)
    @pytest.mark.parametrize("read", ["getitem", "get"])
    def test_eviction_order(self, make: CacheFactory, read: str, extras: str) -> None:
        cache = make_with(make, extras, 3)
        fill(cache, "abc")
        for key in "ba":  # uses: a2 b2 c1; "b" reached 2 uses before "a"
            assert (cache[key] if read == "getitem" else cache.get(key)) == key.upper()
        evicted = []
        for key in "de":
            before = set(cache)
            cache[key] = key.upper()
            (gone,) = before - set(cache)
            evicted.append(gone)
        # TinyLFU: "c" and then "d" leave the window and lose to probation's
        # victim (equal or higher estimated frequency); draining empties the
        # window ("e"), then probation, then protected.
        assert evicted == by_policy(
            make, lru=["c", "b"], lfu=["c", "d"], fifo=["a", "b"], tinylfu=["c", "d"]
        )
        assert drain(cache) == by_policy(
            make,
            lru=["a", "d", "e"],
            lfu=["e", "b", "a"],
            fifo=["c", "d", "e"],
            tinylfu=["e", "b", "a"],
        )

    # -- the __missing__ hook ------------------------------------------------------

    def test_missing_hook_of_a_subclass(self, make: CacheFactory) -> None:
        if make.wrapper is not None:
            pytest.skip("a wrapper has no __missing__ hook: its cache's is the one called")

        class Computing(make.cls):  # type: ignore[name-defined, misc]
            def __missing__(self, key: Any) -> Any:
                value = f"computed {key}"
                self[key] = value
                return value

        clock = FakeClock()
        cache = make(3, cls=Computing, timer=clock, stats=True)
        assert isinstance(cache, Computing)
        assert cache["x"] == "computed x"
        assert cache.peek("x") == "computed x"
        assert cache["x"] == "computed x"
        assert cache.get("y") is None  # get() never calls __missing__
        assert "y" not in cache
        stats = cache.stats()
        assert (stats.hits, stats.misses) == (1, 2)
        cache.set("e", "stale", ttl=1)
        clock.advance(1)
        assert cache["e"] == "computed e"  # an expired key is missing too
        assert cache.ttl_of("e") == make.default_ttl_of()

    # -- stats --------------------------------------------------------------------

    def test_stats_count_lookups_evictions_and_expirations(self, make: CacheFactory) -> None:
        clock = FakeClock()
        cache = make(2, timer=clock, stats=True)
        assert cache.stats().hit_ratio == 0.0
        cache["a"] = 1
        assert cache["a"] == 1  # hit
        assert cache.get("a") == 1  # hit
        with pytest.raises(KeyError):
            cache["zz"]  # miss
        assert cache.get("zz") is None  # miss
        # None of these counts.
        assert "a" in cache
        assert "zz" not in cache
        assert cache.peek("a") == 1
        list(cache)
        list(cache.items())
        list(cache.values())
        len(cache)
        assert cache.get_many(["a", "zz"]) == {"a": 1}  # a hit and a miss
        assert cache.setdefault("a", 5) == 1  # a hit
        cache["b"] = 2
        cache["c"] = 3  # an eviction
        cache.set("t", 4, ttl=1)  # another eviction
        clock.advance(1)
        assert cache.get("t") is None  # a miss and an expiration
        stats = cache.stats()
        assert (stats.hits, stats.misses, stats.evictions, stats.expirations) == (4, 4, 2, 1)
        assert stats.lookups == 8
        assert stats.hit_ratio == 0.5
        with pytest.raises(FrozenInstanceError):
            stats.hits = 0  # type: ignore[misc]
        cache.get("zz")
        assert stats.misses == 4  # a snapshot: later lookups do not change it
        assert cache.stats().misses == 5

    def test_reset_stats(self, make: CacheFactory) -> None:
        cache = make(1, stats=True)
        cache["a"] = 1
        cache["a"]
        cache.get("b")
        cache["b"] = 2
        assert cache.stats().lookups == 2
        cache.reset_stats()
        stats = cache.stats()
        assert (stats.hits, stats.misses, stats.evictions, stats.expirations) == (0, 0, 0, 0)
        assert stats.hit_ratio == 0.0
        assert cache == {"b": 2}  # the items stay
        cache["b"]
        assert cache.stats().hits == 1

    def test_clear(self, make: CacheFactory) -> None:
        listener = Listener()
        cache = make(3, getsizeof=len, on_evict=listener, stats=True)
        cache["a"] = "x"
        cache["b"] = "y"
        cache["a"]
        cache.clear()
        assert len(cache) == 0
        assert list(cache) == []
        assert cache.currsize == 0
        assert "a" not in cache
        assert listener.calls == []  # clearing is no eviction
        stats = cache.stats()
        assert (stats.hits, stats.evictions, stats.expirations) == (1, 0, 0)
        fill(cache, "cde")  # the whole capacity is free again
        assert len(cache) == 3
        assert cache.stats().evictions == 0
        cache._check()

    # -- the Store protocol -------------------------------------------------------

    def test_get_many_set_many_and_delete(self, make: CacheFactory) -> None:
        clock = FakeClock()
        cache = make(10, timer=clock)
        cache.set_many({"a": 1, "b": 2})
        assert cache.get_many(["a", "b", "zz"]) == {"a": 1, "b": 2}
        assert cache.get_many([]) == {}
        assert cache.delete("a") is True
        assert cache.delete("a") is False
        assert "a" not in cache
        cache.set_many({"c": 3, "d": 4}, ttl=5)
        assert cache.ttl_of("c") == cache.ttl_of("d") == 5.0
        assert cache.ttl_of("b") == make.default_ttl_of()
        clock.advance(5)
        assert cache.get_many(["b", "c", "d"]) == {"b": 2}
        assert cache.delete("c") is False  # expired: not a live item

    # -- expiry -------------------------------------------------------------------

    def test_per_item_ttl(self, make: CacheFactory) -> None:
        clock = FakeClock()
        listener = Listener()
        cache = make(5, timer=clock, on_evict=listener, stats=True)
        cache.set("k", "v", ttl=10)
        assert cache.ttl_of("k") == 10.0
        clock.advance(9.5)
        assert cache.ttl_of("k") == 0.5
        assert "k" in cache
        assert cache.get("k") == "v"
        clock.advance(0.5)  # exactly at the deadline: expired
        assert "k" not in cache
        assert cache.peek("k") is None
        with pytest.raises(KeyError):
            cache.ttl_of("k")
        with pytest.raises(KeyError):
            cache["k"]
        assert cache.get("k") is None
        assert len(cache) == 0
        assert list(cache) == []
        assert list(cache.items()) == []
        assert cache.currsize == 0
        assert listener.calls == [("k", "v", "expired")]
        stats = cache.stats()
        assert (stats.hits, stats.misses, stats.evictions, stats.expirations) == (1, 2, 0, 1)

    def test_cache_wide_ttl(self, make: CacheFactory) -> None:
        clock = FakeClock()
        cache = make(5, ttl=2, timer=clock)
        assert cache.ttl == 2
        cache["a"] = 1
        assert cache.ttl_of("a") == 2.0
        clock.advance(1)
        cache.set("b", 2)  # set() without a ttl takes the cache's
        clock.advance(1)
        assert "a" not in cache
        assert cache.ttl_of("b") == 1.0
        cache.set("forever", 3, ttl=math.inf)
        cache.set("short", 4, ttl=0.5)
        assert cache.ttl_of("forever") is None
        assert cache.ttl_of("short") == 0.5
        clock.advance(1e6)
        assert cache == {"forever": 3}

    def test_an_infinite_ttl_never_expires(self, make: CacheFactory) -> None:
        clock = FakeClock()
        cache = make(5, timer=clock)
        cache.set("k", 1, ttl=math.inf)
        assert cache.ttl_of("k") is None
        clock.advance(1e9)
        assert cache["k"] == 1
        assert cache.expire() == []

    def test_writing_again_resets_the_expiry(self, make: CacheFactory) -> None:
        clock = FakeClock()
        cache = make(5, timer=clock)
        cache.set("k", 1, ttl=2)
        clock.advance(1.5)
        cache.set("k", 2, ttl=2)
        assert cache.ttl_of("k") == 2.0
        clock.advance(1.5)
        assert cache["k"] == 2
        cache["k"] = 3  # back to the cache's own ttl
        assert cache.ttl_of("k") == make.default_ttl_of()
        clock.advance(1)
        assert cache["k"] == 3
        cache.set("k", 4, ttl=1)
        clock.advance(1)
        assert "k" not in cache

    def test_expire(self, make: CacheFactory) -> None:
        clock = FakeClock()
        listener = Listener()
        cache = make(10, timer=clock, on_evict=listener, stats=True)
        cache.set("a", 1, ttl=1)
        cache.set("b", 2, ttl=2)
        cache.set("c", 3, ttl=math.inf)
        cache.set("d", 4, ttl=5)
        assert cache.expire() == []
        clock.advance(1)
        assert cache.expire() == [("a", 1)]
        assert cache.expire() == []
        assert listener.calls == [("a", 1, "expired")]
        clock.advance(1.5)
        assert cache.expire() == [("b", 2)]
        # With a time: what is expired by then.
        assert cache.expire(clock() + 2) == []
        assert cache.expire(clock() + 2.5) == [("d", 4)]
        assert cache == {"c": 3}
        assert cache.stats().expirations == 3
        assert cache.stats().evictions == 0
        cache._check()

    def test_expired_items_go_before_any_live_item_is_evicted(self, make: CacheFactory) -> None:
        clock = FakeClock()
        listener = Listener()
        cache = make(3, timer=clock, on_evict=listener, stats=True)
        cache["live"] = 1
        cache.set("old1", 2, ttl=1)
        cache.set("old2", 3, ttl=2)
        cache["old1"], cache["old2"]  # now "live" is the victim of every policy
        clock.advance(2)
        cache["new1"] = 4
        cache["new2"] = 5  # a full cache, but two of its items are expired
        assert cache == {"live": 1, "new1": 4, "new2": 5}
        assert sorted(listener.calls) == [("old1", 2, "expired"), ("old2", 3, "expired")]
        stats = cache.stats()
        assert (stats.evictions, stats.expirations) == (0, 2)
        cache["new3"] = 6  # now a live item must go
        assert len(cache) == 3
        assert cache.stats().evictions == 1

    # -- the listener --------------------------------------------------------------

    def test_the_listener_sees_a_consistent_cache(self, make: CacheFactory) -> None:
        clock = FakeClock()
        seen: list[tuple[Any, str, bool, int]] = []

        def listener(key: Any, value: Any, cause: str) -> None:
            cache._check()
            seen.append((key, cause, key in cache, len(cache)))

        cache = make(2, timer=clock, on_evict=listener)
        cache["a"] = 1
        cache["b"] = 2
        cache["c"] = 3
        cache.set("t", 4, ttl=1)
        clock.advance(1)
        assert cache.get("t") is None
        first, second = by_policy(make, lru="ab", lfu="ab", fifo="ab", tinylfu="bc")
        assert seen == [
            (first, "size", False, 2),
            (second, "size", False, 2),
            ("t", "expired", False, 1),
        ]

    def test_a_failing_listener_leaves_the_operation_done(self, make: CacheFactory) -> None:
        listener = Listener(raises=Boom)
        cache = make(4, getsizeof=len, on_evict=listener, stats=True)
        cache["a"] = "xx"
        cache["b"] = "yy"
        with pytest.raises(Boom) as excinfo:
            cache["c"] = "zzzz"  # evicts "a" and "b": both listener calls fail
        first, second = by_policy(make, lru="ab", lfu="ab", fifo="ab", tinylfu="ba")
        assert excinfo.value.args == (first,)  # the first error, raised after all ran
        values = {"a": "xx", "b": "yy"}
        assert listener.calls == [(first, values[first], "size"), (second, values[second], "size")]
        assert cache == {"c": "zzzz"}
        assert cache.stats().evictions == 2
        cache._check()
        cache["d"] = ""  # and the cache goes on working
        assert cache == {"c": "zzzz", "d": ""}

    def test_a_failing_listener_on_expiry(self, make: CacheFactory) -> None:
        clock = FakeClock()
        listener = Listener(raises=Boom)
        cache = make(4, timer=clock, on_evict=listener, stats=True)
        cache.set("k", 1, ttl=1)
        cache["live"] = 2
        clock.advance(1)
        with pytest.raises(Boom):
            cache.get("k")
        assert "k" not in cache
        assert listener.calls == [("k", 1, "expired")]
        stats = cache.stats()
        assert (stats.misses, stats.expirations) == (1, 1)
        cache._check()
        assert cache == {"live": 2}

    # -- copies -------------------------------------------------------------------

    @pytest.mark.parametrize("sized", [False, True])
    @pytest.mark.parametrize("how", ["pickle", "copy.copy", "copy()", "copy.deepcopy"])
    def test_copies_are_equal_and_independent(
        self, make: CacheFactory, how: str, sized: bool
    ) -> None:
        def clone(cache: Cache[Any, Any]) -> Cache[Any, Any]:
            if how == "pickle":
                return pickle.loads(pickle.dumps(cache))  # type: ignore[no-any-return]
            if how == "copy.copy":
                return copy.copy(cache)
            if how == "copy()":
                return cache.copy()
            return copy.deepcopy(cache)

        def build() -> Cache[Any, Any]:
            # Picklable parts only: the default clock, len as getsizeof.
            cache = make(16, getsizeof=len if sized else None)
            for key in "abcdef":
                cache[key] = key * 2
            cache["c"], cache["a"], cache["c"], cache["e"]
            cache["b"] = "bb"
            cache.set("t", "tt", ttl=1000)
            return cache

        original = build()
        first = clone(original)
        assert type(first) is type(original)
        assert first == original
        assert list(first.items()) == list(original.items())
        assert first.currsize == original.currsize == (14 if sized else 7)
        remaining = first.ttl_of("t")
        assert remaining is not None
        assert 999 < remaining <= 1000
        # Independent: changing either leaves the other as it was.
        before = list(original.items())
        first["new"] = "n"
        first["a"]
        del first["b"]
        first.popitem()
        assert list(original.items()) == before
        after = list(first.items())
        assert ("b", "bb") not in after
        original.clear()
        assert list(first.items()) == after
        first._check()
        original._check()
        # The same future: both evict in the same order.
        original = build()
        second = clone(original)
        for cache in (original, second):
            cache["g"] = "gg"
            cache["h"] = "hhhhhhhhhh"  # the first victims go
        assert list(second) == list(original)
        assert drain(second) == drain(original)

    # -- bad input ----------------------------------------------------------------

    @pytest.mark.parametrize("maxsize", [-1, -0.5, -math.inf, math.nan])
    def test_a_bad_maxsize_is_refused(self, make: CacheFactory, maxsize: float) -> None:
        with pytest.raises(ConfigurationError) as excinfo:
            make(maxsize)
        assert isinstance(excinfo.value, ValueError)

    @pytest.mark.parametrize("ttl", BAD_TTLS)
    def test_a_bad_cache_ttl_is_refused(self, make: CacheFactory, ttl: float) -> None:
        with pytest.raises(ConfigurationError) as excinfo:
            make(3, ttl=ttl)
        assert isinstance(excinfo.value, ValueError)

    @pytest.mark.parametrize("ttl", BAD_TTLS)
    def test_a_bad_item_ttl_is_refused_and_changes_nothing(
        self, make: CacheFactory, ttl: float
    ) -> None:
        cache = make(2, timer=FakeClock(), stats=True)
        cache["k"] = 1
        cache["other"] = 2
        before = snapshot(cache)
        ttl_before = cache.ttl_of("k")
        with pytest.raises(ConfigurationError):
            cache.set("k", 2, ttl=ttl)
        with pytest.raises(ConfigurationError):
            cache.set("new", 2, ttl=ttl)  # would evict if it were accepted
        with pytest.raises(ConfigurationError):
            cache.set_many({"new": 3}, ttl=ttl)
        assert snapshot(cache) == before
        assert cache.ttl_of("k") == ttl_before

    @pytest.mark.parametrize("key", [[], {}, {1}, ["a"], ([],)])
    def test_an_unhashable_key_is_refused_and_changes_nothing(
        self, make: CacheFactory, key: Any
    ) -> None:
        cache = make(2, stats=True)
        fill(cache, "ab")
        before = snapshot(cache)
        for call in (
            lambda: cache.__setitem__(key, 1),
            lambda: cache.set(key, 1),
            lambda: cache.set(key, 1, ttl=5),
            lambda: cache.setdefault(key, 1),
            lambda: cache[key],
            lambda: cache.get(key),
            lambda: cache.pop(key),
            lambda: cache.__delitem__(key),
        ):
            with pytest.raises(TypeError):
                call()
        assert snapshot(cache) == before

    # -- known bugs ---------------------------------------------------------------

    def test_set_many_completes_when_the_listener_raises(self, make: CacheFactory) -> None:
        cache = make(2, on_evict=Listener(raises=Boom))
        fill(cache, "xy")
        with pytest.raises(Boom):
            cache.set_many({"a": 1, "b": 2})
        cache._check()
        both = {"a": 1, "b": 2}
        assert cache == by_policy(make, lru=both, lfu=both, fifo=both, tinylfu={"x": "X", "b": 2})

    def test_setdefault_completes_when_the_listener_raises(self, make: CacheFactory) -> None:
        clock = FakeClock()
        cache = make(3, timer=clock, on_evict=Listener(raises=Boom))
        cache.set("k", "old", ttl=1)
        clock.advance(1)
        with pytest.raises(Boom):
            cache.setdefault("k", "default")
        cache._check()
        assert cache == {"k": "default"}

    def test_taking_stats_changes_nothing(self, make: CacheFactory) -> None:
        clock = FakeClock()
        log = Listener()
        cache = make(5, timer=clock, stats=True, on_evict=log)
        cache.set("a", 1, ttl=1)
        cache["b"] = 2
        clock.advance(1)
        first = cache.stats()
        assert cache.stats() == first
        assert log.calls == []  # no purge happened behind the caller's back
        assert cache.currsize == 1  # while currsize counts only the live items

    def test_a_nan_size_is_refused(self, make: CacheFactory) -> None:
        cache = make(3, getsizeof=lambda value: value)
        cache["a"] = 1
        with pytest.raises(ValueError):
            cache["nan"] = math.nan
        assert cache == {"a": 1}
        for i in range(10):
            cache[i] = 1
        assert len(cache) <= 3
