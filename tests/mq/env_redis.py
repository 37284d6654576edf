"""The Redis Streams backend for the queue contract (tests/mq/test_contract.py).

Each test gets its own key prefix on the test database (the ``redis_url`` fixture:
skipped without Redis, failed when SCALEKIT_REQUIRE_SERVICES=1) and its keys are
deleted afterwards. Redis keeps its own time, so the contract's timing tests
sleep for real.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from scalekit.mq import Broker
from scalekit.mq._redis import RedisStreamsBackend
from tests.contracts.queue_contract import QueueEnv

__all__ = ["BACKENDS", "delete_keys", "redis_env", "unique_prefix"]


def unique_prefix() -> str:
    """A key prefix no other test uses."""
    return f"scalekit-test:{uuid.uuid4().hex}"


def delete_keys(client: Any, prefix: str) -> None:
    """Delete every key under ``prefix``."""
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    for start in range(0, len(keys), 500):
        client.delete(*keys[start : start + 500])


def redis_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[QueueEnv]:
    import redis

    url = request.getfixturevalue("redis_url")
    client = redis.Redis.from_url(url)
    prefix = unique_prefix()
    broker = Broker(RedisStreamsBackend(client, prefix=prefix))
    made = itertools.count()

    def make_backend() -> RedisStreamsBackend:
        return RedisStreamsBackend(client, prefix=f"{prefix}:check{next(made)}")

    try:
        yield QueueEnv(broker, time.sleep, fake_time=False, make_backend=make_backend)
    finally:
        broker.close()
        delete_keys(client, prefix)
        client.close()


BACKENDS: dict[str, Callable[[pytest.FixtureRequest, Path], Iterator[QueueEnv]]] = {
    "redis": redis_env,
}
