"""A damaged row or file never jams a queue, and a Consumer never loses a thread
(issue 13, item 6)."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from scalekit.errors import BackendError, IncompatibleStore
from scalekit.mq import DEAD_LETTER_REASON, Broker, Consumer, SqliteBackend
from scalekit.testing import FakeClock


def _damage(path: Path, message_id: int, *, body: bytes | None = None, headers: str = "") -> None:
    conn = sqlite3.connect(path)
    with conn:
        if body is not None:
            conn.execute("UPDATE mq_messages SET body = ? WHERE id = ?", (body, message_id))
        if headers:
            conn.execute("UPDATE mq_messages SET headers = ? WHERE id = ?", (headers, message_id))
    conn.close()


def test_a_row_with_invalid_utf8_goes_to_the_dead_letters(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    with Broker(SqliteBackend(path, synchronous="NORMAL"), clock=FakeClock(1e9)) as broker:
        queue = broker.queue("jobs")
        ids = queue.put_many([f"job {i}" for i in range(10)])
        _damage(path, int(ids[3]), body=b"\xff\xfe not utf-8")
        _damage(path, int(ids[6]), body=b"[1, 2")  # not a str body's problem: still text
        got = queue.get_many(10)
        assert [d.id for d in got] == [i for i in ids if i != ids[3]]
        assert got[5].body == "[1, 2"
        stats = queue.stats()
        assert (stats.in_flight, stats.ready, stats.dead_letters) == (9, 0, 1)
        dead = queue.dead_letters.get(timeout=0)
        assert dead is not None
        assert dead.id == ids[3]
        assert dead.body == b"\xff\xfe not utf-8"  # kept, readable as bytes
        assert "undecodable" in (dead.dead_letter_reason or "")
        queue._check()  # type: ignore[attr-defined]


def test_damaged_json_and_headers_go_to_the_dead_letters(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    with Broker(SqliteBackend(path, synchronous="NORMAL"), clock=FakeClock(1e9)) as broker:
        queue = broker.queue("jobs")
        first = queue.put({"ok": 1})
        second = queue.put({"ok": 2}, headers={"trace": "t"})
        third = queue.put({"ok": 3})
        _damage(path, int(first), body=b'{"ok": ')
        _damage(path, int(second), headers="{not json")
        delivery = queue.get(timeout=0)  # the two damaged ones are skipped, not delivered
        assert delivery is not None
        assert (delivery.id, delivery.body) == (third, {"ok": 3})
        dead = [queue.dead_letters.get(timeout=0) for _ in range(2)]
        assert {d.id for d in dead if d is not None} == {first, second}
        for d in dead:
            assert d is not None
            assert d.headers[DEAD_LETTER_REASON].startswith("undecodable message")
            assert isinstance(d.body, bytes)


def test_a_damaged_row_in_the_dead_letters_is_delivered_as_bytes(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    with Broker(SqliteBackend(path, synchronous="NORMAL"), clock=FakeClock(1e9)) as broker:
        queue = broker.queue("jobs")
        message_id = queue.put("x")
        delivery = queue.get(timeout=0)
        assert delivery is not None
        delivery.reject("poison")
        _damage(path, int(message_id), body=b"\xff")
        dead = queue.dead_letters.get(timeout=0)
        assert dead is not None
        assert dead.body == b"\xff"
        assert "undecodable" in (dead.dead_letter_reason or "")
        dead.ack()
        assert queue.stats().dead_letters == 0


def test_a_consumer_keeps_its_threads_through_damaged_rows(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    with Broker(SqliteBackend(path, synchronous="NORMAL", poll_interval=0.05)) as broker:
        queue = broker.queue("jobs")
        ids = queue.put_many([f"job {i}" for i in range(20)])
        for message_id in ids[::4]:
            _damage(path, int(message_id), body=b"\xc3\x28")
        done: list[str] = []
        consumer = Consumer(queue, done.append, concurrency=2).start()
        deadline = time.monotonic() + 10
        while len(done) < 15 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sorted(done) == sorted(f"job {i}" for i in range(20) if i % 4)
        assert consumer.running
        assert all(thread.is_alive() for thread in consumer._threads)
        queue.put("after")
        deadline = time.monotonic() + 10
        while "after" not in done and time.monotonic() < deadline:
            time.sleep(0.01)
        assert "after" in done
        assert consumer.stop(timeout=5)
        assert queue.stats().dead_letters == 5


def test_a_consumer_survives_backend_and_handler_errors(caplog: pytest.LogCaptureFixture) -> None:
    queue = Broker().queue("jobs", max_deliveries=2)
    real_take = queue._take
    failures = [3]

    def flaky_take(*args, **kwargs):  # type: ignore[no-untyped-def]
        if failures[0]:
            failures[0] -= 1
            raise BackendError("redis: connection refused", backend="test")
        return real_take(*args, **kwargs)

    queue._take = flaky_take  # type: ignore[method-assign]
    done: list[object] = []
    seen = threading.Event()

    def handler(body: object) -> None:
        if body == "boom":
            raise RuntimeError("handler failed")
        done.append(body)
        if body == "last":
            seen.set()

    def bad_backoff(attempt: int) -> float:
        return float("nan")  # a broken retry_backoff must not kill the thread

    with caplog.at_level(logging.WARNING, logger="scalekit.mq"):
        consumer = Consumer(queue, handler, concurrency=1, retry_backoff=bad_backoff).start()
        queue.put("boom")
        queue.put("last")
        assert seen.wait(10)
        assert consumer.running
        consumer.stop(timeout=5)
    assert done == ["last"]
    assert queue.stats().dead_letters == 1
    assert any("taking a message failed" in r.message for r in caplog.records)
    assert any("retry_backoff failed" in r.message for r in caplog.records)


def test_a_failing_settlement_does_not_kill_the_thread() -> None:
    queue = Broker().queue("jobs")
    failed = [0]
    seen = threading.Event()

    def handler(body: object) -> None:
        if body == "second":
            seen.set()

    def broken_ack(self: object) -> None:
        failed[0] += 1
        raise BackendError("the store went away", backend="test")

    consumer = Consumer(queue, handler, concurrency=1)
    from scalekit.mq._memory import _MemoryDelivery

    saved = _MemoryDelivery.ack
    _MemoryDelivery.ack = broken_ack  # type: ignore[method-assign]
    try:
        consumer.start()
        queue.put("first")
        queue.put("second")
        assert seen.wait(10)
        assert consumer.running
    finally:
        consumer.stop(timeout=5)
        _MemoryDelivery.ack = saved  # type: ignore[method-assign]
    assert failed[0] >= 1


@pytest.mark.parametrize(
    ("offset", "data"),
    [
        (16, b"\x00\x03"),  # a page size of 3
        (21, b"\x00"),  # a fixed payload fraction
        (18, b"\x07"),  # a file format version SQLite never writes
    ],
)
def test_a_damaged_header_is_refused_on_open(tmp_path: Path, offset: int, data: bytes) -> None:
    path = tmp_path / "q.db"
    SqliteBackend(path).close()
    raw = bytearray(path.read_bytes())
    raw[offset : offset + len(data)] = data
    path.write_bytes(bytes(raw))
    with pytest.raises(IncompatibleStore, match="damaged"):
        SqliteBackend(path)
    assert path.read_bytes() == bytes(raw)  # left untouched


def test_a_store_missing_a_table_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    SqliteBackend(path).close()
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE mq_dedup")
    conn.close()
    with pytest.raises(IncompatibleStore, match="mq_dedup"):
        SqliteBackend(path)


def test_a_cut_header_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    path.write_bytes(b"SQLite format 3\x00" + b"\x10\x00")
    with pytest.raises(IncompatibleStore, match="cut short"):
        SqliteBackend(path)
