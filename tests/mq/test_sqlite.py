"""What only the SQLite backend has: a file that outlives the process, several
backends (processes) on one file, the schema check, and group commit; plus a
differential test that drives it and the memory backend through the same random
operations and requires the same answers."""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from scalekit.errors import (
    ArgumentTypeError,
    BackendError,
    ClosedError,
    ConfigurationError,
    DeliveryExpired,
    IncompatibleStore,
)
from scalekit.mq import AsyncQueue, Broker, Delivery, MemoryBackend, Queue, QueueOptions
from scalekit.mq._sqlite import APPLICATION_ID, SCHEMA_VERSION, SqliteBackend
from scalekit.testing import FakeClock

START = 1_700_000_000.0


def open_broker(path: Path, clock: FakeClock | None = None, **kwargs: Any) -> Broker:
    return Broker(SqliteBackend(path, **kwargs), clock=clock)


def check(queue: Queue) -> None:
    queue._check()  # type: ignore[attr-defined]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- durability across close and reopen -------------------------------------------


def test_messages_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    clock = FakeClock(START)
    with open_broker(path, clock) as broker:
        queue = broker.queue("jobs", visibility_timeout=30)
        queue.put_many(["a", "b"])
        queue.put({"json": [1, 2]}, headers={"trace": "t1"}, priority=3)
        queue.put(b"later", delay=60)
        held = queue.get(timeout=0)  # the priority 3 message, in flight at the "crash"
        assert held is not None
        assert held.body == {"json": [1, 2]}
        first = queue.get(timeout=0)
        assert first is not None
        first.ack()
    clock.advance(10)
    with open_broker(path, clock) as broker:
        queue = broker.queue("jobs", visibility_timeout=30)
        stats = queue.stats()
        assert (stats.ready, stats.delayed, stats.in_flight) == (1, 1, 1)
        assert (stats.delivered, stats.acked) == (2, 1)  # counters are durable
        rest = queue.get_many(5, timeout=0)
        assert [d.body for d in rest] == ["b"]
        rest[0].ack()
        with pytest.raises(ClosedError):
            held.ack()  # a delivery of the closed backend
        clock.advance(25)  # past the in-flight deadline (30 s after it was taken)
        again = queue.get(timeout=0)
        assert again is not None
        assert (again.id, again.body, again.attempt, again.headers, again.priority) == (
            held.id,
            {"json": [1, 2]},
            2,
            {"trace": "t1"},
            3,
        )
        again.ack()
        clock.advance(30)
        later = queue.get(timeout=0)
        assert later is not None
        assert later.body == b"later"
        assert queue.stats().redelivered == 1
        check(queue)


def test_dead_letters_dedup_and_subscriptions_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    clock = FakeClock(START)
    with open_broker(path, clock) as broker:
        queue = broker.queue("jobs", dedup_window=100)
        first = queue.put("charge 7", dedup_key="order-7")
        delivery = queue.get(timeout=0)
        assert delivery is not None
        delivery.reject("bad")
        broker.topic("events").subscribe("billing")
    with open_broker(path, clock) as broker:
        queue = broker.queue("jobs", dedup_window=100)
        assert queue.put("charge 7", dedup_key="order-7") == first
        assert queue.stats().dead_letters == 1
        assert broker.topic("events").subscribers == ["billing"]
        assert queue.redrive() == 1
        back = queue.get(timeout=0)
        assert back is not None
        assert back.body == "charge 7"


def test_ids_are_never_reused(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    with open_broker(path) as broker:
        queue = broker.queue("q")
        ids = queue.put_many(range(3))
        for delivery in queue.get_many(3, timeout=0):
            delivery.ack()
    with open_broker(path) as broker:
        again = broker.queue("q").put_many(range(3))
        assert min(int(i) for i in again) > max(int(i) for i in ids)


# -- two backends on one file (as two processes) -----------------------------------


def test_two_backends_share_queues_and_subscriptions(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    clock = FakeClock(START)
    one = open_broker(path, clock, poll_interval=0.05)
    two = open_broker(path, clock, poll_interval=0.05)
    try:
        a, b = one.queue("q", visibility_timeout=5), two.queue("q", visibility_timeout=5)
        a.put_many(range(10))
        from_a, from_b = a.get_many(4, timeout=0), b.get_many(10, timeout=0)
        assert sorted(d.body for d in from_a + from_b) == list(range(10))
        for delivery in from_b:
            delivery.ack()
        assert a.stats().in_flight == 4
        clock.advance(6)
        again = b.get_many(10, timeout=0)  # a's deliveries timed out: b gets them
        assert sorted(d.body for d in again) == sorted(d.body for d in from_a)
        with pytest.raises(DeliveryExpired):
            from_a[0].ack()
        for delivery in again:
            delivery.ack()
        assert a.stats().acked == 10

        one.topic("orders").subscribe("billing")
        two.topic("orders").subscribe("shipping")
        assert one.topic("orders").subscribers == ["billing", "shipping"]
        ids = two.topic("orders").publish({"order": 1})
        assert set(ids) == {"billing", "shipping"}
        billing = one.queue("orders/billing").get(timeout=0)
        assert billing is not None
        assert billing.body == {"order": 1}
    finally:
        one.close()
        two.close()


def test_a_put_from_another_backend_reaches_a_blocked_getter(tmp_path: Path) -> None:
    """No wake-up crosses backends (processes): the getter finds the message at its
    next look, within ``poll_interval``."""
    path = tmp_path / "shared.db"
    one = open_broker(path, poll_interval=0.05)
    two = open_broker(path, poll_interval=0.05)
    try:
        queue = one.queue("q")
        got: list[Any] = []
        thread = threading.Thread(target=lambda: got.append(queue.get(timeout=10)))
        thread.start()
        time.sleep(0.1)
        started = time.monotonic()
        two.queue("q").put("hello")
        thread.join(10)
        assert time.monotonic() - started < 1
        assert got[0] is not None
        assert got[0].body == "hello"
    finally:
        one.close()
        two.close()


def test_a_bounded_queue_sees_room_made_by_another_backend(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    one = open_broker(path, poll_interval=0.05)
    two = open_broker(path, poll_interval=0.05)
    try:
        full = one.queue("q", maxsize=1)
        full.put("first")
        done = threading.Event()

        def produce() -> None:
            full.put("second", timeout=10)
            done.set()

        thread = threading.Thread(target=produce)
        thread.start()
        assert not done.wait(0.1)
        delivery = two.queue("q").get(timeout=0)
        assert delivery is not None
        delivery.ack()
        assert done.wait(2)
        thread.join()
    finally:
        one.close()
        two.close()


# -- the schema check --------------------------------------------------------------


def make_foreign(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO users (name) VALUES ('ada')")
    conn.commit()
    conn.close()


def make_other_app(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA application_id = 1234")
    conn.execute("CREATE TABLE things (x)")
    conn.commit()
    conn.close()


def make_store(path: Path) -> None:
    SqliteBackend(path).close()


def make_newer(path: Path) -> None:
    make_store(path)
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()


def make_without_meta(path: Path) -> None:
    make_store(path)
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE scalekit_meta")
    conn.commit()
    conn.close()


def make_wrong_meta(path: Path) -> None:
    make_store(path)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE scalekit_meta SET value = 'sessions' WHERE key = 'store'")
    conn.commit()
    conn.close()


def make_text(path: Path) -> None:
    path.write_text("id,name\n1,ada\n" * 100)


def make_corrupt(path: Path) -> None:
    make_store(path)
    data = bytearray(path.read_bytes())
    data[100:] = os.urandom(len(data) - 100)  # keep the header, scramble the pages
    path.write_bytes(bytes(data))


def make_truncated_header(path: Path) -> None:
    path.write_bytes(b"SQLite format 3\x00" + b"\x00" * 10)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (make_foreign, "some other application"),
        (make_other_app, "another application"),
        (make_newer, "newer"),
        (make_without_meta, "no scalekit_meta"),
        (make_wrong_meta, "damaged"),
        (make_text, "not an SQLite database"),
        (make_corrupt, "damaged|malformed"),
        (make_truncated_header, "damaged|malformed|not a database"),
    ],
)
def test_a_file_that_is_not_our_store_is_refused_untouched(
    tmp_path: Path, make: Any, message: str
) -> None:
    path = tmp_path / "store.db"
    make(path)
    before = digest(path)
    with pytest.raises(IncompatibleStore, match=message) as caught:
        SqliteBackend(path)
    assert caught.value.backend == "sqlite"
    assert digest(path) == before
    with pytest.raises(IncompatibleStore):  # and again: nothing was "repaired"
        SqliteBackend(path)
    assert digest(path) == before


def test_a_crashed_foreign_wal_database_is_left_untouched(tmp_path: Path) -> None:
    """Another application's WAL database, left by a crash with changes still in
    its WAL: a read-write connection, closing as the last one, would fold the WAL
    into the file; the check reads through a read-only connection."""
    live = tmp_path / "live.db"
    theirs = sqlite3.connect(live, isolation_level=None)
    theirs.execute("PRAGMA journal_mode = WAL")
    theirs.execute("PRAGMA wal_autocheckpoint = 0")
    theirs.execute("CREATE TABLE t (x)")
    theirs.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(100)])
    path = tmp_path / "crashed.db"
    path.write_bytes(live.read_bytes())  # the files as a crash would leave them
    Path(f"{path}-wal").write_bytes(Path(f"{live}-wal").read_bytes())
    theirs.close()
    before = digest(path), digest(Path(f"{path}-wal"))
    with pytest.raises(IncompatibleStore, match="some other application"):
        SqliteBackend(path)
    assert (digest(path), digest(Path(f"{path}-wal"))) == before


def test_an_empty_file_becomes_a_store_with_the_markers(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    path.touch()
    SqliteBackend(path).close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    meta = dict(conn.execute("SELECT key, value FROM scalekit_meta").fetchall())
    assert meta == {"store": "scalekit.mq", "schema_version": str(SCHEMA_VERSION)}
    conn.close()
    SqliteBackend(path).close()  # and it opens again


def test_sqlite_errors_are_wrapped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import scalekit.mq._sqlite._schema as module

    monkeypatch.setattr(module, "_BUSY_TIMEOUT", 0.05)
    path = tmp_path / "q.db"
    with open_broker(path) as broker:
        queue = broker.queue("q")
        locker = sqlite3.connect(path, isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")
        try:
            with pytest.raises(BackendError, match="locked") as caught:
                queue.put("x")
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        assert caught.value.backend == "sqlite"
        assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
        queue.put("x")  # the store is fine afterwards
        assert queue.stats().ready == 1


# -- arguments and closing -----------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"synchronous": "OFF"},
        {"synchronous": "EXTRA"},
        {"synchronous": ""},
        {"synchronous": 2},
        {"poll_interval": 0},
        {"poll_interval": -1},
        {"poll_interval": math.inf},
        {"poll_interval": math.nan},
        {"poll_interval": True},
        {"poll_interval": "1"},
    ],
)
def test_bad_settings_are_refused(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    with pytest.raises((ConfigurationError, ArgumentTypeError)):
        SqliteBackend(tmp_path / "q.db", **kwargs)
    assert not (tmp_path / "q.db").exists()  # refused before anything was created


@pytest.mark.parametrize("path", ["", ":memory:", "file:q.db?mode=memory"])
def test_a_path_must_name_a_file(path: str) -> None:
    with pytest.raises(ConfigurationError):
        SqliteBackend(path)


def test_a_path_of_the_wrong_type_is_refused() -> None:
    with pytest.raises(TypeError):
        SqliteBackend(5)  # type: ignore[arg-type]


def test_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BackendError):
        SqliteBackend(tmp_path)


def test_synchronous_is_case_insensitive(tmp_path: Path) -> None:
    backend = SqliteBackend(tmp_path / "q.db", synchronous="normal")
    assert backend.synchronous == "NORMAL"
    assert backend._store.conn.execute("PRAGMA synchronous").fetchone()[0] == 1
    backend.close()
    backend.close()  # idempotent


def test_a_closed_backend_refuses_work(tmp_path: Path) -> None:
    broker = open_broker(tmp_path / "q.db")
    queue = broker.queue("q")
    queue.put("x")
    delivery = queue.get(timeout=0)
    assert delivery is not None
    broker.close()
    assert queue.closed
    assert queue.get(timeout=5) is None  # closed: no waiting
    with pytest.raises(ClosedError):
        queue.put("y")
    with pytest.raises(ClosedError):
        delivery.ack()
    with pytest.raises(ClosedError):
        broker.backend.subscribers("t")


def test_reopening_with_other_options_is_refused(tmp_path: Path) -> None:
    backend = SqliteBackend(tmp_path / "q.db")
    clock = FakeClock(START)
    backend.open_queue("q", None, clock)
    with pytest.raises(ConfigurationError):
        backend.open_queue("q", QueueOptions(visibility_timeout=5), clock)
    assert backend.open_queue("q", QueueOptions(), clock) is backend.open_queue("q", None, clock)
    backend.close()


# -- group commit ----------------------------------------------------------------


def test_jobs_of_one_group_commit_fail_alone(tmp_path: Path) -> None:
    """Jobs that queued while a transaction ran share the next one; a job that
    raises is rolled back alone (its savepoint), the others commit."""
    backend = SqliteBackend(tmp_path / "q.db")
    store = backend._store
    conn = store.conn
    conn.execute("CREATE TABLE t (x INTEGER)")
    release = threading.Event()
    results: dict[int, Any] = {}

    def slow(c: sqlite3.Connection) -> None:
        release.wait(5)

    def insert(x: int) -> Any:
        def job(c: sqlite3.Connection) -> int:
            c.execute("INSERT INTO t VALUES (?)", (x,))
            if x == 2:
                raise ValueError("job 2 fails")
            return x

        return job

    def worker(x: int) -> None:
        try:
            results[x] = store.run(insert(x))
        except ValueError as exc:
            results[x] = exc

    leader = threading.Thread(target=store.run, args=(slow,))
    leader.start()
    time.sleep(0.05)
    workers = [threading.Thread(target=worker, args=(x,)) for x in range(4)]
    for thread in workers:
        thread.start()
    time.sleep(0.1)
    assert len(store._pending) == 4  # all waiting for the one transaction
    release.set()
    leader.join()
    for thread in workers:
        thread.join()
    assert [results[x] for x in (0, 1, 3)] == [0, 1, 3]
    assert isinstance(results[2], ValueError)
    assert sorted(x for (x,) in conn.execute("SELECT x FROM t")) == [0, 1, 3]
    backend.close()


def test_many_threads_share_commits(tmp_path: Path) -> None:
    with open_broker(tmp_path / "q.db", synchronous="NORMAL") as broker:
        queue = broker.queue("q")
        n, threads = 200, 8

        def produce(t: int) -> None:
            for i in range(n):
                queue.put(t * n + i)

        workers = [threading.Thread(target=produce, args=(t,)) for t in range(threads)]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()
        bodies = [d.body for d in queue.get_many(n * threads, timeout=0)]
        assert sorted(bodies) == list(range(n * threads))
        for t in range(threads):  # each producer's messages stay in its order
            mine = [b for b in bodies if b // n == t]
            assert mine == sorted(mine)
        check(queue)


# -- asyncio ---------------------------------------------------------------------


def test_a_cancelled_async_get_gives_its_message_back(tmp_path: Path) -> None:
    """The take runs on a worker thread; if its task is cancelled meanwhile, the
    message goes back to the front of the line, its attempt uncounted."""
    with open_broker(tmp_path / "q.db", FakeClock(START)) as broker:
        queue = broker.queue("q")
        queue.put_many(["first", "second"])
        store = queue._store  # type: ignore[attr-defined]
        release = threading.Event()
        blocker = threading.Thread(target=store.run, args=(lambda conn: release.wait(5),))
        blocker.start()
        time.sleep(0.05)

        async def main() -> None:
            task = asyncio.create_task(AsyncQueue(queue).get(timeout=5))
            await asyncio.sleep(0.05)  # the take waits for the blocker's transaction
            task.cancel()
            release.set()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(main())
        blocker.join()
        deadline = time.monotonic() + 5
        while queue.stats().in_flight and time.monotonic() < deadline:
            time.sleep(0.01)
        stats = queue.stats()
        assert (stats.ready, stats.in_flight, stats.delivered) == (2, 0, 0)
        first = queue.get(timeout=0)
        assert first is not None
        assert (first.body, first.attempt) == ("first", 1)
        check(queue)


# -- the same answers as the memory backend ------------------------------------------


class SameAsMemory(RuleBasedStateMachine):
    """Every operation on a memory queue and an SQLite queue, side by side: the
    same deliveries in the same order, the same errors, the same stats."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock(START)
        self.path = Path(os.environ.get("TMPDIR", "/tmp")) / f"same-{os.getpid()}-{id(self)}.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        self.memory = Broker(MemoryBackend(), clock=self.clock)
        self.sqlite = Broker(SqliteBackend(self.path, synchronous="NORMAL"), clock=self.clock)
        options: dict[str, Any] = {
            "visibility_timeout": 10.0,
            "max_deliveries": 3,
            "dedup_window": 20.0,
        }
        self.queues = (self.memory.queue("q", **options), self.sqlite.queue("q", **options))
        self.held: list[tuple[Delivery, Delivery]] = []
        self.dead_held: list[tuple[Delivery, Delivery]] = []
        self.bodies = 0
        self.keys: dict[str, tuple[Any, Any]] = {}

    def teardown(self) -> None:
        self.memory.close()
        self.sqlite.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)

    @staticmethod
    def seen(delivery: Delivery) -> tuple[Any, ...]:
        return (
            delivery.body,
            delivery.attempt,
            delivery.priority,
            delivery.headers,
            delivery.enqueued_at,
            delivery.deadline,
        )

    @rule(
        count=st.integers(1, 3),
        priority=st.sampled_from([0, 0, 0, 2, -1]),
        delay=st.sampled_from([0.0, 0.0, 5.0, 12.0]),
        dedup=st.sampled_from([None, None, "k1", "k2"]),
        headers=st.sampled_from([None, {"h": "1"}]),
    )
    def put(self, count: int, priority: int, delay: float, dedup: str | None, headers: Any) -> None:
        bodies = list(range(self.bodies, self.bodies + count))
        self.bodies += count
        if dedup is not None:  # ids differ between backends: compare whether each deduped
            ids = (
                self.queues[0].put(
                    bodies[0], priority=priority, delay=delay, dedup_key=dedup, headers=headers
                ),
                self.queues[1].put(
                    bodies[0], priority=priority, delay=delay, dedup_key=dedup, headers=headers
                ),
            )
            known = self.keys.get(dedup)
            hits = [known is not None and ids[i] == known[i] for i in (0, 1)]
            assert hits[0] == hits[1]
            if not hits[0]:
                self.keys[dedup] = ids
            return
        for queue in self.queues:
            queue.put_many(bodies, priority=priority, delay=delay, headers=headers)

    @rule(n=st.integers(1, 4), dead=st.booleans())
    def get(self, n: int, dead: bool) -> None:
        if dead:
            got = [q.dead_letters.get_many(n, timeout=0) for q in self.queues]
        else:
            got = [q.get_many(n, timeout=0) for q in self.queues]
        assert [self.seen(d) for d in got[0]] == [self.seen(d) for d in got[1]]
        (self.dead_held if dead else self.held).extend(zip(got[0], got[1], strict=True))

    def settle(self, index: int, action: str, *args: Any, dead: bool = False) -> None:
        pool = self.dead_held if dead else self.held
        pair = pool[index % len(pool)]
        outcomes = []
        for delivery in pair:
            try:
                getattr(delivery, action)(*args)
                outcomes.append("ok")
            except DeliveryExpired:
                outcomes.append("expired")
        assert outcomes[0] == outcomes[1], (action, pair)
        if action != "extend":
            pool.remove(pair)
        else:
            assert pair[0].deadline == pair[1].deadline

    @precondition(lambda self: self.held)
    @rule(index=st.integers(0, 50))
    def ack(self, index: int) -> None:
        self.settle(index, "ack")

    @precondition(lambda self: self.held)
    @rule(index=st.integers(0, 50), delay=st.sampled_from([0.0, 0.0, 4.0]))
    def nack(self, index: int, delay: float) -> None:
        self.settle(index, "nack", delay)

    @precondition(lambda self: self.held)
    @rule(index=st.integers(0, 50))
    def reject(self, index: int) -> None:
        self.settle(index, "reject", "poison")

    @precondition(lambda self: self.held)
    @rule(index=st.integers(0, 50), seconds=st.sampled_from([3.0, 25.0]))
    def extend(self, index: int, seconds: float) -> None:
        self.settle(index, "extend", seconds)

    @precondition(lambda self: self.dead_held)
    @rule(index=st.integers(0, 50), action=st.sampled_from(["ack", "nack", "reject"]))
    def settle_dead(self, index: int, action: str) -> None:
        self.settle(index, action, dead=True)

    @rule(seconds=st.sampled_from([1.0, 4.0, 6.0, 11.0, 30.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(limit=st.sampled_from([None, 1, 2]))
    def redrive(self, limit: int | None) -> None:
        assert self.queues[0].redrive(limit) == self.queues[1].redrive(limit)

    @rule()
    def purge(self) -> None:
        assert self.queues[0].purge() == self.queues[1].purge()

    @invariant()
    def same_stats(self) -> None:
        memory, sqlite = (q.stats() for q in self.queues)
        assert memory == sqlite
        check(self.queues[1])


SameAsMemory.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
TestSameAsMemory = SameAsMemory.TestCase


def test_two_threads_acking_one_delivery_at_once_is_a_no_op(tmp_path: Path) -> None:
    def ack_twice_at_once(delivery: Delivery) -> list[BaseException]:
        errors: list[BaseException] = []
        barrier = threading.Barrier(2)

        def ack() -> None:
            barrier.wait()
            try:
                delivery.ack()
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=ack) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return errors

    with open_broker(tmp_path / "q.db", synchronous="NORMAL") as broker:
        queue = broker.queue("q")
        for _ in range(50):
            queue.put("x")
            delivery = queue.get(timeout=0)
            assert delivery is not None
            assert ack_twice_at_once(delivery) == []
        assert queue.stats().acked == 50


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_cannot_use_the_parents_connection(tmp_path: Path) -> None:
    backend = SqliteBackend(tmp_path / "q.db")
    queue = backend.open_queue("q", None, FakeClock(START))
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            queue.put("from the child")
            os.write(write, b"put")
        except BackendError:
            os.write(write, b"refused")
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 100) == b"refused"
    os.close(read)
    os.close(write)
    assert queue.stats().total == 0
    backend.close()


def test_a_put_racing_close_is_drained_or_refused(tmp_path: Path) -> None:
    """Close takes its place among the transactions: each put commits before it
    (and the consumers, draining, get it) or is refused with ClosedError."""
    with open_broker(tmp_path / "q.db", synchronous="NORMAL") as broker:
        for round_ in range(20):
            queue = broker.queue(f"q{round_}")
            put: list[Any] = []
            got: list[Any] = []

            def produce(queue: Queue = queue, put: list[Any] = put) -> None:
                for i in range(10_000):
                    try:
                        put.append(queue.put(i))
                    except ClosedError:
                        return

            def consume(queue: Queue = queue, got: list[Any] = got) -> None:
                for delivery in queue:
                    got.append(delivery.id)
                    delivery.ack()

            threads = [threading.Thread(target=produce) for _ in range(4)]
            threads += [threading.Thread(target=consume) for _ in range(2)]
            for thread in threads:
                thread.start()
            time.sleep(0.01)
            queue.close()
            for thread in threads:
                thread.join(10)
            assert sorted(got) == sorted(put)


def test_a_receive_commits_without_an_fsync_of_its_own(tmp_path: Path) -> None:
    """With synchronous="FULL", puts and settlements are fsynced; a receive is not
    (a lost receive only delivers the message again): it runs with NORMAL, unless
    its group commit shares the transaction with a job that needs FULL."""
    backend = SqliteBackend(tmp_path / "q.db")
    store = backend._store

    def mode(conn: sqlite3.Connection) -> int:
        return int(conn.execute("PRAGMA synchronous").fetchone()[0])

    assert store.run(mode) == 2
    assert store.run(mode, durable=False) == 1
    assert store.run(mode) == 2  # back to FULL for the next durable job
    seen: list[bool] = []
    real_run = store.run

    def spy(function: Any, *, durable: bool = True) -> Any:
        seen.append(durable)
        return real_run(function, durable=durable)

    store.run = spy  # type: ignore[method-assign]
    broker = Broker(backend)
    queue = broker.queue("jobs")
    seen.clear()
    queue.put("x")
    delivery = queue.get(timeout=0)
    assert delivery is not None
    delivery.ack()
    assert seen == [True, False, True]  # put, get, ack
    broker.close()


def test_ack_many_is_one_commit_and_works_from_asyncio(tmp_path: Path) -> None:
    """A hundred acks in one transaction: one commit, not a hundred (counted with
    sqlite3's trace callback on the backend's connection), awaited from a task."""
    backend = SqliteBackend(tmp_path / "mq.db", synchronous="NORMAL")
    queue = Broker(backend).queue("jobs")
    queue.put_many([{"n": n} for n in range(100)])
    got = queue.get_many(100, timeout=0)
    statements: list[str] = []
    backend._store.conn.set_trace_callback(statements.append)
    backend._store._control.connection.set_trace_callback(statements.append)
    asyncio.run(AsyncQueue(queue).ack_many(got))
    commits = [s for s in statements if s.strip().upper().startswith("COMMIT")]
    assert len(commits) == 1, statements[:10]
    stats = queue.stats()
    assert (stats.acked, stats.total) == (100, 0), stats
