"""SQLiteCache: the Store contract, a state machine against a dict with deadlines,
what only a file shows (prefixes sharing a table, sweeping, wrapped errors, a
foreign table), and hostile arguments on every public parameter."""

from __future__ import annotations

import math
import os
import sqlite3
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from scalekit import errors
from scalekit.cache import BYTES, SQLiteCache, StoreStats
from scalekit.errors import (
    ArgumentTypeError,
    BackendError,
    ClosedError,
    ConfigurationError,
    IncompatibleStore,
)
from scalekit.protocols import Store
from scalekit.testing import FakeClock, check_store
from tests.test_hostile_arguments import (
    BAD_COUNT,
    BAD_KEYS,
    BAD_SECONDS,
    BAD_STORE_KEY,
    SET_IF_CASES,
    STORE_CASES,
    SURROGATE,
    value_id,
)


@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / "cache.db")


@pytest.fixture
def cache(path: str) -> Iterator[SQLiteCache[Any]]:
    with SQLiteCache(path) as store:
        yield store


def _rows(where: str | SQLiteCache[Any]) -> list[tuple[Any, ...]]:
    """Every row of the file's table (through the cache's own pool, when given one)."""
    sql = "SELECT key, value, expires FROM scalekit_cache"
    if isinstance(where, SQLiteCache):
        return sorted(where._run("reading", lambda conn: conn.execute(sql).fetchall()))
    conn = sqlite3.connect(where)
    try:
        return sorted(conn.execute(sql).fetchall())
    finally:
        conn.close()


# -- the contract ----------------------------------------------------------------------


def test_sqlite_cache_keeps_the_store_contract(cache: SQLiteCache[Any]) -> None:
    assert isinstance(cache, Store)
    check_store(lambda: cache)
    cache._check()


def test_a_store_that_overwrites_on_add_fails_the_contract(path: str) -> None:
    class Overwriting(SQLiteCache[Any]):
        def add(self, key: str, value: Any, /, *, ttl: Any = None) -> bool:
            self.set(key, value, ttl=ttl)
            return True

    with Overwriting(path) as store, pytest.raises(AssertionError, match="add_only_if_absent"):
        check_store(lambda: store)


# -- a state machine against a dict with deadlines ---------------------------------------

KEYS = st.sampled_from(["a", "b", "", SURROGATE, "é 日本"])
VALUES = st.one_of(st.integers(-5, 5), st.text(max_size=3), st.lists(st.integers(0, 3), max_size=2))
TTLS = st.sampled_from([None, 0.5, 1.0, 2.0, math.inf])


_MACHINE_DIR = tempfile.TemporaryDirectory()  # removed when the interpreter exits


class SQLiteCacheMachine(RuleBasedStateMachine):
    """SQLiteCache, step by step, against ``key -> (value, deadline)``: a key is
    live while its deadline is None or after the fake clock."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock(1_000_000.0)
        # one file for every example (creating one costs tens of ms), emptied first
        path = os.path.join(_MACHINE_DIR.name, "m.db")
        self.cache: SQLiteCache[Any] = SQLiteCache(path, prefix="m:", ttl=1.5, timer=self.clock)
        # another prefix in the same table: never seen, never touched by this one
        self.other: SQLiteCache[Any] = SQLiteCache(path, prefix="n:", timer=self.clock)
        self.other.set("a", "other")
        self.cache.clear()
        self.model: dict[str, tuple[Any, float | None]] = {}
        self.hits = self.misses = self.writes = self.deletes = 0

    def teardown(self) -> None:
        self.cache.close()
        self.other.close()

    def _live(self, key: str) -> bool:
        entry = self.model.get(key)
        return entry is not None and (entry[1] is None or entry[1] > self.clock())

    def _deadline(self, ttl: float | None) -> float | None:
        seconds = 1.5 if ttl is None else ttl
        return None if seconds == math.inf else self.clock() + seconds

    @rule(key=KEYS, value=VALUES, ttl=TTLS)
    def set(self, key: str, value: Any, ttl: float | None) -> None:
        self.cache.set(key, value, ttl=ttl)
        self.model[key] = (value, self._deadline(ttl))
        self.writes += 1

    @rule(key=KEYS, value=VALUES, ttl=TTLS)
    def add(self, key: str, value: Any, ttl: float | None) -> None:
        expected = not self._live(key)
        assert self.cache.add(key, value, ttl=ttl) is expected
        if expected:
            self.model[key] = (value, self._deadline(ttl))
            self.writes += 1

    @rule(items=st.dictionaries(KEYS, VALUES, max_size=3), ttl=TTLS)
    def set_many(self, items: dict[str, Any], ttl: float | None) -> None:
        self.cache.set_many(items, ttl=ttl)
        for key, value in items.items():
            self.model[key] = (value, self._deadline(ttl))
        self.writes += len(items)

    @rule(key=KEYS)
    def get(self, key: str) -> None:
        live = self._live(key)
        got = self.cache.get(key, "missing")
        assert got == (self.model[key][0] if live else "missing")
        self.hits, self.misses = self.hits + live, self.misses + (not live)

    @rule(key=KEYS)
    def get_with_ttl(self, key: str) -> None:
        value, left = self.cache.get_with_ttl(key, "missing")
        if self._live(key):
            stored, deadline = self.model[key]
            assert value == stored
            assert left == (None if deadline is None else deadline - self.clock())
            self.hits += 1
        else:
            assert (value, left) == ("missing", None)
            self.misses += 1

    @rule(keys=st.lists(KEYS, max_size=4))
    def get_many(self, keys: list[str]) -> None:
        wanted = dict.fromkeys(keys)
        expected = {key: self.model[key][0] for key in wanted if self._live(key)}
        assert self.cache.get_many(keys) == expected
        self.hits += len(expected)
        self.misses += len(wanted) - len(expected)

    @rule(key=KEYS)
    def delete(self, key: str) -> None:
        assert self.cache.delete(key) is self._live(key)
        self.model.pop(key, None)
        self.deletes += 1

    @rule(key=KEYS)
    def ttl_of(self, key: str) -> None:
        if self._live(key):
            deadline = self.model[key][1]
            expected = None if deadline is None else deadline - self.clock()
            assert self.cache.ttl_of(key) == expected
        else:
            with pytest.raises(KeyError):
                self.cache.ttl_of(key)

    @rule(seconds=st.sampled_from([0.25, 0.5, 1.0, 1.5]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(limit=st.integers(1, 3))
    def sweep(self, limit: int) -> None:
        now = self.clock()
        before = _rows(self.cache)
        expired = sorted(e for _, _, e in before if e is not None and e <= now)
        assert self.cache.sweep(limit) == min(limit, len(expired))
        after = _rows(self.cache)
        assert len(after) == len(before) - min(limit, len(expired))
        left = sorted(e for _, _, e in after if e is not None and e <= now)
        assert left == expired[min(limit, len(expired)) :]  # the longest expired went first

    @precondition(lambda self: self.model)
    @rule()
    def clear(self) -> None:
        self.cache.clear()
        self.model.clear()

    @rule()
    def keys(self) -> None:
        expected = sorted(k for k in self.model if self._live(k))
        assert sorted(self.cache.keys(count=2)) == expected

    @invariant()
    def consistent(self) -> None:
        self.cache._check()
        assert self.cache.stats() == StoreStats(
            self.hits, self.misses, self.writes, self.deletes, 0
        )
        assert self.other.get("a") == "other"
        # no row of the model's is lost: every live key is stored
        stored = _stored(self.cache)
        for key in self.model:
            if self._live(key):
                assert key in stored, key


def _stored(cache: SQLiteCache[Any]) -> set[str]:
    """The keys under the cache's prefix that have a row, expired or not."""
    prefix = cache.prefix.encode("utf-8", "surrogatepass")
    return {
        bytes(name[len(prefix) :]).decode("utf-8", "surrogatepass")
        for name, _, _ in _rows(cache)
        if name.startswith(prefix)
    }


TestSQLiteCacheMachine = SQLiteCacheMachine.TestCase
# every step does I/O: at most 100 examples even in CI's profile (about 5 s on 2 cores)
TestSQLiteCacheMachine.settings = settings(
    max_examples=min(settings.default.max_examples, 100),
    stateful_step_count=25,
    suppress_health_check=[HealthCheck.too_slow],
)


# -- what a file shows ----------------------------------------------------------------


def test_prefixes_share_a_table_and_keep_apart(path: str) -> None:
    with SQLiteCache(path, prefix="users:") as users, SQLiteCache(path, prefix="u") as u:
        users.set("1", "ada")
        u.set("sers:2", "bob")  # the same bytes as users:2, deliberately
        u.set("x", 1)
        assert users.get("2") == "bob"  # one table, names are prefix + key
        assert sorted(users.keys()) == ["1", "2"]
        assert sorted(u.keys()) == ["sers:1", "sers:2", "x"]
        users.clear()
        assert sorted(u.keys()) == ["x"]
    with SQLiteCache(path, prefix="\xff") as high, SQLiteCache(path, prefix="") as every:
        high.set("k", 1)
        assert list(high.keys()) == ["k"]
        assert sorted(every.keys()) == ["ux", "\xffk"]


def test_keys_pages_through_every_live_key(path: str) -> None:
    clock = FakeClock(5000.0)
    with SQLiteCache(path, prefix="p:", timer=clock) as cache:
        cache.set_many({f"k{i:03}": i for i in range(25)})
        cache.set_many({f"e{i}": i for i in range(5)}, ttl=1)
        assert len(list(cache.keys(count=4))) == 30
        clock.advance(1)
        assert list(cache.keys(count=4)) == [f"k{i:03}" for i in range(25)]


def test_expired_rows_are_swept_in_bounded_batches_by_writes(path: str) -> None:
    clock = FakeClock(5000.0)
    with SQLiteCache(path, timer=clock) as cache:
        cache.set_many({f"k{i}": i for i in range(600)}, ttl=1)
        clock.advance(2)
        assert len(_rows(path)) == 600  # reads never delete, and no sweep yet
        assert cache.get_many([f"k{i}" for i in range(600)]) == {}
        assert cache.sweep(100) == 100
        assert len(_rows(path)) == 500
        for i in range(63):  # the 64th write call: a sweep
            cache.set("live", i)
        assert len(_rows(path)) == 501 - 256
        assert cache.get("live") == 62


def test_ttls_are_wall_clock_deadlines_in_the_file(path: str) -> None:
    clock = FakeClock(1_700_000_000.0)
    with SQLiteCache(path, timer=clock, ttl=30) as cache:
        cache.set("a", 1)
        cache.set("b", 1, ttl=math.inf)
        cache.set("c", 1, ttl=2.5)
        rows = {name: expires for name, _, expires in _rows(path)}
        assert rows == {b"a": 1_700_000_030.0, b"b": None, b"c": 1_700_000_002.5}
        clock.advance(2.5)
        assert cache.get("c") is None  # expired at its deadline, not after
        assert cache.get_with_ttl("a") == (1, 27.5)
        assert cache.add("c", 2) is True


def test_values_are_json_or_what_the_serializer_writes(path: str) -> None:
    with SQLiteCache(path) as cache, SQLiteCache(path, serializer=BYTES, prefix="b:") as raw:
        cache.set("k", {"n": [1, 2]})
        raw.set("k", b"\x00\xff")
        assert {name: value for name, value, _ in _rows(path)} == {
            b"k": b'{"n":[1,2]}',
            b"b:k": b"\x00\xff",
        }
        assert raw.get("k") == b"\x00\xff"
        with pytest.raises(IncompatibleStore) as caught:
            SQLiteCache(path, prefix="b:").get("k")
        assert isinstance(caught.value.__cause__, ValueError)


def test_stats_count_each_key_and_each_write(cache: SQLiteCache[Any]) -> None:
    cache.set("1", "ada")
    cache.get("1"), cache.get("2"), cache.get_many(["1", "2", "3"])
    cache.add("1", "x"), cache.add("4", "x"), cache.delete("1")
    cache.set_many({"5": 5, "6": 6})
    assert cache.stats() == StoreStats(hits=2, misses=3, writes=4, deletes=1, errors=0)
    cache.reset_stats()
    assert cache.stats() == StoreStats(0, 0, 0, 0, 0)


def test_set_many_is_one_transaction(path: str) -> None:
    with SQLiteCache(path) as cache:
        cache.set("keep", 0)
        slow: SQLiteCache[Any] = SQLiteCache(path, timeout=0.05)
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        with pytest.raises(BackendError) as caught:
            slow.set_many({"a": 1, "b": 2})
        assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
        assert caught.value.backend == "sqlite"
        assert slow.stats().errors == 1
        blocker.execute("ROLLBACK")
        blocker.close()
        assert _rows(path) == [(b"keep", b"0", None)]
        slow.set_many({"a": 1, "b": 2})
        assert cache.get_many(["a", "b", "keep"]) == {"a": 1, "b": 2, "keep": 0}
        slow.close()


def test_batches_beyond_one_statement(cache: SQLiteCache[Any]) -> None:
    items = {f"k{i}": i for i in range(1234)}
    cache.set_many(items)
    assert cache.get_many([*items, "nope"]) == items
    found = cache.get_many_with_ttl(list(items)[::-1])
    assert list(found) == list(items)[::-1]  # in the order asked


def test_errors_of_sqlite_are_wrapped(path: str, tmp_path: Path) -> None:
    with pytest.raises(BackendError) as caught:
        SQLiteCache(str(tmp_path / "no-such-dir" / "x.db"))
    assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
    with SQLiteCache(path) as cache:
        conn = sqlite3.connect(path)
        conn.execute("DROP TABLE scalekit_cache")
        conn.close()
        for call in (
            lambda: cache.get("k"),
            lambda: cache.set("k", 1),
            lambda: cache.add("k", 1),
            lambda: cache.delete("k"),
            lambda: cache.get_many(["a", "b"]),
            lambda: cache.set_many({"a": 1}),
            lambda: cache.ttl_of("k"),
            lambda: list(cache.keys()),
        ):
            with pytest.raises(BackendError) as caught:
                call()
            assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
        assert cache.stats().errors == 8


def test_a_file_or_table_not_ours_is_incompatible(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not an sqlite database" * 100)
    with pytest.raises(IncompatibleStore):
        SQLiteCache(str(junk))
    other = str(tmp_path / "other.db")
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE scalekit_cache (id INTEGER PRIMARY KEY, name TEXT)")
    conn.close()
    with pytest.raises(IncompatibleStore, match="columns"):
        SQLiteCache(other)
    with SQLiteCache(other, table="mine") as mine:  # another table of the same file
        mine.set("k", 1)
        assert mine.get("k") == 1


def test_threads_share_the_pool_and_close_ends_it(path: str) -> None:
    cache: SQLiteCache[Any] = SQLiteCache(path)
    failures: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(50):
                cache.set(f"{n}:{i}", i)
                assert cache.get(f"{n}:{i}") == i
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert len(list(cache.keys())) == 400
    assert 1 <= len(cache._opened) <= 8  # one connection per call at once, at most
    cache._check()
    cache.close()
    with pytest.raises(ClosedError):
        cache.get("0:0")


def test_repr_and_properties(path: str) -> None:
    with SQLiteCache(path, prefix="p:", ttl=5, table="t1") as cache:
        assert (cache.path, cache.prefix, cache.ttl, cache.table) == (path, "p:", 5.0, "t1")
        assert repr(cache) == f"SQLiteCache({path!r}, prefix='p:', ttl=5.0, table='t1')"


# -- hostile arguments ------------------------------------------------------------------


class _Unhashable:
    __hash__ = None  # type: ignore[assignment]


def _filled(path: str) -> SQLiteCache[Any]:
    cache: SQLiteCache[Any] = SQLiteCache(path, prefix="h:")
    cache.set_many({"a": 1, "b": [2], SURROGATE: 3}, ttl=300)
    return cache


def _state(cache: SQLiteCache[Any]) -> object:
    return _rows(cache), cache.stats()


BAD_PATH = [None, 5, b"x.db", "", ":memory:", "file:x.db", "a\x00b", SURROGATE + ".db", []]
BAD_TABLE = [None, 5, "", "1abc", "a b", 'x"; DROP TABLE y; --', "t" * 64, SURROGATE, []]

_CALLS: list[tuple[str, Callable[[SQLiteCache[Any], Any], object], list[Any], str]] = [
    *STORE_CASES,
    ("set.key", lambda o, v: o.set(v, 1), [_Unhashable()], "key"),
    ("get_with_ttl.key", lambda o, v: o.get_with_ttl(v), BAD_STORE_KEY, "key"),
    ("get_many_with_ttl.keys", lambda o, v: o.get_many_with_ttl(v), BAD_KEYS, "key"),
    *SET_IF_CASES,
    ("keys.count", lambda o, v: o.keys(count=v), [*BAD_COUNT, 0], "count"),
    ("sweep.limit", lambda o, v: o.sweep(v), [*BAD_COUNT, 0], "limit"),
    ("path", lambda o, v: SQLiteCache(v), BAD_PATH, "path"),
    ("prefix", lambda o, v: SQLiteCache(o.path, prefix=v), [None, 5, b"p:", []], "prefix"),
    ("ttl", lambda o, v: SQLiteCache(o.path, ttl=v), [*BAD_SECONDS, 0], "ttl"),
    (
        "serializer",
        lambda o, v: SQLiteCache(o.path, serializer=v),
        [None, 5, "json", object()],
        "serializer",
    ),
    ("table", lambda o, v: SQLiteCache(o.path, table=v), BAD_TABLE, "table"),
    ("timeout", lambda o, v: SQLiteCache(o.path, timeout=v), [*BAD_SECONDS, 10**6], "timeout"),
    ("timer", lambda o, v: SQLiteCache(o.path, timer=v), [None, 5, "time"], "timer"),
]


@pytest.mark.parametrize(
    ("call", "value", "word"),
    [
        pytest.param(call, value, word, id=f"SQLiteCache.{name}={value_id(value)}")
        for name, call, values, word in _CALLS
        for value in values
    ],
)
def test_hostile_value_is_refused_and_changes_nothing(
    call: Callable[[SQLiteCache[Any], Any], object], value: Any, word: str, path: str
) -> None:
    with _filled(path) as cache:
        before = _state(cache)
        with pytest.raises(errors.ScalekitError) as caught:
            call(cache, value)
        assert isinstance(caught.value, (TypeError, ValueError)), type(caught.value).__mro__
        assert word in str(caught.value), f"{str(caught.value)!r} does not name {word!r}"
        assert _state(cache) == before


def test_lone_surrogate_keys_and_prefixes_are_valid_and_read_back(path: str) -> None:
    with SQLiteCache(path, prefix=SURROGATE) as cache:
        keys = [SURROGATE, "\udfff", "a\ud800b", SURROGATE + SURROGATE]
        for n, key in enumerate(keys):
            cache.set(key, n, ttl=60)
        assert [cache.get(key) for key in keys] == list(range(len(keys)))
        assert cache.get_many(keys) == {key: n for n, key in enumerate(keys)}
        assert 0 < cache.ttl_of(keys[1]) <= 60  # type: ignore[operator]
        assert cache.add(keys[0], 9) is False
        assert sorted(cache.keys()) == sorted(keys)
        assert cache.delete(keys[3]) is True
        assert cache.prefix == SURROGATE


def test_bad_settings_name_what_they_refuse(path: str) -> None:
    with pytest.raises(ConfigurationError, match="path"):
        SQLiteCache(":memory:")
    with pytest.raises(ArgumentTypeError, match="path"):
        SQLiteCache(None)  # type: ignore[arg-type]
    with SQLiteCache(Path(path)) as cache:  # os.PathLike is a path
        assert cache.path == path
