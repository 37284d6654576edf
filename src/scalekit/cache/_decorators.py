"""Memoizing decorators with stampede protection, for functions and coroutines.

When many callers miss on the same key at once, only the first (the leader)
calls the function; the others wait for its result, or its exception, instead of
all hitting the database together. Failures are never cached.

``wrapper.invalidate(*args, **kwargs)`` drops one key: the entry, and the call in
flight for it, if any. That call still answers the callers that joined it, but
its result is not stored (it may have read the data before the write that
prompted the invalidation), and callers arriving after the invalidation start a
new call instead of joining it.

A call that calls its own wrapper with the same key, from the same thread (or the
same asyncio task) that is computing it, raises
:class:`~scalekit.errors.ReentrantCall` instead of waiting for itself forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import math
import threading
import weakref
from collections.abc import Callable, Hashable, MutableMapping
from contextlib import AbstractContextManager
from threading import get_ident
from types import TracebackType
from typing import Any, NamedTuple, TypeVar, cast

from scalekit._validate import check_bool, check_callable, check_seconds, type_name
from scalekit._waiting import Latch
from scalekit.cache._shared_memo import Memo, store_key
from scalekit.cache._shared_memo import run as run_memo
from scalekit.cache._shared_memo import run_async as run_memo_async
from scalekit.cache.keys import hashkey, methodkey
from scalekit.errors import ArgumentTypeError, ConfigurationError, ReentrantCall

__all__ = ["CacheInfo", "cached", "cachedmethod"]

F = TypeVar("F", bound=Callable[..., Any])
_MISSING: Any = object()
Lock = AbstractContextManager[Any]


class CacheInfo(NamedTuple):
    """What ``wrapper.cache_info()`` returns, as in :func:`functools.lru_cache`.

    ``misses`` counts calls of the wrapped function; ``hits`` counts calls served
    without one (from the cache, or by waiting for another caller's call).
    """

    hits: int
    misses: int
    maxsize: float | None
    currsize: float


class _Call:
    """One computation in flight, shared by every caller of its key.

    ``runner`` is who computes it (a thread id, or an asyncio task), to refuse a
    re-entry; ``stale`` is set by an invalidation: the result is then not stored.
    """

    __slots__ = ("done", "error", "runner", "stale", "traceback", "value")

    def __init__(self, runner: object) -> None:
        self.runner = runner
        self.stale = False
        self.done = Latch()  # set once value or error is in
        self.value: Any = None
        self.error: BaseException | None = None
        self.traceback: TracebackType | None = None


class _Flights:
    """The calls in flight of one decorated function, and its hit/miss counts.

    ``lock`` guards the cache: a cache hit, the registration of a call and the
    storing of its result each happen under it, so a caller either finds the
    result or finds the call in flight, never neither. ``_registry`` guards the
    shared bookkeeping when different instances use different locks.
    """

    def __init__(self, lock: Lock | None) -> None:
        self.lock: Lock = lock if lock is not None else threading.RLock()
        self._registry = threading.Lock()
        self.calls: dict[Hashable, _Call] = {}
        # id(owner) -> [hits, misses]; the owner is the cache of @cached, the
        # instance of @cachedmethod. Counts die with their owner.
        self._counts: dict[int, list[int]] = {}

    def count(self, owner: object, *, hit: bool) -> None:
        """Count one call of the wrapper for ``owner``: served without a call, or with one."""
        with self._registry:
            counts = self._counts.get(id(owner))
            if counts is None:
                counts = self._counts[id(owner)] = [0, 0]
                # An owner that is not weakly referenceable (a plain dict, a class
                # with __slots__) keeps its counts until cache_clear(), and a later
                # object that reuses its id would inherit them.
                with contextlib.suppress(TypeError):
                    weakref.finalize(owner, self._counts.pop, id(owner), None)
            counts[0 if hit else 1] += 1

    def begin(
        self,
        lock: Lock,
        cache: MutableMapping[Any, Any],
        owner: object,
        flight_key: Hashable,
        key: Hashable,
        runner: object,
    ) -> tuple[Any, _Call | None, bool]:
        """Return ``(value, None, False)`` on a hit, else ``(_MISSING, call, leads)``.

        Counts the hits and the calls that lead; a follower is counted when it
        gets the leader's outcome, so a retry is never counted twice.

        Raises:
            ReentrantCall: ``runner`` (this thread, or this task) is computing
                ``key`` already: waiting for the call would wait for itself.
        """
        with lock:
            try:
                value = cache[key]
            except KeyError:
                pass
            else:
                self.count(owner, hit=True)
                return value, None, False
            with self._registry:
                call = self.calls.get(flight_key)
                if call is not None:
                    if call.runner == runner:
                        raise ReentrantCall(
                            f"the cached function called itself with the key {key!r} "
                            "it is computing, from the same "
                            f"{'task' if isinstance(runner, asyncio.Task) else 'thread'}: "
                            "waiting for its own result would never end"
                        )
                    return _MISSING, call, False
                call = self.calls[flight_key] = _Call(runner)
            self.count(owner, hit=False)
            return _MISSING, call, True

    def succeed(
        self,
        lock: Lock,
        cache: MutableMapping[Any, Any],
        flight_key: Hashable,
        key: Hashable,
        call: _Call,
        value: Any,
    ) -> None:
        with lock:
            try:
                if not call.stale:  # an invalidated call answers its callers only
                    cache[key] = value
            except ValueError:
                pass  # too large to cache: the callers still get it
            finally:
                self._finish(flight_key, call, value, None)

    def invalidate(
        self, lock: Lock, cache: MutableMapping[Any, Any], flight_key: Hashable, key: Hashable
    ) -> bool:
        """Drop ``key`` from ``cache`` and detach its call in flight (marked stale).

        Returns whether there was an entry or a call to drop.
        """
        with lock:
            try:
                del cache[key]
            except KeyError:
                dropped = False
            else:
                dropped = True
            with self._registry:
                call = self.calls.pop(flight_key, None)
                if call is not None:
                    call.stale = True
                    dropped = True
        return dropped

    def fail(self, flight_key: Hashable, call: _Call, error: BaseException) -> None:
        self._finish(flight_key, call, None, error)

    def _finish(
        self, flight_key: Hashable, call: _Call, value: Any, error: BaseException | None
    ) -> None:
        with self._registry:
            if self.calls.get(flight_key) is call:  # else invalidated, maybe replaced
                del self.calls[flight_key]
            call.value = value
            call.error = error
            call.traceback = None if error is None else error.__traceback__
        call.done.set()

    def info(self, lock: Lock, cache: MutableMapping[Any, Any], owner: object) -> CacheInfo:
        with lock:
            currsize = getattr(cache, "currsize", None)
            with self._registry:
                hits, misses = self._counts.get(id(owner), (0, 0))
            return CacheInfo(
                hits,
                misses,
                getattr(cache, "maxsize", None),
                len(cache) if currsize is None else currsize,
            )

    def clear(self, lock: Lock, cache: MutableMapping[Any, Any], owner: object) -> None:
        """Empty ``cache``; its calls in flight answer their callers but store nothing."""
        with lock:
            cache.clear()
            with self._registry:
                for flight_key in [fk for fk in self.calls if fk[0] == id(cache)]:  # type: ignore[index]
                    self.calls.pop(flight_key).stale = True
                counts = self._counts.get(id(owner))
                if counts is not None:
                    counts[:] = [0, 0]


def _outcome(flights: _Flights, owner: object, call: _Call) -> Any:
    """Count a follower's call and hand it the leader's result or exception."""
    flights.count(owner, hit=True)
    if call.error is not None:
        # Each follower raises the error with the leader's traceback, so that
        # tracebacks do not grow with every caller that re-raises it.
        raise call.error.with_traceback(call.traceback)
    return call.value


CacheOf = Callable[[tuple[Any, ...]], MutableMapping[Any, Any]]
LockOf = Callable[[tuple[Any, ...]], Lock]
OwnerOf = Callable[[tuple[Any, ...], MutableMapping[Any, Any]], object]


_DEFAULT: Any = object()


def _is_store(cache: object) -> bool:
    """A Store (get, set, add, delete) that is not a mapping: I/O to reach."""
    kind = type(cache)
    return not hasattr(kind, "__setitem__") and all(
        callable(getattr(cache, name, None)) for name in ("get", "set", "add", "delete")
    )


def _cached_in_store(
    store: Any, key: Callable[..., Hashable], *, lease: Any, ttl: Any, poll: Any
) -> Callable[[F], F]:
    lease = 10.0 if lease is _DEFAULT else lease
    lease = None if lease is None else check_seconds(lease, "lease")
    ttl = None if ttl is None else check_seconds(ttl, "ttl", allow_inf=True)
    poll = 0.005 if poll is _DEFAULT else check_seconds(poll, "poll")
    check_callable(key, "key")
    store_is_async = inspect.iscoroutinefunction(getattr(store, "get", None))

    def decorator(func: F) -> F:
        is_async = inspect.iscoroutinefunction(func)
        if store_is_async and not is_async:
            raise ConfigurationError(
                f"{type_name(store)} is async: it can cache coroutine functions only"
            )
        memo = Memo(store, lease, ttl, poll)
        name = f"{func.__module__}.{func.__qualname__}:"
        make_key = store_key(name, None if key is hashkey else key)

        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            runner: object = asyncio.current_task() or object()
            k = make_key(*args, **kwargs)
            outcome = await run_memo_async(memo, memo.flow(k, runner), func, args, kwargs)
            memo.calls.count(outcome.hit)
            return outcome.value

        def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
            k = make_key(*args, **kwargs)
            outcome = run_memo(memo, memo.flow(k, get_ident()), func, args, kwargs)
            memo.calls.count(outcome.hit)
            return outcome.value

        wrapper: Any = async_wrapper if is_async else sync_wrapper

        def invalidate(*args: Any, **kwargs: Any) -> Any:
            k = make_key(*args, **kwargs)
            memo.calls.detach(k)
            if store_is_async:

                async def drop() -> bool:
                    await store.delete(memo.lease_key(k))
                    return bool(await store.delete(k))

                return drop()
            store.delete(memo.lease_key(k))
            return bool(store.delete(k))

        def cache_clear() -> None:
            memo.calls.detach()
            memo.calls.reset()

        wrapped: Any = functools.update_wrapper(wrapper, func)
        wrapped.cache = store
        wrapped.cache_key = make_key
        wrapped.cache_lock = None
        wrapped.cache_info = lambda: CacheInfo(memo.calls.hits, memo.calls.misses, None, math.nan)
        wrapped.cache_clear = cache_clear
        wrapped.invalidate = invalidate
        return cast(F, wrapped)

    return decorator


def _check_lock(lock: object, name: str) -> None:
    if lock is not None and not (hasattr(lock, "__enter__") and hasattr(lock, "__exit__")):
        raise ArgumentTypeError(f"{name} must be a context manager (a lock), got {type_name(lock)}")


def _cache_owns(args: tuple[Any, ...], cache: MutableMapping[Any, Any]) -> object:
    return cache


def _instance_owns(args: tuple[Any, ...], cache: MutableMapping[Any, Any]) -> object:
    return args[0]


def _sync_wrapper(
    func: Callable[..., Any],
    flights: _Flights,
    cache_of: CacheOf,
    owner_of: OwnerOf,
    lock_of: LockOf,
    key: Callable[..., Hashable],
) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        cache = cache_of(args)
        owner = owner_of(args, cache)
        lock = lock_of(args)
        k = key(*args, **kwargs)
        flight_key = (id(cache), k)
        value, call, leads = flights.begin(lock, cache, owner, flight_key, k, get_ident())
        if call is None:
            return value
        if not leads:
            call.done.wait()
            return _outcome(flights, owner, call)
        try:
            value = func(*args, **kwargs)
        except BaseException as exc:
            flights.fail(flight_key, call, exc)
            raise
        flights.succeed(lock, cache, flight_key, k, call, value)
        return value

    return wrapper


def _async_wrapper(
    func: Callable[..., Any],
    flights: _Flights,
    cache_of: CacheOf,
    owner_of: OwnerOf,
    lock_of: LockOf,
    key: Callable[..., Hashable],
) -> Callable[..., Any]:
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        cache = cache_of(args)
        owner = owner_of(args, cache)
        lock = lock_of(args)
        k = key(*args, **kwargs)
        flight_key = (id(cache), k)
        task: object = asyncio.current_task() or object()
        while True:
            value, call, leads = flights.begin(lock, cache, owner, flight_key, k, task)
            if call is None:
                return value
            if leads:
                break
            await call.done.wait_async()
            if isinstance(call.error, asyncio.CancelledError):
                continue  # the leader was cancelled, not us: try again, maybe as leader
            return _outcome(flights, owner, call)
        try:
            value = await func(*args, **kwargs)
        except BaseException as exc:
            flights.fail(flight_key, call, exc)
            raise
        flights.succeed(lock, cache, flight_key, k, call, value)
        return value

    return wrapper


def _decorate(
    func: F,
    flights: _Flights,
    cache_of: CacheOf,
    owner_of: OwnerOf,
    lock_of: LockOf,
    key: Callable[..., Hashable],
) -> F:
    make = _async_wrapper if inspect.iscoroutinefunction(func) else _sync_wrapper
    wrapper = make(func, flights, cache_of, owner_of, lock_of, key)
    return cast(F, functools.update_wrapper(wrapper, func))


def cached(
    cache: MutableMapping[Any, Any] | Any,
    key: Callable[..., Hashable] = hashkey,
    lock: Lock | None = None,
    *,
    condition: Lock | None = None,
    info: bool = True,
    lease: float | None = _DEFAULT,
    ttl: float | None = None,
    poll: float = _DEFAULT,
) -> Callable[[F], F]:
    """Memoize a function or coroutine function in ``cache``, with stampede protection.

    Concurrent callers that miss on the same key cause exactly one call of the
    function; they all get its result, or its exception (failures are not cached).
    A result too large for the cache is returned but not stored.

    ``cache`` may also be a shared :class:`~scalekit.protocols.Store` (or
    :class:`~scalekit.protocols.AsyncStore` for a coroutine function): a
    :class:`RedisCache`, a :class:`TieredCache`, a
    :class:`~scalekit.sharding.ShardedStore`. Then the protection spans app
    servers: the caller that misses takes a lease in the store for ``lease``
    seconds (default 10; ``None``: no lease, one call per process), and callers
    in every process wait for its value instead of calling the function; a
    crashed holder's lease expires. Results are kept for ``ttl`` seconds (default:
    the store's), keys are the JSON of the arguments after the function's
    qualified name (or ``key(*args, **kwargs)``), so arguments and results must
    be JSON values; waiters look for the value every ``poll`` seconds at first
    (default 0.005), backing off to 0.25. ``lock`` is not used with a store.

    Args:
        cache: where results are kept (any mutable mapping; a TTL cache makes a
            query cache whose results go stale after ``ttl``).
        key: turns the call's arguments into a cache key (default :func:`hashkey`).
        lock: guards the cache (default: a lock of the decorator's own, so even
            a plain cache is safe across threads).
        condition: accepted for cachetools compatibility; used as ``lock``.
        info: accepted for cachetools compatibility; ``cache_info()`` is always there.

    The wrapper has ``cache_info()``, ``cache_clear()``, ``invalidate(*args,
    **kwargs)`` and the attributes ``cache``, ``cache_key`` and ``cache_lock``.
    ``invalidate`` drops the entry of those arguments and detaches their call in
    flight: its callers still get its result, but it is not stored, and later
    callers start a new call (O(1); returns whether anything was dropped).
    ``cache_clear()`` detaches every call in flight the same way.

    Runtime complexity: one cache lookup per call, plus the call on a miss.

    Raises:
        ArgumentTypeError: ``cache`` is not a mutable mapping, ``key`` is not
            callable, ``lock`` is not a context manager or ``info`` not a bool.
        ReentrantCall: (from a call) the function called itself with the same
            key from the thread or task computing it.

    >>> from scalekit.cache import LRUCache
    >>> @cached(LRUCache(maxsize=128))
    ... def square(n):
    ...     return n * n
    >>> square(4), square(4)
    (16, 16)
    >>> square.cache_info()
    CacheInfo(hits=1, misses=1, maxsize=128, currsize=1)
    >>> square.invalidate(4), square.invalidate(4)
    (True, False)

    Over a store, ``invalidate`` deletes the entry and the lease, so a call in
    flight in any process does not store what it computed, and ``cache_clear()``
    only forgets this process's counts and calls in flight (a shared store keeps
    its entries; delete them there).
    """
    if _is_store(cache):
        return _cached_in_store(cache, key, lease=lease, ttl=ttl, poll=poll)
    if not all(hasattr(type(cache), name) for name in ("__getitem__", "__setitem__")):
        raise ArgumentTypeError(
            f"cache must be a mutable mapping or a Store, got {type_name(cache)}"
        )
    if lease is not _DEFAULT or ttl is not None or poll is not _DEFAULT:
        raise ConfigurationError("lease, ttl and poll are for a cache that is a shared Store")
    check_callable(key, "key")
    _check_lock(lock, "lock")
    _check_lock(condition, "condition")
    check_bool(info, "info")
    flights = _Flights(lock if lock is not None else condition)

    the_lock = flights.lock

    def decorator(func: F) -> F:
        wrapper: Any = _decorate(
            func, flights, lambda args: cache, _cache_owns, lambda args: the_lock, key
        )
        wrapper.cache = cache
        wrapper.cache_key = key
        wrapper.cache_lock = the_lock
        wrapper.cache_info = lambda: flights.info(the_lock, cache, cache)
        wrapper.cache_clear = lambda: flights.clear(the_lock, cache, cache)

        def invalidate(*args: Any, **kwargs: Any) -> bool:
            k = key(*args, **kwargs)
            return flights.invalidate(the_lock, cache, (id(cache), k), k)

        wrapper.invalidate = invalidate
        return cast(F, wrapper)

    return decorator


def cachedmethod(
    cache: Callable[[Any], MutableMapping[Any, Any]],
    key: Callable[..., Hashable] = methodkey,
    lock: Callable[[Any], Lock] | None = None,
    *,
    condition: Callable[[Any], Lock] | None = None,
    info: bool = True,
) -> Callable[[F], F]:
    """Memoize a method in a cache that ``cache(self)`` returns, with stampede protection.

    As in cachetools, ``cache`` and ``lock`` are functions of the instance, so
    each instance can have its own cache. The default ``key`` ignores ``self``.

    >>> from scalekit.cache import LRUCache
    >>> class Prices:
    ...     def __init__(self):
    ...         self.cache = LRUCache(maxsize=32)
    ...     @cachedmethod(lambda self: self.cache)
    ...     def price(self, sku):
    ...         return len(sku) * 10
    >>> prices = Prices()
    >>> prices.price("abc")
    30
    >>> Prices.price.invalidate(prices, "abc")
    True

    ``wrapper.invalidate(instance, *args, **kwargs)`` drops one key of that
    instance's cache, as :func:`cached`'s does.
    """
    if not callable(cache):
        raise ArgumentTypeError(
            f"cache must be a function of the instance returning its cache, got {type_name(cache)}"
        )
    check_callable(key, "key")
    check_callable(lock, "lock", allow_none=True)
    check_callable(condition, "condition", allow_none=True)
    check_bool(info, "info")
    lock_of = lock if lock is not None else condition
    flights = _Flights(None)
    default_lock = flights.lock

    def lock_for(instance: Any) -> Lock:
        return default_lock if lock_of is None else lock_of(instance)

    def decorator(method: F) -> F:
        wrapper: Any = _decorate(
            method,
            flights,
            lambda args: cache(args[0]),
            _instance_owns,
            lambda args: lock_for(args[0]),
            key,
        )
        wrapper.cache = cache
        wrapper.cache_key = key
        wrapper.cache_lock = lock_of
        wrapper.cache_info = lambda self: flights.info(lock_for(self), cache(self), self)
        wrapper.cache_clear = lambda self: flights.clear(lock_for(self), cache(self), self)

        def invalidate(self: Any, *args: Any, **kwargs: Any) -> bool:
            the_cache = cache(self)
            k = key(self, *args, **kwargs)
            return flights.invalidate(lock_for(self), the_cache, (id(the_cache), k), k)

        wrapper.invalidate = invalidate
        return cast(F, wrapper)

    return decorator
