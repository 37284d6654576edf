"""TieredCache: a near cache over a shared tier, kept fresh by invalidations.

In one process: the reads and writes, TTL bounds, the flight rule (a value read
while its key is invalidated is not kept), the model with two app servers; on a
real Redis: tracking and pub/sub invalidation, a dropped connection flushing l1.
Two real processes: tests/cache/test_tiered_processes.py.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from scalekit.cache import LRUCache, RedisCache, RedisInvalidation, TieredCache, TTLCache
from scalekit.errors import ArgumentTypeError, ConfigurationError
from scalekit.testing import check_store


class Channel:
    """An invalidation channel delivering at once, to every attached cache but the writer's
    own... and the writer's, as Redis tracking does."""

    def __init__(self) -> None:
        self.listeners: list[Any] = []
        self.generation = 0
        self.ready = True

    def attach(self, on_keys: Any, on_flush: Any) -> None:
        self.listeners.append((on_keys, on_flush))

    def detach(self, on_keys: Any) -> None:
        self.listeners = [pair for pair in self.listeners if pair[0] is not on_keys]

    def publish(self, keys: list[str]) -> None:
        for on_keys, _ in self.listeners:
            on_keys(keys)

    def drop(self) -> None:
        self.generation += 1
        for _, on_flush in self.listeners:
            on_flush()


def test_reads_fill_l1_and_writes_go_through() -> None:
    l1, l2 = LRUCache(100), LRUCache(1000)
    cache = TieredCache(l1, l2)
    l2.set("a", 1)
    assert cache.get("a") == 1
    assert l1["a"] == 1
    assert cache.get("a") == 1
    assert cache.get("missing", "d") == "d"
    cache.set("b", 2)
    assert l2["b"] == 2
    assert l1["b"] == 2
    assert cache.add("b", 3) is False
    assert cache.add("c", 3) is True
    assert cache.get_many(["a", "b", "c", "x"]) == {"a": 1, "b": 2, "c": 3}
    assert cache.delete("a") is True
    assert "a" not in l1
    assert "a" not in l2
    stats = cache.stats()
    assert (stats.l1_hits, stats.l2_hits, stats.misses) == (3, 2, 2)  # a failed add drops l1


def test_keeps_the_store_contract() -> None:
    cache = TieredCache(LRUCache(10_000), LRUCache(10_000))
    check_store(lambda: cache, json_only=False)


def test_an_l1_entry_never_outlives_the_l2_entry() -> None:
    l1 = TTLCache(100, ttl=3600)
    l2 = LRUCache(100)
    l2.set("short", 1, ttl=0.5)
    l2.set("forever", 2)
    cache = TieredCache(l1, l2, l1_ttl=60)
    cache.get("short")
    cache.get("forever")
    assert 0 < l1.ttl_of("short") <= 0.5
    assert 59 < l1.ttl_of("forever") <= 60
    assert TieredCache(TTLCache(100, ttl=5), l2).l1 is not None
    bounded = TieredCache(TTLCache(100, ttl=5), l2)
    bounded.get("forever")
    assert bounded.l1.ttl_of("forever") <= 5  # l1's own TTL is a bound too


def test_a_value_read_while_its_key_is_invalidated_is_not_kept() -> None:
    reading, release = threading.Event(), threading.Event()

    class SlowL2(LRUCache[str, Any]):
        def ttl_of(self, key: str) -> Any:
            reading.set()
            release.wait(5)
            return super().ttl_of(key)

    l2 = SlowL2(10)
    l2.set("k", "old")
    channel = Channel()
    cache = TieredCache(LRUCache(10), l2, invalidation=channel)
    got: list[Any] = []
    reader = threading.Thread(target=lambda: got.append(cache.get("k")))
    reader.start()
    assert reading.wait(5)
    l2.set("k", "new")
    channel.publish(["k"])  # the invalidation arrives while the old value is in flight
    release.set()
    reader.join()
    assert got == ["old"]  # the caller gets what it read...
    assert "k" not in cache.l1  # ...but l1 does not keep it
    assert cache.stats().not_kept == 1
    assert cache.get("k") == "new"


def test_nothing_is_kept_while_the_channel_is_down_and_a_drop_flushes() -> None:
    channel = Channel()
    l2 = LRUCache(10)
    l2.set("k", 1)
    cache = TieredCache(LRUCache(10), l2, invalidation=channel)
    cache.get("k")
    assert "k" in cache.l1
    channel.ready = False
    channel.drop()
    assert len(cache.l1) == 0
    assert cache.get("k") == 1
    assert "k" not in cache.l1
    channel.ready = True
    cache.get("k")
    assert "k" in cache.l1


def test_bad_arguments() -> None:
    with pytest.raises(ArgumentTypeError):
        TieredCache(LRUCache(1), object())
    with pytest.raises(ArgumentTypeError):
        TieredCache({}, LRUCache(1))
    with pytest.raises(ArgumentTypeError):
        TieredCache(LRUCache(1), LRUCache(1), invalidation=object())
    for bad in (0, -1, float("nan"), True, "1"):
        with pytest.raises((ArgumentTypeError, ConfigurationError)):
            TieredCache(LRUCache(1), LRUCache(1), l1_ttl=bad)
    for timer in (None, 5, "monotonic"):
        with pytest.raises(ArgumentTypeError, match="timer"):
            TieredCache(LRUCache(1), LRUCache(1), timer=timer)  # type: ignore[arg-type]


class TwoServers(RuleBasedStateMachine):
    """Two app servers' TieredCaches over one l2 and one channel, against a dict:
    every read on either server sees the last write made on either."""

    def __init__(self) -> None:
        super().__init__()
        self.l2 = LRUCache(1000)
        self.channel = Channel()
        self.servers = [
            TieredCache(LRUCache(8), self.l2, invalidation=self.channel) for _ in range(2)
        ]
        self.model: dict[str, int] = {}

    keys = st.sampled_from([f"k{i}" for i in range(12)])
    server = st.integers(0, 1)

    @rule(server=server, key=keys, value=st.integers())
    def set(self, server: int, key: str, value: int) -> None:
        self.servers[server].set(key, value)
        self.model[key] = value

    @rule(server=server, key=keys, value=st.integers())
    def add(self, server: int, key: str, value: int) -> None:
        assert self.servers[server].add(key, value) is (key not in self.model)
        self.model.setdefault(key, value)

    @rule(server=server, key=keys)
    def delete(self, server: int, key: str) -> None:
        assert self.servers[server].delete(key) is (key in self.model)
        self.model.pop(key, None)

    @rule(server=server, key=keys)
    def get(self, server: int, key: str) -> None:
        assert self.servers[server].get(key) == self.model.get(key)

    @rule(server=server, items=st.dictionaries(keys, st.integers(), max_size=5))
    def set_many(self, server: int, items: dict[str, int]) -> None:
        self.servers[server].set_many(items)
        self.model.update(items)

    @rule(server=server, keys=st.lists(keys, max_size=6))
    def get_many(self, server: int, keys: list[str]) -> None:
        expected = {k: self.model[k] for k in keys if k in self.model}
        assert self.servers[server].get_many(keys) == expected

    @rule()
    def drop(self) -> None:
        self.channel.drop()

    @invariant()
    def l1_holds_only_current_values(self) -> None:
        for server in self.servers:
            for key in list(server.l1):
                assert server.l1[key] == self.model[key]
            for key, (value, _) in server._index.items():  # what hits read, lock-free
                assert value == self.model[key]
            server._check()


TestTwoServers = TwoServers.TestCase
TestTwoServers.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)


def test_hits_without_the_lock_never_see_an_invalidated_value() -> None:
    """Readers on 6 threads hit l1 without its lock while a writer on another
    "server" changes keys: once a write's invalidation is delivered, no read
    started after it returns an older version."""
    channel, l2 = Channel(), LRUCache(1000)
    reader = TieredCache(LRUCache(50), l2, invalidation=channel)
    writer = TieredCache(LRUCache(50), l2, invalidation=channel)
    keys = [f"k{i}" for i in range(80)]
    writer.set_many(dict.fromkeys(keys, 0))
    delivered = dict.fromkeys(keys, 0)  # version whose invalidation has been delivered
    stop, errors = threading.Event(), []

    def read() -> None:
        n = 0
        while not stop.is_set():
            key = keys[n % len(keys)]
            n += 7
            floor = delivered[key]
            got = reader.get(key)
            if got < floor:
                errors.append((key, got, floor))

    threads = [threading.Thread(target=read) for _ in range(6)]
    for thread in threads:
        thread.start()
    for version in range(1, 300):
        key = keys[version % len(keys)]
        writer.set(key, version)  # publishes to every TieredCache on the channel
        delivered[key] = version
    stop.set()
    for thread in threads:
        thread.join()
    assert errors == []
    reader._check()
    assert reader.stats().l1_hits > 1000


# -- on a real Redis ---------------------------------------------------------------


def _wait(condition: Any, timeout: float = 5.0) -> float:
    start = time.perf_counter()
    while not condition():
        if time.perf_counter() - start > timeout:
            raise AssertionError("timed out")
        time.sleep(0.0005)
    return time.perf_counter() - start


@pytest.mark.redis
@pytest.mark.parametrize("mode", ["tracking", "pubsub"])
def test_another_servers_write_reaches_l1(redis_client: Any, redis_url: str, mode: str) -> None:
    import redis

    servers = []
    for _ in range(2):
        client = redis.Redis.from_url(redis_url)
        invalidation = RedisInvalidation(client, prefix="t:", mode=mode)
        servers.append(
            TieredCache(LRUCache(100), RedisCache(client, prefix="t:"), invalidation=invalidation)
        )
    a, b = servers
    try:
        for server in servers:
            assert server._channels[0].wait_ready(5)

        def heard(server: TieredCache[Any], write: Any) -> None:
            """Run ``write``, then wait until ``server`` heard of it."""
            before = server._channels[0].stats()["keys"]
            write()
            _wait(lambda: server._channels[0].stats()["keys"] > before)

        heard(b, lambda: a.set("k", 1))
        assert b.get("k") == 1
        assert "k" in b.l1
        heard(b, lambda: a.set("k", 2))
        assert "k" not in b.l1
        assert b.get("k") == 2
        heard(b, lambda: a.delete("k"))
        assert "k" not in b.l1
        assert b.get("k") is None
        if mode == "tracking":  # any writer is seen, not only TieredCaches
            heard(b, lambda: b.set("j", 1))  # its own write's message comes back too
            assert b.get("j") == 1
            assert "j" in b.l1
            heard(b, lambda: redis_client.set("t:j", b'"raw"'))
            assert "j" not in b.l1
            assert b.get("j") == "raw"
    finally:
        for server in servers:
            server._channels[0].close()


@pytest.mark.redis
def test_a_dropped_invalidation_connection_flushes_l1(redis_client: Any) -> None:
    invalidation = RedisInvalidation(redis_client, prefix="d:", reconnect_delay=0.05)
    cache = TieredCache(
        LRUCache(100), RedisCache(redis_client, prefix="d:"), invalidation=invalidation
    )
    try:
        assert invalidation.wait_ready(5)
        cache.set_many({"a": 1, "b": 2})
        _wait(lambda: invalidation.stats()["keys"] >= 2)  # the writes' own messages
        cache.get_many(["a", "b"])
        assert len(cache.l1) == 2
        flushes = cache.stats().flushes
        redis_client.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        _wait(lambda: cache.stats().flushes > flushes)
        assert len(cache.l1) == 0
        assert invalidation.wait_ready(5)  # it reconnects by itself
        assert invalidation.stats()["connects"] >= 2
        cache.get("a")
        assert "a" in cache.l1
        heard = invalidation.stats()["keys"]
        redis_client.set("d:a", b"5")
        _wait(lambda: invalidation.stats()["keys"] > heard)
        _wait(lambda: "a" not in cache.l1)  # and tracks again
    finally:
        invalidation.close()
