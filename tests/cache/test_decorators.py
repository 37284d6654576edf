"""Tests of ``cached``, ``cachedmethod`` and the key functions.

The stampede tests never sleep to line callers up. Threads start together on a
``threading.Barrier``; the leader then blocks until every caller has been through
the decorator's lock (a :class:`CountingLock` counts the releases), so all of them
have either found the call in flight or the result in the cache before the leader
finishes. Tests that different keys do not block each other make every call wait
on a barrier *inside* the function, which only opens if all of them run at once.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import subprocess
import sys
import threading
from collections.abc import Callable, Hashable, MutableMapping
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scalekit.cache import (
    CacheInfo,
    FIFOCache,
    LFUCache,
    LRUCache,
    ThreadSafeCache,
    TTLCache,
    cached,
    cachedmethod,
)
from scalekit.cache.keys import hashkey, methodkey, typedkey
from scalekit.testing import FakeClock

TIMEOUT = 10.0  # seconds; only reached when a test is failing (a deadlock, a lost wake-up)


# -- helpers ---------------------------------------------------------------------


class CountingLock:
    """A reentrant lock that counts its entries and releases.

    ``on_target()`` is called (outside the lock) when the lock has been released
    ``target`` times. The decorators take their lock to look a key up, so when a
    stampede of ``n`` callers has released it ``n`` times, every caller has either
    registered as a waiter for the call in flight or found the result.
    """

    def __init__(
        self, target: int | None = None, on_target: Callable[[], object] | None = None
    ) -> None:
        self._lock = threading.RLock()
        self._target = target
        self._on_target = on_target
        self.entries = 0
        self.releases = 0

    def __enter__(self) -> CountingLock:
        self._lock.acquire()
        self.entries += 1
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.releases += 1
        fire = self.releases == self._target
        self._lock.release()
        if fire and self._on_target is not None:
            self._on_target()


def run_together(n: int, fn: Callable[[int], Any]) -> list[tuple[str, Any]]:
    """Run ``fn(i)`` in ``n`` threads released at once; return ``(outcome, value)`` each.

    ``outcome`` is ``"returned"`` or ``"raised"``.
    """
    barrier = threading.Barrier(n)
    outcomes: list[tuple[str, Any]] = [("missing", None)] * n

    def worker(i: int) -> None:
        barrier.wait(TIMEOUT)
        try:
            outcomes[i] = ("returned", fn(i))
        except BaseException as exc:
            outcomes[i] = ("raised", exc)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert not any(thread.is_alive() for thread in threads), "a caller never returned"
    return outcomes


def returned_values(outcomes: list[tuple[str, Any]]) -> list[Any]:
    assert [kind for kind, _ in outcomes] == ["returned"] * len(outcomes), outcomes[:3]
    return [value for _, value in outcomes]


def in_thread(fn: Callable[[], Any]) -> Any:
    """Call ``fn()`` in a daemon thread, so a deadlock fails the test instead of hanging it."""
    return returned_values(run_together(1, lambda _: fn()))[0]


CACHES: dict[str, Callable[[], MutableMapping[Any, Any]]] = {
    "dict": dict,
    "LRUCache": lambda: LRUCache(maxsize=16),
    "LFUCache": lambda: LFUCache(maxsize=16),
    "FIFOCache": lambda: FIFOCache(maxsize=16),
    "TTLCache": lambda: TTLCache(maxsize=16, ttl=60, timer=FakeClock()),
    "ThreadSafeCache": lambda: ThreadSafeCache(LRUCache(maxsize=16)),
}


# -- stampede protection, threads -------------------------------------------------


@pytest.mark.parametrize("make_cache", list(CACHES.values()), ids=list(CACHES))
def test_thread_stampede_calls_the_function_once(
    make_cache: Callable[[], MutableMapping[Any, Any]],
) -> None:
    n = 100
    all_looked_up = threading.Event()
    calls: list[str] = []

    @cached(make_cache(), lock=CountingLock(target=n, on_target=all_looked_up.set))
    def load(key: str) -> list[str]:
        calls.append(key)
        assert all_looked_up.wait(TIMEOUT), "the other callers never arrived"
        return [f"value of {key}"]

    values = returned_values(run_together(n, lambda _: load("k")))

    assert calls == ["k"]
    assert values[0] == ["value of k"]
    assert all(value is values[0] for value in values)
    assert load.cache_info()[:2] == (n - 1, 1)
    assert load("k") is values[0]
    assert calls == ["k"]
    assert load.cache_info()[:2] == (n, 1)


def test_thread_stampede_with_the_default_lock() -> None:
    n = 100
    keys_made = threading.Event()
    made: list[object] = []
    made_lock = threading.Lock()
    calls: list[int] = []

    def counting_key(*args: Hashable) -> Hashable:
        with made_lock:
            made.append(args)
            if len(made) == n:
                keys_made.set()
        return hashkey(*args)

    @cached(LRUCache(maxsize=16), key=counting_key)
    def load(x: int) -> list[int]:
        calls.append(x)
        assert keys_made.wait(TIMEOUT)
        return [x]

    values = returned_values(run_together(n, lambda _: load(7)))

    assert calls == [7]
    assert all(value is values[0] for value in values)
    assert values[0] == [7]
    assert load.cache_info() == CacheInfo(hits=n - 1, misses=1, maxsize=16, currsize=1)


def test_thread_stampede_shares_the_exception_and_does_not_cache_it() -> None:
    n = 100
    all_looked_up = threading.Event()
    calls: list[str] = []

    @cached(LRUCache(maxsize=16), lock=CountingLock(target=n, on_target=all_looked_up.set))
    def load(key: str) -> str:
        calls.append(key)
        if len(calls) == 1:
            assert all_looked_up.wait(TIMEOUT)
            raise LookupError(f"backend down for {key}")
        return f"value of {key}"

    outcomes = run_together(n, lambda _: load("k"))

    assert calls == ["k"]
    assert [kind for kind, _ in outcomes] == ["raised"] * n
    for _, error in outcomes:
        assert type(error) is LookupError
        assert error.args == ("backend down for k",)
    assert load.cache_info() == CacheInfo(hits=n - 1, misses=1, maxsize=16, currsize=0)
    assert len(load.cache) == 0

    # The failure was not cached: the next call calls the function again.
    assert load("k") == "value of k"
    assert calls == ["k", "k"]
    assert load("k") == "value of k"
    assert calls == ["k", "k"]
    assert load.cache_info() == CacheInfo(hits=n, misses=2, maxsize=16, currsize=1)


def test_thread_stampede_on_a_value_too_large_to_cache() -> None:
    n = 20
    all_looked_up = threading.Event()
    calls: list[int] = []
    cache = LRUCache(maxsize=10, getsizeof=len)

    @cached(cache, lock=CountingLock(target=n, on_target=all_looked_up.set))
    def rows(count: int) -> list[int]:
        calls.append(count)
        assert all_looked_up.wait(TIMEOUT)
        return list(range(count))

    values = returned_values(run_together(n, lambda _: rows(50)))

    assert calls == [50]
    assert values[0] == list(range(50))
    assert all(value is values[0] for value in values)
    assert len(cache) == 0
    assert cache.currsize == 0


def test_threads_with_different_keys_do_not_block_each_other() -> None:
    n = 8
    # Every call waits here until all n calls are inside the function at once:
    # if one key's call held up another's, the barrier would break.
    inside = threading.Barrier(n)

    @cached(LRUCache(maxsize=32))
    def load(key: int) -> int:
        inside.wait(TIMEOUT)
        return key * 10

    values = returned_values(run_together(n, load))

    assert values == [i * 10 for i in range(n)]
    assert load.cache_info() == CacheInfo(hits=0, misses=n, maxsize=32, currsize=n)


def test_a_slow_call_does_not_delay_another_key() -> None:
    release_a = threading.Event()
    a_started = threading.Event()

    @cached(LRUCache(maxsize=8))
    def load(key: str) -> str:
        if key == "a":
            a_started.set()
            assert release_a.wait(TIMEOUT)
        return key.upper()

    slow = threading.Thread(target=load, args=("a",), daemon=True)
    slow.start()
    try:
        assert a_started.wait(TIMEOUT)
        assert in_thread(lambda: load("b")) == "B"
        assert in_thread(lambda: load("b")) == "B"
        assert slow.is_alive()  # "a" is still being computed all along
        assert not release_a.is_set()
    finally:
        release_a.set()
        slow.join(TIMEOUT)
    assert not slow.is_alive()
    assert load("a") == "A"
    assert load.cache_info() == CacheInfo(hits=2, misses=2, maxsize=8, currsize=2)


# -- the decorator's behaviour, one thread -----------------------------------------


def test_results_are_memoized_per_key() -> None:
    calls: list[tuple[Any, ...]] = []

    @cached(LRUCache(maxsize=8))
    def add(a: int, b: int = 0) -> int:
        calls.append((a, b))
        return a + b

    assert add(1, 2) == 3
    assert add(1, 2) == 3
    assert add(2, 1) == 3
    assert add(1, b=2) == 3  # a different key than add(1, 2), as in cachetools
    assert calls == [(1, 2), (2, 1), (1, 2)]
    assert add.cache_info() == CacheInfo(hits=1, misses=3, maxsize=8, currsize=3)


def test_kwargs_order_does_not_matter() -> None:
    calls: list[dict[str, int]] = []

    @cached({})
    def f(**kwargs: int) -> int:
        calls.append(kwargs)
        return sum(kwargs.values())

    assert f(a=1, b=2) == f(b=2, a=1) == 3
    assert len(calls) == 1


def test_failures_are_not_cached() -> None:
    attempts: list[int] = []

    @cached(LRUCache(maxsize=4))
    def flaky(x: int) -> int:
        attempts.append(x)
        if len(attempts) < 3:
            raise ConnectionError("try again")
        return x * 2

    for _ in range(2):
        with pytest.raises(ConnectionError, match="try again"):
            flaky(5)
    assert flaky(5) == 10
    assert flaky(5) == 10
    assert attempts == [5, 5, 5]
    assert flaky.cache_info() == CacheInfo(hits=1, misses=3, maxsize=4, currsize=1)


def test_a_value_too_large_is_returned_but_not_cached() -> None:
    calls: list[int] = []
    cache = LRUCache(maxsize=10, getsizeof=len)

    @cached(cache)
    def rows(count: int) -> list[int]:
        calls.append(count)
        return list(range(count))

    assert rows(50) == list(range(50))
    assert rows(50) == list(range(50))
    assert calls == [50, 50]
    assert len(cache) == 0
    assert rows(3) == [0, 1, 2]
    assert rows(3) == [0, 1, 2]
    assert calls == [50, 50, 3]
    assert cache.currsize == 3
    assert rows.cache_info() == CacheInfo(hits=1, misses=3, maxsize=10, currsize=3)


def test_a_plain_dict_works_as_the_cache() -> None:
    cache: dict[Any, Any] = {}

    @cached(cache)
    def square(x: int) -> int:
        return x * x

    assert [square(2), square(2), square(3)] == [4, 4, 9]
    assert cache == {hashkey(2): 4, hashkey(3): 9}
    assert square.cache_info() == CacheInfo(hits=1, misses=2, maxsize=None, currsize=2)
    square.cache_clear()
    assert cache == {}
    assert square.cache_info() == CacheInfo(hits=0, misses=0, maxsize=None, currsize=0)


def test_ttl_cache_makes_a_query_cache() -> None:
    clock = FakeClock()
    database = {"alice": 1}
    queries: list[str] = []

    @cached(TTLCache(maxsize=100, ttl=30, timer=clock))
    def balance(user: str) -> int:
        queries.append(user)
        return database[user]

    assert balance("alice") == 1
    database["alice"] = 2
    clock.advance(29)
    assert balance("alice") == 1  # still fresh: served from the cache
    assert queries == ["alice"]
    clock.advance(1)
    assert balance("alice") == 2  # stale after ttl: queried again
    assert queries == ["alice", "alice"]
    clock.advance(29)
    assert balance("alice") == 2
    assert queries == ["alice", "alice"]
    assert balance.cache_info() == CacheInfo(hits=2, misses=2, maxsize=100, currsize=1)
    clock.advance(1)
    assert balance.cache_info().currsize == 0  # the expired result is gone


def test_cache_info_and_cache_clear() -> None:
    calls: list[int] = []

    @cached(LRUCache(maxsize=2))
    def f(x: int) -> int:
        calls.append(x)
        return -x

    assert f.cache_info() == CacheInfo(hits=0, misses=0, maxsize=2, currsize=0)
    for x in (1, 1, 2, 1, 3, 2):
        f(x)
    # 3 evicted 2 (the least recently used), so the last f(2) was a miss again.
    assert calls == [1, 2, 3, 2]
    assert f.cache_info() == CacheInfo(hits=2, misses=4, maxsize=2, currsize=2)
    f.cache_clear()
    assert f.cache_info() == CacheInfo(hits=0, misses=0, maxsize=2, currsize=0)
    assert len(f.cache) == 0
    assert f(1) == -1
    assert calls == [1, 2, 3, 2, 1]


def test_wrapper_attributes() -> None:
    cache = LRUCache(maxsize=8)
    lock = threading.RLock()

    def original(x: int) -> int:
        """Doubles x."""
        return 2 * x

    wrapper = cached(cache, key=typedkey, lock=lock)(original)

    assert wrapper.cache is cache
    assert wrapper.cache_key is typedkey
    assert wrapper.cache_lock is lock
    assert wrapper.__name__ == "original"
    assert wrapper.__doc__ == "Doubles x."
    assert wrapper.__wrapped__ is original
    assert wrapper(1) == 2
    assert wrapper(1.0) == 2.0
    assert set(cache) == {typedkey(1), typedkey(1.0)}


def test_default_key_and_lock() -> None:
    @cached(LRUCache(maxsize=8))
    def f(x: int) -> int:
        return x

    assert f.cache_key is hashkey
    with f.cache_lock:  # a usable lock of the decorator's own
        assert f(1) == 1  # and reentrant: the decorator takes it too
    assert f.cache_info().misses == 1


def test_the_given_lock_guards_the_cache() -> None:
    lock = CountingLock()

    @cached(LRUCache(maxsize=8), lock=lock)
    def f(x: int) -> int:
        return x

    f(1)
    f(1)
    assert lock.entries >= 2  # at least one lookup under the lock per call
    assert lock.entries == lock.releases


def test_a_non_reentrant_lock_does_not_deadlock() -> None:
    @cached(LRUCache(maxsize=8), lock=threading.Lock())
    def f(x: int) -> int:
        if x > 0:
            return f(x - 1) + 1  # a recursive call takes the lock again
        return 0

    assert in_thread(lambda: f(5)) == 5
    assert in_thread(f.cache_info) == CacheInfo(hits=0, misses=6, maxsize=8, currsize=6)
    assert in_thread(lambda: f(6)) == 6
    assert f.cache_info() == CacheInfo(hits=1, misses=7, maxsize=8, currsize=7)


def test_condition_is_used_as_the_lock() -> None:
    condition = threading.Condition()

    @cached(LRUCache(maxsize=8), condition=condition)
    def f(x: int) -> int:
        return x + 1

    assert f.cache_lock is condition
    assert f(1) == f(1) == 2
    assert f.cache_info().hits == 1


def test_info_false_is_accepted() -> None:
    @cached(LRUCache(maxsize=8), info=False)
    def f(x: int) -> int:
        return x

    assert f(1) == f(1) == 1
    assert f.cache_info() == CacheInfo(hits=1, misses=1, maxsize=8, currsize=1)


def test_none_is_not_a_cache() -> None:
    with pytest.raises(TypeError, match="cache"):
        cached(None)  # type: ignore[arg-type]


def test_none_results_are_cached() -> None:
    calls: list[int] = []

    @cached(LRUCache(maxsize=8))
    def nothing(x: int) -> None:
        calls.append(x)

    assert nothing(1) is None
    assert nothing(1) is None
    assert calls == [1]


# -- asyncio ---------------------------------------------------------------------


def run_async(scenario: Callable[[], Any]) -> Any:
    return asyncio.run(asyncio.wait_for(scenario(), TIMEOUT))


def test_async_results_are_memoized() -> None:
    calls: list[int] = []

    @cached(LRUCache(maxsize=8))
    async def fetch(x: int) -> int:
        calls.append(x)
        await asyncio.sleep(0)
        return x * 3

    async def scenario() -> list[int]:
        return [await fetch(1), await fetch(1), await fetch(2)]

    assert run_async(scenario) == [3, 3, 6]
    assert calls == [1, 2]
    assert fetch.cache_info() == CacheInfo(hits=1, misses=2, maxsize=8, currsize=2)
    assert asyncio.iscoroutinefunction(fetch)


def test_asyncio_stampede_calls_the_coroutine_once() -> None:
    n = 1000
    calls: list[str] = []

    async def scenario() -> tuple[Any, list[Any]]:
        all_looked_up = asyncio.Event()

        @cached(LRUCache(maxsize=16), lock=CountingLock(target=n, on_target=all_looked_up.set))
        async def load(key: str) -> list[str]:
            calls.append(key)
            await all_looked_up.wait()
            return [f"value of {key}"]

        return load, await asyncio.gather(*(load("k") for _ in range(n)))

    load, values = run_async(scenario)

    assert calls == ["k"]
    assert len(values) == n
    assert values[0] == ["value of k"]
    assert all(value is values[0] for value in values)
    assert load.cache_info() == CacheInfo(hits=n - 1, misses=1, maxsize=16, currsize=1)


def test_asyncio_stampede_shares_the_exception_and_does_not_cache_it() -> None:
    n = 1000
    calls: list[str] = []

    async def scenario() -> tuple[Any, list[Any], str]:
        all_looked_up = asyncio.Event()

        @cached(LRUCache(maxsize=16), lock=CountingLock(target=n, on_target=all_looked_up.set))
        async def load(key: str) -> str:
            calls.append(key)
            if len(calls) == 1:
                await all_looked_up.wait()
                raise LookupError(f"backend down for {key}")
            return f"value of {key}"

        outcomes = await asyncio.gather(*(load("k") for _ in range(n)), return_exceptions=True)
        return load, outcomes, await load("k")

    load, outcomes, later = run_async(scenario)

    assert len(outcomes) == n
    for error in outcomes:
        assert type(error) is LookupError
        assert error.args == ("backend down for k",)
    assert later == "value of k"  # the failure was not cached: the function was called again
    assert calls == ["k", "k"]
    assert load.cache_info() == CacheInfo(hits=n - 1, misses=2, maxsize=16, currsize=1)


def test_asyncio_leader_cancelled_a_follower_takes_over() -> None:
    n_followers = 100
    calls: list[str] = []

    async def scenario() -> None:
        leader_inside = asyncio.Event()
        all_looked_up = asyncio.Event()
        lock = CountingLock(target=1 + n_followers, on_target=all_looked_up.set)

        @cached(LRUCache(maxsize=16), lock=lock)
        async def load(key: str) -> str:
            calls.append(key)
            call_number = len(calls)
            if call_number == 1:
                leader_inside.set()
                await asyncio.Event().wait()  # hangs until cancelled
            return f"{key} from call {call_number}"

        leader = asyncio.create_task(load("k"))
        await leader_inside.wait()
        followers = [asyncio.create_task(load("k")) for _ in range(n_followers)]
        await all_looked_up.wait()
        leader.cancel()

        results = await asyncio.gather(*followers)

        with pytest.raises(asyncio.CancelledError):
            await leader
        assert leader.cancelled()
        assert not any(follower.cancelled() for follower in followers)
        assert results == ["k from call 2"] * n_followers
        assert calls == ["k", "k"]  # exactly one follower retried as the leader
        assert await load("k") == "k from call 2"
        assert calls == ["k", "k"]

    run_async(scenario)


def test_asyncio_leader_cancelled_cache_info_counts_each_call_once() -> None:
    n_followers = 5

    async def scenario() -> CacheInfo:
        leader_inside = asyncio.Event()
        all_looked_up = asyncio.Event()
        lock = CountingLock(target=1 + n_followers, on_target=all_looked_up.set)
        calls: list[int] = []

        @cached(LRUCache(maxsize=16), lock=lock)
        async def load(key: str) -> str:
            calls.append(1)
            if len(calls) == 1:
                leader_inside.set()
                await asyncio.Event().wait()
            return key

        leader = asyncio.create_task(load("k"))
        await leader_inside.wait()
        followers = [asyncio.create_task(load("k")) for _ in range(n_followers)]
        await all_looked_up.wait()  # every follower found the call in flight
        leader.cancel()
        assert await asyncio.gather(*followers) == ["k"] * n_followers
        assert len(calls) == 2
        return load.cache_info()

    info = run_async(scenario)
    # 6 calls of the wrapper: the function ran twice (the cancelled leader, the
    # follower that took over); the other 4 followers were served without a call.
    assert info.misses == 2
    assert info.hits == n_followers - 1


def test_asyncio_cancelled_follower_does_not_disturb_the_others() -> None:
    n_followers = 50
    calls: list[str] = []

    async def scenario() -> None:
        release = asyncio.Event()
        all_looked_up = asyncio.Event()
        lock = CountingLock(target=1 + n_followers, on_target=all_looked_up.set)

        @cached(LRUCache(maxsize=16), lock=lock)
        async def load(key: str) -> list[str]:
            calls.append(key)
            await release.wait()
            return [key]

        leader = asyncio.create_task(load("k"))
        followers = [asyncio.create_task(load("k")) for _ in range(n_followers)]
        await all_looked_up.wait()
        victim, others = followers[0], followers[1:]
        victim.cancel()
        with pytest.raises(asyncio.CancelledError):
            await victim
        release.set()

        result = await leader
        values = await asyncio.gather(*others)

        assert result == ["k"]
        assert all(value is result for value in values)
        assert calls == ["k"]
        assert load.cache_info().misses == 1

    run_async(scenario)


def test_asyncio_different_keys_do_not_block_each_other() -> None:
    n = 10

    async def scenario() -> list[int]:
        entered: list[int] = []
        all_inside = asyncio.Event()

        @cached(LRUCache(maxsize=16))
        async def load(key: int) -> int:
            entered.append(key)
            if len(entered) == n:
                all_inside.set()
            await all_inside.wait()  # set only once all n calls are in flight together
            return key + 100

        return await asyncio.gather(*(load(i) for i in range(n)))

    assert run_async(scenario) == [i + 100 for i in range(n)]


def test_asyncio_stampede_across_event_loops_in_threads() -> None:
    n_threads, n_tasks = 4, 50
    total = n_threads * n_tasks
    all_looked_up = threading.Event()
    calls: list[int] = []

    @cached(LRUCache(maxsize=16), lock=CountingLock(target=total, on_target=all_looked_up.set))
    async def load(key: str) -> list[str]:
        calls.append(threading.get_ident())
        assert await asyncio.to_thread(all_looked_up.wait, TIMEOUT)
        return [key]

    async def many() -> list[Any]:
        return await asyncio.gather(*(load("k") for _ in range(n_tasks)))

    per_thread = returned_values(run_together(n_threads, lambda _: asyncio.run(many())))
    values = [value for values in per_thread for value in values]

    assert len(calls) == 1
    assert len(values) == total
    assert values[0] == ["k"]
    assert all(value is values[0] for value in values)
    assert load.cache_info() == CacheInfo(hits=total - 1, misses=1, maxsize=16, currsize=1)


def test_asyncio_event_loops_in_threads_with_different_keys() -> None:
    n_threads = 4
    # Each thread's call waits until all the threads' calls are inside the function.
    inside = threading.Barrier(n_threads)
    calls: list[int] = []

    @cached(LRUCache(maxsize=16))
    async def load(key: int) -> int:
        calls.append(key)
        await asyncio.to_thread(inside.wait, TIMEOUT)
        return key * key

    async def twice(key: int) -> list[int]:
        return list(await asyncio.gather(load(key), load(key)))

    results = returned_values(run_together(n_threads, lambda i: asyncio.run(twice(i))))

    assert results == [[i * i, i * i] for i in range(n_threads)]
    assert sorted(calls) == list(range(n_threads))


def test_a_follower_whose_loop_closed_does_not_break_the_leader() -> None:
    calls: list[int] = []
    loop_a = asyncio.new_event_loop()  # the leader's
    loop_b = asyncio.new_event_loop()  # an impatient follower's: it gives up, the loop closes
    loop_c = asyncio.new_event_loop()  # a patient follower's
    gate = loop_a.create_future()

    @cached({})
    async def fetch(x: int) -> str:
        calls.append(x)
        await gate
        return "value"

    leader = loop_a.create_task(fetch(1))
    patient = None
    try:
        loop_a.run_until_complete(asyncio.sleep(0))
        assert calls == [1]  # the leader is inside, waiting for the gate

        impatient = loop_b.create_task(fetch(1))
        loop_b.run_until_complete(asyncio.sleep(0))
        impatient.cancel()  # as asyncio.wait_for does on a timeout
        with pytest.raises(asyncio.CancelledError):
            loop_b.run_until_complete(impatient)
        loop_b.close()

        patient = loop_c.create_task(fetch(1))
        loop_c.run_until_complete(asyncio.sleep(0))
        assert not patient.done()  # waiting for the leader, as the impatient one was

        gate.set_result(None)
        leader_outcome = loop_a.run_until_complete(asyncio.gather(leader, return_exceptions=True))
        assert leader_outcome == ["value"]
        loop_c.run_until_complete(asyncio.wait_for(asyncio.shield(patient), TIMEOUT))
        assert patient.result() == "value"
        assert calls == [1]
        # The cancelled follower was not served; the patient one was, without a call.
        assert fetch.cache_info() == CacheInfo(hits=1, misses=1, maxsize=None, currsize=1)
    finally:
        for loop, task in ((loop_a, leader), (loop_c, patient)):
            if task is not None and not task.done():
                task.cancel()
                loop.run_until_complete(asyncio.gather(task, return_exceptions=True))
        for loop in (loop_a, loop_b, loop_c):
            loop.close()


# -- cachedmethod -----------------------------------------------------------------


class Prices:
    """Each instance has its own cache and lock; counts the lookups it really makes."""

    def __init__(self, currency: str, lock: Any = None) -> None:
        self.currency = currency
        self.cache = LRUCache(maxsize=8)
        self.lock = lock if lock is not None else threading.RLock()
        self.lookups: list[str] = []
        self.gate: Callable[[], object] = lambda: None

    @cachedmethod(lambda self: self.cache, lock=lambda self: self.lock)
    def price(self, sku: str) -> list[str]:
        self.lookups.append(sku)
        self.gate()
        return [f"{sku} in {self.currency}"]

    @cachedmethod(lambda self: self.cache)
    async def price_async(self, sku: str) -> list[str]:
        self.lookups.append(sku)
        await asyncio.sleep(0)
        return [f"{sku} async in {self.currency}"]


def test_cachedmethod_memoizes_per_instance() -> None:
    eur, usd = Prices("EUR"), Prices("USD")

    assert eur.price("a") == ["a in EUR"]
    assert eur.price("a") == ["a in EUR"]
    assert usd.price("a") == ["a in USD"]  # its own cache, so not EUR's result
    assert usd.price("b") == ["b in USD"]
    assert eur.lookups == ["a"]
    assert usd.lookups == ["a", "b"]
    assert len(eur.cache) == 1
    assert len(usd.cache) == 2
    assert Prices.price.cache_info(eur).currsize == 1
    assert Prices.price.cache_info(usd).currsize == 2

    Prices.price.cache_clear(usd)
    assert len(usd.cache) == 0
    assert len(eur.cache) == 1  # only that instance's cache was cleared
    assert eur.price("a") == ["a in EUR"]
    assert eur.lookups == ["a"]
    assert usd.price("a") == ["a in USD"]
    assert usd.lookups == ["a", "b", "a"]


def test_cachedmethod_attributes() -> None:
    def cache_of(self: Any) -> Any:
        return self.cache

    class C:
        def __init__(self) -> None:
            self.cache: dict[Any, Any] = {}

        @cachedmethod(cache_of)
        def m(self, x: int) -> int:
            """Returns x."""
            return x

    c = C()
    assert C.m.cache is cache_of
    assert C.m.cache_key is methodkey
    assert C.m.__name__ == "m"
    assert C.m.__doc__ == "Returns x."
    assert c.m(3) == 3
    assert c.cache == {methodkey(c, 3): 3}


def test_cachedmethod_key_ignores_self_with_a_shared_cache() -> None:
    shared = LRUCache(maxsize=8)
    calls: list[int] = []

    class Square:
        @cachedmethod(lambda self: shared)
        def of(self, x: int) -> int:
            calls.append(x)
            return x * x

    assert Square().of(3) == 9
    assert Square().of(3) == 9  # another instance, the same key in the same cache
    assert calls == [3]


def test_cachedmethod_rejects_a_cache_that_is_not_a_function() -> None:
    with pytest.raises(TypeError, match="function of the instance"):
        cachedmethod(LRUCache(maxsize=8))  # type: ignore[arg-type]


def test_cachedmethod_uses_the_instance_lock() -> None:
    lock = CountingLock()
    prices = Prices("EUR", lock=lock)
    prices.price("a")
    prices.price("a")
    assert lock.entries >= 2
    assert lock.entries == lock.releases


def test_cachedmethod_thread_stampede_per_instance() -> None:
    per_instance = 25
    instances = []
    for currency in ("EUR", "USD"):
        all_looked_up = threading.Event()
        prices = Prices(currency, lock=CountingLock(per_instance, all_looked_up.set))
        prices.gate = lambda event=all_looked_up: event.wait(TIMEOUT)
        instances.append(prices)

    values = returned_values(
        run_together(2 * per_instance, lambda i: instances[i % 2].price("sku"))
    )

    for parity, prices in enumerate(instances):
        mine = values[parity::2]
        assert prices.lookups == ["sku"]
        assert mine[0] == [f"sku in {prices.currency}"]
        assert all(value is mine[0] for value in mine)
    assert values[0] != values[1]


def test_cachedmethod_different_instances_do_not_block_each_other() -> None:
    inside = threading.Barrier(2)
    instances = [Prices("EUR"), Prices("USD")]
    for prices in instances:
        prices.gate = lambda: inside.wait(TIMEOUT)

    values = returned_values(run_together(2, lambda i: instances[i].price("sku")))

    assert values == [["sku in EUR"], ["sku in USD"]]


def test_cachedmethod_async_stampede_per_instance() -> None:
    n = 200
    eur, usd = Prices("EUR"), Prices("USD")

    async def scenario() -> list[Any]:
        return await asyncio.gather(*(p.price_async("x") for _ in range(n) for p in (eur, usd)))

    values = run_async(scenario)

    assert eur.lookups == ["x"]
    assert usd.lookups == ["x"]
    assert values[0::2] == [["x async in EUR"]] * n
    assert values[1::2] == [["x async in USD"]] * n
    assert all(value is values[0] for value in values[0::2])


def test_cachedmethod_cache_info_counts_per_instance() -> None:
    class Doubler:
        def __init__(self) -> None:
            self.cache = LRUCache(maxsize=8)

        @cachedmethod(lambda self: self.cache)
        def double(self, x: int) -> int:
            return 2 * x

    a, b = Doubler(), Doubler()
    a.double(1)
    a.double(1)
    b.double(2)

    info = Doubler.double.cache_info
    assert info(a) == CacheInfo(hits=1, misses=1, maxsize=8, currsize=1)
    assert info(b) == CacheInfo(hits=0, misses=1, maxsize=8, currsize=1)
    Doubler.double.cache_clear(b)
    assert info(a) == CacheInfo(hits=1, misses=1, maxsize=8, currsize=1)
    assert info(b) == CacheInfo(hits=0, misses=0, maxsize=8, currsize=0)


def test_cachedmethod_cache_info_of_a_new_instance_starts_at_zero() -> None:
    class Report:
        def __init__(self) -> None:
            self.cache: dict[Any, Any] = {}

        @cachedmethod(lambda self: self.cache)
        def total(self, x: int) -> int:
            return x

    for _ in range(20):
        report = Report()
        assert Report.total.cache_info(report) == CacheInfo(0, 0, None, 0)
        report.total(1)
        report.total(1)
        assert Report.total.cache_info(report) == CacheInfo(1, 1, None, 1)
        del report  # its dict's id is free for the next instance's dict


# -- key functions ----------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.binary(max_size=8)
)
hashables = st.recursive(
    scalars,
    lambda children: st.tuples(children, children) | st.frozensets(children, max_size=3),
    max_leaves=6,
)
argument_lists = st.lists(hashables, max_size=4)
keyword_dicts = st.dictionaries(st.text(min_size=1, max_size=5), hashables, max_size=4)


@given(argument_lists, keyword_dicts)
def test_hashkey_equal_arguments_give_equal_keys(args: list[Any], kwargs: dict[str, Any]) -> None:
    first = hashkey(*args, **kwargs)
    second = hashkey(*args, **kwargs)
    assert first == second
    assert hash(first) == hash(second)
    assert {first: "v"}[second] == "v"


@given(argument_lists)
def test_hashkey_of_positional_arguments_is_their_tuple(args: list[Any]) -> None:
    key = hashkey(*args)
    assert key == tuple(args)
    assert hash(key) == hash(tuple(args))


@given(keyword_dicts, st.randoms(use_true_random=False))
def test_hashkey_ignores_the_order_of_kwargs(kwargs: dict[str, Any], rng: Any) -> None:
    items = list(kwargs.items())
    rng.shuffle(items)
    assert hashkey(1, **kwargs) == hashkey(1, **dict(items))
    assert hash(hashkey(1, **kwargs)) == hash(hashkey(1, **dict(items)))
    assert typedkey(1, **kwargs) == typedkey(1, **dict(items))


def test_hashkey_distinguishes_arguments() -> None:
    assert hashkey(1, 2) != hashkey(2, 1)
    assert hashkey(1) != hashkey(1, 1)
    assert hashkey(1) != hashkey(a=1)  # positional vs keyword
    assert hashkey("a", 1) != hashkey(a=1)
    assert hashkey(a=1) != hashkey(b=1)
    assert hashkey(a=1) != hashkey(a=2)
    assert hashkey((1, 2)) != hashkey(1, 2)
    assert hashkey() == hashkey()
    assert hashkey() != hashkey(None)


def test_hashkey_treats_equal_numbers_alike_and_typedkey_does_not() -> None:
    assert hashkey(1) == hashkey(1.0) == hashkey(True)
    assert typedkey(1) != typedkey(1.0)
    assert typedkey(1) != typedkey(True)
    assert typedkey(1.0) != typedkey(True)
    assert typedkey(x=1) != typedkey(x=1.0)
    assert typedkey(1) == typedkey(1)
    assert hash(typedkey(1, x="a")) == hash(typedkey(1, x="a"))
    assert typedkey(1) != hashkey(1)


def test_cached_with_typedkey_keeps_int_and_float_apart() -> None:
    calls: list[Any] = []

    def describe(x: Any) -> str:
        calls.append(x)
        return type(x).__name__

    typed = cached(LRUCache(maxsize=8), key=typedkey)(describe)
    untyped = cached(LRUCache(maxsize=8))(describe)

    assert [typed(1), typed(1.0), typed(1)] == ["int", "float", "int"]
    assert len(calls) == 2
    assert [untyped(1), untyped(1.0)] == ["int", "int"]  # 1.0 hits 1's entry
    assert len(calls) == 3


@given(argument_lists, keyword_dicts)
def test_methodkey_ignores_self(args: list[Any], kwargs: dict[str, Any]) -> None:
    assert methodkey(object(), *args, **kwargs) == methodkey(object(), *args, **kwargs)
    assert methodkey("self", *args, **kwargs) == hashkey(*args, **kwargs)


@given(argument_lists, keyword_dicts, st.sampled_from([hashkey, typedkey]))
def test_keys_survive_pickling(
    args: list[Any], kwargs: dict[str, Any], key_function: Callable[..., Hashable]
) -> None:
    key = key_function(*args, **kwargs)
    hash(key)  # computes (and caches) the hash before pickling
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        copy = pickle.loads(pickle.dumps(key, protocol))
        assert copy == key
        assert hash(copy) == hash(key)
        assert {key: "v"}[copy] == "v"


def test_pickled_key_is_rehashed_in_another_process() -> None:
    # String hashes differ between processes: a key must not carry its cached hash along.
    key = hashkey("user", 42, region="eu")
    hash(key)
    script = (
        "import pickle, sys\n"
        "from scalekit.cache.keys import hashkey\n"
        "key = pickle.loads(sys.stdin.buffer.read())\n"
        "assert key == hashkey('user', 42, region='eu')\n"
        "assert hash(key) == hash(hashkey('user', 42, region='eu'))\n"
        "assert {hashkey('user', 42, region='eu'): 'found'}[key] == 'found'\n"
        "print('ok')\n"
    )
    for seed in ("1", "2"):
        done = subprocess.run(
            [sys.executable, "-c", script],
            input=pickle.dumps(key),
            capture_output=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr.decode()
        assert done.stdout.strip() == b"ok"


def test_key_concatenation_stays_hashable() -> None:
    key = hashkey(1, 2)
    longer = key + (3,)  # noqa: RUF005 - testing the + operators
    assert longer == (1, 2, 3)
    assert hash(longer) == hash((1, 2, 3))
    assert (0, *key) == (0, 1, 2)
    assert (0,) + key == (0, 1, 2)  # noqa: RUF005 - testing the + operators
    assert hash((0,) + key) == hash((0, 1, 2))  # noqa: RUF005 - testing the + operators
