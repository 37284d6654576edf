"""The events operators need, logged through ``scalekit.<block>``: each block is
driven to the transition, and the record's logger, level, message and ``extra``
fields are checked; a steady state logs nothing, and no secret reaches a log."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from scalekit.balancing import FailoverGroups, HealthChecker, OutlierEjection, RoundRobin
from scalekit.errors import NoBackendAvailable, SessionConflict
from scalekit.replication import ReplicaRouter
from scalekit.sessions import MemorySessionStore
from scalekit.sharding import AsyncMigration, HashRing, Migration
from scalekit.sharding._progress import ProgressLog
from scalekit.testing import FakeClock
from tests.contracts.queue_contract import QueueEnv
from tests.mq import env_redis, env_sqlite
from tests.services import free_port, redis_server


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="scalekit")
    return caplog


def records(caplog: pytest.LogCaptureFixture, logger: str) -> list[logging.LogRecord]:
    """The records of ``logger`` at INFO or above (DEBUG lines are not events)."""
    return [r for r in caplog.records if r.name == logger and r.levelno >= logging.INFO]


def taken(caplog: pytest.LogCaptureFixture, logger: str) -> list[logging.LogRecord]:
    """The records of ``logger`` so far, cleared, so the next step sees only its own."""
    found = records(caplog, logger)
    caplog.clear()
    return found


def only(found: list[logging.LogRecord]) -> logging.LogRecord:
    assert len(found) == 1, [r.getMessage() for r in found]
    return found[0]


# -- balancing ---------------------------------------------------------------------


def test_an_ejection_and_the_readmission_log_once_each(logs: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    policy = OutlierEjection(consecutive_failures=2, base_ejection=10, max_ejection=10)
    balancer = RoundRobin(["a", "b", "c"], ejection=policy, clock=clock)
    for _ in range(30):
        balancer.report(balancer.pick(), True)
    assert taken(logs, "scalekit.balancing") == []  # healthy traffic logs nothing

    balancer.report("a", False)
    balancer.report("a", False)
    record = only(taken(logs, "scalekit.balancing"))
    assert record.levelno == logging.WARNING
    assert record.getMessage() == "backend 'a' ejected for 10 s after 2 failures in a row"
    assert record.backend == "a"  # type: ignore[attr-defined]
    assert record.reason == "consecutive failures"  # type: ignore[attr-defined]
    assert (record.failures, record.seconds, record.ejections) == (2, 10, 1)  # type: ignore[attr-defined]

    for _ in range(20):  # ejected: picks and late failures log nothing more
        assert balancer.pick() != "a"
    balancer.report("a", False)
    assert taken(logs, "scalekit.balancing") == []

    clock.advance(10)
    assert "a" in [balancer.pick() for _ in range(3)]
    record = only(taken(logs, "scalekit.balancing"))
    assert record.levelno == logging.INFO
    assert record.getMessage() == "backend 'a' re-admitted: its ejection ran out"
    assert (record.backend, record.reason) == ("a", "ejection ended")  # type: ignore[attr-defined]
    for _ in range(20):
        balancer.pick()
    assert taken(logs, "scalekit.balancing") == []


def test_health_checks_log_down_once_and_up_once(logs: pytest.LogCaptureFixture) -> None:
    balancer = RoundRobin(["a", "b"])
    refusing: set[str] = set()

    def check(backend: str) -> bool:
        if backend in refusing:
            raise ConnectionRefusedError("refused")
        return True

    checker = HealthChecker(balancer, check, fall=2, rise=2, timeout=5)
    checker.check_all()
    checker.check_all()
    assert taken(logs, "scalekit.balancing") == []

    refusing.add("b")
    checker.check_all()
    assert taken(logs, "scalekit.balancing") == []  # one failed check does not flap it
    checker.check_all()
    record = only(taken(logs, "scalekit.balancing"))
    assert record.levelno == logging.WARNING
    assert record.getMessage() == (
        "backend 'b' marked down: 2 health checks failed in a row "
        "(last error: ConnectionRefusedError('refused'))"
    )
    assert record.backend == "b"  # type: ignore[attr-defined]
    assert record.reason == "health check"  # type: ignore[attr-defined]
    assert record.checks == 2  # type: ignore[attr-defined]
    assert record.error == "ConnectionRefusedError('refused')"  # type: ignore[attr-defined]
    assert balancer.healthy() == ("a",)
    checker.check_all()
    assert taken(logs, "scalekit.balancing") == []  # still down: no new line

    refusing.clear()
    checker.check_all()
    assert taken(logs, "scalekit.balancing") == []
    checker.check_all()
    record = only(taken(logs, "scalekit.balancing"))
    assert record.levelno == logging.INFO
    assert record.getMessage() == "backend 'b' re-admitted: 2 health checks passed in a row"
    assert (record.backend, record.reason, record.checks) == ("b", "health check", 2)  # type: ignore[attr-defined]
    assert balancer.healthy() == ("a", "b")


def test_failover_between_groups_logs_each_change(logs: pytest.LogCaptureFixture) -> None:
    east = RoundRobin(["e1", "e2"])
    west = RoundRobin(["w1"])
    groups = FailoverGroups([east, west], rng=random.Random(1))
    for _ in range(10):
        assert groups.pick().startswith("e")
    assert taken(logs, "scalekit.balancing") == []

    groups.mark_down("e1")
    groups.mark_down("e2")
    assert groups.pick() == "w1"
    record = only(taken(logs, "scalekit.balancing"))
    assert record.levelno == logging.WARNING
    assert record.getMessage() == "failover: traffic now on groups (1,) (was on (0,))"
    assert record.groups == (1,)  # type: ignore[attr-defined]
    assert record.previous == (0,)  # type: ignore[attr-defined]
    assert record.shares == (0.0, 1.0)  # type: ignore[attr-defined]
    for _ in range(10):
        groups.pick()
    assert taken(logs, "scalekit.balancing") == []

    groups.mark_up("e1")  # half of east: 0.5 * 1.4 = 70 % of the traffic
    groups.pick()
    record = only(taken(logs, "scalekit.balancing"))
    assert record.levelno == logging.INFO
    assert record.getMessage() == "failover: traffic now on groups (0, 1) (was on (1,))"
    assert record.shares == (0.7, 0.3)  # type: ignore[attr-defined]

    groups.mark_down("e1")
    groups.mark_down("w1")
    with pytest.raises(NoBackendAvailable):
        groups.pick()
    record = only(taken(logs, "scalekit.balancing"))
    assert record.levelno == logging.WARNING
    assert record.getMessage() == "failover: no group has a healthy backend"
    assert (record.groups, record.previous, record.shares) == ((), (0, 1), None)  # type: ignore[attr-defined]

    groups.mark_up("e1")
    groups.mark_up("e2")
    groups.mark_up("w1")
    assert groups.pick().startswith("e")
    record = only(taken(logs, "scalekit.balancing"))
    assert record.levelno == logging.INFO
    assert record.getMessage() == "failover: traffic now on groups (0,) (was on ())"


# -- mq --------------------------------------------------------------------------------


def _memory_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[QueueEnv]:
    from scalekit.mq import Broker, MemoryBackend

    clock = FakeClock(1_700_000_000.0)
    broker = Broker(MemoryBackend(), clock=clock)
    yield QueueEnv(broker, clock.advance, fake_time=True)
    broker.close()


_QUEUE_ENVS: dict[str, Callable[[pytest.FixtureRequest, Path], Iterator[QueueEnv]]] = {
    "memory": _memory_env,
    "sqlite": env_sqlite.sqlite_env,
    "redis": env_redis.redis_env,
}


@pytest.fixture(
    params=["memory", "sqlite", pytest.param("redis", marks=pytest.mark.redis)],
)
def queue_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[QueueEnv]:
    yield from _QUEUE_ENVS[request.param](request, tmp_path)


def test_a_dead_lettered_message_logs_queue_reason_and_deliveries(
    logs: pytest.LogCaptureFixture, queue_env: QueueEnv
) -> None:
    queue = queue_env.queue("emails", max_deliveries=2)
    queue.put({"to": "someone@example.com", "token": "s3cret-body"})
    delivery = queue.get(timeout=1)
    assert delivery is not None
    delivery.ack()
    assert taken(logs, "scalekit.mq") == []  # a message handled logs nothing

    queue.put({"to": "someone@example.com", "token": "s3cret-body"})
    first = queue.get(timeout=1)
    assert first is not None
    first.nack(reason="smtp down")  # delivery 1 of 2: delivered again, no line
    assert taken(logs, "scalekit.mq") == []
    second = queue.get(timeout=1)
    assert second is not None
    assert second.id == first.id
    second.nack(reason="smtp down")
    record = only(records(logs, "scalekit.mq"))
    assert record.levelno == logging.WARNING
    assert record.getMessage() == (
        f"queue 'emails': message {first.id} dead-lettered after 2 deliveries: "
        "nacked on delivery 2: smtp down"
    )
    assert record.queue == "emails"  # type: ignore[attr-defined]
    assert record.message_id == first.id  # type: ignore[attr-defined]
    assert record.reason == "nacked on delivery 2: smtp down"  # type: ignore[attr-defined]
    assert record.deliveries == 2  # type: ignore[attr-defined]
    assert "s3cret-body" not in logs.text
    logs.clear()

    queue.put({"to": "nobody", "token": "s3cret-body"})
    third = queue.get(timeout=1)
    assert third is not None
    third.reject("bad address")
    record = only(records(logs, "scalekit.mq"))
    assert (record.queue, record.message_id, record.reason, record.deliveries) == (  # type: ignore[attr-defined]
        "emails",
        third.id,
        "bad address",
        1,
    )
    assert "s3cret-body" not in logs.text
    buried = [queue.dead_letters.get(timeout=1) for _ in range(2)]
    assert [(d.id, d.dead_letter_reason) for d in buried if d is not None] == [
        (first.id, "nacked on delivery 2: smtp down"),
        (third.id, "bad address"),
    ]  # the lines match what happened


@pytest.mark.parametrize("found_by", ["get", "stats"])
def test_a_message_dead_lettered_by_its_visibility_timeout_logs_once(
    logs: pytest.LogCaptureFixture, queue_env: QueueEnv, found_by: str
) -> None:
    """The backend finds the expired last delivery itself (on Redis, inside a
    script run by a get or by stats()): the line is logged all the same."""
    queue = queue_env.queue("emails", visibility_timeout=0.5, max_deliveries=1)
    queue.put({"to": "someone@example.com", "token": "s3cret-body"})
    first = queue.get(timeout=0)
    assert first is not None
    assert taken(logs, "scalekit.mq") == []
    queue_env.advance(0.8)
    if found_by == "get":
        assert queue.get(timeout=0) is None
    else:
        assert queue.stats().dead_lettered == 1
    record = only(taken(logs, "scalekit.mq"))
    assert record.levelno == logging.WARNING
    assert (record.queue, record.message_id, record.deliveries) == ("emails", first.id, 1)  # type: ignore[attr-defined]
    assert "visibility timeout" in record.reason  # type: ignore[attr-defined]
    assert "s3cret-body" not in logs.text
    queue.stats()
    assert queue.get(timeout=0) is None
    assert taken(logs, "scalekit.mq") == []  # logged once, not at every look


# -- sharding ----------------------------------------------------------------------------


def _stores(count: int = 1000) -> tuple[HashRing[str], dict[str, dict[str, int]]]:
    ring: HashRing[str] = HashRing(["a", "b"], vnodes=64)
    stores: dict[str, dict[str, int]] = {"a": {}, "b": {}, "c": {}}
    for i in range(count):
        stores[ring.node_for(f"k{i}")][f"k{i}"] = i
    return ring, stores


def test_a_migration_logs_start_every_tenth_and_done(logs: pytest.LogCaptureFixture) -> None:
    ring, stores = _stores()
    migration = Migration(ring.plan_add("c"), stores, batch_size=50)
    report = migration.run()
    assert report.done
    found = records(logs, "scalekit.sharding")
    assert all(r.levelno == logging.INFO for r in found)
    messages = [r.getMessage() for r in found]
    assert messages[0] == "resharding started (Migration): 1000 keys to examine"
    steps = found[1:-1]  # a line as each tenth is passed (a source's last batch is short)
    assert [int(r.percent // 10) for r in steps] == list(range(1, 10))  # type: ignore[attr-defined]
    for r in steps:
        examined, moved = r.examined, r.moved  # type: ignore[attr-defined]
        assert r.getMessage() == (
            f"resharding (Migration): {examined}/1000 keys examined "
            f"({examined / 10:.0f}%), {moved} keys moved"
        )
        assert r.percent == round(examined / 10, 1)  # type: ignore[attr-defined]
    assert (
        messages[-1]
        == f"resharding done (Migration): 1000 keys examined, {report.moved} keys moved"
    )
    last = found[-1]
    assert (last.resharder, last.examined, last.total, last.moved, last.percent) == (  # type: ignore[attr-defined]
        "Migration",
        1000,
        1000,
        report.moved,
        100.0,
    )
    assert 0 < report.moved == len(stores["c"])
    logs.clear()
    assert migration.run().done  # nothing left: no more lines
    assert records(logs, "scalekit.sharding") == []


def test_a_stopped_migration_logs_where_it_stopped(logs: pytest.LogCaptureFixture) -> None:
    ring, stores = _stores()
    holder: list[Migration[str]] = []

    def stop_at_200(progress: Any) -> None:
        if progress.examined >= 200:
            holder[0].stop()

    migration = Migration(ring.plan_add("c"), stores, batch_size=50, progress=stop_at_200)
    holder.append(migration)
    report = migration.run()
    assert report.examined == 200
    record = records(logs, "scalekit.sharding")[-1]
    assert record.levelno == logging.INFO
    assert record.getMessage() == (
        f"resharding stopped (Migration) at 200/1000 keys examined, {report.moved} keys moved"
    )
    assert (record.examined, record.total, record.percent) == (200, 1000, 20.0)  # type: ignore[attr-defined]
    logs.clear()
    migration.configure(progress=False)
    assert migration.run().done
    messages = [r.getMessage() for r in records(logs, "scalekit.sharding")]
    assert not any("started" in m for m in messages)  # a resumed move does not start again
    assert messages[-1].startswith("resharding done (Migration): 1000 keys examined")


class _AsyncDict:
    """A minimal AsyncStore over a dict (no TTLs)."""

    def __init__(self, data: dict[str, int]) -> None:
        self.data = data

    async def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    async def set(self, key: str, value: Any, *, ttl: float | None = None) -> None:
        self.data[key] = value

    async def add(self, key: str, value: Any, *, ttl: float | None = None) -> bool:
        if key in self.data:
            return False
        self.data[key] = value
        return True

    async def ttl_of(self, key: str) -> float | None:
        return None

    async def delete(self, key: str) -> bool:
        return self.data.pop(key, None) is not None

    def keys(self) -> list[str]:
        return list(self.data)


def test_an_async_migration_logs_start_and_done(logs: pytest.LogCaptureFixture) -> None:
    ring, stores = _stores(300)
    migration = AsyncMigration(
        ring.plan_add("c"), {n: _AsyncDict(d) for n, d in stores.items()}, batch_size=100
    )
    report = asyncio.run(migration.run())
    assert report.done
    found = records(logs, "scalekit.sharding")
    assert found[0].getMessage() == "resharding started (AsyncMigration): 300 keys to examine"
    assert found[-1].getMessage() == (
        f"resharding done (AsyncMigration): 300 keys examined, {report.moved} keys moved"
    )
    assert {r.resharder for r in found} == {"AsyncMigration"}  # type: ignore[attr-defined]


def test_progress_is_logged_every_few_seconds_between_tenths(
    logs: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    log = ProgressLog("ClusterResharder", "slot", every=5.0, clock=clock)
    log.report(1, 4096, 10, False)
    log.report(2, 4096, 20, False)
    assert [r.getMessage() for r in taken(logs, "scalekit.sharding")] == [
        "resharding started (ClusterResharder): 4096 slots to examine"
    ]
    clock.advance(5)
    log.report(3, 4096, 30, False)
    record = only(taken(logs, "scalekit.sharding"))
    assert (
        record.getMessage()
        == "resharding (ClusterResharder): 3/4096 slots examined (0%), 30 keys moved"
    )
    log.report(4, 4096, 40, False)
    assert taken(logs, "scalekit.sharding") == []
    log.report(4096, 4096, 50_000, True)
    log.report(4096, 4096, 50_000, True)
    record = only(taken(logs, "scalekit.sharding"))
    assert (
        record.getMessage()
        == "resharding done (ClusterResharder): 4096 slots examined, 50000 keys moved"
    )


@pytest.mark.redis
@pytest.mark.slow
def test_a_cluster_resharder_logs_start_progress_and_stop(logs: pytest.LogCaptureFixture) -> None:
    import redis

    from scalekit.sharding import SlotMap
    from scalekit.sharding._cluster import ClusterResharder
    from tests.services import redis_cluster_node, redis_cluster_or_skip, wait_for_cluster

    def client(host: str, port: int) -> Any:
        return redis.Redis(host=host, port=port, socket_timeout=10)

    with redis_cluster_or_skip(3) as ports, redis_cluster_node() as new_port:
        new = client("127.0.0.1", new_port)
        bus = int(new.config_get("cluster-port")["cluster-port"])
        new.close()
        client("127.0.0.1", ports[0]).execute_command("CLUSTER", "MEET", "127.0.0.1", new_port, bus)
        wait_for_cluster([*ports, new_port], known=len(ports) + 1)
        slot_map = SlotMap.from_cluster(client("127.0.0.1", ports[0]))
        plan = slot_map.plan_add(f"127.0.0.1:{new_port}")
        holder: list[ClusterResharder] = []

        def stop_after_5(slot: int, source: str, target: str, moved: int) -> None:
            if holder[0].progress().slots_done >= 5:
                holder[0].stop()

        resharder = ClusterResharder(client, plan, slot_map, on_slot=stop_after_5)
        holder.append(resharder)
        report = resharder.run()
        assert report.stopped
        assert report.slots_done == 5
        found = records(logs, "scalekit.sharding")
        total = report.slots_total
        assert (
            found[0].getMessage()
            == f"resharding started (ClusterResharder): {total} slots to examine"
        )
        assert found[-1].getMessage() == (
            f"resharding stopped (ClusterResharder) at 5/{total} slots examined, 0 keys moved"
        )
        assert (found[-1].examined, found[-1].total) == (5, total)  # type: ignore[attr-defined]


# -- replication --------------------------------------------------------------------------


def test_a_replica_out_for_lag_and_back_logs_once_each(logs: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    lags = {"r1": 0.0, "r2": 0.0}
    router = ReplicaRouter(
        "primary", ["r1", "r2"], max_lag=1.0, lag_probe=lags.__getitem__, clock=clock
    )
    router.poll()  # the first measures: replicas come in, never having been out
    assert router.healthy() == ("r1", "r2")
    for _ in range(10):
        router.for_read()
    assert taken(logs, "scalekit.replication") == []

    lags["r1"] = 5.0
    router.poll()
    record = only(taken(logs, "scalekit.replication"))
    assert record.levelno == logging.WARNING
    assert record.getMessage() == "replica 'r1' taken out of reads: lag (lag 5.0 s, max_lag 1.0 s)"
    assert (record.replica, record.reason, record.lag, record.max_lag) == ("r1", "lag", 5.0, 1.0)  # type: ignore[attr-defined]
    assert router.healthy() == ("r2",)
    lags["r1"] = 7.0
    router.poll()
    assert taken(logs, "scalekit.replication") == []  # still out: no new line

    lags["r1"] = 0.5
    router.poll()
    record = only(taken(logs, "scalekit.replication"))
    assert record.levelno == logging.INFO
    assert record.getMessage() == "replica 'r1' back in reads (lag 0.5 s)"
    assert (record.replica, record.lag) == ("r1", 0.5)  # type: ignore[attr-defined]

    router.report_failure("r2")
    record = only(taken(logs, "scalekit.replication"))
    assert record.levelno == logging.WARNING
    assert (record.replica, record.reason) == ("r2", "unreachable")  # type: ignore[attr-defined]
    router.poll()  # the probe answers: back
    record = only(taken(logs, "scalekit.replication"))
    assert record.levelno == logging.INFO
    assert record.replica == "r2"  # type: ignore[attr-defined]


# -- sessions --------------------------------------------------------------------------------


def test_a_session_conflict_logs_the_key_never_the_data(logs: pytest.LogCaptureFixture) -> None:
    store = MemorySessionStore()
    session = store.create({"cart": "secret-cart-1"})
    quiet = store.load(session.id)
    assert quiet is not None
    quiet["seen"] = 1
    store.save(quiet)
    assert taken(logs, "scalekit.sessions") == []  # a save without a race logs nothing

    one, two = store.load(session.id), store.load(session.id)
    assert one is not None
    assert two is not None
    one["cart"] = "secret-cart-2"
    two["cart"] = "secret-cart-3"
    store.save(one)
    with pytest.raises(SessionConflict):
        store.save(two)
    record = only(taken(logs, "scalekit.sessions"))
    assert record.levelno == logging.WARNING
    assert record.getMessage() == (
        f"session {session.id[:8]}...: conflict, changed by another request (key 'cart')"
    )
    assert record.session == session.id[:8]  # type: ignore[attr-defined]
    assert record.reason == "changed by another request"  # type: ignore[attr-defined]
    assert record.key == "cart"  # type: ignore[attr-defined]

    three = store.load(session.id)
    assert three is not None
    three["cart"] = "secret-cart-4"
    store.delete(session.id)
    with pytest.raises(SessionConflict):
        store.save(three)
    record = only(taken(logs, "scalekit.sessions"))
    assert (record.reason, record.key) == ("deleted or expired", None)  # type: ignore[attr-defined]
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in logs.records)
    assert session.id not in text
    assert "secret-cart" not in text


# -- cache --------------------------------------------------------------------------------


def _wait(condition: Callable[[], bool], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.mark.redis
def test_a_lost_invalidation_connection_logs_lost_then_back(
    logs: pytest.LogCaptureFixture,
) -> None:
    import redis

    from scalekit.cache import LRUCache, RedisCache, RedisInvalidation, TieredCache

    with redis_server("--enable-debug-command", "yes") as port:
        client = redis.Redis(port=port)
        invalidation = RedisInvalidation(client, prefix="log:", reconnect_delay=0.02)
        cache = TieredCache(
            LRUCache(100), RedisCache(client, prefix="log:"), invalidation=invalidation
        )
        try:
            assert invalidation.wait_ready(5)
            cache.set("k", 1)
            assert cache.get("k") == 1
            assert "k" in cache.l1
            assert taken(logs, "scalekit.cache") == []  # the first connection is no event

            with pytest.raises(redis.ConnectionError):
                client.execute_command("DEBUG", "RESTART")  # the same port, every link cut
            # back for good: the server may drop a link or two more while it restarts,
            # and each drop and each return is one line
            _wait(
                lambda: (
                    invalidation.stats()["connects"] >= 2
                    and invalidation.wait_ready(0)
                    and records(logs, "scalekit.cache")[-1].levelno == logging.INFO
                )
            )
            invalidation.close()
            stats = invalidation.stats()
            found = records(logs, "scalekit.cache")
            lost, back = found[0], found[-1]
            assert [r.levelno for r in found] == [logging.WARNING, logging.INFO] * (len(found) // 2)
            # close() ends the last link: a drop that is no event
            assert len(found) == 2 * (stats["drops"] - 1) == 2 * (stats["connects"] - 1)
            assert lost.getMessage().startswith("invalidation connection lost: ")
            assert lost.getMessage().endswith("; flushing 1 near cache(s), reconnecting")
            assert lost.reason == "connection lost"  # type: ignore[attr-defined]
            assert lost.channel == "scalekit:invalidate:log:"  # type: ignore[attr-defined]
            assert lost.flushed == 1  # type: ignore[attr-defined]
            assert lost.error  # type: ignore[attr-defined]
            assert back.getMessage() == (
                "invalidation connection re-established; 1 near cache(s) flushed"
            )
            assert (back.reason, back.flushed) == ("reconnected", 1)  # type: ignore[attr-defined]
            assert back.mode in ("tracking", "pubsub")  # type: ignore[attr-defined]
            assert "k" not in cache.l1
        finally:
            invalidation.close()
            client.close()


def test_an_invalidation_server_down_logs_one_warning_not_one_per_retry(
    logs: pytest.LogCaptureFixture,
) -> None:
    redis = pytest.importorskip("redis")
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from scalekit.cache import LRUCache, RedisInvalidation, TieredCache

    client = redis.Redis(port=free_port(), socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
    invalidation = RedisInvalidation(client, mode="pubsub", reconnect_delay=0.01)
    TieredCache(LRUCache(10), LRUCache(10), invalidation=invalidation)
    try:

        def retries() -> list[logging.LogRecord]:
            return [
                r
                for r in logs.records
                if r.getMessage().startswith("invalidation connection failed again")
            ]

        _wait(lambda: len(retries()) >= 3)
        record = only(records(logs, "scalekit.cache"))
        assert record.levelno == logging.WARNING
        assert record.getMessage().startswith(
            "invalidation connection failed, retrying every 0.01 s: "
        )
        assert record.reason == "connect failed"  # type: ignore[attr-defined]
        assert all(r.levelno == logging.DEBUG for r in retries())
    finally:
        invalidation.close()
        client.close()
