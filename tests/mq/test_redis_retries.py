"""Every Redis script is idempotent by its operation id (issue 13, item 9).

redis-py sends a command again after a lost connection, so a script whose reply
was lost runs twice. Here every script call runs twice with the same arguments,
as that retry would, and the caller must see what one run gives: one message per
put, an ack that succeeded is a success, a take hands out one batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from scalekit.mq import Broker, Queue
from scalekit.mq._redis import RedisStreamsBackend
from tests.mq.env_redis import delete_keys, unique_prefix

# every script that changes something, and the ones that must stay harmless
CHANGING = ("put", "take", "ack", "settle", "purge", "redrive")


class _Twice:
    """A script object that runs its script twice per call (a retried command)."""

    def __init__(self, script: Any, calls: list[str], name: str) -> None:
        self._script = script
        self._calls = calls
        self._name = name

    def __call__(self, keys: Any = None, args: Any = None, client: Any = None) -> Any:
        self._calls.append(self._name)
        self._script(keys=keys, args=args, client=client)  # its reply is "lost"
        return self._script(keys=keys, args=args, client=client)


@pytest.fixture
def twice(redis_url: str) -> Iterator[tuple[Broker, list[str]]]:
    import redis

    client = redis.Redis.from_url(redis_url)
    prefix = unique_prefix()
    backend = RedisStreamsBackend(client, prefix=prefix)
    calls: list[str] = []
    backend._scripts = {
        name: _Twice(script, calls, name) for name, script in backend._scripts.items()
    }
    broker = Broker(backend)
    try:
        yield broker, calls
    finally:
        broker.close()
        delete_keys(client, prefix)
        client.close()


def _queue(broker: Broker, **options: Any) -> Queue:
    return broker.queue("jobs", visibility_timeout=30, **options)


def test_a_put_run_twice_stores_one_message(twice: tuple[Broker, list[str]]) -> None:
    broker, calls = twice
    queue = _queue(broker)
    first = queue.put("a")
    batch = queue.put_many(["b", "c"])
    assert calls.count("put") == 2
    assert queue.stats().ready == 3
    assert [first, *batch] == ["1", "2", "3"]


def test_an_ack_run_twice_succeeds(twice: tuple[Broker, list[str]]) -> None:
    broker, calls = twice
    queue = _queue(broker)
    queue.put("a")
    delivery = queue.get(timeout=0)
    assert delivery is not None
    assert (delivery.body, delivery.attempt) == ("a", 1)
    delivery.ack()  # raised DeliveryExpired when the second run found it gone
    assert "ack" in calls
    stats = queue.stats()
    assert (stats.total, stats.acked, stats.delivered) == (0, 1, 1)


def test_a_take_run_twice_hands_out_one_batch(twice: tuple[Broker, list[str]]) -> None:
    broker, _ = twice
    queue = _queue(broker)
    queue.put_many([f"m{i}" for i in range(6)])
    got = queue.get_many(2)
    assert [d.body for d in got] == ["m0", "m1"]
    stats = queue.stats()
    assert (stats.in_flight, stats.ready, stats.delivered) == (2, 4, 2)
    rest = queue.get_many(10)
    assert [d.body for d in rest] == [f"m{i}" for i in range(2, 6)]
    for delivery in got + rest:
        delivery.ack()
    assert queue.stats().total == 0


def test_settlements_run_twice_settle_once(twice: tuple[Broker, list[str]]) -> None:
    broker, _ = twice
    queue = _queue(broker, max_deliveries=5)
    queue.put_many(["nack", "reject", "delay", "extend"])
    nacked, rejected, delayed, extended = queue.get_many(4)
    nacked.nack()
    rejected.reject("poison")
    delayed.nack(60)
    extended.extend(120)
    stats = queue.stats()
    assert (stats.ready, stats.delayed, stats.in_flight, stats.dead_letters) == (1, 1, 1, 1)
    again = queue.get(timeout=0)
    assert again is not None
    assert (again.body, again.attempt) == ("nack", 2)
    again.ack()
    extended.ack()
    assert queue.stats().total == 1  # the delayed one


def test_purge_and_redrive_run_twice_count_once(twice: tuple[Broker, list[str]]) -> None:
    broker, _ = twice
    queue = _queue(broker)
    queue.put_many(["a", "b", "c"])
    for delivery in queue.get_many(3):
        delivery.reject("poison")
    assert queue.stats().dead_letters == 3
    assert queue.redrive(limit=2) == 2
    stats = queue.stats()
    assert (stats.ready, stats.dead_letters) == (2, 1)
    assert queue.purge() == 2
    assert queue.stats().total == 0
    assert queue.redrive() == 1
    assert queue.stats().ready == 1


def test_a_damaged_entry_goes_to_the_dead_letters(redis_url: str) -> None:
    """An entry whose body is not UTF-8 is dead-lettered, not handed out and not
    raised from the get (issue 13, item 6, on Redis)."""
    import redis

    client = redis.Redis.from_url(redis_url)
    prefix = unique_prefix()
    try:
        with Broker(RedisStreamsBackend(client, prefix=prefix)) as broker:
            queue = _queue(broker)
            queue.put("first")
            first = queue.get(timeout=0)
            assert first is not None
            first.ack()
            stream = f"{prefix}:{{jobs}}:s:0"
            client.xadd(stream, {"i": "99", "k": "s", "d": b"\xff\xfe", "t": "1", "h": "{"})
            queue.put("after")
            got = queue.get(timeout=0)
            assert got is not None
            assert got.body == "after"
            dead = queue.dead_letters.get(timeout=0)
            assert dead is not None
            assert (dead.id, dead.body) == ("99", b"\xff\xfe")
            assert "undecodable" in (dead.dead_letter_reason or "")
            client.xadd(f"{prefix}:{{jobs}}:dlq:s:0", {"i": "100", "k": "j", "d": b"{", "t": "1"})
            raw = queue.dead_letters.get(timeout=0)  # damaged in the dead letters: bytes
            assert raw is not None
            assert (raw.id, raw.body) == ("100", b"{")
            assert "undecodable" in (raw.dead_letter_reason or "")
            queue._check()  # type: ignore[attr-defined]
    finally:
        delete_keys(client, prefix)
        client.close()
