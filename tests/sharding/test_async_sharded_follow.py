"""AsyncShardedStore follows a reshard that a sync store carries out: its reads and
writes of moving keys go where the plan says, so nothing it writes is lost."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest

from scalekit.cache import LRUCache, ThreadSafeCache
from scalekit.errors import ArgumentTypeError, ConfigurationError
from scalekit.sharding import AsyncShardedStore, RendezvousHash, ReshardPlan, ShardedStore


class AsyncShard:
    """An AsyncStore over an in-memory cache (what an AsyncRedisCache is to Redis)."""

    def __init__(self, cache: Any) -> None:
        self.cache = cache

    async def get(self, key: str, default: Any = None) -> Any:
        await asyncio.sleep(0)
        return self.cache.get(key, default)

    async def set(self, key: str, value: Any, *, ttl: Any = None) -> None:
        await asyncio.sleep(0)
        self.cache.set(key, value, ttl=ttl)

    async def add(self, key: str, value: Any, *, ttl: Any = None) -> bool:
        return self.cache.add(key, value, ttl=ttl)

    async def delete(self, key: str) -> bool:
        return self.cache.delete(key)

    async def ttl_of(self, key: str) -> Any:
        return self.cache.ttl_of(key)

    async def get_many(self, keys: Any) -> dict[str, Any]:
        return self.cache.get_many(keys)

    async def set_many(self, items: Any, *, ttl: Any = None) -> None:
        self.cache.set_many(items, ttl=ttl)

    async def keys(self) -> AsyncIterator[str]:
        for key in list(self.cache):
            yield key


def test_an_async_store_follows_a_reshard_and_loses_no_write() -> None:
    caches = {n: ThreadSafeCache(LRUCache(100_000)) for n in "abcd"}  # two threads use them
    keys = [f"k{i}" for i in range(4000)]
    mover = ShardedStore(RendezvousHash(["a", "b", "c"]), {n: caches[n] for n in "abc"})
    mover.set_many(dict.fromkeys(keys, 0))
    plan = mover.sharder.plan_add("d")  # type: ignore[attr-defined]
    published = plan.to_json()
    moving = [k for k in keys if plan.move_for(k)]

    async def app_server() -> dict[str, int]:
        shards = {n: AsyncShard(caches[n]) for n in "abcd"}
        store = AsyncShardedStore(RendezvousHash(["a", "b", "c"]), {n: shards[n] for n in "abc"})
        followed = ReshardPlan.from_json(published)
        store.follow(followed, {"d": shards["d"]})
        mover.follow(plan, {"d": caches["d"]})
        thread = threading.Thread(target=mover.reshard, args=(plan,), kwargs={"batch_size": 50})
        thread.start()
        written: dict[str, int] = {}
        version = 0
        while thread.is_alive() or version < 3:
            version += 1
            for key in moving[version % 7 :: 13]:
                await store.set(key, version)
                written[key] = version
                assert await store.get(key) == version
            assert await store.add(moving[0], -5) is False
        thread.join()
        store.complete(followed)
        assert await store.get_many(list(written)) == written
        assert await store.ttl_of(moving[1]) is None
        return written

    written = asyncio.run(app_server())
    assert mover.sharder.nodes == ("a", "b", "c", "d")
    assert sum(len(c) for c in caches.values()) == len(keys)  # nothing left behind
    for key, version in written.items():
        assert caches["d"][key] == version  # every write is at the new owner


def test_follow_refuses_bad_arguments() -> None:
    stores = {n: AsyncShard(LRUCache(10)) for n in "abc"}
    store = AsyncShardedStore(RendezvousHash(["a", "b"]), {n: stores[n] for n in "ab"})
    with pytest.raises(ArgumentTypeError):
        store.follow("plan")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="no store"):
        store.follow(store.sharder.plan_add("c"))  # type: ignore[attr-defined]
    with pytest.raises(ArgumentTypeError):
        store.complete(None)  # type: ignore[arg-type]
    replicated = AsyncShardedStore(RendezvousHash(["a", "b"]), stores, replicas=1)
    with pytest.raises(ConfigurationError, match="replicas"):
        replicated.follow(replicated.sharder.plan_add("c"), {"c": stores["c"]})  # type: ignore[attr-defined]


def test_an_async_store_reshards_by_itself_while_tasks_write() -> None:
    async def main() -> None:
        caches = {n: LRUCache(100_000) for n in "abcd"}
        shards = {n: AsyncShard(caches[n]) for n in "abcd"}
        store = AsyncShardedStore(RendezvousHash(["a", "b", "c"]), {n: shards[n] for n in "abc"})
        keys = [f"k{i}" for i in range(3000)]
        await store.set_many(dict.fromkeys(keys[:1500], 0), ttl=3600)
        await store.set_many(dict.fromkeys(keys[1500:], 0))
        plan = store.sharder.plan_add("d")  # type: ignore[attr-defined]
        written: dict[str, int] = {}
        reports = []
        finished = asyncio.Event()

        async def writer() -> None:
            version = 0
            while not finished.is_set() or version < 3:
                version += 1
                for key in keys[version % 11 :: 29]:
                    await store.set(key, version)
                    written[key] = version
                    assert await store.get(key) == version
                await asyncio.sleep(0)

        def stop_once(report: Any) -> None:
            reports.append(report)
            if len(reports) == 2:
                store.stop()

        task = asyncio.create_task(writer())
        first = await store.reshard(plan, {"d": shards["d"]}, batch_size=100, progress=stop_once)
        assert not first.done
        second = await store.reshard(plan)  # resumes
        finished.set()
        await task
        assert second.done
        assert store.sharder.nodes == ("a", "b", "c", "d")
        expected = {k: written.get(k, 0) for k in keys}
        assert await store.get_many(keys) == expected
        assert sum(len(c) for c in caches.values()) == len(keys)
        for key in keys[:1500]:
            if key not in written and plan.move_for(key):
                left = await store.ttl_of(key)
                assert left is not None
                assert 3500 < left <= 3600

    asyncio.run(main())


@pytest.mark.redis
def test_async_reshard_between_redis_servers() -> None:
    import redis.asyncio

    from scalekit.cache import AsyncRedisCache
    from tests.services import redis_server

    async def main(ports: list[int]) -> None:
        clients = [redis.asyncio.Redis(port=p) for p in ports]
        shards = {f"r{i}": AsyncRedisCache(c) for i, c in enumerate(clients)}
        store = AsyncShardedStore(
            RendezvousHash(["r0", "r1", "r2"]), {n: shards[n] for n in ("r0", "r1", "r2")}
        )
        keys = [f"user:{i}" for i in range(2000)]
        await store.set_many({k: {"n": i} for i, k in enumerate(keys)}, ttl=600)
        plan = store.sharder.plan_add("r3")  # type: ignore[attr-defined]
        report = await store.reshard(plan, {"r3": shards["r3"]}, batch_size=250)
        assert report.done
        assert await store.get_many(keys) == {k: {"n": i} for i, k in enumerate(keys)}
        sizes = [await c.dbsize() for c in clients]
        assert sum(sizes) == len(keys)
        assert sizes[3] == report.moved
        assert report.moved / len(keys) <= 1.05 * plan.ideal_fraction + 0.02
        for client in clients:
            await client.aclose()

    with redis_server() as a, redis_server() as b, redis_server() as c, redis_server() as d:
        asyncio.run(main([a, b, c, d]))
