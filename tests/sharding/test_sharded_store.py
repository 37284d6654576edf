"""ShardedStore: the Store contract over many stores, routing, down shards,
replicas, and live resharding between real Redis servers."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from scalekit.cache import AsyncRedisCache, LRUCache, RedisCache
from scalekit.errors import ArgumentTypeError, ConfigurationError, ShardUnavailable
from scalekit.sharding import (
    AsyncShardedStore,
    HashRing,
    JumpHash,
    KetamaRing,
    RendezvousHash,
    ShardedStore,
)
from scalekit.testing import check_async_store, check_store
from tests.services import free_port, redis_server

NODES = ["s1", "s2", "s3"]


def memory_store(nodes: list[str] = NODES, **kwargs: Any) -> ShardedStore[str]:
    return ShardedStore(RendezvousHash(nodes), {n: LRUCache(10_000) for n in nodes}, **kwargs)


def dead_redis() -> Any:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis(port=free_port(), socket_connect_timeout=0.3, retry=Retry(NoBackoff(), 0))


# -- the contract ----------------------------------------------------------------


@pytest.mark.parametrize("replicas", [0, 1, 2])
def test_keeps_the_store_contract_in_memory(replicas: int) -> None:
    with memory_store(replicas=replicas) as store:
        check_store(lambda: store, json_only=False)


@pytest.mark.redis
def test_keeps_the_store_contract_on_redis(redis_client: Any) -> None:
    stores = {node: RedisCache(redis_client, prefix=f"{node}:") for node in NODES}
    with ShardedStore(KetamaRing(NODES), stores) as store:
        check_store(lambda: store)


@pytest.mark.redis
def test_async_keeps_the_store_contract_on_redis(redis_url: str) -> None:
    import redis.asyncio

    async def main() -> None:
        client = redis.asyncio.Redis.from_url(redis_url)
        stores = {node: AsyncRedisCache(client, prefix=f"{node}:") for node in NODES}
        try:
            for replicas in (0, 1):
                store = AsyncShardedStore(HashRing(NODES), stores, replicas=replicas)
                await check_async_store(lambda store=store: store)
        finally:
            await client.flushdb()
            await client.aclose()

    asyncio.run(main())


# -- routing ----------------------------------------------------------------------


def test_keys_live_on_the_node_the_sharder_gives() -> None:
    ring = JumpHash(NODES)
    shards = {n: LRUCache(1000) for n in NODES}
    store = ShardedStore(ring, shards)
    store.set_many({f"k{i}": i for i in range(300)})
    for i in range(300):
        assert shards[ring.node_for(f"k{i}")][f"k{i}"] == i
        assert store.store_for(f"k{i}") is shards[ring.node_for(f"k{i}")]
    assert sum(len(s) for s in shards.values()) == 300
    assert all(len(s) > 50 for s in shards.values())


def test_batches_make_one_call_per_shard() -> None:
    with memory_store() as store:
        store.set_many({f"k{i}": i for i in range(100)})
        assert store.stats().calls == dict.fromkeys(NODES, 1)
        assert store.get_many([f"k{i}" for i in range(120)]) == {f"k{i}": i for i in range(100)}
        assert store.stats().calls == dict.fromkeys(NODES, 2)


def test_replicas_hold_every_key_on_its_preference_list() -> None:
    ring = RendezvousHash([*NODES, "s4"])
    shards = {n: LRUCache(1000) for n in ring.nodes}
    store = ShardedStore(ring, shards, replicas=2)
    store.set("k", 1)
    store.add("lease", "me", ttl=30)
    for key in ("k", "lease"):
        holders = {n for n, s in shards.items() if key in s}
        assert holders == set(ring.nodes_for(key, 3))
    assert store.delete("k") is True
    assert not any("k" in s for s in shards.values())


def test_bad_arguments_are_refused() -> None:
    shards = {n: LRUCache(10) for n in NODES}
    for args, kwargs, error in [
        ((object(), shards), {}, ArgumentTypeError),
        ((HashRing(NODES), [1, 2]), {}, ArgumentTypeError),
        ((HashRing([*NODES, "s9"]), shards), {}, ConfigurationError),
        ((HashRing(NODES), shards), {"replicas": 3}, ConfigurationError),
        ((HashRing(NODES), shards), {"replicas": True}, ArgumentTypeError),
        ((HashRing(NODES), shards), {"replicas": -1}, ConfigurationError),
        ((HashRing(NODES), shards), {"max_workers": 0}, ConfigurationError),
    ]:
        with pytest.raises(error):
            ShardedStore(*args, **kwargs)
    store = ShardedStore(HashRing(NODES), shards)
    for key in (1, None, b"k", ("k",)):
        with pytest.raises(ArgumentTypeError):
            store.get(key)  # type: ignore[arg-type]
    with pytest.raises(ArgumentTypeError):
        store.follow("plan")  # type: ignore[arg-type]


# -- down shards -------------------------------------------------------------------


@pytest.mark.redis
def test_a_down_shard_fails_only_its_keys(redis_client: Any) -> None:
    stores = {
        "up1": RedisCache(redis_client, prefix="up1:"),
        "up2": RedisCache(redis_client, prefix="up2:"),
        "down": RedisCache(dead_redis()),
    }
    ring = HashRing(list(stores))
    with ShardedStore(ring, stores) as store:
        keys = [f"k{i}" for i in range(60)]
        live = [k for k in keys if ring.node_for(k) != "down"]
        dead = [k for k in keys if ring.node_for(k) == "down"]
        assert live
        assert dead
        store.set_many({k: k for k in live})
        for key in live:
            assert store.get(key) == key
        with pytest.raises(ShardUnavailable) as caught:
            store.get(dead[0])
        assert set(caught.value.failed) == {dead[0]}
        with pytest.raises(ShardUnavailable) as caught:
            store.get_many(keys)
        assert caught.value.found == {k: k for k in live}
        assert set(caught.value.failed) == set(dead)
        with pytest.raises(ShardUnavailable) as caught:
            store.set_many(dict.fromkeys(keys, 1))
        assert set(caught.value.failed) == set(dead)
        assert store.get_many(live) == dict.fromkeys(live, 1)
        assert store.stats().errors["down"] >= 3


@pytest.mark.redis
def test_replicas_serve_the_keys_of_a_down_shard(redis_client: Any) -> None:
    stores = {n: RedisCache(redis_client, prefix=f"{n}:") for n in ("a", "b", "c")}
    ring = RendezvousHash(list(stores))
    keys = [f"k{i}" for i in range(60)]
    with ShardedStore(ring, stores, replicas=1) as store:
        store.set_many({k: k for k in keys})
        store.set("one", 1)
    stores["a"] = RedisCache(dead_redis(), prefix="a:")
    with ShardedStore(ring, stores, replicas=1) as store:
        assert store.get_many(keys) == {k: k for k in keys}
        assert all(store.get(k) == k for k in keys)
        assert store.get("one") == 1
        store.set("after", 2)  # the live owner takes it
        assert store.get("after") == 2
        assert store.stats().failovers > 0


# -- a reference model ------------------------------------------------------------


class ShardedModel(RuleBasedStateMachine):
    """A sharded store (with replicas, then resharded) against a plain dict."""

    def __init__(self) -> None:
        super().__init__()
        self.nodes = ["a", "b", "c"]
        self.shards = {n: LRUCache(10_000) for n in [*self.nodes, "d", "e"]}
        self.store = ShardedStore(HashRing(self.nodes, vnodes=16), self.shards, max_workers=1)
        self.model: dict[str, int] = {}

    keys = st.sampled_from([f"k{i}" for i in range(30)])

    @rule(key=keys, value=st.integers())
    def set(self, key: str, value: int) -> None:
        self.store.set(key, value)
        self.model[key] = value

    @rule(key=keys, value=st.integers())
    def add(self, key: str, value: int) -> None:
        assert self.store.add(key, value) is (key not in self.model)
        self.model.setdefault(key, value)

    @rule(key=keys)
    def delete(self, key: str) -> None:
        assert self.store.delete(key) is (key in self.model)
        self.model.pop(key, None)

    @rule(items=st.dictionaries(keys, st.integers(), max_size=8))
    def set_many(self, items: dict[str, int]) -> None:
        self.store.set_many(items)
        self.model.update(items)

    @rule(node=st.sampled_from(["d", "e"]))
    def grow(self, node: str) -> None:
        ring = self.store.sharder
        if node in ring.nodes:
            return
        plan = ring.plan_add(node)  # type: ignore[attr-defined]
        report = self.store.reshard(plan, batch_size=7)
        assert report.done
        assert self.store.sharder.nodes == (*ring.nodes, node)

    @invariant()
    def agrees(self) -> None:
        assert self.store.get_many([*self.model, "never"]) == self.model
        ring = self.store.sharder
        for key, value in self.model.items():
            assert self.store.get(key) == value
            held = [n for n, s in self.shards.items() if key in s]
            assert held == [ring.node_for(key)]
        for shard in self.shards.values():
            shard._check()


TestShardedModel = ShardedModel.TestCase
TestShardedModel.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)


# -- live resharding between real Redis servers -----------------------------------------


@pytest.fixture
def four_redis() -> Iterator[dict[str, Any]]:
    import redis

    with ExitStack() as stack:
        ports = [stack.enter_context(redis_server()) for _ in range(4)]
        clients = {f"r{i}": redis.Redis(port=port) for i, port in enumerate(ports)}
        yield clients
        for client in clients.values():
            client.close()


@pytest.mark.redis
def test_reshard_3_to_4_servers_while_threads_read_and_write(four_redis: dict[str, Any]) -> None:
    stores = {node: RedisCache(client) for node, client in four_redis.items()}
    first = {n: stores[n] for n in ("r0", "r1", "r2")}
    ring = KetamaRing(list(first))
    store = ShardedStore(ring, first)
    keys = [f"user:{i}" for i in range(6000)]
    store.set_many({k: {"v": 0} for k in keys[:3000]}, ttl=3600)
    store.set_many({k: {"v": 0} for k in keys[3000:]})
    errors: list[BaseException] = []
    written: dict[int, dict[str, int]] = {0: {}, 1: {}}
    stop = threading.Event()

    def worker(index: int) -> None:
        mine = keys[index::2]
        version = 0
        try:
            while not stop.is_set():
                version += 1
                for key in mine[version % 7 :: 37]:
                    store.set(key, {"v": version}, ttl=3600)
                    written[index][key] = version
                    assert store.get(key) == {"v": version}, key
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    plan = ring.plan_add("r3")
    report = store.reshard(plan, {"r3": stores["r3"]}, batch_size=500)
    stop.set()
    for thread in threads:
        thread.join()
    assert errors == []
    assert report.done
    assert store.sharder.nodes == ("r0", "r1", "r2", "r3")
    expected = {k: {"v": 0} for k in keys}
    for index in (0, 1):
        expected.update({k: {"v": v} for k, v in written[index].items()})
    assert store.get_many(keys) == expected  # nothing lost, every write kept
    per_node = {n: c.dbsize() for n, c in four_redis.items()}
    assert sum(per_node.values()) == len(keys)  # nothing left behind at a source
    moved = per_node["r3"] / len(keys)
    assert moved <= 1.05 * plan.ideal_fraction, (moved, plan.ideal_fraction)
    assert plan.moved_fraction <= 1.05 * plan.ideal_fraction
    rewritten = set(written[0]) | set(written[1])
    moved_keys = [k for k in keys if plan.move_for(k) and k not in rewritten]
    assert len(moved_keys) > 1000
    for key in moved_keys:  # each copy kept its remaining TTL, or "forever"
        left = store.ttl_of(key)
        if keys.index(key) < 3000:
            assert left is not None, key
            assert 3000 < left <= 3600, (key, left)
        else:
            assert left is None, (key, left)
