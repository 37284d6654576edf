"""cached over a shared Store: one call per miss across threads, tasks and
processes (leases), a crashed holder's lease expiring, invalidation reaching a
call in flight in another process, and bad arguments."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import threading
import time
from typing import Any

import pytest

from scalekit.cache import AsyncRedisCache, LRUCache, RedisCache, TieredCache, cached
from scalekit.errors import ArgumentTypeError, ConfigurationError

pytestmark = pytest.mark.redis


def test_memoizes_in_an_in_memory_store_without_leases() -> None:
    store = TieredCache(LRUCache(10), LRUCache(100))
    calls = []

    @cached(store, lease=None)
    def double(n: int) -> int:
        calls.append(n)
        return 2 * n

    assert [double(2), double(2), double(n=3), double(n=3)] == [4, 4, 6, 6]
    assert calls == [2, 3]
    info = double.cache_info()  # type: ignore[attr-defined]
    assert (info.hits, info.misses) == (2, 2)
    assert double.invalidate(2) is True  # type: ignore[attr-defined]
    assert double(2) == 4
    assert calls == [2, 3, 2]


def test_memoizes_in_redis(redis_client: Any) -> None:
    calls = []

    @cached(RedisCache(redis_client, prefix="memo:"), ttl=60)
    def user(user_id: int, *, full: bool = False) -> dict[str, Any]:
        calls.append(user_id)
        return {"id": user_id, "full": full}

    assert user(7) == {"id": 7, "full": False}
    assert user(7) == {"id": 7, "full": False}
    assert user(7, full=True) == {"id": 7, "full": True}
    assert calls == [7, 7]
    keys = sorted(k.decode() for k in redis_client.keys("memo:*"))
    assert keys == [
        'memo:tests.cache.test_cached_store.test_memoizes_in_redis.<locals>.user:[[7],{"full":true}]',
        "memo:tests.cache.test_cached_store.test_memoizes_in_redis.<locals>.user:[[7],{}]",
    ]
    assert 59 < redis_client.pttl(keys[0]) / 1000 <= 60
    assert not redis_client.keys("memo:*#lease")  # leases are dropped after use


def test_one_call_for_many_threads(redis_client: Any) -> None:
    calls = []
    start = threading.Barrier(16)

    @cached(RedisCache(redis_client))
    def slow(n: int) -> int:
        calls.append(n)
        time.sleep(0.2)
        return n

    results = []

    def caller() -> None:
        start.wait()
        results.append(slow(1))

    threads = [threading.Thread(target=caller) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [1] * 16
    assert calls == [1]


def _process_caller(url: str, barrier: Any, crash: bool, out: Any) -> None:
    import redis

    client = redis.Redis.from_url(url)

    @cached(RedisCache(client, prefix="mp:"), lease=1.0, poll=0.002)
    def expensive(n: int) -> int:
        client.incr("mp-calls")
        if crash:
            os.kill(os.getpid(), signal.SIGKILL)  # dies holding the lease
        time.sleep(0.3)
        return n * 10

    results = []
    lock = threading.Lock()

    def caller() -> None:
        value = expensive(5)
        with lock:
            results.append(value)

    barrier.wait()
    threads = [threading.Thread(target=caller) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    out.put(results)


def _run_processes(url: str, crash_first: bool) -> tuple[list[Any], float]:
    context = multiprocessing.get_context("spawn")
    barrier, out = context.Barrier(3), context.Queue()
    crasher = None
    if crash_first:
        alone = context.Barrier(1)
        crasher = context.Process(target=_process_caller, args=(url, alone, True, out))
        crasher.start()
        crasher.join(30)
        assert crasher.exitcode == -signal.SIGKILL
    processes = [
        context.Process(target=_process_caller, args=(url, barrier, False, out)) for _ in range(2)
    ]
    for process in processes:
        process.start()
    barrier.wait()
    started = time.monotonic()
    results = [out.get(timeout=30), out.get(timeout=30)]
    elapsed = time.monotonic() - started
    for process in processes:
        process.join(10)
        assert process.exitcode == 0
    return results, elapsed


def test_one_call_for_two_processes_of_eight_threads(redis_client: Any, redis_url: str) -> None:
    results, _ = _run_processes(redis_url, crash_first=False)
    assert results == [[50] * 8, [50] * 8]
    assert int(redis_client.get("mp-calls")) == 1


def test_a_crashed_holders_lease_expires(redis_client: Any, redis_url: str) -> None:
    results, elapsed = _run_processes(redis_url, crash_first=True)
    assert results == [[50] * 8, [50] * 8]
    assert int(redis_client.get("mp-calls")) == 2  # the crashed call, and one more
    assert elapsed < 5


def test_a_failed_call_is_not_stored_and_frees_the_lease(redis_client: Any) -> None:
    attempts = []

    @cached(RedisCache(redis_client), lease=30)
    def flaky(n: int) -> int:
        attempts.append(n)
        if len(attempts) == 1:
            raise RuntimeError("database down")
        return n

    with pytest.raises(RuntimeError):
        flaky(1)
    started = time.monotonic()
    assert flaky(1) == 1  # no wait for the 30 s lease: the failed holder dropped it
    assert time.monotonic() - started < 1
    assert attempts == [1, 1]


def test_an_invalidation_stops_a_call_in_flight_from_storing(redis_client: Any) -> None:
    computing, release = threading.Event(), threading.Event()
    version = {"v": 1}

    @cached(RedisCache(redis_client))
    def read() -> int:
        seen = version["v"]
        computing.set()
        release.wait(5)
        return seen

    first: list[int] = []
    thread = threading.Thread(target=lambda: first.append(read()))
    thread.start()
    assert computing.wait(5)
    version["v"] = 2  # the write the call in flight may not have seen
    assert read.invalidate() is False  # type: ignore[attr-defined]
    release.set()
    thread.join()
    assert first == [1]  # its caller still gets its answer
    computing.clear()
    release.set()
    assert read() == 2  # but it was not stored


def test_async_functions_over_async_and_sync_stores(redis_url: str) -> None:
    import redis.asyncio

    async def main() -> None:
        client = redis.asyncio.Redis.from_url(redis_url)
        calls = []
        try:

            @cached(AsyncRedisCache(client, prefix="a:"))
            async def fetch(n: int) -> int:
                calls.append(n)
                await asyncio.sleep(0.05)
                return n + 1

            assert await asyncio.gather(*(fetch(1) for _ in range(20))) == [2] * 20
            assert calls == [1]
            assert await fetch.invalidate(1) is True  # type: ignore[attr-defined]
            assert await fetch(1) == 2
            assert calls == [1, 1]

            @cached(TieredCache(LRUCache(10), LRUCache(10)))
            async def local(n: int) -> int:
                calls.append(-n)
                return n

            assert await asyncio.gather(local(3), local(3)) == [3, 3]
            assert calls.count(-3) == 1
        finally:
            await client.flushdb()
            await client.aclose()

    asyncio.run(main())


def test_bad_arguments(redis_client: Any) -> None:
    import redis.asyncio

    store = RedisCache(redis_client)
    for kwargs in ({"lease": 0}, {"lease": float("nan")}, {"ttl": -1}, {"poll": 0}):
        with pytest.raises(ConfigurationError):
            cached(store, **kwargs)
    with pytest.raises(ArgumentTypeError):
        cached(store, lease="10")
    with pytest.raises(ConfigurationError, match="shared Store"):
        cached(LRUCache(10), lease=5)
    with pytest.raises(ConfigurationError, match="async"):

        @cached(AsyncRedisCache(redis.asyncio.Redis()))
        def sync(n: int) -> int:
            return n

    @cached(store)
    def takes(value: Any) -> Any:
        return 1

    with pytest.raises(ArgumentTypeError, match="JSON"):
        takes(object())
