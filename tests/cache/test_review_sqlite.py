"""A hostile review of SQLiteCache and SQLiteInvalidation: each test is a defect
found at a seam (a fork, a file replaced under its name, a prune that fails, a
table that is not ours, a close racing the calls in flight), and fails without
its fix."""

from __future__ import annotations

import linecache
import multiprocessing
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from scalekit.cache import SQLiteCache, SQLiteInvalidation, TieredCache, TTLCache
from scalekit.cache._sqlite import FILE_CHECK_EVERY
from scalekit.errors import BackendError, ClosedError, ConfigurationError, IncompatibleStore
from scalekit.testing import FakeClock


@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / "shared.db")


def _until(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    start = time.perf_counter()
    while not condition():
        assert time.perf_counter() - start < timeout, "condition not met in time"
        time.sleep(0.0005)


def _remove(path: str) -> None:
    """Remove the file, then wait until a store looks at the name again."""
    for name in (path, path + "-wal", path + "-shm"):
        if os.path.exists(name):
            os.remove(name)
    time.sleep(FILE_CHECK_EVERY * 1.5)


# -- a forked child has no listener: its near cache must keep nothing -------------------


def _child_reads(
    near: TieredCache[Any], channel: SQLiteInvalidation, results: Any, go: Any
) -> None:
    first = near.get("k")
    kept = "k" in near.l1
    go.wait(30)  # the parent overwrote k and published it
    results.put((channel.ready, channel.wait_ready(0), first, kept, near.get("k")))


@pytest.mark.skipif(sys.platform == "win32", reason="no fork on Windows")
def test_a_forked_childs_near_cache_keeps_nothing(path: str) -> None:
    # Before: the child inherited ready=True, kept what it read in l1, and with no
    # listener thread in the child nothing ever dropped it: stale for ever.
    with SQLiteCache(path) as l2, SQLiteInvalidation(l2, interval=0.002) as channel:
        near: TieredCache[Any] = TieredCache(TTLCache(100, 600), l2, invalidation=channel)
        assert channel.wait_ready(5)
        l2.set("k", "old")
        context = multiprocessing.get_context("fork")
        results, go = context.Queue(), context.Event()
        child = context.Process(target=_child_reads, args=(near, channel, results, go))
        child.start()
        try:
            time.sleep(0.05)  # let the child read first (its result is checked anyway)
            near.set("k", "new")
            go.set()
            ready, waited, first, kept, second = results.get(timeout=30)
        finally:
            child.join(30)
        assert child.exitcode == 0
        assert (ready, waited) == (False, False)
        assert first in ("old", "new")
        assert not kept
        assert second == "new"
        assert channel.ready  # the parent still listens
        near.close()


# -- the file removed or replaced under its name ----------------------------------------


def test_a_store_follows_its_file_when_it_is_removed(path: str) -> None:
    # Before: the pooled connections went on reading and writing the removed file,
    # which no store opened later (and no SQLiteInvalidation, which follows the
    # name) ever reads: two processes split on two files.
    with SQLiteCache(path) as old:
        old.set("before", 1)
        _remove(path)
        old.set("after", 2)
        with SQLiteCache(path) as new:
            assert new.get("after") == 2
            new.set("again", 3)
        assert old.get("again") == 3
        assert old.get("before") is None  # that file is gone
        old._check()


def test_a_store_follows_its_file_when_another_file_takes_its_name(
    path: str, tmp_path: Path
) -> None:
    # A backup restored under the name (its WAL checkpointed, the old WAL files
    # removed with the old file, as SQLite needs).
    other = str(tmp_path / "other.db")
    with SQLiteCache(other) as elsewhere:
        elsewhere.set("k", "second file")
    with SQLiteCache(path) as store:
        store.set("k", "first file")
        _remove(path)
        os.replace(other, path)
        assert store.get("k") == "second file"
        store.set("k2", 1)
    with SQLiteCache(path) as reopened:
        assert reopened.get_many(["k", "k2"]) == {"k": "second file", "k2": 1}


def test_near_caches_stay_fresh_when_the_file_is_removed(path: str) -> None:
    # The TieredCache seam: a's channel follows the name to the new file, and b
    # (an app server started after the removal) reads that file: a's store must
    # write there too, or b reads nothing a wrote and hears of writes it cannot see.
    l2_a: SQLiteCache[Any] = SQLiteCache(path)
    with SQLiteInvalidation(l2_a, interval=0.002) as ca:
        a: TieredCache[Any] = TieredCache(TTLCache(100, 600), l2_a, invalidation=ca)
        assert ca.wait_ready(5)
        a.set("k", 1)
        _remove(path)
        _until(lambda: ca.stats()["connects"] >= 2 and ca.ready)
        l2_b: SQLiteCache[Any] = SQLiteCache(path)
        with SQLiteInvalidation(l2_b, interval=0.002) as cb:
            b: TieredCache[Any] = TieredCache(TTLCache(100, 600), l2_b, invalidation=cb)
            assert cb.wait_ready(5)
            a.set("k", 2)
            assert b.get("k") == 2
            a.set("k", 3)
            _until(lambda: "k" not in b.l1)
            assert b.get("k") == 3
            b.close()
        l2_b.close()
        a.close()
    l2_a.close()


# -- a prune that fails does not fail a publish that succeeded --------------------------


def test_a_failed_prune_does_not_fail_the_publish(path: str) -> None:
    # Before: publish inserted its row, then the prune failed and publish raised
    # BackendError: the caller (TieredCache) saw a failed write that was done.
    clock = FakeClock(1_000_000.0)
    with SQLiteInvalidation(path, retention=10, timer=clock) as channel:
        channel.publish(["old"])
        conn = sqlite3.connect(path)
        conn.execute(
            "CREATE TRIGGER no_delete BEFORE DELETE ON scalekit_invalidation "
            "BEGIN SELECT RAISE(ABORT, 'deletes refused'); END"
        )
        conn.commit()
        clock.advance(11)
        channel.publish(["new"])  # the prune is due, and fails
        rows = conn.execute("SELECT keys FROM scalekit_invalidation ORDER BY seq").fetchall()
        conn.close()
        assert rows == [('["old"]',), ('["new"]',)]
        assert channel.stats()["published"] == 2
        channel.publish(["later"])  # the writer is usable (no transaction left open)


def test_pruning_keeps_up_with_more_than_a_batch_a_second(path: str) -> None:
    # Before: a prune took at most 1000 rows, at most once a second per process:
    # publishing faster than that grew the log without bound.
    clock = FakeClock(1_000_000.0)
    with SQLiteInvalidation(path, retention=10, timer=clock) as channel:
        conn = sqlite3.connect(path)
        with conn:
            conn.executemany(  # 3500 rows of long ago, as a busy writer leaves them
                "INSERT INTO scalekit_invalidation (at, prefix, keys) VALUES (?, x'', '[]')",
                [(clock() - 100,)] * 3500,
            )
        for _ in range(4):
            channel.publish(["k"])
            clock.advance(0.001)  # four publishes within a few milliseconds
        left = conn.execute("SELECT count(*) FROM scalekit_invalidation").fetchone()[0]
        conn.close()
        assert left == 4
        assert channel.stats()["pruned"] == 3500


# -- tables that are not ours --------------------------------------------------------------


def test_a_log_table_that_is_not_ours_is_refused(path: str) -> None:
    # Before: accepted; every publish and every poll then failed.
    with SQLiteCache(path):
        pass
    with pytest.raises(IncompatibleStore, match="scalekit_cache"):
        SQLiteInvalidation(path, table="scalekit_cache")
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE log_pruned (id INTEGER, note TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(IncompatibleStore, match="log_pruned"):
        SQLiteInvalidation(path, table="log")


def test_a_foreign_table_with_our_column_names_is_refused(path: str) -> None:
    # Before: same names, other types and keys passed. The store then failed every
    # write; the log took rows with no seq (NULL), which no listener ever reads:
    # every near cache stale for ever, silently.
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE scalekit_cache (key TEXT, value TEXT, expires TEXT)")
    conn.execute(
        "CREATE TABLE scalekit_invalidation (seq INTEGER, at REAL, prefix BLOB, keys TEXT)"
    )
    conn.execute(  # a primary key, but seqs may be used again once pruned
        "CREATE TABLE other_log (seq INTEGER PRIMARY KEY, at REAL NOT NULL, "
        "prefix BLOB NOT NULL, keys TEXT NOT NULL)"
    )
    conn.commit()
    conn.close()
    with pytest.raises(IncompatibleStore, match="scalekit_cache"):
        SQLiteCache(path)
    with pytest.raises(IncompatibleStore, match="scalekit_invalidation"):
        SQLiteInvalidation(path)
    with pytest.raises(IncompatibleStore, match="AUTOINCREMENT"):
        SQLiteInvalidation(path, table="other_log")
    with SQLiteCache(path, table="mine") as store, SQLiteInvalidation(path, table="log") as log:
        store.set("k", 1)  # our own tables in the same file are fine
        log.publish(["k"])


@pytest.mark.parametrize("table", ["sqlite_cache", "SQLITE_master", "sqlite_"])
def test_a_reserved_table_name_is_a_configuration_error(path: str, table: str) -> None:
    # Before: BackendError from SQLite after the file was opened.
    with pytest.raises(ConfigurationError, match="table"):
        SQLiteCache(path, table=table)
    with pytest.raises(ConfigurationError, match="table"):
        SQLiteInvalidation(path, table=table)
    assert not os.path.exists(path)


# -- close() racing the calls in flight -------------------------------------------------


def test_a_call_ending_while_close_runs_leaves_no_connection_open(path: str) -> None:
    # Before: a call that had seen the store open put its connection back after
    # close() emptied the pool: never closed, and lent to later calls, which then
    # worked on a closed store. The call is paused (by a trace) just before it
    # pools its connection, and close() runs in that gap.
    store: SQLiteCache[Any] = SQLiteCache(path)
    paused, closed = threading.Event(), threading.Event()

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        if event == "call" and frame.f_code.co_name == "_give":
            return local
        return None

    def local(frame: Any, event: str, arg: Any) -> Any:
        line = linecache.getline(frame.f_code.co_filename, frame.f_lineno)
        if event == "line" and "_idle.append" in line and not paused.is_set():
            paused.set()
            closed.wait(0.5)  # with the fix the pool is locked here: close() waits
        return local

    def call() -> None:
        sys.settrace(tracer)
        try:
            store.get("k")
        finally:
            sys.settrace(None)

    caller = threading.Thread(target=call)
    caller.start()
    assert paused.wait(5)
    closer = threading.Thread(target=lambda: (store.close(), closed.set()))
    closer.start()
    caller.join(5)
    closer.join(5)
    assert store._idle == []
    assert not store._opened
    with pytest.raises(ClosedError):
        store.get("k")


def test_a_connection_left_in_a_transaction_is_not_pooled(path: str) -> None:
    # A COMMIT that fails (a full disk, an I/O error) leaves the transaction open:
    # such a connection must not go back to the pool holding the write lock.
    with SQLiteCache(path, timeout=0.1) as store:
        conn = store._take()
        conn.execute("BEGIN IMMEDIATE")
        store._give(conn)
        assert conn not in store._idle
        store.set("k", 1)  # not locked out by the abandoned transaction
        assert store.get("k") == 1


def test_refused_calls_on_a_removed_file_change_nothing(path: str, tmp_path: Path) -> None:
    with SQLiteCache(path) as store:
        store.set("k", 1)
        os.remove(path)
        os.mkdir(path)  # the name is now a folder: nothing can be opened there
        time.sleep(FILE_CHECK_EVERY * 1.5)
        with pytest.raises(BackendError):
            store.set("k", 2)
        os.rmdir(path)
        store.set("k", 3)
        assert store.get("k") == 3


def test_a_store_looks_at_its_file_at_most_every_few_hundredths_of_a_second(
    path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file-following costs one stat per FILE_CHECK_EVERY, not one per call."""
    import scalekit.cache._sqlite as module

    looks: list[str] = []
    real = module.file_id

    def counted(name: str) -> Any:
        looks.append(name)
        return real(name)

    monkeypatch.setattr(module, "file_id", counted)
    with SQLiteCache(path) as store:
        store.set("k", 1)
        started = time.monotonic()
        calls = 0
        while time.monotonic() - started < FILE_CHECK_EVERY * 0.8:
            store.get("k")
            calls += 1
        assert calls > 20
        assert len(looks) <= 3  # the constructor's, the first call's, perhaps one more
        before = len(looks)
        time.sleep(FILE_CHECK_EVERY * 1.2)
        store.get("k")
        assert len(looks) == before + 1  # due again: looked once
