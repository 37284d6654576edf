"""ShardedStore: the Store contract over many stores, routing, down shards,
replicas, and live resharding between real Redis servers."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from scalekit.cache import AsyncRedisCache, LRUCache, RedisCache
from scalekit.errors import (
    ArgumentTypeError,
    BackendError,
    ConfigurationError,
    ShardUnavailable,
    UnknownNode,
)
from scalekit.sharding import (
    AsyncShardedStore,
    HashRing,
    JumpHash,
    KetamaRing,
    RendezvousHash,
    ShardedStore,
    SlotMap,
    redis_key_slot,
)
from scalekit.sharding._store import _redirect_of
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


# -- Redis Cluster redirections, against a cluster in memory -----------------------------------


class ResponseError(Exception):
    """Named as redis-py's: the store knows redirections by class name."""


class AskError(ResponseError):
    def __init__(self, slot: int, node: str) -> None:
        super().__init__(f"{slot} {node}")
        host, port = node.rsplit(":", 1)
        self.slot_id, self.host, self.port = slot, host, int(port)


class MovedError(AskError):
    pass


class TryAgainError(ResponseError):
    pass


class FakeCluster:
    """What a Redis Cluster answers while slots migrate: a node serves its slots,
    a migrating slot's absent keys are ASKed of the importing node (TRYAGAIN for
    a batch partly there), an importing node serves after ASKING, the rest is
    MOVED to the owner."""

    def __init__(self, masters: list[str], spare: list[str]) -> None:
        self.owner = list(SlotMap.redis_cluster(masters)._state.table)
        self.data: dict[str, dict[str, Any]] = {node: {} for node in [*masters, *spare]}
        self.migrating: dict[int, tuple[str, str]] = {}

    def check(self, node: str, keys: list[str], asking: bool) -> None:
        slots = {redis_key_slot(key) for key in keys}
        if len(slots) != 1:
            raise ResponseError("CROSSSLOT Keys in request don't hash to the same slot")
        (slot,) = slots
        migration = self.migrating.get(slot)
        present = [key in self.data[node] for key in keys]
        if node == self.owner[slot]:
            if migration is None or all(present):
                return
            if not any(present):
                raise AskError(slot, migration[1])
            raise TryAgainError("Multiple keys request during rehashing of slot")
        if asking and migration is not None and migration[1] == node:
            if len(keys) > 1 and not all(present):
                raise TryAgainError("Multiple keys request during rehashing of slot")
            return
        raise MovedError(slot, self.owner[slot])

    def node_of(self, key: str) -> str | None:
        found = [node for node, data in self.data.items() if key in data]
        assert len(found) <= 1, found
        return found[0] if found else None


class FakeNodeStore:
    """A Store on one node of a FakeCluster, as RedisCache(cluster=True) behaves:
    a batch is one command per slot, and partly failed batches say which keys."""

    def __init__(self, cluster: FakeCluster, node: str) -> None:
        self.cluster, self.node = cluster, node

    def _on(self, keys: list[str], asking: bool) -> dict[str, Any]:
        try:
            self.cluster.check(self.node, keys, asking)
        except ResponseError as exc:
            raise BackendError(f"fake: {exc}") from exc
        return self.cluster.data[self.node]

    def get(self, key: str, default: Any = None, *, asking: bool = False) -> Any:
        return self._on([key], asking).get(key, default)

    def set(self, key: str, value: Any, *, ttl: Any = None, asking: bool = False) -> None:
        self._on([key], asking)[key] = value

    def add(self, key: str, value: Any, *, ttl: Any = None, asking: bool = False) -> bool:
        data = self._on([key], asking)
        if key in data:
            return False
        data[key] = value
        return True

    def delete(self, key: str, *, asking: bool = False) -> bool:
        return self._on([key], asking).pop(key, _ABSENT) is not _ABSENT

    def ttl_of(self, key: str, *, asking: bool = False) -> float | None:
        if key not in self._on([key], asking):
            raise KeyError(key)
        return None

    def get_with_ttl(
        self, key: str, default: Any = None, *, asking: bool = False
    ) -> tuple[Any, float | None]:
        data = self._on([key], asking)
        return (data[key], None) if key in data else (default, None)

    def _batch(
        self, keys: list[str], asking: bool, each: Callable[[dict[str, Any], str], None]
    ) -> None:
        by_slot: dict[int, list[str]] = {}
        for key in dict.fromkeys(keys):
            by_slot.setdefault(redis_key_slot(key), []).append(key)
        failed: dict[str, BaseException] = {}
        for group in by_slot.values():
            try:
                data = self._on(group, asking)
            except BackendError as exc:
                if len(by_slot) == 1:
                    raise
                failed.update(dict.fromkeys(group, exc))
                continue
            for key in group:
                each(data, key)
        if failed:
            raise ShardUnavailable("fake: part failed", found=self._found, failed=failed)

    def get_many(self, keys: list[str], *, asking: bool = False) -> dict[str, Any]:
        self._found: dict[str, Any] = {}
        self._batch(keys, asking, lambda data, key: self._read(data, key, False))
        return self._found

    def _read(self, data: dict[str, Any], key: str, with_ttl: bool) -> None:
        if key in data:
            self._found[key] = (data[key], None) if with_ttl else data[key]

    def get_many_with_ttl(self, keys: list[str], *, asking: bool = False) -> dict[str, Any]:
        self._found = {}
        self._batch(keys, asking, lambda data, key: self._read(data, key, True))
        return self._found

    def set_many(self, items: dict[str, Any], *, ttl: Any = None, asking: bool = False) -> None:
        self._found = {}
        self._batch(list(items), asking, lambda data, key: data.__setitem__(key, items[key]))

    def asking(self, method: str, /, *args: Any, **kwargs: Any) -> Any:
        return getattr(self, method)(*args, asking=True, **kwargs)


_ABSENT: Any = object()
MASTERS = ["127.0.0.1:7000", "127.0.0.1:7001", "127.0.0.1:7002"]
SPARE = ["127.0.0.1:7003"]
CLUSTER_KEYS = [f"{{{tag}}}{i}" for tag in "abcd" for i in range(3)] + ["x", "y", "z"]


def fake_cluster_store(
    cluster: FakeCluster, factory: bool = True, **kwargs: Any
) -> ShardedStore[str]:
    return ShardedStore(
        SlotMap.redis_cluster(MASTERS),
        {node: FakeNodeStore(cluster, node) for node in MASTERS},
        store_factory=(lambda node: FakeNodeStore(cluster, node)) if factory else None,
        max_workers=1,
        **kwargs,
    )


@settings(max_examples=60, stateful_step_count=30, deadline=None)
class ClusterModel(RuleBasedStateMachine):
    """A ShardedStore over a cluster whose slots migrate between calls (with ASK,
    TRYAGAIN and MOVED) reads what a dict holds, and never surfaces a redirection."""

    def __init__(self) -> None:
        super().__init__()
        self.cluster = FakeCluster(MASTERS, SPARE)
        self.store = fake_cluster_store(self.cluster)
        self.model: dict[str, int] = {}

    keys = st.sampled_from(CLUSTER_KEYS)
    nodes = st.sampled_from([*MASTERS, *SPARE])

    @rule(key=keys, value=st.integers())
    def set(self, key: str, value: int) -> None:
        self.store.set(key, value)
        self.model[key] = value

    @rule(key=keys, value=st.integers())
    def add(self, key: str, value: int) -> None:
        assert self.store.add(key, value) is (key not in self.model)
        self.model.setdefault(key, value)

    @rule(key=keys)
    def get(self, key: str) -> None:
        assert self.store.get(key) == self.model.get(key)
        assert self.store.get_with_ttl(key) == (self.model.get(key), None)

    @rule(key=keys)
    def delete(self, key: str) -> None:
        assert self.store.delete(key) is (key in self.model)
        self.model.pop(key, None)

    @rule(keys=st.lists(keys, max_size=10))
    def get_many(self, keys: list[str]) -> None:
        expected = {key: self.model[key] for key in keys if key in self.model}
        assert self.store.get_many(keys) == expected
        assert self.store.get_many_with_ttl(keys) == {k: (v, None) for k, v in expected.items()}

    @rule(items=st.dictionaries(keys, st.integers(), max_size=8))
    def set_many(self, items: dict[str, int]) -> None:
        self.store.set_many(items)
        self.model.update(items)

    @rule(key=keys, to=nodes)
    def start_migration(self, key: str, to: str) -> None:
        slot = redis_key_slot(key)
        if slot not in self.cluster.migrating and self.cluster.owner[slot] != to:
            self.cluster.migrating[slot] = (self.cluster.owner[slot], to)

    @rule(key=keys, to=nodes)
    def move_slot(self, key: str, to: str) -> None:
        self.start_migration(key, to)
        self.finish_migration(key)

    @rule(key=keys)
    def migrate_key(self, key: str) -> None:
        migration = self.cluster.migrating.get(redis_key_slot(key))
        if migration is not None and key in self.cluster.data[migration[0]]:
            source, target = migration
            self.cluster.data[target][key] = self.cluster.data[source].pop(key)

    @rule(key=keys)
    def finish_migration(self, key: str) -> None:
        slot = redis_key_slot(key)
        migration = self.cluster.migrating.pop(slot, None)
        if migration is not None:
            source, target = migration
            for name in [k for k in self.cluster.data[source] if redis_key_slot(k) == slot]:
                self.cluster.data[target][name] = self.cluster.data[source].pop(name)
            self.cluster.owner[slot] = target

    @invariant()
    def holds_what_the_model_holds(self) -> None:
        held = {k: v for data in self.cluster.data.values() for k, v in data.items()}
        assert held == self.model
        for key in held:
            self.cluster.node_of(key)  # on one node only
        stats = self.store.stats()
        assert sum(stats.errors.values()) == 0
        self.store.sharder._check()  # type: ignore[attr-defined]
        table = self.store.sharder._state.table  # type: ignore[attr-defined]
        for slot in {redis_key_slot(key) for key in CLUSTER_KEYS}:
            assert table[slot] in self.cluster.data  # a node of the cluster, maybe stale

    def teardown(self) -> None:
        self.store.close()


TestClusterModel = ClusterModel.TestCase


def _migrated_slot(cluster: FakeCluster, key: str, target: str, *, finish: bool) -> int:
    slot = redis_key_slot(key)
    source = cluster.owner[slot]
    cluster.migrating[slot] = (source, target)
    for name in [k for k in cluster.data[source] if redis_key_slot(k) == slot]:
        cluster.data[target][name] = cluster.data[source].pop(name)
    if finish:
        del cluster.migrating[slot]
        cluster.owner[slot] = target
    return slot


def test_moved_updates_the_map_and_adds_the_node() -> None:
    cluster = FakeCluster(MASTERS, SPARE)
    with fake_cluster_store(cluster) as store:
        store.set_many({key: key for key in CLUSTER_KEYS})
        slot = _migrated_slot(cluster, "{a}0", SPARE[0], finish=True)
        assert store.get_many(CLUSTER_KEYS) == {key: key for key in CLUSTER_KEYS}
        stats = store.stats()
        assert (stats.moved, stats.asked, stats.retried) == (1, 0, 0)
        assert store.sharder.node_for("{a}0") == SPARE[0]
        assert store.sharder.slots_of(SPARE[0]) == {slot}  # type: ignore[attr-defined]
        assert SPARE[0] in store.stores
        assert store.get("{a}1") == "{a}1"
        assert store.stats().moved == 1  # the map knows: no more redirections
        assert sum(stats.errors.values()) == 0


def test_ask_goes_to_the_importing_node_and_leaves_the_map() -> None:
    cluster = FakeCluster(MASTERS, SPARE)
    with fake_cluster_store(cluster) as store:
        store.set_many({key: key for key in CLUSTER_KEYS})
        source = store.sharder.node_for("{b}0")
        _migrated_slot(
            cluster, "{b}0", MASTERS[0] if source != MASTERS[0] else MASTERS[1], finish=False
        )
        for _ in range(2):
            assert store.get("{b}0") == "{b}0"
        assert store.stats().asked == 2  # an ASK is for one call: it is asked each time
        assert store.sharder.node_for("{b}0") == source
        store.set("{b}9", 9)  # a new key of the slot: written at the importing node
        assert cluster.node_of("{b}9") == cluster.migrating[redis_key_slot("{b}0")][1]


def test_tryagain_splits_only_the_slot_in_migration() -> None:
    cluster = FakeCluster(MASTERS, SPARE)
    with fake_cluster_store(cluster) as store:
        store.set_many({key: key for key in CLUSTER_KEYS})
        slot = redis_key_slot("{c}0")
        source = cluster.owner[slot]
        target = next(node for node in MASTERS if node != source)
        cluster.migrating[slot] = (source, target)
        cluster.data[target]["{c}0"] = cluster.data[source].pop("{c}0")
        calls_before = store.stats().calls
        assert store.get_many(CLUSTER_KEYS) == {key: key for key in CLUSTER_KEYS}
        stats = store.stats()
        assert (stats.retried, stats.asked, stats.moved) == (1, 1, 0)
        # round 1: a batch a node; round 2: the 3 keys of {c} one by one; round 3: ASKING
        assert sum(stats.calls.values()) - sum(calls_before.values()) == 3 + 3 + 1


def test_redirections_are_bounded_and_other_errors_surface() -> None:
    cluster = FakeCluster(MASTERS, SPARE)
    with fake_cluster_store(cluster) as store:
        store.set("x", 1)
        slot = redis_key_slot("x")
        owner = cluster.owner[slot]
        other = next(node for node in MASTERS if node != owner)
        # two nodes that each say the other has the slot: a loop of MOVED
        original = cluster.check

        def ping_pong(node: str, keys: list[str], asking: bool) -> None:
            if redis_key_slot(keys[0]) == slot:
                raise MovedError(slot, other if node == owner else owner)
            original(node, keys, asking)

        cluster.check = ping_pong  # type: ignore[method-assign]
        with pytest.raises(ShardUnavailable, match="x") as caught:
            store.get("x")
        assert "redirections" in str(caught.value.failed["x"])
        with pytest.raises(ShardUnavailable) as batch:
            store.get_many(["x", "y", "{a}0"])
        assert list(batch.value.failed) == ["x"]
        with pytest.raises(ShardUnavailable):
            store.set_many({"x": 2, "y": 2})
        assert store.stats().moved > 16
        cluster.check = original  # type: ignore[method-assign]

        def broken(node: str, keys: list[str], asking: bool) -> None:
            raise ResponseError("CLUSTERDOWN The cluster is down")

        cluster.check = broken  # type: ignore[method-assign]
        with pytest.raises(ShardUnavailable, match="every node"):
            store.get("y")
        assert sum(store.stats().errors.values()) == 1


def test_a_redirection_to_a_node_without_a_store_needs_a_factory() -> None:
    cluster = FakeCluster(MASTERS, SPARE)
    store = fake_cluster_store(cluster, factory=False)
    store.set("{a}0", 1)
    _migrated_slot(cluster, "{a}0", SPARE[0], finish=True)
    with pytest.raises(ConfigurationError, match="store_factory"):
        store.get("{a}0")
    with pytest.raises(ConfigurationError, match="store_factory"):
        ShardedStore(JumpHash(NODES), {n: LRUCache(10) for n in NODES}, store_factory=LRUCache)
    with pytest.raises(ConfigurationError, match="store_factory"):
        fake_cluster_store(cluster, replicas=1)
    with pytest.raises(ArgumentTypeError):
        ShardedStore(SlotMap.redis_cluster(MASTERS), {}, store_factory=3)  # type: ignore[arg-type]


def test_ask_needs_a_store_that_can_send_asking() -> None:
    cluster = FakeCluster(MASTERS, SPARE)
    stores = {node: LRUCache(10) for node in MASTERS}
    store = ShardedStore(SlotMap.redis_cluster(MASTERS), stores)

    def ask(*args: Any) -> Any:
        raise BackendError("ask") from AskError(5, MASTERS[1])

    stores[MASTERS[0]].get = ask  # type: ignore[method-assign]
    key = next(k for k in (f"k{i}" for i in range(100)) if store.sharder.node_for(k) == MASTERS[0])
    with pytest.raises(ConfigurationError, match="ASKING"):
        store.get(key)
    del cluster


def test_redirections_are_read_from_redis_errors() -> None:
    import redis

    def wrapped(cause: BaseException) -> BackendError:
        error = BackendError("redis failed")
        error.__cause__ = cause
        return error

    moved = _redirect_of(wrapped(redis.exceptions.MovedError("3999 127.0.0.1:6381")))
    asked = _redirect_of(wrapped(redis.exceptions.AskError("12 10.0.0.1:7000")))
    text = _redirect_of(wrapped(redis.ResponseError("MOVED 77 host.example:7001")))
    assert moved == ("moved", 3999, "127.0.0.1:6381")
    assert asked == ("ask", 12, "10.0.0.1:7000")
    assert text == ("moved", 77, "host.example:7001")
    assert _redirect_of(wrapped(redis.exceptions.TryAgainError("x"))) == ("tryagain", -1, "")
    assert _redirect_of(wrapped(redis.ResponseError("WRONGTYPE"))) is None
    assert _redirect_of(wrapped(redis.ConnectionError("down"))) is None
    assert _redirect_of(BackendError("no cause")) is None


def test_the_async_store_follows_redirections_too() -> None:
    cluster = FakeCluster(MASTERS, SPARE)

    class AsyncFake:
        def __init__(self, node: str) -> None:
            self.sync = FakeNodeStore(cluster, node)

        def __getattr__(self, name: str) -> Any:
            method = getattr(self.sync, name)

            async def call(*args: Any, **kwargs: Any) -> Any:
                return method(*args, **kwargs)

            return call

    async def main() -> None:
        store = AsyncShardedStore(
            SlotMap.redis_cluster(MASTERS),
            {node: AsyncFake(node) for node in MASTERS},
            store_factory=AsyncFake,
        )
        await store.set_many({key: key for key in CLUSTER_KEYS})
        _migrated_slot(cluster, "{a}0", SPARE[0], finish=True)
        _migrated_slot(cluster, "{d}0", SPARE[0], finish=False)
        cluster.data[cluster.owner[redis_key_slot("{d}0")]]["{d}1"] = cluster.data[SPARE[0]].pop(
            "{d}1"
        )
        assert await store.get_many(CLUSTER_KEYS) == {key: key for key in CLUSTER_KEYS}
        assert await store.get("{d}0") == "{d}0"
        stats = store.stats()
        assert stats.moved == 1
        assert stats.asked >= 2
        assert stats.retried == 1

    asyncio.run(main())


def test_assign_slots_makes_one_table_and_joins_new_nodes_when_told() -> None:
    slot_map = SlotMap.redis_cluster(MASTERS)
    before = slot_map._state.table
    with pytest.raises(UnknownNode):
        slot_map.assign_slots({0: MASTERS[1], 1: SPARE[0]})
    assert slot_map._state.table is before  # refused: nothing changed
    slot_map.assign_slots({0: MASTERS[1], 1: SPARE[0], 16383: SPARE[0]}, join=True)
    assert slot_map.nodes == (*MASTERS, SPARE[0])
    assert slot_map.slots_of(SPARE[0]) == {1, 16383}
    assert slot_map._state.table[0] == MASTERS[1]
    assert sum(a != b for a, b in zip(before, slot_map._state.table, strict=True)) == 3
    slot_map._check()
    table = slot_map._state.table
    slot_map.assign_slots({1: SPARE[0]})  # owned so already: no new table
    assert slot_map._state.table is table


@pytest.mark.redis
def test_batches_are_sent_to_every_shard_before_any_reply_is_read(redis_client: Any) -> None:
    """get_many and set_many over RedisCache shards go out on every shard's
    connection first (no thread); an error reply of one shard (a full server
    refusing writes) fails only its keys, and every connection goes back clean."""
    import redis

    with redis_server("--maxmemory", "1", "--maxmemory-policy", "noeviction") as full_port:
        full = redis.Redis(port=full_port)
        stores = {n: RedisCache(redis_client, prefix=f"sg-{n}:") for n in NODES[:2]}
        stores["full"] = RedisCache(full)
        ring = HashRing(list(stores))
        with ShardedStore(ring, stores) as store:
            keys = [f"k{i}" for i in range(90)]
            doomed = {k for k in keys if ring.node_for(k) == "full"}
            assert doomed
            with pytest.raises(ShardUnavailable) as caught:
                store.set_many({k: i for i, k in enumerate(keys)})
            assert set(caught.value.failed) == doomed
            assert "maxmemory" in str(caught.value.__cause__)
            assert store._executor is None  # no worker thread was needed
            expected = {k: i for i, k in enumerate(keys) if k not in doomed}
            assert store.get_many(keys) == expected  # the other shards took theirs
            assert store.get_many(keys) == expected  # and their connections are clean
            for client in (redis_client, full):
                assert not client.connection_pool._in_use_connections
        full.close()
