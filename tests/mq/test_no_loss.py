"""The no-loss guarantee at scale: 10,000 messages, consumers that crash and nack."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from tests.contracts.queue_contract import VT, QueueEnv, drain


@pytest.mark.slow
def test_ten_thousand_messages_all_acked_or_dead_lettered(env: QueueEnv) -> None:
    """Consumers take batches and, per message, crash holding it (never settle, 10%),
    nack it (15%) or ack it. In the end every message is acked exactly once or
    dead-lettered, and the queue is empty."""
    n = 10_000
    queue = env.queue("work", visibility_timeout=VT, max_deliveries=4)
    for start in range(0, n, 1_000):
        queue.put_many(range(start, start + 1_000))
    rng = random.Random(2026)
    acked: Counter[int] = Counter()
    rounds = 0
    while rounds < 1_000:
        rounds += 1
        batch = queue.get_many(500, timeout=0)
        for delivery in batch:
            roll = rng.random()
            if roll < 0.10:
                continue  # crashed: the delivery times out
            if roll < 0.25:
                delivery.nack()
            else:
                delivery.ack()
                acked[delivery.body] += 1
        if not batch:
            if queue.stats().total == 0:
                break
            env.advance(VT + 0.1)
    dead = Counter(d.body for d in drain(queue.dead_letters))
    assert queue.stats().total == 0
    assert set(acked) | set(dead) == set(range(n))
    assert not set(acked) & set(dead)
    assert max(acked.values()) == 1
    assert max(dead.values()) == 1
    stats = queue.stats()
    assert stats.acked == sum(acked.values())
    assert stats.dead_lettered == sum(dead.values())
