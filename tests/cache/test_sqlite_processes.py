"""Two real processes (spawned) sharing one SQLite file: ``add`` is one lease across
processes, ``cached`` computes a cold key once across processes, and a
TieredCache's near cache drops another process's write within one poll interval
(and is flushed when its poll fails)."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from scalekit.cache import SQLiteCache, SQLiteInvalidation, TieredCache, TTLCache, cached
from scalekit.errors import BackendError

_CONTEXT = multiprocessing.get_context("spawn")
KEYS = 40
INTERVAL = 0.005
TRIALS = 40


def _race_adds(path: str, name: str, start: Any, results: Any) -> None:
    """4 threads add every key of the list; report the keys each thread won."""
    cache: SQLiteCache[Any] = SQLiteCache(path, prefix="lease:")
    won: list[str] = []
    lock = threading.Lock()

    def thread(n: int) -> None:
        start.wait(30)
        for i in range(KEYS):
            if cache.add(f"k{i}", f"{name}-{n}", ttl=60):
                with lock:
                    won.append(f"k{i}")

    threads = [threading.Thread(target=thread, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results.put((name, won))
    cache.close()


def test_add_is_one_lease_across_processes(tmp_path: Path) -> None:
    path = str(tmp_path / "lease.db")
    SQLiteCache(path).close()  # the schema exists before the race
    start, results = _CONTEXT.Event(), _CONTEXT.Queue()
    workers = [
        _CONTEXT.Process(target=_race_adds, args=(path, name, start, results))
        for name in ("p1", "p2")
    ]
    for worker in workers:
        worker.start()
    start.set()
    won = [results.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(30)
        assert worker.exitcode == 0
    every = [key for _, keys in won for key in keys]
    assert sorted(every) == sorted(f"k{i}" for i in range(KEYS))  # each key won exactly once
    with SQLiteCache(path, prefix="lease:") as cache:
        holders = cache.get_many([f"k{i}" for i in range(KEYS)])
    by_process = {name: set(keys) for name, keys in won}
    for key, holder in holders.items():
        assert key in by_process[holder.split("-")[0]]  # the stored value is the winner's


def _count_call(path: str) -> None:
    """Record one call of the expensive function, in its own table of the file."""
    conn = sqlite3.connect(path, timeout=10, isolation_level=None)
    conn.execute("CREATE TABLE IF NOT EXISTS calls (pid INTEGER)")
    conn.execute("INSERT INTO calls VALUES (?)", (os.getpid(),))
    conn.close()


def _cached_callers(path: str, start: Any, results: Any) -> None:
    store: SQLiteCache[Any] = SQLiteCache(path, prefix="memo:")

    @cached(store, lease=10, poll=0.002)
    def report(n: int) -> dict[str, Any]:
        _count_call(path)
        time.sleep(0.2)  # long enough for every other caller to miss
        return {"n": n, "by": os.getpid()}

    answers: list[Any] = []

    def thread() -> None:
        start.wait(30)
        answers.append(report(7))

    threads = [threading.Thread(target=thread) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results.put(answers)
    store.close()


def test_cached_computes_a_cold_key_once_across_processes(tmp_path: Path) -> None:
    path = str(tmp_path / "memo.db")
    SQLiteCache(path).close()
    _count_call(path)  # the table of calls exists, with one row of this process's
    start, results = _CONTEXT.Event(), _CONTEXT.Queue()
    workers = [
        _CONTEXT.Process(target=_cached_callers, args=(path, start, results)) for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    start.set()
    answers = [answer for _ in workers for answer in results.get(timeout=60)]
    for worker in workers:
        worker.join(30)
        assert worker.exitcode == 0
    conn = sqlite3.connect(path)
    calls = [pid for (pid,) in conn.execute("SELECT pid FROM calls")]
    conn.close()
    assert len(calls) == 2  # this process's row, and one call in all 16 callers
    assert len(answers) == 16
    assert all(answer == {"n": 7, "by": calls[1]} for answer in answers)


def _tiered(path: str) -> tuple[TieredCache[Any], SQLiteInvalidation, SQLiteCache[Any]]:
    l2: SQLiteCache[Any] = SQLiteCache(path, prefix="t:")
    channel = SQLiteInvalidation(l2, interval=INTERVAL)
    tiered = TieredCache(TTLCache(1000, 60), l2, invalidation=channel)
    assert channel.wait_ready(10)
    return tiered, channel, l2


def _writer(path: str, acks: Any, go: Any) -> None:
    tiered, channel, l2 = _tiered(path)
    for version in range(1, TRIALS + 1):
        assert go.wait(30)
        go.clear()
        tiered.set("hot", version)
        acks.put((version, time.time()))
    assert go.wait(30)
    conn = sqlite3.connect(path, timeout=10)
    conn.execute("DROP TABLE scalekit_invalidation")  # the other process's poll fails
    conn.close()
    acks.put(None)
    tiered.close()
    channel.close()
    l2.close()


def test_a_write_in_one_process_reaches_the_near_cache_of_the_other(tmp_path: Path) -> None:
    path = str(tmp_path / "tiered.db")
    reader, channel, l2 = _tiered(path)
    acks, go = _CONTEXT.Queue(), _CONTEXT.Event()
    writer = _CONTEXT.Process(target=_writer, args=(path, acks, go))
    writer.start()
    stale, delays = [], []
    try:
        go.set()
        while (ack := acks.get(timeout=60)) is not None:
            version, acked_at = ack
            while reader.l1.get("hot") == version - 1 and version > 1:
                assert time.time() - acked_at < 2, "no invalidation within 2 s"
                time.sleep(0.0002)
            delays.append(time.time() - acked_at)
            for _ in range(20):  # and no stale read after it
                if reader.get("hot") != version:
                    stale.append((version, reader.get("hot")))
            assert reader.l1.get("hot") == version  # l1 holds it when the next write comes
            go.set()
        # the writer dropped the log table: this process's poll fails and flushes l1
        drops = channel.stats()["drops"]
        assert reader.l1.get("hot") == TRIALS or drops >= 1
        deadline = time.time() + 5
        while channel.stats()["drops"] == 0:
            assert time.time() < deadline, "the failing poll was not noticed"
            time.sleep(0.001)
        assert reader.l1.get("hot") is None  # flushed: keys may have been missed
        assert reader.get("hot") == TRIALS  # and read again from l2
        writer.join(30)
        assert writer.exitcode == 0
    finally:
        reader.close()
        channel.close()
        l2.close()
    assert stale == []
    assert len(delays) == TRIALS
    later = sorted(delays[1:])
    p50, p99 = statistics.median(later), later[-1]
    print(
        f"invalidation delay across processes (interval {INTERVAL * 1e3:g} ms): "
        f"p50 {p50 * 1e3:.2f} ms, max {p99 * 1e3:.2f} ms"
    )
    assert p99 < INTERVAL + 1.0  # one interval, plus a generous margin on a shared machine


def _in_fork(cache: SQLiteCache[Any], channel: SQLiteInvalidation, results: Any) -> None:
    cache.set("child", os.getpid())  # the pool inherited is dropped: a new connection
    try:
        channel.publish(["child"])
    except BackendError as exc:
        results.put(("refused", str(exc), cache.get("child")))
    else:
        results.put(("published", "", cache.get("child")))


def test_a_forked_child_opens_its_own_connections(tmp_path: Path) -> None:
    path = str(tmp_path / "fork.db")
    with SQLiteCache(path) as cache, SQLiteInvalidation(cache) as channel:
        cache.set("parent", 1)
        context = multiprocessing.get_context("fork")
        results = context.Queue()
        child = context.Process(target=_in_fork, args=(cache, channel, results))
        child.start()
        outcome, message, child_pid = results.get(timeout=30)
        child.join(30)
        assert child.exitcode == 0
        assert outcome == "refused"
        assert "fork" in message
        assert child_pid == child.pid
        assert cache.get("child") == child.pid  # the parent's connections still work
        cache.set("parent", 2)
        assert cache.get_many(["parent", "child"]) == {"parent": 2, "child": child.pid}
        channel.publish(["parent"])
