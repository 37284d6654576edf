"""``scalekit tour``: the building blocks one at a time, in one process with a fake clock."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


def _section(title: str, out: Callable[[str], None]) -> None:
    out("")
    out(f"== {title} ==")


def demo_cache(out: Callable[[str], None] = print) -> None:
    """A memoized "database query" with a TTL, stampede protection and stats."""
    from scalekit.cache import LFUCache, TTLCache, cached
    from scalekit.testing import FakeClock

    _section("scalekit.cache: a query cache in front of a slow database", out)
    clock = FakeClock()
    queries: list[int] = []

    def slow_database(user_id: int) -> dict[str, object]:
        queries.append(user_id)
        time.sleep(0.05)  # the round trip we want to avoid
        return {"id": user_id, "name": f"user{user_id}"}

    cache: TTLCache[object, dict[str, object]] = TTLCache(
        maxsize=1_000, ttl=30, timer=clock, stats=True
    )

    @cached(cache)
    def load_user(user_id: int) -> dict[str, object]:
        return slow_database(user_id)

    started = time.perf_counter()
    load_user(42)
    first = time.perf_counter() - started
    started = time.perf_counter()
    load_user(42)
    second = time.perf_counter() - started
    out(f"first call {first * 1000:.1f} ms (database), second {second * 1e6:.0f} us (cache)")

    threads = [threading.Thread(target=load_user, args=(7,)) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    out(f"50 threads asked for user 7 at once: the database saw {queries.count(7)} query")

    clock.advance(30)
    load_user(42)
    out(f"after the 30 s TTL, user 42 was read again: {queries.count(42)} queries in all")
    info = load_user.cache_info()  # type: ignore[attr-defined]
    out(
        f"load_user: {info.hits} calls served without the database, {info.misses} with it; "
        f"{cache.stats().expirations} entries expired"
    )

    _section("eviction policies and the removal listener", out)
    evicted: list[str] = []
    lfu: LFUCache[str, int] = LFUCache(
        maxsize=2, on_evict=lambda key, value, cause: evicted.append(f"{key} ({cause})")
    )
    lfu["home"] = 1
    lfu["about"] = 2
    for _ in range(3):
        lfu["home"]
    lfu["pricing"] = 3
    out(f"LFU kept {sorted(lfu)}; evicted {evicted}: the page read least")


def demo_sharding(out: Callable[[str], None] = print) -> None:
    """Place keys on shards, plan and carry out a resharding, find a hot key."""
    from scalekit.sharding import HashRing, HotKeyDetector, Migration, SlotMap

    _section("scalekit.sharding: growing from 4 to 5 shards", out)
    ring: HashRing[str] = HashRing([f"shard-{i}" for i in range(4)])
    stores: dict[str, dict[str, int]] = {f"shard-{i}": {} for i in range(5)}
    for i in range(10_000):
        stores[ring.node_for(f"user:{i}")][f"user:{i}"] = i
    plan = ring.plan_add("shard-4")
    out(plan.summary().splitlines()[0])
    report = Migration(plan, stores).run()
    ring.add("shard-4")
    placed = all(ring.node_for(key) == name for name, store in stores.items() for key in store)
    out(f"migrated {report.moved:,} keys; every key at its new owner: {placed}")
    slot = SlotMap.redis_cluster().slot_of("{user1000}.following")
    out(f"Redis Cluster slot of '{{user1000}}.following': {slot}")

    detector: HotKeyDetector[str] = HotKeyDetector(k=50)
    for i in range(20_000):
        detector.add("user:celebrity" if i % 4 == 0 else f"user:{i}")
    key, count = detector.top(1)[0]
    out(f"hot key among 20,000 requests: {key} (~{count:,} requests)")


def demo_balancing(out: Callable[[str], None] = print) -> None:
    """Spread requests by weight, eject a failing backend, fail over to a standby."""
    from scalekit.balancing import FailoverGroups, OutlierEjection, RoundRobin
    from scalekit.testing import FakeClock

    _section("scalekit.balancing: weights, a failing backend, a standby datacenter", out)
    clock = FakeClock()
    web: RoundRobin[str] = RoundRobin(
        ["web-1", "web-2", "web-3"],
        weights={"web-1": 5},
        clock=clock,
        ejection=OutlierEjection(consecutive_failures=3),
    )
    out("weights 5, 1, 1: " + " ".join(web.pick() for _ in range(7)))
    for _ in range(3):
        web.report("web-2", False)
    out(f"web-2 failed 3 times in a row; healthy now: {', '.join(web.healthy())}")
    clock.advance(30)
    out(f"30 s later it is tried again: {', '.join(web.healthy())}")

    primary: RoundRobin[str] = RoundRobin([f"eu-{i}" for i in range(10)])
    standby: RoundRobin[str] = RoundRobin([f"us-{i}" for i in range(10)])
    groups = FailoverGroups([primary, standby])
    for down in (0, 4, 8, 10):
        for i in range(down):
            primary.mark_down(f"eu-{i}")
        shares = ", ".join(f"{share:.0%}" for share in groups.shares())
        out(f"{down:2} of 10 eu backends down: traffic eu, us = {shares}")
        for i in range(down):
            primary.mark_up(f"eu-{i}")


def demo_replication(out: Callable[[str], None] = print) -> None:
    """Reads to replicas, your own writes from where they are, a lagging replica out."""
    from scalekit.replication import ReplicaRouter
    from scalekit.testing import FakeClock

    _section("scalekit.replication: read/write split, read-your-writes, lag", out)
    clock = FakeClock()
    replayed = {"replica-1": 100, "replica-2": 100}
    lag = {"replica-1": 0.0, "replica-2": 0.0}
    router = ReplicaRouter(
        "primary",
        ["replica-1", "replica-2"],
        read_your_writes="token",
        position_probe=replayed.__getitem__,
        lag_probe=lag.__getitem__,
        max_lag=2.0,
        clock=clock,
    )
    out("reads: " + " ".join(router.for_read() for _ in range(4)))
    router.note_write(150)  # the commit's WAL position
    out(f"wrote at position 150; replicas at {replayed}: reads go to {router.for_read()}")
    replayed["replica-2"] = 150
    clock.advance(0.01)
    out(f"replica-2 replays it: reads go to {router.for_read()}, {router.for_read()}")
    token = router.token()
    with router.scope(token=token):
        out(f"another server, given token {token}, reads from {router.for_read()}")
    lag["replica-1"] = 5.0
    clock.advance(1)
    with router.scope():
        reads = " ".join(router.for_read() for _ in range(4))
    out(f"replica-1 is 5 s behind (max_lag 2 s): fresh reads go to {reads}")
    with router.transaction() as primary:
        out(f"inside router.transaction(): reads go to {router.for_read()} ({primary})")


def demo_mq(out: Callable[[str], None] = print) -> None:
    """Queue e-mails, lose a consumer mid-message, dead-letter a poison message."""
    from scalekit.mq import Broker
    from scalekit.testing import FakeClock

    _section("scalekit.mq: acks, redelivery and dead letters", out)
    clock = FakeClock()
    emails = Broker(clock=clock).queue("emails", visibility_timeout=30, max_deliveries=3)
    for user in ("ada", "grace", "poison"):
        emails.put({"to": f"{user}@example.com"})
    crashed = emails.get(timeout=0)
    assert crashed is not None
    out(f"a worker took the mail to {crashed.body['to']} and crashed before acking")
    clock.advance(31)
    sent = []
    while (delivery := emails.get(timeout=0)) is not None:
        if delivery.body["to"].startswith("poison"):
            delivery.nack(reason="template error")
            continue
        sent.append(f"{delivery.body['to']} (attempt {delivery.attempt})")
        delivery.ack()
    out(f"sent: {', '.join(sent)}")
    dead = emails.dead_letters.get(timeout=0)
    assert dead is not None
    out(f"dead letter: {dead.body['to']}: {dead.dead_letter_reason}")
    stats = emails.stats()
    out(f"queue: {stats.total} left, {stats.acked} acked, {stats.redelivered} redelivered")


def run(out: Callable[[str], None] = print) -> int:
    """Run every demo; return the exit status."""
    demo_cache(out)
    demo_sharding(out)
    demo_balancing(out)
    demo_replication(out)
    demo_mq(out)
    return 0
