"""SQLiteInvalidation in one process: the channel protocol TieredCache uses, the log
(prefixes, pruning, a listener behind the pruned point), failures that flush, and
hostile arguments."""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from scalekit import errors
from scalekit.cache import LRUCache, SQLiteCache, SQLiteInvalidation, TieredCache, TTLCache
from scalekit.cache._sqlite_invalidation import _Poller
from scalekit.errors import ArgumentTypeError, ClosedError, ConfigurationError
from scalekit.testing import FakeClock
from tests.test_hostile_arguments import BAD_SECONDS, SURROGATE, value_id


@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / "shared.db")


def _until(condition: Callable[[], bool], timeout: float = 3.0) -> float:
    """Wait until ``condition()``; the seconds it took (fails after ``timeout``)."""
    start = time.perf_counter()
    while not condition():
        assert time.perf_counter() - start < timeout, "condition not met in time"
        time.sleep(0.0005)
    return time.perf_counter() - start


class _Listener:
    def __init__(self) -> None:
        self.keys: list[list[str]] = []
        self.flushes = 0

    def on_keys(self, keys: list[str]) -> None:
        self.keys.append(keys)

    def on_flush(self) -> None:
        self.flushes += 1


@pytest.fixture
def tiered_pair(path: str) -> Iterator[tuple[TieredCache[Any], TieredCache[Any]]]:
    made = []
    for _ in range(2):
        l2: SQLiteCache[Any] = SQLiteCache(path, prefix="q:")
        channel = SQLiteInvalidation(l2, interval=0.005)
        made.append((TieredCache(TTLCache(100, 60), l2, invalidation=channel), l2, channel))
    for _, _, channel in made:
        assert channel.wait_ready(5)
    yield made[0][0], made[1][0]
    for tiered, l2, channel in made:
        tiered.close()
        channel.close()
        l2.close()


def test_a_write_drops_the_key_from_the_other_near_cache(
    tiered_pair: tuple[TieredCache[Any], TieredCache[Any]],
) -> None:
    a, b = tiered_pair
    a.set("k", 1)
    assert b.get("k") == 1
    assert b.l1.get("k") == 1
    for version in range(2, 12):
        a.set("k", version)
        _until(lambda: b.l1.get("k") is None, timeout=1.0)
        assert b.get("k") == version
    a.set_many({"k": "many", "j": 0})
    _until(lambda: b.l1.get("k") is None)
    assert b.get("k") == "many"
    a.delete("k")
    _until(lambda: b.l1.get("k") is None)
    assert b.get("k") is None
    assert b.stats().invalidated >= 12
    channel = b._channels[0]
    assert channel.stats()["keys"] >= 13
    assert channel.stats()["drops"] == 0


def test_listeners_get_only_their_prefix_and_the_attach_flush(path: str) -> None:
    with (
        SQLiteInvalidation(path, prefix="a:", interval=0.002) as mine,
        SQLiteInvalidation(path, prefix="b:", interval=0.002) as theirs,
    ):
        listener = _Listener()
        mine.attach(listener.on_keys, listener.on_flush)
        assert mine.wait_ready(5)
        assert listener.flushes == 1  # what was cached before listening may be stale
        assert mine.generation == 1
        theirs.publish(["x"])
        mine.publish(["k", SURROGATE])
        mine.publish([])  # nothing to say: no row
        _until(lambda: listener.keys == [["k", SURROGATE]])
        time.sleep(0.02)
        assert listener.keys == [["k", SURROGATE]]
        assert mine.stats()["published"] == 1
        mine.detach(listener.on_keys)
        mine.publish(["after"])
        time.sleep(0.02)
        assert listener.keys == [["k", SURROGATE]]


def test_the_log_is_pruned_and_a_listener_behind_it_flushes(path: str) -> None:
    clock = FakeClock(1_000_000.0)
    with SQLiteInvalidation(path, retention=10, timer=clock) as channel:
        channel.publish(["old"])
        reader = _Poller(channel)  # a listener that has read nothing since
        clock.advance(5)
        channel.publish(["mid"])
        clock.advance(6)  # "old" is 11 s old, "mid" 6 s
        channel.publish(["new"])
        assert channel.stats()["pruned"] == 1
        conn = sqlite3.connect(path)
        assert [r[0] for r in conn.execute("SELECT keys FROM scalekit_invalidation")] == [
            '["mid"]',
            '["new"]',
        ]
        conn.close()
        # it had read up to "old" before the prune: it missed nothing
        batches, behind = reader.poll()
        assert (batches, behind) == ([["mid"], ["new"]], False)
        late = _Poller(channel)
        assert late.poll() == ([], False)
        channel.publish(["later"])
        clock.advance(20)
        channel.publish(["latest"])  # prunes "mid", "new" and "later", unread by late
        batches, behind = late.poll()
        assert behind is True
        assert batches == [["latest"]]
        assert late.poll() == ([], False)  # caught up
        reader.close()
        late.close()


def test_a_listener_behind_the_pruned_point_flushes_its_near_caches(
    path: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock(1_000_000.0)
    with (
        SQLiteInvalidation(path, retention=1, interval=0.5, timer=clock) as slow,
        SQLiteInvalidation(path, retention=1, timer=clock) as writer,
    ):
        listener = _Listener()
        slow.attach(listener.on_keys, listener.on_flush)
        assert slow.wait_ready(5)
        _until(lambda: slow.stats()["polls"] >= 1)  # its first poll done: it sleeps 0.5 s
        writer.publish(["a"])
        clock.advance(2)
        caplog.set_level(logging.WARNING, "scalekit.cache")
        writer.publish(["b"])  # prunes "a" before the slow listener read it
        _until(lambda: listener.keys == [["b"]])
        assert listener.flushes == 2  # on attach, and for "a"
        assert slow.generation == 2
        assert any("fell behind" in r.getMessage() for r in caplog.records)


def test_a_failing_poll_flushes_logs_and_recovers(
    path: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "scalekit.cache")
    l2: SQLiteCache[Any] = SQLiteCache(path)
    channel = SQLiteInvalidation(l2, interval=0.005)
    tiered: TieredCache[Any] = TieredCache(LRUCache(10), l2, invalidation=channel)
    try:
        assert channel.wait_ready(5)
        tiered.set("k", 1)
        assert tiered.l1.get("k") == 1
        generation = channel.generation
        conn = sqlite3.connect(path)
        conn.execute("DROP TABLE scalekit_invalidation")
        conn.close()
        _until(lambda: channel.stats()["drops"] == 1)
        assert tiered.l1.get("k") is None  # flushed: messages may have been lost
        assert channel.generation > generation
        _until(lambda: channel.ready)  # reopened: the table is created again
        lost = [r for r in caplog.records if "invalidation connection lost" in r.getMessage()]
        assert len(lost) == 1
        assert lost[0].levelno == logging.WARNING
        assert lost[0].reason == "connection lost"  # type: ignore[attr-defined]
        assert tiered.stats().flushes >= 2
        tiered.set("k", 2)  # publishing works again
        assert tiered.get("k") == 2
    finally:
        tiered.close()
        channel.close()
        l2.close()


def test_a_removed_file_is_a_lost_connection(path: str) -> None:
    with SQLiteInvalidation(path, interval=0.005) as channel:
        listener = _Listener()
        channel.attach(listener.on_keys, listener.on_flush)
        assert channel.wait_ready(5)
        for name in (path, path + "-wal", path + "-shm"):
            if os.path.exists(name):
                os.remove(name)
        _until(lambda: channel.stats()["drops"] >= 1)
        assert listener.flushes >= 2
        _until(lambda: channel.ready)  # polling a new file under the name
        channel.publish(["k"])  # the writer follows the name too
        _until(lambda: listener.keys == [["k"]])


def test_a_listener_that_raises_does_not_stop_the_others(path: str) -> None:
    with SQLiteInvalidation(path, interval=0.002) as channel:
        good = _Listener()

        def bad(keys: list[str]) -> None:
            raise RuntimeError("boom")

        channel.attach(bad, lambda: None)
        channel.attach(good.on_keys, good.on_flush)
        assert channel.wait_ready(5)
        channel.publish(["k"])
        _until(lambda: good.keys == [["k"]])
        assert channel.stats()["drops"] == 0


def test_tiered_cache_takes_it_and_checks_its_prefix(path: str) -> None:
    with SQLiteCache(path, prefix="p:") as l2, SQLiteInvalidation(path, prefix="o:") as other:
        with pytest.raises(ConfigurationError, match="prefix"):
            TieredCache(LRUCache(2), l2, invalidation=other)
        with pytest.raises(ArgumentTypeError, match="SQLiteInvalidation"):
            TieredCache(LRUCache(2), l2, invalidation=object())
        with SQLiteInvalidation(l2) as own:
            assert (own.prefix, own.path) == ("p:", path)
            assert "interval=0.01" in repr(own)


def test_closed_is_closed(path: str) -> None:
    channel = SQLiteInvalidation(path)
    channel.close()
    with pytest.raises(ClosedError):
        channel.attach(lambda keys: None, lambda: None)
    with pytest.raises(ClosedError):
        channel.publish(["k"])
    assert not channel.ready


# -- hostile arguments ------------------------------------------------------------------


def _log_rows(channel: SQLiteInvalidation) -> object:
    conn = sqlite3.connect(channel.path)
    try:
        return conn.execute("SELECT * FROM scalekit_invalidation").fetchall()
    finally:
        conn.close()


_CALLS: list[tuple[str, Callable[[SQLiteInvalidation, Any], object], list[Any], str]] = [
    (
        "path_or_cache",
        lambda o, v: SQLiteInvalidation(v),
        [None, 5, b"x.db", "", ":memory:", "a\x00b", SURROGATE, [], LRUCache(2)],
        "path_or_cache",
    ),
    ("prefix", lambda o, v: SQLiteInvalidation(o.path, prefix=v), [5, b"p", []], "prefix"),
    (
        "interval",
        lambda o, v: SQLiteInvalidation(o.path, interval=v),
        [*BAD_SECONDS, 0],
        "interval",
    ),
    (
        "retention",
        lambda o, v: SQLiteInvalidation(o.path, retention=v),
        [*BAD_SECONDS, 0, 0.01],
        "retention",
    ),
    (
        "table",
        lambda o, v: SQLiteInvalidation(o.path, table=v),
        [None, 5, "", "a b", 'x"--', "t" * 60, SURROGATE],
        "table",
    ),
    ("timeout", lambda o, v: SQLiteInvalidation(o.path, timeout=v), BAD_SECONDS, "timeout"),
    ("timer", lambda o, v: SQLiteInvalidation(o.path, timer=v), [None, 5, "now"], "timer"),
    ("publish.keys", lambda o, v: o.publish(v), [None, 5, "ab", b"ab", [5], ["a", None]], "key"),
    ("attach.on_keys", lambda o, v: o.attach(v, lambda: None), [None, 5, "f"], "on_keys"),
    ("attach.on_flush", lambda o, v: o.attach(lambda k: None, v), [None, 5, "f"], "on_flush"),
    ("wait_ready.timeout", lambda o, v: o.wait_ready(v), [True, "1", math.nan, -1], "timeout"),
]


@pytest.mark.parametrize(
    ("call", "value", "word"),
    [
        pytest.param(call, value, word, id=f"SQLiteInvalidation.{name}={value_id(value)}")
        for name, call, values, word in _CALLS
        for value in values
    ],
)
def test_hostile_value_is_refused_and_changes_nothing(
    call: Callable[[SQLiteInvalidation, Any], object], value: Any, word: str, path: str
) -> None:
    with SQLiteInvalidation(path) as channel:
        channel.publish(["a"])
        before = (_log_rows(channel), channel.stats(), channel._thread)
        with pytest.raises(errors.ScalekitError) as caught:
            call(channel, value)
        assert isinstance(caught.value, (TypeError, ValueError)), type(caught.value).__mro__
        assert word in str(caught.value), f"{str(caught.value)!r} does not name {word!r}"
        assert (_log_rows(channel), channel.stats(), channel._thread) == before
