"""A ShardedStore over a live Redis Cluster of the test's own: the Store contract,
MOVED and ASK followed by the store itself (a slot migrated by hand, then a
whole node's share moved by ClusterResharder while two threads read and write)."""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from scalekit.cache import AsyncRedisCache, RedisCache
from scalekit.errors import BackendError, ConfigurationError, ShardUnavailable
from scalekit.sharding import AsyncShardedStore, ShardedStore, SlotMap
from scalekit.sharding._cluster import ClusterResharder, split_address
from scalekit.testing import check_async_store, check_store
from tests.services import redis_cluster_node, redis_cluster_or_skip, wait_for_cluster


def _client(host: str, port: int) -> Any:
    import redis

    return redis.Redis(host=host, port=port, socket_timeout=10)


def _store_of(node: str) -> RedisCache[Any]:
    return RedisCache(_client(*split_address(node)), cluster=True)


def _sharded(port: int, **kwargs: Any) -> ShardedStore[str]:
    """A store over the cluster's table as it is now, one RedisCache a master."""
    slot_map = SlotMap.from_cluster(_client("127.0.0.1", port))
    stores = {node: _store_of(node) for node in slot_map.nodes}
    return ShardedStore(slot_map, stores, store_factory=_store_of, **kwargs)


def _meet(ports: list[int], new_port: int) -> None:
    new = _client("127.0.0.1", new_port)
    bus = int(new.config_get("cluster-port")["cluster-port"])
    new.close()
    client = _client("127.0.0.1", ports[0])
    client.execute_command("CLUSTER", "MEET", "127.0.0.1", new_port, bus)
    client.close()
    wait_for_cluster([*ports, new_port], known=len(ports) + 1)


def _myid(port: int) -> str:
    return str(_client("127.0.0.1", port).execute_command("CLUSTER", "MYID").decode())


@pytest.fixture(scope="module")
def cluster() -> Iterator[list[int]]:
    with redis_cluster_or_skip(3) as ports:
        yield ports


# -- the contract ------------------------------------------------------------------------


@pytest.mark.slow
def test_keeps_the_store_contract_on_a_cluster(cluster: list[int]) -> None:
    with _sharded(cluster[0]) as store:
        check_store(lambda: store)
        stats = store.stats()
    assert stats.moved == stats.asked == 0
    assert sum(stats.errors.values()) == 0


@pytest.mark.slow
def test_async_keeps_the_store_contract_on_a_cluster(cluster: list[int]) -> None:
    import redis.asyncio

    async def main() -> None:
        slot_map = SlotMap.from_cluster(_client("127.0.0.1", cluster[0]))
        clients = {}
        for node in slot_map.nodes:
            host, port = split_address(node)
            clients[node] = redis.asyncio.Redis(host=host, port=port)
        stores = {n: AsyncRedisCache(c, cluster=True) for n, c in clients.items()}
        try:
            await check_async_store(lambda: AsyncShardedStore(slot_map, stores))
        finally:
            for client in clients.values():
                await client.aclose()

    asyncio.run(main())


@pytest.mark.slow
def test_a_node_store_batches_by_slot(cluster: list[int]) -> None:
    """MGET of keys of several slots on one node is CROSSSLOT: one MGET a slot."""
    slot_map = SlotMap.from_cluster(_client("127.0.0.1", cluster[0]))
    node = slot_map.nodes[0]
    keys = [k for k in (f"batch:{i}" for i in range(400)) if slot_map.node_for(k) == node][:50]
    plain = RedisCache(_client(*split_address(node)), prefix="")
    with pytest.raises(BackendError, match="CrossSlot"):
        plain.get_many(keys)
    store = _store_of(node)
    store.set_many({k: k for k in keys})
    assert store.get_many([*keys, "batch:none"][::-1]) == {k: k for k in keys}
    assert set(store.get_many_with_ttl(keys)) == set(keys)
    assert all(left is None for _, left in store.get_many_with_ttl(keys).values())
    # a key of another node: MOVED for its keys only, the rest read
    elsewhere = next(f"x{i}" for i in range(1000) if slot_map.node_for(f"x{i}") != node)
    with pytest.raises(ShardUnavailable) as caught:
        store.get_many([*keys, elsewhere])
    assert caught.value.found == {k: k for k in keys}
    assert list(caught.value.failed) == [elsewhere]
    assert type(caught.value.failed[elsewhere].__cause__).__name__ == "MovedError"


# -- one slot migrated by hand: ASK, TRYAGAIN, then MOVED ----------------------------------


@pytest.mark.slow
def test_follows_ask_tryagain_and_moved_on_a_slot_migrated_by_hand() -> None:
    with redis_cluster_or_skip(3) as ports, redis_cluster_node() as new_port:
        _meet(ports, new_port)
        new = f"127.0.0.1:{new_port}"
        store = _sharded(ports[0])
        assert new not in store.sharder.nodes
        behind = SlotMap.from_cluster(_client("127.0.0.1", ports[0]))
        no_factory = ShardedStore(behind, {n: _store_of(n) for n in behind.nodes})
        tagged = [f"{{hot}}:{i}" for i in range(6)]
        others = [f"cold:{i}" for i in range(300)]
        store.set_many({k: k for k in [*tagged, *others]})
        slot = store.sharder.slot_of(tagged[0])  # type: ignore[attr-defined]
        source = store.sharder.node_for(tagged[0])
        source_client, target_client = (
            _client(*split_address(source)),
            _client("127.0.0.1", new_port),
        )
        target_client.execute_command(
            "CLUSTER", "SETSLOT", slot, "IMPORTING", _myid(split_address(source)[1])
        )
        source_client.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", _myid(new_port))
        source_client.execute_command(
            "MIGRATE", "127.0.0.1", new_port, "", 0, 5000, "KEYS", *tagged[:3]
        )

        assert store.get(tagged[0]) == tagged[0]  # ASK: the key has left
        assert store.stats().asked == 1
        assert store.get(tagged[4]) == tagged[4]  # still at the source: no redirection
        # half the slot's keys here, half there: MGET answers TRYAGAIN, split to single keys
        everything = [*tagged, *others, "absent:1"]
        assert store.get_many(everything) == {k: k for k in [*tagged, *others]}
        stats = store.stats()
        assert stats.retried == 1  # the slot's MGET, split
        assert stats.asked == 2  # then its 3 keys that left: one ASK (of one slot) a round
        with_ttl = store.get_many_with_ttl(everything)
        assert {k: v for k, (v, _) in with_ttl.items()} == {k: k for k in [*tagged, *others]}
        # writes: present at the source are written there, absent ones at the target (ASK)
        store.set_many({k: k + "!" for k in tagged})
        store.set("{hot}:new", "n")
        assert store.get("{hot}:new") == "n"
        asking = target_client.pipeline(transaction=False)
        asking.execute_command("ASKING")
        asking.execute_command("EXISTS", "{hot}:new")
        assert asking.execute()[1] == 1  # written at the importing node
        assert store.add("{hot}:new", "again") is False
        assert store.get_with_ttl(tagged[0]) == (tagged[0] + "!", None)
        assert store.ttl_of(tagged[1]) is None
        assert store.delete(tagged[2]) is True
        assert store.get(tagged[2]) is None
        assert store.sharder.node_for(tagged[0]) == source  # ASK does not change the map
        assert store.stats().moved == 0

        # the slot finishes moving: MOVED, the map learns it, the new node joins
        rest = source_client.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100)
        if rest:
            source_client.execute_command(
                "MIGRATE", "127.0.0.1", new_port, "", 0, 5000, "KEYS", *rest
            )
        target_id = _myid(new_port)
        for port in [new_port, *ports]:
            _client("127.0.0.1", port).execute_command(
                "CLUSTER", "SETSLOT", slot, "NODE", target_id
            )
        assert store.get_many(tagged) == {
            **{k: k + "!" for k in tagged if k != tagged[2]},
        }
        stats = store.stats()
        assert stats.moved == 1  # one slot, one redirection, however many keys
        assert store.sharder.node_for(tagged[0]) == new
        assert new in store.stores
        assert store.get(tagged[0]) == tagged[0] + "!"
        assert store.stats().moved == 1
        assert sum(store.stats().errors.values()) == 0
        store.sharder._check()  # type: ignore[attr-defined]

        # without a store_factory, a redirection to a node with no store fails clearly
        with pytest.raises(ConfigurationError, match="store_factory"):
            no_factory.get(tagged[0])
        store.close()
        no_factory.close()


# -- growing 3 masters to 4 under load, through one ShardedStore -------------------------------


class Worker(threading.Thread):
    """Reads and writes its own keys through the shared store (single and batch
    calls), records every acknowledged value and every error the caller saw."""

    def __init__(
        self, store: ShardedStore[str], keys: list[str], moving: list[str], seed: int
    ) -> None:
        super().__init__(daemon=True)
        self.store, self.keys, self.rng = store, keys, random.Random(seed)
        self.acked: dict[str, str] = dict.fromkeys(keys, "0")
        self.moving = [key for key in moving if key in self.acked]  # its keys the plan moves
        self.errors: list[BaseException] = []
        self.stale: list[tuple[str, Any, str]] = []
        self.operations = 0
        self.halt = threading.Event()

    def run(self) -> None:
        counter = 0
        while not self.halt.is_set():
            counter += 1
            roll = self.rng.random()
            try:
                if roll < 0.35:
                    key, value = self.rng.choice(self.keys), f"{counter}"
                    self.store.set(key, value)
                    self.acked[key] = value
                elif roll < 0.7:
                    key = self.rng.choice(self.keys)
                    self._compare({key: self.store.get(key)}, [key])
                elif roll < 0.85:
                    chosen = self.rng.sample(self.keys, 50)
                    values = {key: f"{counter}:{key}" for key in chosen}
                    self.store.set_many(values)
                    self.acked.update(values)
                else:  # every key of this worker the plan moves: it meets the slot in migration
                    self._compare(self.store.get_many(self.moving), self.moving)
                self.operations += 1
            except BaseException as exc:
                self.errors.append(exc)

    def _compare(self, got: dict[str, Any], keys: list[str]) -> None:
        for key in keys:
            if got.get(key) != self.acked[key]:
                self.stale.append((key, got.get(key), self.acked[key]))


@pytest.mark.slow
def test_grow_three_masters_to_four_under_load_through_a_sharded_store() -> None:
    with redis_cluster_or_skip(3) as ports, redis_cluster_node() as new_port:
        started = time.monotonic()
        _meet(ports, new_port)
        new = f"127.0.0.1:{new_port}"
        keys = [f"key:{i}" for i in range(4_000)]
        store = _sharded(ports[0])  # its map is loaded before the reshard, and its own
        store.set_many(dict.fromkeys(keys, "0"))
        plan_map = SlotMap.from_cluster(_client("127.0.0.1", ports[0]))
        plan = plan_map.plan_add(new)
        assert plan.targets == {new}
        assert plan.moved_fraction <= 1.05 * plan.ideal_fraction
        moving = [key for key in keys if plan.move_for(key) is not None]
        workers = [Worker(store, keys[i::2], moving, seed=i) for i in range(2)]
        for worker in workers:
            worker.start()
        # the resharder runs in a process of its own, as redis-cli would (and not
        # slowed by this process's threads holding the GIL)
        context = multiprocessing.get_context("spawn")
        reports: Any = context.Queue()
        process = context.Process(target=_reshard, args=(plan, reports))
        process.start()
        done, keys_reported, reshard_time = reports.get(timeout=120)
        process.join(30)
        time.sleep(0.2)
        for worker in workers:
            worker.halt.set()
        for worker in workers:
            worker.join(30)
        assert done
        assert _client("127.0.0.1", new_port).dbsize() == keys_reported  # what MIGRATE moved
        errors = [e for w in workers for e in w.errors]
        stale = [s for w in workers for s in w.stale]
        assert errors == []
        assert stale == []
        stats = store.stats()
        assert stats.moved > 0  # the store followed the cluster by itself
        assert stats.asked > 0
        assert sum(stats.errors.values()) == 0
        assert new in store.stores
        # (c) a batch over keys of every slot, after the reshard, reads every acknowledged write
        acked = {key: value for w in workers for key, value in w.acked.items()}
        assert store.get_many(keys) == acked
        lost = [key for key, value in acked.items() if store.get(key) != value]
        assert lost == []
        # the store's map caught up with the cluster's table on every slot it touched
        owners, _ = _table(ports[0])
        assert [store.sharder.node_for(k) for k in keys] == [owners[_slot(k)] for k in keys]
        # a batch over a key of every slot, through the map still stale on untouched slots
        every_slot: dict[int, str] = {}
        for i in itertools.count():
            every_slot.setdefault(_slot(f"slot:{i}"), f"slot:{i}")
            if len(every_slot) == 16384:
                break
        batch_started = time.monotonic()
        moved_before = store.stats().moved
        store.set_many({key: key for key in every_slot.values()})
        assert store.get_many(list(every_slot.values())) == {k: k for k in every_slot.values()}
        batch_time = time.monotonic() - batch_started
        late_moved = store.stats().moved - moved_before
        assert late_moved > 0
        assert list(store.sharder._state.table) == owners  # type: ignore[attr-defined]
        store.sharder._check()  # type: ignore[attr-defined]
        keys_moved = keys_reported
        assert keys_moved / len(keys) <= 1.05 * plan.ideal_fraction
        total = sum(_client("127.0.0.1", p).dbsize() for p in [*ports, new_port])
        assert total == len(keys) + len(every_slot)
        operations = sum(w.operations for w in workers)
        print(
            f"\ngrow 3->4 through a ShardedStore: {len(keys)} keys, {operations} operations "
            f"by 2 threads, {len(errors)} errors, {len(lost)} lost writes, {len(stale)} stale "
            f"reads; keys moved {keys_moved} = {keys_moved / len(keys):.4%} "
            f"({keys_moved / len(keys) / plan.ideal_fraction:.4f} x ideal); MOVED "
            f"{stats.moved}, ASK {stats.asked}, TRYAGAIN splits {stats.retried}; "
            f"reshard {reshard_time:.1f} s; then a batch of a key a slot, written and read in "
            f"{batch_time:.2f} s, followed MOVED {late_moved}; test "
            f"{time.monotonic() - started:.1f} s"
        )
        store.close()


def _reshard(plan: Any, reports: Any) -> None:
    """Carry out ``plan`` on the live cluster; put ``(done, keys moved, seconds)``."""
    started = time.monotonic()
    report = ClusterResharder(_client, plan, batch_size=20).run()
    reports.put((report.done, report.keys_moved, time.monotonic() - started))


def _slot(key: str) -> int:
    from scalekit.sharding import redis_key_slot

    return redis_key_slot(key)


def _table(port: int) -> tuple[list[str], list[str]]:
    from scalekit.sharding._cluster import read_cluster_table

    return read_cluster_table(_client("127.0.0.1", port))
