"""The shared tier: RedisCache, AsyncRedisCache and MemcachedCache on real servers,
the in-memory caches under the same Store contract, and what only a server shows
(round trips, wrapped errors, key encoding)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from typing import Any

import pytest

from scalekit.cache import (
    BYTES,
    AsyncRedisCache,
    LRUCache,
    MemcachedCache,
    RedisCache,
    StoreStats,
    TTLCache,
)
from scalekit.errors import (
    ArgumentTypeError,
    BackendError,
    ConfigurationError,
    IncompatibleStore,
    ItemTooLarge,
)
from scalekit.protocols import AsyncStore, Store
from scalekit.testing import check_async_store, check_store
from tests.services import free_port, memcached_server

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


@pytest.fixture(scope="module")
def memcached_port() -> Iterator[int]:
    with memcached_server() as port:
        yield port


@pytest.fixture
def memcached_client(memcached_port: int) -> Iterator[Any]:
    from pymemcache.client.base import Client

    client = Client(("127.0.0.1", memcached_port), connect_timeout=2, timeout=2)
    client.flush_all(noreply=False)
    try:
        yield client
    finally:
        client.close()


# -- the contract --------------------------------------------------------------


@pytest.mark.redis
def test_redis_cache_keeps_the_store_contract(redis_client: Any) -> None:
    check_store(lambda: RedisCache(redis_client, prefix="contract:"))


@pytest.mark.redis
def test_redis_cache_with_decoded_responses_keeps_the_contract(redis_url: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        check_store(lambda: RedisCache(client))
    finally:
        client.close()


@pytest.mark.redis
def test_async_redis_cache_keeps_the_store_contract(redis_url: str) -> None:
    import redis.asyncio

    async def main() -> None:
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            await check_async_store(lambda: AsyncRedisCache(client, prefix="contract:"))
        finally:
            await client.aclose()

    asyncio.run(main())


def test_memcached_cache_keeps_the_store_contract(memcached_client: Any) -> None:
    check_store(lambda: MemcachedCache(memcached_client), resolution=2.0)


@pytest.mark.parametrize("make", [lambda: LRUCache(10_000), lambda: TTLCache(10_000, ttl=3600)])
def test_in_memory_caches_keep_the_store_contract(make: Any) -> None:
    check_store(make, json_only=False)


@pytest.mark.redis
def test_the_stores_are_stores(redis_client: Any, memcached_client: Any) -> None:
    import redis.asyncio

    assert isinstance(RedisCache(redis_client), Store)
    assert isinstance(MemcachedCache(memcached_client), Store)
    assert isinstance(AsyncRedisCache(redis.asyncio.Redis()), AsyncStore)


def test_a_broken_store_fails_the_contract() -> None:
    class Forgetful(LRUCache[Any, Any]):
        def add(self, key: Any, value: Any, *, ttl: Any = None) -> bool:
            self.set(key, value, ttl=ttl)  # overwrites: not set-if-absent
            return True

    with pytest.raises(AssertionError, match="add_only_if_absent"):
        check_store(lambda: Forgetful(100), json_only=False)


# -- Redis: round trips, errors, keys ----------------------------------------------


class CountingClient:
    """A redis-py client that counts round trips (commands and pipelines)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.round_trips = 0

    def execute_command(self, *args: Any, **options: Any) -> Any:
        self.round_trips += 1
        return self.client.execute_command(*args, **options)

    def pipeline(self, transaction: bool = True) -> Any:
        pipe = self.client.pipeline(transaction=transaction)
        execute = pipe.execute

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.round_trips += 1
            return execute(*args, **kwargs)

        pipe.execute = counted
        return pipe


@pytest.mark.redis
def test_batches_are_one_round_trip(redis_client: Any) -> None:
    counting = CountingClient(redis_client)
    cache = RedisCache(counting, ttl=60)
    cache.set_many({f"k{i}": i for i in range(100)})
    assert counting.round_trips == 1
    assert cache.get_many([f"k{i}" for i in range(150)]) == {f"k{i}": i for i in range(100)}
    assert counting.round_trips == 2
    assert cache.get_many([]) == {}
    cache.set_many({})
    assert counting.round_trips == 2
    assert 59 < cache.ttl_of("k7") <= 60  # type: ignore[operator]


@pytest.mark.redis
def test_a_cluster_node_store_keeps_the_contract_and_batches_by_slot(redis_client: Any) -> None:
    check_store(lambda: RedisCache(redis_client, cluster=True))
    counting = CountingClient(redis_client)
    sent: list[tuple[Any, ...]] = []
    pipeline = counting.pipeline

    def recording(transaction: bool = True) -> Any:
        pipe = pipeline(transaction)
        execute_command = pipe.execute_command

        def record(*args: Any) -> Any:
            sent.append(args)
            return execute_command(*args)

        pipe.execute_command = record
        return pipe

    counting.pipeline = recording  # type: ignore[method-assign]
    cache = RedisCache(counting, prefix="{app}", cluster=True)
    assert cache.cluster
    keys = [f"k{i}" for i in range(50)]
    cache.set_many(dict.fromkeys(keys, 1))
    assert cache.get_many(keys) == dict.fromkeys(keys, 1)  # one hash tag: one slot, one MGET
    assert counting.round_trips == 2
    tagged = RedisCache(counting, prefix="p:", cluster=True)
    mixed = ["{a}1", "{a}2", "{b}1", "x", "{a}3"]
    tagged.set_many(dict.fromkeys(mixed, 2))
    sent.clear()
    assert tagged.get_many(mixed) == dict.fromkeys(mixed, 2)
    assert counting.round_trips == 4  # pipelined: one round trip
    assert sent == [  # one MGET a slot (the prefix is hashed too: no tag in "p:")
        ("MGET", b"p:{a}1", b"p:{a}2", b"p:{a}3"),
        ("MGET", b"p:{b}1"),
        ("MGET", b"p:x"),
    ]
    assert set(tagged.get_many_with_ttl(mixed)) == set(mixed)
    assert RedisCache(redis_client).cluster is False


def test_cluster_batches_go_one_command_a_slot() -> None:
    from scalekit.cache._redis import ClusterRedisCommands, with_asking
    from scalekit.cache._remote import JSON, Codec, Counters
    from scalekit.sharding import redis_key_slot

    commands = ClusterRedisCommands(Codec[Any]("RedisCache", "", None, JSON), Counters())
    keys = ["{u1}a", "{u1}b", "foo", "{u2}a", "bar", "{u1}c"]
    call = commands.get_many(keys)
    assert call.partial
    slots = [{redis_key_slot(name) for name in command[1:]} for command in call.commands]
    assert all(len(one) == 1 for one in slots)  # never CROSSSLOT
    assert sorted(name for command in call.commands for name in command[1:]) == sorted(
        key.encode() for key in keys
    )
    assert call.commands[0] == ("MGET", b"{u1}a", b"{u1}b", b"{u1}c")
    # a slot's MGET that fails fails only its keys: the others are read
    moved = RuntimeError("MOVED")
    replies = [moved if c[1] == b"foo" else [b"1"] * (len(c) - 1) for c in call.commands]
    with pytest.raises(BackendError) as caught:
        call.finish(replies)
    assert caught.value.found == {k: 1 for k in keys if k != "foo"}  # type: ignore[attr-defined]
    assert list(caught.value.failed) == ["foo"]  # type: ignore[attr-defined]
    assert caught.value.failed["foo"].__cause__ is moved  # type: ignore[attr-defined]
    single = commands.get_many(["{u1}a", "{u1}b"])
    assert single.commands == (("MGET", b"{u1}a", b"{u1}b"),)
    assert not single.partial
    asked = with_asking(commands.set_many({"a": 1, "b": 2}, None))
    assert [command[0] for command in asked.commands] == ["ASKING", "SET", "ASKING", "SET"]
    ttl = with_asking(commands.get_many_with_ttl(["{u1}a", "foo"]))
    names = [command[0] for command in ttl.commands]
    assert names == ["ASKING", "MGET", "ASKING", "PTTL"] * 2
    assert ttl.finish([b"OK", [b"1"], b"OK", -1, b"OK", [None], b"OK", -2]) == {"{u1}a": (1, None)}


@pytest.mark.redis
def test_prefix_ttl_and_stats(redis_client: Any) -> None:
    users = RedisCache(redis_client, prefix="users:", ttl=30)
    other = RedisCache(redis_client, prefix="orders:")
    users.set("1", "ada")
    assert other.get("1") is None
    assert redis_client.get("users:1") == b'"ada"'
    assert 29 < redis_client.pttl("users:1") / 1000 <= 30
    other.set("1", "never", ttl=None)
    assert other.ttl_of("1") is None
    users.get("1"), users.get("2"), users.get_many(["1", "2", "3"])
    users.add("1", "x"), users.delete("1")
    assert users.stats() == StoreStats(hits=2, misses=3, writes=1, deletes=1, errors=0)
    assert users.stats().hit_ratio == 0.4
    users.reset_stats()
    assert users.stats() == StoreStats(0, 0, 0, 0, 0)


def test_ttls_are_sent_in_milliseconds_rounded_up() -> None:
    sent: list[tuple[Any, ...]] = []

    class Recorder:
        def execute_command(self, *args: Any) -> Any:
            sent.append(args)
            return True

    cache = RedisCache(Recorder(), ttl=2.5)
    cache.set("a", 1)
    cache.set("b", 1, ttl=0.0001)
    cache.set("c", 1, ttl=1.0001)
    cache.set("d", 1, ttl=math.inf)
    cache.add("e", 1, ttl=3)
    assert [command[3:] for command in sent] == [
        ("PX", 2500),
        ("PX", 1),
        ("PX", 1001),
        (),
        ("PX", 3000, "NX"),
    ]


def test_errors_of_the_client_are_wrapped() -> None:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    client = redis.Redis(port=free_port(), socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    cache = RedisCache(client)
    for call in (
        lambda: cache.get("k"),
        lambda: cache.set("k", 1),
        lambda: cache.get_many(["a", "b"]),
        lambda: cache.set_many({"a": 1, "b": 2}),
    ):
        with pytest.raises(BackendError) as caught:
            call()
        assert isinstance(caught.value.__cause__, redis.ConnectionError)
        assert caught.value.backend == "redis"
    assert cache.stats().errors == 4


@pytest.mark.redis
def test_a_value_not_written_by_the_serializer_is_incompatible(redis_client: Any) -> None:
    redis_client.set("k", b"\x80not json")
    with pytest.raises(IncompatibleStore) as caught:
        RedisCache(redis_client).get("k")
    assert isinstance(caught.value.__cause__, ValueError)
    assert RedisCache(redis_client, serializer=BYTES).get("k") == b"\x80not json"


@pytest.mark.redis
def test_a_wrong_type_key_is_a_backend_error(redis_client: Any) -> None:
    redis_client.rpush("list", b"x")
    with pytest.raises(BackendError, match="WRONGTYPE"):
        RedisCache(redis_client).get("list")


def test_bad_settings_are_refused() -> None:
    import redis

    client = redis.Redis()
    for kwargs, error in [
        ({"prefix": None}, ArgumentTypeError),
        ({"prefix": b"x"}, ArgumentTypeError),
        ({"ttl": 0}, ConfigurationError),
        ({"ttl": math.nan}, ConfigurationError),
        ({"ttl": True}, ArgumentTypeError),
        ({"ttl": 10**400}, ConfigurationError),
        ({"serializer": object()}, ArgumentTypeError),
        ({"serializer": None}, ArgumentTypeError),
    ]:
        for kind in (RedisCache, AsyncRedisCache):
            with pytest.raises(error):
                kind(client, **kwargs)
        with pytest.raises(error):
            MemcachedCache(object(), **kwargs)
    for prefix in ("with space", "~x", "é", "p" * 220):
        with pytest.raises(ConfigurationError, match="prefix"):
            MemcachedCache(object(), prefix=prefix)


# -- memcached: keys, sizes, TTLs ----------------------------------------------


def test_memcached_keys_it_cannot_take_are_hashed(memcached_client: Any) -> None:
    cache = MemcachedCache(memcached_client, prefix="app:")
    cache.set("plain", 1)
    cache.set("with space", 2)
    cache.set("k" * 300, 3)
    assert memcached_client.get(b"app:plain") == b"1"
    assert memcached_client.get(b"app:with space".replace(b" ", b"_")) is None
    assert (cache.get("plain"), cache.get("with space"), cache.get("k" * 300)) == (1, 2, 3)
    assert cache.get_many(["plain", "with space", "k" * 300, "nope"]) == {
        "plain": 1,
        "with space": 2,
        "k" * 300: 3,
    }


def test_memcached_too_large_is_item_too_large(memcached_client: Any) -> None:
    cache = MemcachedCache(memcached_client, serializer=BYTES)
    with pytest.raises(ItemTooLarge):
        cache.set("big", b"x" * (2 << 20))
    assert cache.get("big") is None


def test_memcached_errors_are_wrapped() -> None:
    from pymemcache.client.base import Client

    cache = MemcachedCache(Client(("127.0.0.1", free_port()), connect_timeout=0.5))
    with pytest.raises(BackendError) as caught:
        cache.get("k")
    assert isinstance(caught.value.__cause__, OSError)
    assert caught.value.backend == "memcached"


def test_memcached_expiry_is_never_early() -> None:
    from scalekit.cache._memcached import RELATIVE_LIMIT, expiry

    assert expiry(None, 5.0) == 0
    assert expiry(0.001, 5.0) == 2
    assert expiry(RELATIVE_LIMIT - 1, 5.0) == RELATIVE_LIMIT
    assert expiry(RELATIVE_LIMIT, 1000.5) == math.ceil(1000.5 + RELATIVE_LIMIT) + 1


def test_memcached_lists_its_keys_and_reshards(memcached_client: Any) -> None:
    from pymemcache.client.base import Client

    from scalekit.sharding import KetamaRing, ShardedStore
    from tests.services import memcached_servers

    cache = MemcachedCache(memcached_client, prefix="ks:")
    cache.set_many({"a": 1, "b/c": 2, "with space": 3})
    MemcachedCache(memcached_client, prefix="other:").set("z", 0)
    assert sorted(cache.keys()) == ["a", "b/c"]  # "with space" went hashed: not listable

    with memcached_servers(3) as ports:
        stores = {
            f"127.0.0.1:{p}": MemcachedCache(Client(("127.0.0.1", p)), ttl=600) for p in ports
        }
        nodes = list(stores)
        store = ShardedStore(
            KetamaRing(nodes[:2], points="twemproxy"), {n: stores[n] for n in nodes[:2]}
        )
        keys = [f"user:{i}" for i in range(2000)]
        store.set_many({k: i for i, k in enumerate(keys)})
        plan = store.sharder.plan_add(nodes[2])  # type: ignore[attr-defined]
        report = store.reshard(plan, {nodes[2]: stores[nodes[2]]})
        assert report.done
        assert report.moved == sum(1 for k in keys if plan.move_for(k))
        assert store.get_many(keys) == {k: i for i, k in enumerate(keys)}
        assert sorted(stores[nodes[2]].keys()) == sorted(k for k in keys if plan.move_for(k))
        left = stores[nodes[2]].ttl_of(next(k for k in keys if plan.move_for(k)))
        assert left is not None
        assert 590 <= left <= 602  # the remaining TTL came along (whole seconds)
