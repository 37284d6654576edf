"""What only the Redis session stores do: the key layout and native TTLs, the
round trips per request, lost updates under real concurrency, crafted records,
redis-py failures, and agreement with MemorySessionStore step by step.

The store contract runs on Redis too (tests/sessions/env_redis.py); these tests add
what the contract cannot see. Every test uses its own key prefix on the test
database and deletes its keys afterwards (nothing is flushed).
"""

from __future__ import annotations

import asyncio
import pickle
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from scalekit.errors import ArgumentTypeError, BackendError, ConfigurationError, SessionCorrupted
from scalekit.sessions import MemorySessionStore, Record, Session, _core
from scalekit.sessions._core import run
from scalekit.sessions._redis import (
    MAGIC,
    AsyncRedisSessionStore,
    RedisSessionStore,
    pack,
    ttl_ms,
)
from scalekit.sessions._session import new_id
from scalekit.testing import FakeClock
from tests.sessions.env_redis import delete_keys, unique_prefix
from tests.sessions.stress import check, hammer, hammer_async

redis = pytest.importorskip("redis")
redis_asyncio = pytest.importorskip("redis.asyncio")

pytestmark = pytest.mark.redis

START = 1_700_000_000.0
HEAD = struct.Struct(">4sQdd32x")  # magic, version, created_at, accessed_at, write ids


@pytest.fixture
def prefix() -> str:
    return unique_prefix()


@pytest.fixture
def client(redis_url: str, prefix: str) -> Iterator[Any]:
    """A client on the test database; the prefix's keys are deleted afterwards."""
    made = redis.Redis.from_url(redis_url)
    yield made
    delete_keys(made, prefix)
    made.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


MakeStore = Callable[..., RedisSessionStore]


@pytest.fixture
def make_store(client: Any, prefix: str, clock: FakeClock) -> MakeStore:
    def make(**settings: Any) -> RedisSessionStore:
        settings.setdefault("clock", clock)
        return RedisSessionStore(client, prefix=prefix, **settings)

    return make


def raw_record(client: Any, prefix: str, session_id: str) -> tuple[Record, int]:
    """The record stored for ``session_id``, read without the store, and its PTTL."""
    raw = client.get(prefix + session_id)
    assert raw is not None
    magic, version, created_at, accessed_at = HEAD.unpack_from(raw)
    assert magic == MAGIC
    return Record(raw[HEAD.size :], version, created_at, accessed_at), client.pttl(
        prefix + session_id
    )


# -- construction ------------------------------------------------------------------


def test_refuses_a_client_that_decodes_responses(redis_url: str) -> None:
    decoding = redis.Redis.from_url(redis_url, decode_responses=True)
    with pytest.raises(ConfigurationError, match="decode_responses=False"):
        RedisSessionStore(decoding)
    decoding.close()
    async_decoding = redis_asyncio.Redis.from_url(redis_url, decode_responses=True)
    with pytest.raises(ConfigurationError, match="decode_responses=False"):
        AsyncRedisSessionStore(async_decoding)


def test_refuses_the_wrong_kind_of_client(client: Any, redis_url: str) -> None:
    with pytest.raises(ConfigurationError, match="AsyncRedisSessionStore"):
        RedisSessionStore(redis_asyncio.Redis.from_url(redis_url))
    with pytest.raises(ConfigurationError, match="RedisSessionStore"):
        AsyncRedisSessionStore(client)
    with pytest.raises(ConfigurationError, match="redis-py client"):
        RedisSessionStore(object())  # type: ignore[arg-type]
    with pytest.raises(ArgumentTypeError, match="prefix"):
        RedisSessionStore(client, prefix=b"sessions:")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="prefix"):
        RedisSessionStore(client, prefix="\ud800")
    with pytest.raises(ConfigurationError, match="idle_timeout"):
        RedisSessionStore(client, idle_timeout=0)


def test_importing_the_module_does_not_import_redis() -> None:
    code = (
        "import sys, scalekit.sessions, scalekit.sessions._redis; "
        "assert 'redis' not in sys.modules, 'redis imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- key layout and native TTLs ------------------------------------------------------


def test_one_string_key_per_session_with_a_packed_record(
    client: Any, prefix: str, make_store: MakeStore, clock: FakeClock
) -> None:
    store = make_store()
    session = store.create({"user": 7, "name": "Zoë"})
    assert client.type(prefix + session.id) == b"string"
    assert list(client.scan_iter(match=prefix + "*")) == [(prefix + session.id).encode()]
    record, _ = raw_record(client, prefix, session.id)
    assert record == Record('{"user":7,"name":"Zoë"}'.encode(), 1, START, START)
    raw = client.get(prefix + session.id)
    assert raw == pack(record, raw[28:36])  # the id of the write that stored it
    assert raw[28:36] != bytes(8)
    assert raw[36:60] == bytes(24)  # no earlier writes


def test_native_ttl_is_the_expiry_minus_now(
    client: Any, prefix: str, make_store: MakeStore
) -> None:
    both = make_store(idle_timeout=1800, absolute_timeout=43200).create({"a": 1})
    only_absolute = make_store(idle_timeout=None, absolute_timeout=100).create({"a": 1})
    neither = make_store(idle_timeout=None, absolute_timeout=None).create({"a": 1})
    assert 1_799_000 < raw_record(client, prefix, both.id)[1] <= 1_800_000
    assert 99_000 < raw_record(client, prefix, only_absolute.id)[1] <= 100_000
    assert raw_record(client, prefix, neither.id)[1] == -1  # no TTL


def test_ttl_is_refreshed_by_save_and_touch_and_capped_by_the_absolute_timeout(
    client: Any, prefix: str, make_store: MakeStore, clock: FakeClock
) -> None:
    store = make_store(idle_timeout=600, absolute_timeout=1000)
    session = store.create({"n": 0})
    clock.advance(300)
    client.pexpire(prefix + session.id, 5_000)  # so a refresh is visible
    loaded = store.load(session.id)
    assert loaded is not None
    loaded["n"] = 1
    store.save(loaded)
    record, pttl = raw_record(client, prefix, session.id)
    assert (record.version, record.accessed_at) == (2, START + 300)
    assert 599_000 < pttl <= 600_000  # idle: 600 s from now
    clock.advance(300)
    client.pexpire(prefix + session.id, 5_000)
    assert store.touch(session.id)
    record, pttl = raw_record(client, prefix, session.id)
    assert (record.version, record.accessed_at) == (2, START + 600)
    assert 399_000 < pttl <= 400_000  # absolute: 1000 s after creation, 400 s from now
    clock.advance(300)
    loaded = store.load(session.id)
    assert loaded is not None
    store.save(loaded)  # unchanged: a touch
    _, pttl = raw_record(client, prefix, session.id)
    assert 99_000 < pttl <= 100_000


def test_ttl_ms() -> None:
    assert ttl_ms(START + 1.5, START) == 1500
    assert ttl_ms(START + 0.0001, START) == 1  # rounded up
    assert ttl_ms(START, START) == 1  # expired: at least 1 ms
    assert ttl_ms(START - 60, START) == 1
    assert ttl_ms(float("inf"), START) == 0  # no TTL
    assert ttl_ms(1e300, 0.0) == 10**15  # capped


def test_a_session_expired_by_the_clock_loads_as_none_while_its_key_lives(
    client: Any, prefix: str, make_store: MakeStore, clock: FakeClock
) -> None:
    store = make_store(idle_timeout=60, absolute_timeout=None)
    session = store.create({"a": 1})
    before = client.get(prefix + session.id)
    clock.advance(61)
    assert client.exists(prefix + session.id)  # Redis keeps its own (real) time
    assert store.load(session.id) is None
    assert store.touch(session.id) is False
    assert client.get(prefix + session.id) == before  # the failed touch changed nothing
    assert store.purge_expired() == 0  # Redis purges by itself


def test_a_save_past_the_expiry_gives_the_key_a_ttl_of_1_ms(
    client: Any, prefix: str, make_store: MakeStore, clock: FakeClock
) -> None:
    store = make_store(idle_timeout=None, absolute_timeout=10)
    session = store.create({"a": 1})
    clock.advance(20)
    session["a"] = 2
    store.save(session)  # as MemorySessionStore: stored, already expired
    assert store.load(session.id) is None
    deadline = time.monotonic() + 2
    while client.exists(prefix + session.id) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert not client.exists(prefix + session.id)


def test_touch_sets_accessed_at_in_place_and_leaves_the_data(
    client: Any, prefix: str, make_store: MakeStore, clock: FakeClock
) -> None:
    store = make_store()
    session = store.create({"cart": ["book"] * 50})
    before = client.get(prefix + session.id)
    clock.advance(12.345)
    assert store.touch(session.id)
    after = client.get(prefix + session.id)
    assert after[:20] == before[:20]
    assert struct.unpack(">d", after[20:28]) == (START + 12.345,)
    assert after[28:] == before[28:]


def test_timestamps_are_stored_exactly(client: Any, prefix: str, redis_url: str) -> None:
    store = RedisSessionStore(client, prefix=prefix)  # time.time
    session = store.create({"a": 1})
    loaded = store.load(session.id)
    assert loaded is not None
    assert (loaded.created_at, loaded.accessed_at) == (session.created_at, session.accessed_at)
    assert loaded.expires_at == session.expires_at


def test_a_hash_tag_prefix_keeps_a_rotation_in_one_cluster_slot(
    redis_url: str, clock: FakeClock
) -> None:
    from redis.crc import key_slot

    prefix = "{" + unique_prefix() + "}:"
    client = redis.Redis.from_url(redis_url)
    try:
        store = RedisSessionStore(client, prefix=prefix, clock=clock)
        session = store.create({"a": 1})
        old_key = (prefix + session.id).encode()
        rotated = store.rotate(session)
        new_key = (prefix + rotated.id).encode()
        assert key_slot(old_key) == key_slot(new_key)
        assert client.exists(new_key)
        assert not client.exists(old_key)
    finally:
        delete_keys(client, prefix)
        client.close()


# -- round trips ---------------------------------------------------------------------


class CountingConnection(redis.Connection):  # type: ignore[misc]
    """Records the name of every command sent: one command, one round trip."""

    sent: list[str]  # shared by the connections of one pool

    def send_command(self, *args: Any, **kwargs: Any) -> None:
        self.sent.append(str(args[0]).upper())
        super().send_command(*args, **kwargs)


@pytest.fixture
def counted(redis_url: str, prefix: str, clock: FakeClock) -> Iterator[tuple[Any, list[str]]]:
    sent: list[str] = []
    connection_class = type("Counting", (CountingConnection,), {"sent": sent})
    client = redis.Redis.from_url(redis_url, connection_class=connection_class)
    store = RedisSessionStore(client, prefix=prefix, clock=clock)
    warm = store.create({"warm": 1})  # connect, and load the scripts on the server
    warm["warm"] = 2
    store.save(warm)
    store.touch(warm.id)
    store._touch(warm.id, START, START + 60)
    store.rotate(warm)
    sent.clear()
    yield store, sent
    delete_keys(client, prefix)
    client.close()


def test_a_request_costs_two_round_trips(
    counted: tuple[RedisSessionStore, list[str]], clock: FakeClock
) -> None:
    store, sent = counted
    session = store.create({"cart": [], "user": 7})
    assert sent == ["SET"]

    sent.clear()  # a request that changes the session: load, then save
    loaded = store.load(session.id)
    assert loaded is not None
    loaded["cart"].append("book")
    store.save(loaded)
    assert sent == ["GET", "EVALSHA"]

    sent.clear()  # a request that only reads it: load, then save (a touch)
    clock.advance(5)
    loaded = store.load(session.id)
    assert loaded is not None
    store.save(loaded)
    assert sent == ["GET", "EVALSHA"]

    sent.clear()  # the generic touch would read first
    assert run(_core.touch(store.settings, session.id, False), store)
    assert sent == ["GET", "EVALSHA"]
    sent.clear()
    assert store.touch(session.id)
    assert sent == ["EVALSHA"]

    sent.clear()
    loaded = store.load(session.id)
    assert loaded is not None
    sent.clear()
    rotated = store.rotate(loaded)
    assert sent == ["EVALSHA"]
    sent.clear()
    store.delete(rotated.id)
    assert sent == ["DEL"]

    sent.clear()  # no round trip at all
    assert store.purge_expired() == 0
    assert store.load("not an id") is None
    assert store.touch("not an id") is False
    store.delete("not an id")
    store.save(store.blank())
    assert sent == []
    blank = store.blank()
    blank["visits"] = 1
    store.save(blank)
    assert sent == ["SET"]


def test_a_lost_race_costs_a_read_and_a_retry(
    counted: tuple[RedisSessionStore, list[str]],
) -> None:
    store, sent = counted
    session = store.create({})
    first, second = store.load(session.id), store.load(session.id)
    assert first is not None
    assert second is not None
    first["a"] = 1
    second["b"] = 1
    store.save(first)
    sent.clear()
    store.save(second)
    assert sent == ["EVALSHA", "GET", "EVALSHA"]


def test_scripts_are_loaded_again_after_a_script_flush(client: Any, make_store: MakeStore) -> None:
    store = make_store()
    session = store.create({"a": 1})
    session["a"] = 2
    store.save(session)
    client.script_flush()
    session["a"] = 3
    store.save(session)  # NOSCRIPT: SCRIPT LOAD, then EVALSHA again
    assert store.touch(session.id)
    loaded = store.load(session.id)
    assert loaded is not None
    assert loaded.to_dict() == {"a": 3}


# -- lost updates ----------------------------------------------------------------------


@pytest.mark.slow
def test_32_threads_lose_no_update(client: Any, make_store: MakeStore) -> None:
    """tests/sessions/stress.py on threads (as a threaded WSGI server runs requests)."""
    check(*hammer(make_store()))


@pytest.mark.slow
def test_32_tasks_lose_no_update(redis_url: str, prefix: str, clock: FakeClock) -> None:
    """The same with 32 asyncio tasks on one AsyncRedisSessionStore."""

    async def main() -> tuple[Session, list[str | None]]:
        client = redis_asyncio.Redis.from_url(redis_url)
        try:
            return await hammer_async(AsyncRedisSessionStore(client, prefix=prefix, clock=clock))
        finally:
            await client.aclose()

    try:
        check(*asyncio.run(main()))
    finally:
        cleaner = redis.Redis.from_url(redis_url)
        delete_keys(cleaner, prefix)
        cleaner.close()


def test_two_servers_share_sessions(redis_url: str, prefix: str, clock: FakeClock) -> None:
    """Two web servers, each with its own client: what one stores, the other sees."""
    clients = [redis.Redis.from_url(redis_url) for _ in range(2)]
    try:
        one, two = (RedisSessionStore(c, prefix=prefix, clock=clock) for c in clients)
        session = one.create({"cart": []})
        on_two = two.load(session.id)
        assert on_two is not None
        on_two["user"] = "ada"
        rotated = two.rotate(on_two)  # logging in on server two
        assert one.load(session.id) is None
        on_one = one.load(rotated.id)
        assert on_one is not None
        assert on_one.to_dict() == {"cart": [], "user": "ada"}
    finally:
        delete_keys(clients[0], prefix)
        for c in clients:
            c.close()


def test_rotate_takes_another_id_when_the_new_one_is_taken(
    make_store: MakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store()
    taken = store.create({"other": True})
    session = store.create({"mine": True})
    old_id = session.id
    fresh = iter([taken.id, new_id()])
    monkeypatch.setattr("scalekit.sessions._core.new_id", lambda: next(fresh))
    rotated = store.rotate(session)
    assert rotated.id not in (taken.id, old_id)
    assert store.load(old_id) is None
    other = store.load(taken.id)
    assert other is not None
    assert other.to_dict() == {"other": True}  # not overwritten


# -- crafted records -------------------------------------------------------------------

EXECUTED: list[str] = []


def mark(what: str) -> None:
    EXECUTED.append(what)


class Exploit:
    """Unpickling this runs code: it records that it did."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (mark, ("pwned",))


def test_the_exploit_would_run_if_unpickled() -> None:
    pickle.loads(pickle.dumps(Exploit()))
    assert EXECUTED == ["pwned"]
    EXECUTED.clear()


def _with_header(data: bytes) -> bytes:
    return pack(Record(data, 1, START, START))


@pytest.mark.parametrize(
    ("stored", "touch_raises"),
    [
        (pickle.dumps(Exploit()), True),  # a pickle in place of the record
        (pickle.dumps({"user": "admin"}), True),
        (_with_header(pickle.dumps(Exploit())), False),  # a pickle as the data
        (_with_header(b"[1, 2]"), False),  # JSON, but not an object
        (_with_header(b"\xff\xfe not utf-8"), False),
        (MAGIC + b"\x00" * 10, True),  # a cut header
        (b"", True),
    ],
)
def test_a_crafted_record_is_rejected_never_executed(
    client: Any,
    prefix: str,
    make_store: MakeStore,
    monkeypatch: pytest.MonkeyPatch,
    stored: bytes,
    touch_raises: bool,
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:  # pragma: no cover - the test fails
        raise AssertionError("pickle was used")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    store = make_store()
    session_id = new_id()
    client.set(prefix + session_id, stored)
    with pytest.raises(SessionCorrupted):
        store.load(session_id)
    if touch_raises:
        with pytest.raises(SessionCorrupted):
            store.touch(session_id)
    else:
        store.touch(session_id)  # the header is ours: the data is not looked at
    assert EXECUTED == []


def test_a_key_of_another_redis_type_is_corrupted(
    client: Any, prefix: str, make_store: MakeStore
) -> None:
    store = make_store()
    session_id = new_id()
    client.hset(prefix + session_id, "data", "x")
    with pytest.raises(SessionCorrupted, match="another Redis type"):
        store.load(session_id)
    with pytest.raises(SessionCorrupted):
        store.touch(session_id)


# -- redis-py failures -----------------------------------------------------------------


def _down_client(cls: Any = None) -> Any:
    """A client of a port nobody listens on, that does not retry."""
    if cls is None:
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        return redis.Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), 0))
    from redis.asyncio.retry import Retry as AsyncRetry
    from redis.backoff import NoBackoff

    return cls(host="127.0.0.1", port=1, retry=AsyncRetry(NoBackoff(), 0))


def test_a_redis_failure_is_a_backend_error(make_store: MakeStore, clock: FakeClock) -> None:
    session = make_store().create({"a": 1})  # a real session, saved through a dead server
    session["a"] = 2
    down = RedisSessionStore(_down_client(), clock=clock)
    calls: list[tuple[str, Callable[[], Any]]] = [
        ("create", lambda: down.create({"a": 1})),
        ("load", lambda: down.load(session.id)),
        ("save", lambda: down.save(session)),
        ("touch", lambda: down.touch(session.id)),
        ("rotate", lambda: down.rotate(session)),
        ("delete", lambda: down.delete(session.id)),
        ("touch", lambda: down._touch(session.id, START, START + 1)),
    ]
    for what, call in calls:
        with pytest.raises(BackendError) as raised:
            call()
        error = raised.value
        assert error.backend == "redis"
        assert isinstance(error.__cause__, redis.ConnectionError)
        assert str(error).startswith(f"redis: {what} of session ")
        assert session.id not in str(error)  # an id is a credential: never logged whole
    assert down.purge_expired() == 0


def test_an_async_redis_failure_is_a_backend_error(make_store: MakeStore) -> None:
    session = make_store().create({"a": 1})

    async def main() -> None:
        client = _down_client(cls=redis_asyncio.Redis)
        down = AsyncRedisSessionStore(client)
        try:
            for call in (
                lambda: down.create(),
                lambda: down.load(session.id),
                lambda: down.touch(session.id),
                lambda: down.rotate(session),
                lambda: down.delete(session.id),
            ):
                with pytest.raises(BackendError) as raised:
                    await call()
                assert isinstance(raised.value.__cause__, redis.ConnectionError)
                assert session.id not in str(raised.value)
        finally:
            await client.aclose()

    asyncio.run(main())


# -- the async store ---------------------------------------------------------------------


def test_the_async_store_writes_what_the_sync_store_reads(
    client: Any, redis_url: str, prefix: str, clock: FakeClock
) -> None:
    sync = RedisSessionStore(client, prefix=prefix, clock=clock, idle_timeout=60)

    async def main() -> str:
        async_client = redis_asyncio.Redis.from_url(redis_url)
        try:
            store = AsyncRedisSessionStore(
                async_client, prefix=prefix, clock=clock, idle_timeout=60
            )
            session = await store.create({"a": 1})
            session["b"] = [1, 2]
            await store.save(session)
            clock.advance(30)
            assert await store.touch(session.id)
            assert await store.touch(new_id()) is False
            async_client_stored = await async_client.get(prefix + session.id)
            assert async_client_stored == client.get(prefix + session.id)
            return session.id
        finally:
            await async_client.aclose()

    session_id = asyncio.run(main())
    record, pttl = raw_record(client, prefix, session_id)
    assert (record.version, record.accessed_at) == (2, START + 30)
    assert 59_000 < pttl <= 60_000
    loaded = sync.load(session_id)
    assert loaded is not None
    assert loaded.to_dict() == {"a": 1, "b": [1, 2]}


# -- step by step against MemorySessionStore ------------------------------------------------

VALUES = st.integers(-3, 3) | st.text(max_size=3) | st.lists(st.booleans(), max_size=2)
TIMEOUTS = st.sampled_from([(100.0, 250.0), (100.0, None), (None, 250.0), (None, None)])


class AgreesWithMemory(RuleBasedStateMachine):
    """A RedisSessionStore and a MemorySessionStore on one FakeClock get the same
    requests; every session loads the same from both, expiry included."""

    def __init__(self) -> None:
        super().__init__()
        from tests.services import REDIS_URL

        self.clock = FakeClock(START)
        self.client = redis.Redis.from_url(REDIS_URL)
        self.prefix = unique_prefix()
        self.pairs: list[tuple[str, str]] = []  # (redis id, memory id)
        self.redis: RedisSessionStore | None = None
        self.memory: MemorySessionStore | None = None

    @precondition(lambda self: self.redis is None)
    @rule(timeouts=TIMEOUTS)
    def open(self, timeouts: tuple[float | None, float | None]) -> None:
        idle, absolute = timeouts
        kwargs: dict[str, Any] = {
            "clock": self.clock,
            "idle_timeout": idle,
            "absolute_timeout": absolute,
        }
        self.redis = RedisSessionStore(self.client, prefix=self.prefix, **kwargs)
        self.memory = MemorySessionStore(**kwargs)

    def stores(self) -> tuple[RedisSessionStore, MemorySessionStore]:
        assert self.redis is not None
        assert self.memory is not None
        return self.redis, self.memory

    @precondition(lambda self: self.redis is not None)
    @rule(data=st.dictionaries(st.sampled_from("abc"), VALUES, max_size=3))
    def create(self, data: dict[str, Any]) -> None:
        on_redis, on_memory = self.stores()
        self.pairs.append((on_redis.create(data).id, on_memory.create(data).id))

    def _both(self, index: int, act: Callable[[Any, Session], Any]) -> None:
        pair = self.pairs[index % len(self.pairs)]
        results = []
        for store, session_id in zip(self.stores(), pair, strict=True):
            loaded = store.load(session_id)
            results.append(None if loaded is None else act(store, loaded))
        assert results[0] == results[1]

    @precondition(lambda self: self.pairs and self.redis is not None)
    @rule(index=st.integers(0, 99), key=st.sampled_from("abcd"), value=st.none() | VALUES)
    def change(self, index: int, key: str, value: Any) -> None:
        def act(store: Any, loaded: Session) -> Any:
            if value is None:
                loaded.pop(key, None)
            else:
                loaded[key] = value
            store.save(loaded)
            return loaded.version

        self._both(index, act)

    @precondition(lambda self: self.pairs and self.redis is not None)
    @rule(index=st.integers(0, 99))
    def touch(self, index: int) -> None:
        pair = self.pairs[index % len(self.pairs)]
        on_redis, on_memory = self.stores()
        assert on_redis.touch(pair[0]) == on_memory.touch(pair[1])

    @precondition(lambda self: self.pairs and self.redis is not None)
    @rule(index=st.integers(0, 99))
    def rotate(self, index: int) -> None:
        i = index % len(self.pairs)
        new_ids = []
        for store, session_id in zip(self.stores(), self.pairs[i], strict=True):
            loaded = store.load(session_id)
            new_ids.append(session_id if loaded is None else store.rotate(loaded).id)
        self.pairs.append((new_ids[0], new_ids[1]))

    @precondition(lambda self: self.pairs and self.redis is not None)
    @rule(index=st.integers(0, 99))
    def delete(self, index: int) -> None:
        pair = self.pairs[index % len(self.pairs)]
        for store, session_id in zip(self.stores(), pair, strict=True):
            store.delete(session_id)

    @rule(seconds=st.sampled_from([0.5, 30.0, 99.0, 101.0, 200.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @invariant()
    def every_session_loads_the_same(self) -> None:
        if self.redis is None:
            return
        self.memory._check()  # type: ignore[union-attr]
        for redis_id, memory_id in self.pairs:
            on_redis, on_memory = self.redis.load(redis_id), self.memory.load(memory_id)  # type: ignore[union-attr]
            if on_memory is None:
                assert on_redis is None
                continue
            assert on_redis is not None
            assert on_redis.to_dict() == on_memory.to_dict()
            assert on_redis.version == on_memory.version
            assert on_redis.created_at == on_memory.created_at
            assert on_redis.accessed_at == on_memory.accessed_at
            assert on_redis.expires_at == on_memory.expires_at

    def teardown(self) -> None:
        delete_keys(self.client, self.prefix)
        self.client.close()


@pytest.mark.usefixtures("redis_url")
def test_agrees_with_the_memory_store_step_by_step() -> None:
    run = AgreesWithMemory.TestCase()
    run.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)
    run.runTest()


# -- retries: a script that runs twice stores once ------------------------------------------


class LosingConnection(redis.Connection):  # type: ignore[misc]
    """Loses the reply of the next command named in ``lose``, after the server ran
    it: redis-py then reconnects and sends the command again (its ``retry``)."""

    lose: list[str]  # shared by the connections of one pool
    last = ""

    def send_command(self, *args: Any, **kwargs: Any) -> None:
        self.last = str(args[0]).upper()
        super().send_command(*args, **kwargs)

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        response = super().read_response(*args, **kwargs)
        if self.last in self.lose:
            self.lose.remove(self.last)
            raise redis.ConnectionError("the reply was lost (test)")
        return response


@pytest.fixture
def losing(redis_url: str, prefix: str, clock: FakeClock) -> Iterator[tuple[Any, list[str]]]:
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    lose: list[str] = []
    connection_class = type("Losing", (LosingConnection,), {"lose": lose})
    client = redis.Redis.from_url(
        redis_url, connection_class=connection_class, retry=Retry(NoBackoff(), 3)
    )
    store = RedisSessionStore(client, prefix=prefix, clock=clock)
    yield store, lose
    delete_keys(client, prefix)
    client.close()


def test_a_save_sent_twice_is_stored_once(
    losing: tuple[RedisSessionStore, list[str]], client: Any, prefix: str
) -> None:
    store, lose = losing
    session = store.create({"n": 5})
    loaded = store.load(session.id)
    assert loaded is not None
    loaded["n"] = 6
    lose.append("EVALSHA")  # the script runs, its reply is lost, redis-py sends it again
    store.save(loaded)  # the second run finds its op id: success, nothing stored again
    assert lose == []
    assert loaded.version == 2
    record, _ = raw_record(client, prefix, session.id)
    assert record.version == 2  # the first release stored it twice (version 3)
    again = store.load(session.id)
    assert again is not None
    assert again.to_dict() == {"n": 6}


def test_an_increment_sent_twice_counts_once(
    losing: tuple[RedisSessionStore, list[str]], client: Any, prefix: str
) -> None:
    store, lose = losing
    session = store.create({"n": 0})
    for _ in range(3):
        loaded = store.load(session.id)
        assert loaded is not None
        loaded.increment("n")
        lose.append("EVALSHA")
        store.save(loaded)
    final = store.load(session.id)
    assert final is not None
    assert (final["n"], final.version) == (3, 4)


def test_a_rotation_sent_twice_succeeds_once(
    losing: tuple[RedisSessionStore, list[str]], client: Any, prefix: str
) -> None:
    store, lose = losing
    session = store.create({"user": "ada"})
    old_id = session.id
    lose.append("EVALSHA")
    rotated = store.rotate(session)  # the first release: SessionConflict (the old id is gone)
    assert store.load(old_id) is None
    again = store.load(rotated.id)
    assert again is not None
    assert (again.to_dict(), again.version) == ({"user": "ada"}, 2)
    assert list(client.scan_iter(match=prefix + "*")) == [(prefix + rotated.id).encode()]


def test_a_create_sent_twice_stores_one_session(
    losing: tuple[RedisSessionStore, list[str]], client: Any, prefix: str
) -> None:
    store, lose = losing
    lose.append("SET")
    session = store.create({"a": 1})  # the first release: a second session under a new id
    assert list(client.scan_iter(match=prefix + "*")) == [(prefix + session.id).encode()]
    blank = store.blank()
    blank["b"] = 2
    first_id = blank.id
    lose.append("SET")
    store.save(blank)
    assert blank.id == first_id
    assert len(list(client.scan_iter(match=prefix + "*"))) == 2


def test_a_touch_sent_twice_moves_nothing_back(
    losing: tuple[RedisSessionStore, list[str]], client: Any, prefix: str, clock: FakeClock
) -> None:
    store, _ = losing
    session = store.create({"a": 1})
    clock.advance(10)
    assert store._touch_live(session.id, START + 10)
    assert store._touch_live(session.id, START + 5)  # a late second run of an older touch
    assert store._touch(session.id, START + 5, START + 60)
    record, _ = raw_record(client, prefix, session.id)
    assert record.accessed_at == START + 10


def test_a_replace_run_again_after_another_write_is_still_a_no_op(
    make_store: MakeStore, client: Any, prefix: str
) -> None:
    """The op ids of the last 4 writes are kept: a late second run of a save finds
    its id even after other requests saved."""
    store = make_store()
    session = store.create({"n": 0})
    record = Record(b'{"n":1}', 2, START, START)
    assert store._replace(session.id, record, START + 60, 1, b"first-op")
    for version in range(2, 5):  # three other writes
        other = Record(b'{"n":%d}' % version, version + 1, START, START)
        assert store._replace(session.id, other, START + 60, version, b"other-%02d" % version)
    assert store._replace(session.id, record, START + 60, 1, b"first-op")  # True, no change
    assert not store._replace(session.id, record, START + 60, 1, b"neverran")
    stored, _ = raw_record(client, prefix, session.id)
    assert (stored.version, stored.data) == (5, b'{"n":4}')
    assert store._rotate(session.id, new_id(), record, START + 60, 5, b"rotate-1")
    assert store._rotate(session.id, new_id(), record, START + 60, 5, b"rotate-2") is False


def test_records_of_the_first_release_still_load_and_save(
    make_store: MakeStore, client: Any, prefix: str
) -> None:
    store = make_store()
    session_id = new_id()
    client.set(prefix + session_id, struct.pack(">4sQdd", b"SKS1", 3, START, START) + b'{"a":1}')
    loaded = store.load(session_id)
    assert loaded is not None
    assert (loaded.to_dict(), loaded.version) == ({"a": 1}, 3)
    assert store.touch(session_id)
    loaded["a"] = 2
    store.save(loaded)
    record, _ = raw_record(client, prefix, session_id)
    assert (record.version, record.data) == (4, b'{"a":2}')
    assert client.get(prefix + session_id)[:4] == MAGIC


def test_the_async_store_is_idempotent_too(redis_url: str, prefix: str, clock: FakeClock) -> None:
    async def main() -> None:
        client = redis_asyncio.Redis.from_url(redis_url)
        try:
            store = AsyncRedisSessionStore(client, prefix=prefix, clock=clock)
            session = await store.create({"n": 0})
            record = Record(b'{"n":1}', 2, START, START)
            assert await store._replace(session.id, record, START + 60, 1, b"op-00001")
            assert await store._replace(session.id, record, START + 60, 1, b"op-00001")
            assert not await store._replace(session.id, record, START + 60, 1, b"op-00002")
            loaded = await store.load(session.id)
            assert loaded is not None
            assert (loaded.version, loaded.to_dict()) == (2, {"n": 1})
            fresh = new_id()
            assert (
                await store._rotate(session.id, fresh, record, START + 60, 1, b"op-00003") is False
            )
            moved = Record(b'{"n":1}', 3, START, START)
            assert await store._rotate(session.id, fresh, moved, START + 60, 2, b"op-00003")
            assert await store._rotate(session.id, fresh, moved, START + 60, 2, b"op-00003")
            assert await store._insert(fresh, moved, START + 60, b"op-00003")  # its own write
            assert not await store._insert(fresh, moved, START + 60, b"op-00004")
        finally:
            await client.aclose()

    try:
        asyncio.run(main())
    finally:
        cleaner = redis.Redis.from_url(redis_url)
        delete_keys(cleaner, prefix)
        cleaner.close()
