"""What only the Redis Streams backend does: several brokers, each with its own
client as separate processes would have, sharing queues on one server; consumers
that die holding messages; wake-ups across brokers; the key layout; errors.

The queue contract runs on Redis too (tests/mq/env_redis.py); these tests add
what one broker cannot show.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from scalekit.errors import (
    ArgumentTypeError,
    BackendError,
    ConfigurationError,
    DeliveryExpired,
    QueueFull,
)
from scalekit.mq import DEAD_LETTER_REASON, AsyncQueue, Broker, Delivery, Queue
from scalekit.mq._queue import expiry_reason
from scalekit.mq._redis import GROUP, RedisStreamsBackend
from scalekit.mq._redis._queue import RedisQueue
from tests.mq.env_redis import delete_keys, unique_prefix

VT = 0.5

MakeBroker = Callable[..., Broker]


@pytest.fixture
def prefix() -> str:
    return unique_prefix()


@pytest.fixture
def make_broker(redis_url: str, prefix: str) -> Iterator[MakeBroker]:
    """Brokers on one fresh key prefix, each with its own redis client; closed, and
    the prefix's keys deleted, after the test."""
    import redis

    made: list[tuple[Broker, Any]] = []

    def make(**options: Any) -> Broker:
        client = redis.Redis.from_url(redis_url)
        broker = Broker(RedisStreamsBackend(client, prefix=prefix, **options))
        made.append((broker, client))
        return broker

    yield make
    for broker, _ in made:
        broker.close()
    cleaner = redis.Redis.from_url(redis_url)
    delete_keys(cleaner, prefix)
    cleaner.close()
    for _, client in made:
        client.close()


@pytest.fixture
def client(redis_url: str) -> Iterator[Any]:
    """A client of its own for looking at the keys (no flushdb: prefixes isolate)."""
    import redis

    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def check(*queues: Queue) -> None:
    for queue in queues:
        assert isinstance(queue, RedisQueue)
        queue._check()
        queue.dead_letters._check()  # type: ignore[attr-defined]


# -- several brokers, one server ------------------------------------------------


def test_a_message_put_by_one_broker_is_delivered_by_another(make_broker: MakeBroker) -> None:
    producer, consumer = make_broker().queue("jobs"), make_broker().queue("jobs")
    ids = [producer.put({"job": 1}, headers={"trace": "t1"}), producer.put(b"\x00raw")]
    first, second = consumer.get(timeout=1), consumer.get(timeout=1)
    assert first is not None
    assert second is not None
    assert (first.id, first.body, first.headers, first.attempt) == (
        ids[0],
        {"job": 1},
        {"trace": "t1"},
        1,
    )
    assert (second.id, second.body) == (ids[1], b"\x00raw")
    first.ack()
    second.ack()
    assert producer.stats().acked == 2  # counters live in Redis
    check(producer, consumer)


def test_a_blocked_get_is_woken_by_a_put_from_another_broker(make_broker: MakeBroker) -> None:
    # block=10: only the put can explain a quick wake-up, not a timed re-check
    consumer = make_broker(block=10).queue("jobs")
    producer = make_broker().queue("jobs")
    got: list[Any] = []
    woke: list[float] = []

    def wait() -> None:
        got.append(consumer.get(timeout=20))
        woke.append(time.monotonic())

    thread = threading.Thread(target=wait)
    thread.start()
    time.sleep(0.2)  # the getter is blocked in Redis now
    put_at = time.monotonic()
    producer.put("wake up")
    thread.join(5)
    assert not thread.is_alive()
    assert got[0] is not None
    assert got[0].body == "wake up"
    assert woke[0] - put_at < 0.5


def test_a_waiting_async_get_is_woken_by_a_put_from_another_broker(
    make_broker: MakeBroker,
) -> None:
    consumer = AsyncQueue(make_broker(block=10).queue("jobs"))
    producer = make_broker().queue("jobs")

    async def main() -> tuple[Any, float]:
        task = asyncio.create_task(consumer.get(timeout=20))
        await asyncio.sleep(0.2)
        put_at = time.monotonic()
        await asyncio.to_thread(producer.put, "wake up")
        delivery = await task
        return delivery, time.monotonic() - put_at

    delivery, waited = asyncio.run(main())
    assert delivery is not None
    assert delivery.body == "wake up"
    assert waited < 0.5


def test_many_waiting_async_gets_hold_no_threads(make_broker: MakeBroker) -> None:
    """200 tasks wait; an ack (on a worker thread) is not stuck behind them."""
    queue = make_broker(block=10).queue("jobs")
    aqueue = AsyncQueue(queue)

    async def main() -> float:
        waiting = [asyncio.create_task(aqueue.get(timeout=20)) for _ in range(200)]
        await asyncio.sleep(0.2)
        other = make_broker().queue("other")
        other.put("x")
        delivery = other.get(timeout=0)
        assert delivery is not None
        started = time.monotonic()
        await AsyncQueue(other).ack(delivery)
        acked_in = time.monotonic() - started
        queue.put_many(range(200))
        bodies = [d.body for d in await asyncio.gather(*waiting) if d is not None]
        assert sorted(bodies) == list(range(200))
        return acked_in

    assert asyncio.run(main()) < 0.5
    assert queue.stats().in_flight == 200


CHILD = """
import os, sys, time
import redis
from scalekit.mq import Broker
from scalekit.mq._redis import RedisStreamsBackend

url, prefix = sys.argv[1], sys.argv[2]
queue = Broker(RedisStreamsBackend(redis.Redis.from_url(url), prefix=prefix)).queue(
    "jobs", visibility_timeout=0.5
)
time.sleep(0.3)  # the parent's get is blocked by now
queue.put_many(list(range(100)))
print(time.time(), flush=True)
held = queue.get(timeout=5)  # then die holding it, without a word to Redis
print(held.body, flush=True)
os._exit(0)
"""


def test_another_process_wakes_a_blocked_get_and_dies_holding_a_message(
    make_broker: MakeBroker, redis_url: str, prefix: str
) -> None:
    import subprocess
    import sys

    queue = make_broker(block=10).queue("jobs", visibility_timeout=VT)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, redis_url, prefix], stdout=subprocess.PIPE, text=True
    )
    first = queue.get(timeout=20)
    woke = time.time()
    out, _ = child.communicate(timeout=20)
    put_at, held_body = out.split()
    assert first is not None
    assert woke - float(put_at) < 0.5  # woken by the other process's put, not by block=10
    rest = queue.get_many(200, timeout=0)
    assert sorted([first.body, *(d.body for d in rest)]) == sorted(
        set(range(100)) - {int(held_body)}
    )
    for delivery in [first, *rest]:
        delivery.ack()
    again = queue.get(timeout=5)  # after the dead child's visibility timeout
    assert again is not None
    assert (again.body, again.attempt) == (int(held_body), 2)


def test_a_consumer_that_dies_holding_a_message(make_broker: MakeBroker) -> None:
    doomed = make_broker().queue("jobs", visibility_timeout=VT)
    survivor = make_broker().queue("jobs", visibility_timeout=VT)
    doomed.put("important")
    held = doomed.get(timeout=0)
    assert held is not None
    doomed_client = doomed._backend.client  # type: ignore[attr-defined]
    doomed_client.connection_pool.disconnect()  # the process is gone
    assert survivor.get(timeout=0) is None  # invisible until the visibility timeout
    again = survivor.get(timeout=5)
    assert again is not None
    assert (again.id, again.body, again.attempt) == (held.id, "important", 2)
    with pytest.raises(DeliveryExpired):
        held.ack()  # the zombie comes back: too late
    again.ack()
    stats = survivor.stats()
    assert (stats.total, stats.delivered, stats.redelivered, stats.acked) == (0, 2, 1, 1)
    check(survivor)


def test_a_message_that_times_out_on_its_last_delivery_is_dead_lettered(
    make_broker: MakeBroker,
) -> None:
    one, other = (
        make_broker().queue("jobs", visibility_timeout=VT, max_deliveries=1) for _ in "ab"
    )
    one.put("slow")
    assert one.get(timeout=0) is not None
    time.sleep(VT + 0.2)
    assert other.get(timeout=0) is None
    dead = other.dead_letters.get(timeout=0)
    assert dead is not None
    assert dead.headers[DEAD_LETTER_REASON] == expiry_reason(1)  # the Lua text is Python's
    assert other.stats().dead_lettered == 1


def test_extend_past_the_visibility_timeout(make_broker: MakeBroker) -> None:
    """XCLAIM cannot push a delivery time into the future; the backend keeps the
    deadline aside and hands the message back to its owner until then."""
    worker = make_broker().queue("jobs", visibility_timeout=VT)
    thief = make_broker().queue("jobs", visibility_timeout=VT)
    worker.put("long job")
    delivery = worker.get(timeout=0)
    assert delivery is not None
    delivery.extend(VT * 3)
    for _ in range(4):
        time.sleep(VT / 2)
        assert thief.get(timeout=0) is None  # claimed and handed back, unseen
        assert thief.stats().in_flight == 1
    check(worker)
    delivery.extend(VT * 3)  # a heartbeat, still the owner
    delivery.ack()
    assert thief.stats().total == 0
    check(worker)


def test_an_extension_runs_out(make_broker: MakeBroker) -> None:
    worker = make_broker().queue("jobs", visibility_timeout=VT)
    thief = make_broker().queue("jobs", visibility_timeout=VT)
    worker.put("long job")
    delivery = worker.get(timeout=0)
    assert delivery is not None
    delivery.extend(VT * 2)
    time.sleep(VT * 2 + 0.2)
    again = thief.get(timeout=0)
    assert again is not None
    assert again.attempt == 2
    with pytest.raises(DeliveryExpired):
        delivery.ack()
    again.ack()
    check(thief)


def test_a_blocked_put_is_woken_by_an_ack_from_another_broker(make_broker: MakeBroker) -> None:
    producer = make_broker(block=10).queue("jobs", maxsize=1)
    consumer = make_broker().queue("jobs", maxsize=1)
    producer.put("first")
    done: list[float] = []

    def put_second() -> None:
        producer.put("second", timeout=20)
        done.append(time.monotonic())

    thread = threading.Thread(target=put_second)
    thread.start()
    time.sleep(0.2)
    delivery = consumer.get(timeout=0)
    assert delivery is not None
    acked_at = time.monotonic()
    delivery.ack()
    thread.join(5)
    assert done
    assert done[0] - acked_at < 0.5
    with pytest.raises(QueueFull):
        consumer.put("third", timeout=0)


def test_a_delayed_message_wakes_a_blocked_getter_when_due(make_broker: MakeBroker) -> None:
    consumer = make_broker(block=10).queue("jobs")
    producer = make_broker().queue("jobs")
    producer.put("later", delay=0.3)
    started = time.monotonic()
    delivery = consumer.get(timeout=5)
    assert delivery is not None
    assert delivery.body == "later"
    assert 0.25 < time.monotonic() - started < 1.5


def test_priorities_across_brokers(make_broker: MakeBroker, client: Any, prefix: str) -> None:
    producer, consumer = make_broker().queue("jobs"), make_broker().queue("jobs")
    for body, priority in [("low", -1), ("normal", 0), ("high", 5), ("urgent", 9), ("high2", 5)]:
        producer.put(body, priority=priority)
    got = [consumer.get(timeout=0) for _ in range(5)]
    assert [d.body for d in got if d is not None] == ["urgent", "high", "high2", "normal", "low"]
    assert [d.priority for d in got if d is not None] == [9, 5, 5, 0, -1]
    levels = client.zrange(f"{prefix}:{{jobs}}:levels", 0, -1)
    assert levels == [b"-1", b"0", b"5", b"9"]
    for delivery in got:
        assert delivery is not None
        delivery.ack()
    assert client.zrange(f"{prefix}:{{jobs}}:levels", 0, -1) == [b"0"]  # emptied levels go
    assert not client.exists(f"{prefix}:{{jobs}}:s:9")
    with pytest.raises(ConfigurationError, match="priority"):
        producer.put("x", priority=2**60)
    check(producer)


def test_dedup_and_stats_are_shared(make_broker: MakeBroker) -> None:
    one, two = make_broker().queue("jobs"), make_broker().queue("jobs")
    first = one.put("charge", dedup_key="order-7")
    assert two.put("charge", dedup_key="order-7") == first
    assert two.put("charge", dedup_key="order-7}:s:0 {weird}") != first
    assert one.stats().ready == 2


def test_subscriptions_are_seen_across_brokers(make_broker: MakeBroker) -> None:
    subscriber, publisher = make_broker(), make_broker()
    billing = subscriber.topic("orders").subscribe("billing", maxsize=1)
    subscriber.topic("orders").subscribe("shipping")
    topic = publisher.topic("orders")
    assert topic.subscribers == ["billing", "shipping"]
    ids = topic.publish({"order": 7})
    assert set(ids) == {"billing", "shipping"}
    delivery = billing.get(timeout=0)
    assert delivery is not None
    assert delivery.body == {"order": 7}
    # the publisher opened the group's queue without options: it uses the stored ones
    assert publisher._open("orders/billing", None).options.maxsize == 1


def test_a_publisher_honours_a_subscriber_queues_maxsize(make_broker: MakeBroker) -> None:
    subscriber, publisher = make_broker(), make_broker()
    subscriber.topic("orders").subscribe("billing", maxsize=1)
    topic = publisher.topic("orders")
    topic.publish(1)
    with pytest.raises(QueueFull, match="billing"):
        topic.publish(2, timeout=0)
    topic.unsubscribe("billing")
    assert subscriber.topic("orders").subscribers == []
    assert topic.publish(3) == {}


# -- no loss ------------------------------------------------------------------


@pytest.mark.slow
def test_no_loss_with_crashing_and_nacking_consumers_in_several_brokers(
    make_broker: MakeBroker,
) -> None:
    """2,000 messages; four consumer threads, each with brokers of its own, take
    batches and, per message, crash holding it (10%; and now and then the whole
    broker dies), nack it (15%, half with a delay) or ack it. Every message ends
    acked exactly once or dead-lettered, never both."""
    n = 2000
    options = {"visibility_timeout": VT, "max_deliveries": 4}
    producer = make_broker().queue("work", **options)
    for start in range(0, n, 500):
        producer.put_many(range(start, start + 500))
    acked: Counter[int] = Counter()
    lock = threading.Lock()
    errors: list[BaseException] = []
    expired: list[int] = []
    done = threading.Event()

    def consume(seed: int) -> None:
        rng = random.Random(seed)
        queue = make_broker().queue("work", **options)
        try:
            while not done.is_set():
                batch = queue.get_many(rng.randint(1, 50), timeout=0.2)
                for delivery in batch:
                    roll = rng.random()
                    if roll < 0.10:
                        continue  # crashed holding it
                    try:
                        if roll < 0.25:
                            delivery.nack(delay=rng.choice([0.0, 0.05]))
                        else:
                            delivery.ack()
                            with lock:
                                acked[delivery.body] += 1
                    except DeliveryExpired:
                        # a stalled machine held the batch past the visibility timeout:
                        # refused, and delivered again, as a crash would have been
                        with lock:
                            expired.append(delivery.body)
                if rng.random() < 0.02:  # the process dies and a new one starts
                    queue = make_broker().queue("work", **options)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=consume, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        stats = producer.stats()
        if stats.total == 0:
            break
        time.sleep(0.1)
    done.set()
    for thread in threads:
        thread.join(10)
    assert not errors
    dead = Counter(d.body for d in iter(lambda: producer.dead_letters.get(timeout=0), None))
    stats = producer.stats()
    assert stats.total == 0
    assert set(acked) | set(dead) == set(range(n))
    assert not set(acked) & set(dead)
    assert max(acked.values()) == 1
    assert not dead or max(dead.values()) == 1
    assert stats.acked == sum(acked.values())
    assert stats.dead_lettered == sum(dead.values())
    check(producer)


# -- async cancellation -------------------------------------------------------


def test_a_cancelled_async_get_gives_its_message_back(make_broker: MakeBroker) -> None:
    queue = make_broker().queue("jobs")
    assert isinstance(queue, RedisQueue)
    taking = threading.Event()
    original = queue._take_now

    def slow_take(n: int, arm: bool) -> tuple[list[Delivery], int]:
        got = original(n, arm)
        if got:
            taking.set()
            time.sleep(0.3)  # the task is cancelled while its thread holds the message
        return got

    queue._take_now = slow_take  # type: ignore[method-assign]
    queue.put("precious")

    async def main() -> None:
        task = asyncio.create_task(AsyncQueue(queue).get(timeout=5))
        await asyncio.to_thread(taking.wait, 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    queue._take_now = original  # type: ignore[method-assign]
    again = queue.get(timeout=2)
    assert again is not None
    assert (again.body, again.attempt) == ("precious", 1)  # given back, same attempt
    stats = queue.stats()
    assert (stats.delivered, stats.redelivered) == (1, 0)
    again.ack()


def test_give_back_keeps_the_attempt_number(make_broker: MakeBroker) -> None:
    queue = make_broker().queue("jobs")
    assert isinstance(queue, RedisQueue)
    queue.put("x")
    first = queue.get(timeout=0)
    assert first is not None
    first.nack()
    second = queue.get(timeout=0)
    assert second is not None
    assert second.attempt == 2
    queue._give_back([second])
    third = queue.get(timeout=0)
    assert third is not None
    assert third.attempt == 2
    with pytest.raises(DeliveryExpired):
        second.ack()
    third.ack()
    assert queue.stats().redelivered == 1


# -- keys, consumers, configuration, errors ---------------------------------------


def test_keys_live_under_the_prefix_in_one_hash_slot(
    make_broker: MakeBroker, client: Any, prefix: str
) -> None:
    broker = make_broker()
    queue = broker.queue("jobs", maxsize=10)
    queue.put("now")
    queue.put("later", delay=60, priority=3)
    queue.put("once", dedup_key="k")
    delivery = queue.get(timeout=0)
    assert delivery is not None
    delivery.reject("bad")
    broker.topic("events").subscribe("audit")
    keys = sorted(key.decode() for key in client.scan_iter(match=f"{prefix}:*"))
    assert all(key.startswith(prefix + ":") for key in keys)
    queue_keys = [key for key in keys if ":topic:" not in key]
    assert {key.split("}", 1)[0] for key in queue_keys} == {
        f"{prefix}:{{jobs",
        f"{prefix}:{{events/audit",
    }
    assert f"{prefix}:{{jobs}}:s:0" in keys
    assert f"{prefix}:{{jobs}}:dlq:s:0" in keys
    assert f"{prefix}:{{jobs}}:delayed" in keys
    assert f"{prefix}:topic:{{events}}" in keys
    entry = client.xrange(f"{prefix}:{{jobs}}:dlq:s:0")[0][1]
    assert entry[b"r"] == b"bad"
    assert entry[b"q"] == b"jobs"
    assert {b"i", b"k", b"d", b"t", b"a"} <= set(entry)
    check(queue)


def test_close_deletes_the_handles_consumers_that_hold_nothing(
    make_broker: MakeBroker, client: Any, prefix: str
) -> None:
    holder, idle = make_broker().queue("jobs"), make_broker().queue("jobs")
    assert isinstance(holder, RedisQueue)
    assert isinstance(idle, RedisQueue)
    holder.put_many(["a", "b"])
    held = holder.get(timeout=0)
    done = idle.get(timeout=0)
    assert held is not None
    assert done is not None
    done.ack()
    assert idle.get(timeout=0.05) is None  # it blocked on the signal stream
    stream, signal = f"{prefix}:{{jobs}}:s:0", f"{prefix}:{{jobs}}:signal"

    def consumers(key: str) -> dict[str, int]:
        return {c["name"].decode(): c["pending"] for c in client.xinfo_consumers(key, GROUP)}

    assert consumers(stream) == {holder.consumer: 1, idle.consumer: 0}
    idle.close()
    holder.close()
    assert consumers(stream) == {holder.consumer: 1}  # deleting it would orphan "a"
    assert idle.consumer not in consumers(signal)
    held.ack()  # a closed handle still settles what it holds


def test_bad_configuration_is_refused(redis_url: str) -> None:
    import redis

    with (
        redis.Redis.from_url(redis_url, decode_responses=True) as decoding,
        pytest.raises(ConfigurationError, match="decode_responses"),
    ):
        RedisStreamsBackend(decoding)
    with redis.Redis.from_url(redis_url, socket_timeout=0.5) as impatient:
        with pytest.raises(ConfigurationError, match="socket_timeout"):
            RedisStreamsBackend(impatient)
        RedisStreamsBackend(impatient, block=0.25)
    with redis.Redis.from_url(redis_url) as plain:
        for bad in ({"block": 0}, {"block": 61}, {"prefix": ""}):
            with pytest.raises(ConfigurationError):
                RedisStreamsBackend(plain, **bad)
        with pytest.raises(ArgumentTypeError, match="block"):
            RedisStreamsBackend(plain, block=True)


def test_the_same_options_or_none_in_one_backend(make_broker: MakeBroker) -> None:
    broker = make_broker()
    queue = broker.queue("jobs", visibility_timeout=5)
    assert broker.backend.open_queue("jobs", None, broker._clock) is queue
    with pytest.raises(ConfigurationError):
        broker.backend.open_queue("jobs", queue.options.__class__(), broker._clock)


def test_an_unreachable_server_gives_backend_errors() -> None:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    with redis.Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), 0)) as nowhere:
        backend = RedisStreamsBackend(nowhere)
        with pytest.raises(BackendError) as raised:
            Broker(backend).queue("jobs")
    assert raised.value.backend == "redis"
    assert isinstance(raised.value.__cause__, redis.ConnectionError)


def test_a_redis_error_is_a_backend_error(
    make_broker: MakeBroker, client: Any, prefix: str
) -> None:
    import redis

    queue = make_broker().queue("jobs")
    client.set(f"{prefix}:{{jobs}}:levels", "not a sorted set")
    for action in (lambda: queue.put("x"), lambda: queue.get(timeout=0), queue.stats):
        with pytest.raises(BackendError, match="jobs") as raised:
            action()
        assert raised.value.backend == "redis"
        assert isinstance(raised.value.__cause__, redis.ResponseError)
    client.delete(f"{prefix}:{{jobs}}:levels")
    queue.put("fine again")
    delivery = queue.get(timeout=0)
    assert delivery is not None
    stream = f"{prefix}:{{jobs}}:s:0"
    client.rename(stream, stream + ":aside")
    client.set(stream, "not a stream")
    with pytest.raises(BackendError, match="ack"):
        delivery.ack()
    client.delete(stream)
    client.rename(stream + ":aside", stream)
    delivery.ack()  # still its owner: the failed ack changed nothing
    assert queue.stats().total == 0


def test_importing_scalekit_mq_does_not_import_redis() -> None:
    import subprocess
    import sys

    code = (
        "import sys; import scalekit.mq; import scalekit.mq._redis; "
        "assert 'redis' not in sys.modules, 'redis was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- the model-based state machine, without the passing of time ------------------


def test_state_machine_against_the_model(redis_url: str) -> None:
    """tests/mq/test_stateful.py's machine on Redis: random puts (priorities,
    delays), gets, acks, nacks, rejects, extends and redrives, checked against the
    reference model after every step, and the keys' invariants at the end of each
    run. Redis keeps its own time, so the rule that moves a fake clock is left out:
    nothing falls due during a run (VT 10 s, delays of 3 s and more)."""
    import redis
    from hypothesis import settings
    from hypothesis.stateful import run_state_machine_as_test

    from tests.mq.test_stateful import QueueMachine

    class RedisQueueMachine(QueueMachine):
        def __init__(self) -> None:
            self.client = redis.Redis.from_url(redis_url)
            self.prefix = unique_prefix()
            super().__init__()
            self.clock = time.time  # type: ignore[assignment]  # the model reads real time

        def make_broker(self, clock: Any) -> Broker:  # type: ignore[override]
            return Broker(RedisStreamsBackend(self.client, prefix=self.prefix))

        def advance(self, seconds: float) -> None:  # no longer a rule: time is Redis's
            raise AssertionError("not a rule on Redis")

        def teardown(self) -> None:
            check(self.queue)
            super().teardown()
            delete_keys(self.client, self.prefix)
            self.client.close()

    run_state_machine_as_test(
        RedisQueueMachine,
        settings=settings(max_examples=60, stateful_step_count=40, deadline=None),
    )


def test_closing_the_broker_wakes_a_getter_blocked_on_the_dead_letters(
    make_broker: MakeBroker,
) -> None:
    """The dead-letter queue's handle is closed with its queue's, as on the other
    backends: a consumer of the dead letters is not left waiting out its timeout."""
    broker = make_broker(block=0.2)
    dead_letters = broker.queue("jobs").dead_letters
    returned = threading.Event()

    def consume() -> None:
        dead_letters.get(timeout=30)
        returned.set()

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    time.sleep(0.3)
    assert not returned.is_set()
    broker.close()
    assert returned.wait(5)
    assert dead_letters.closed


def _kill_blocked(client: Any, name: str, command: str) -> int:
    """CLIENT KILL the connections named ``name`` blocked in ``command``; how many."""
    deadline = time.monotonic() + 5
    killed = 0
    while not killed and time.monotonic() < deadline:
        for entry in client.client_list():
            if entry.get("name") == name and entry.get("cmd") == command:
                client.client_kill_filter(_id=entry["id"])
                killed += 1
        time.sleep(0.01)
    return killed


@pytest.mark.parametrize("blocked", ["get", "put"])
def test_a_blocked_call_outlives_its_connection_being_killed(
    redis_url: str, prefix: str, client: Any, blocked: str
) -> None:
    """CLIENT KILL (or an idle timeout of a proxy) of the connection a get or a put
    blocks on loses nothing: the call looks again, and goes through when it can."""
    import redis

    name = f"kill-{blocked}-{prefix.rsplit(':', 1)[-1]}"[:40]
    own = redis.Redis.from_url(redis_url, client_name=name)
    broker = Broker(RedisStreamsBackend(own, prefix=prefix, block=2.0))
    other = Broker(RedisStreamsBackend(client, prefix=prefix, block=2.0))
    queue = broker.queue("jobs", maxsize=1)
    outcome: list[Any] = []
    if blocked == "put":
        other.queue("jobs", maxsize=1).put("first")

    def call() -> None:
        try:
            if blocked == "get":
                outcome.append(queue.get(timeout=10))
            else:
                outcome.append(queue.put("second", timeout=10))
        except Exception as exc:  # pragma: no cover - what the test looks for
            outcome.append(exc)

    thread = threading.Thread(target=call, daemon=True)
    try:
        thread.start()
        assert _kill_blocked(client, name, "xreadgroup" if blocked == "get" else "xread")
        mine = other.queue("jobs", maxsize=1)
        if blocked == "get":
            mine.put("after the kill")
        else:
            delivery = mine.get(timeout=5)
            assert delivery is not None
            delivery.ack()  # room for the blocked put
        thread.join(10)
        assert len(outcome) == 1
        assert not isinstance(outcome[0], Exception), outcome
        if blocked == "get":
            assert outcome[0].body == "after the kill"
            outcome[0].ack()
        else:
            delivery = mine.get(timeout=5)
            assert delivery is not None
            assert delivery.body == "second"
            delivery.ack()
    finally:
        broker.close()
        other.close()
        delete_keys(client, prefix)
        own.close()
