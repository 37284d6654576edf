"""Two app-server processes, each with a TieredCache over one Redis.

Process W writes a key and acknowledges each write; process R, told of the
acknowledgement, waits until its invalidation has arrived (or a deadline passes)
and reads: the read must be the acknowledged value, 1,000 times. The delay from
the acknowledgement to R's l1 dropping the key is measured (p50, p99). Then R's
invalidation connection is killed: its l1 is flushed, and no read is stale.
"""

from __future__ import annotations

import multiprocessing
import statistics
import time
from typing import Any

import pytest

from scalekit.cache import LRUCache, RedisCache, RedisInvalidation, TieredCache

pytestmark = [pytest.mark.redis, pytest.mark.slow]

TRIALS = 1000


def _tiered(url: str) -> TieredCache[Any]:
    import redis

    client = redis.Redis.from_url(url)
    invalidation = RedisInvalidation(client, prefix="tp:", reconnect_delay=0.05)
    cache = TieredCache(LRUCache(1000), RedisCache(client, prefix="tp:"), invalidation=invalidation)
    assert invalidation.wait_ready(10)
    return cache


def _writer(url: str, acks: Any, go: Any) -> None:
    cache = _tiered(url)
    for version in range(1, TRIALS + 1):
        go.wait(10)
        go.clear()
        cache.set("hot", version)
        acks.put((version, time.perf_counter()))
    acks.put(None)


def test_no_stale_read_after_an_acknowledged_write_once_the_invalidation_arrived(
    redis_url: str,
) -> None:
    import redis

    redis.Redis.from_url(redis_url).delete("tp:hot")
    context = multiprocessing.get_context("spawn")
    acks, go = context.Queue(), context.Event()
    writer = context.Process(target=_writer, args=(redis_url, acks, go))
    writer.start()
    reader = _tiered(redis_url)
    channel = reader._channels[0]
    stale, delays, late = [], [], 0
    try:
        go.set()
        while (ack := acks.get(timeout=30)) is not None:
            version, acked_at = ack
            reader.get("hot")  # keep the old value in l1, so the message has work to do
            while reader.l1.get("hot") not in (None, version):
                if time.perf_counter() - acked_at > 2:
                    late += 1
                    break
                time.sleep(0.00005)
            delays.append(time.perf_counter() - acked_at)
            value = reader.get("hot")
            if value != version:
                stale.append((version, value))
            go.set()
        writer.join(30)
    finally:
        channel.close()
    assert writer.exitcode == 0
    assert len(delays) == TRIALS
    assert late == 0
    assert stale == []
    delays.sort()
    p50, p99 = statistics.median(delays), delays[int(0.99 * len(delays))]
    print(f"invalidation delay after the ack: p50 {p50 * 1e3:.3f} ms, p99 {p99 * 1e3:.3f} ms")
    assert p99 < 0.5


def test_a_dropped_invalidation_connection_never_leaves_a_stale_l1(redis_url: str) -> None:
    import redis

    admin = redis.Redis.from_url(redis_url)
    reader = _tiered(redis_url)
    writer = RedisCache(admin, prefix="tp:")
    channel = reader._channels[0]
    try:
        stale: list[Any] = []
        for round_ in range(20):
            writer.set("k", round_)
            while reader.l1.get("k") != round_:  # l1 catches up, then holds round_
                reader.get("k")
                time.sleep(0.0005)
            drops = channel.stats()["drops"]
            admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
            writer.set("k", -round_ - 1)  # its message may be lost with the connection
            deadline = time.monotonic() + 5
            while channel.stats()["drops"] == drops and time.monotonic() < deadline:
                time.sleep(0.0005)
            assert channel.wait_ready(5)  # reconnected, and l1 flushed again
            got = reader.get("k")
            if got != -round_ - 1:
                stale.append((round_, got, channel.stats(), reader.stats()))
        assert stale == []
        assert channel.stats()["drops"] >= 20
    finally:
        channel.close()
