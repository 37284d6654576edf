"""The Redis session stores for the store contract (tests/sessions/conftest.py).

Each store gets its own key prefix on the test database (the ``redis_url``
fixture: skipped without Redis, failed when SCALEKIT_REQUIRE_SERVICES=1) and its
keys are deleted afterwards. The stores decide expiry by the contract's
FakeClock; Redis's own TTLs (``expires - clock()``, at least 1 ms) only reclaim
memory, so a session expired by the clock loads as None while its key lives on.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from scalekit.sessions._redis import AsyncRedisSessionStore, RedisSessionStore
from scalekit.testing import FakeClock

__all__ = [
    "ASYNC_STORES",
    "STORES",
    "delete_keys",
    "make_async_redis",
    "make_redis",
    "unique_prefix",
]


def unique_prefix() -> str:
    """A key prefix no other test uses."""
    return f"scalekit-test:{uuid.uuid4().hex}:session:"


def delete_keys(client: Any, prefix: str) -> int:
    """Delete every key under ``prefix``; how many there were."""
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    for start in range(0, len(keys), 500):
        client.delete(*keys[start : start + 500])
    return len(keys)


def make_redis(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock, **settings: Any
) -> Iterator[RedisSessionStore]:
    import redis

    client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
    prefix = unique_prefix()
    try:
        yield RedisSessionStore(client, prefix=prefix, clock=clock, **settings)
    finally:
        delete_keys(client, prefix)
        client.close()


def make_async_redis(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock, **settings: Any
) -> Iterator[AsyncRedisSessionStore]:
    """An async store on a client of the running event loop (the contract makes its
    stores inside ``asyncio.run``). The client is closed when that loop shuts down,
    while it still runs; the keys are deleted afterwards through a sync client."""
    import redis
    import redis.asyncio

    url = request.getfixturevalue("redis_url")
    client = redis.asyncio.Redis.from_url(url)
    prefix = unique_prefix()
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if loop is not None:
        _close_at_shutdown(client)
    try:
        yield AsyncRedisSessionStore(client, prefix=prefix, clock=clock, **settings)
    finally:
        if loop is None:
            asyncio.run(client.aclose())
        cleaner = redis.Redis.from_url(url)
        delete_keys(cleaner, prefix)
        cleaner.close()


def _close_at_shutdown(client: Any) -> None:
    """Close ``client`` when the running loop shuts down: ``asyncio.run`` finalizes
    the async generators started in its loop before it closes the loop."""
    held: tuple[Any, ...] = ()

    async def closer() -> AsyncIterator[None]:
        try:
            yield
        finally:
            _HELD.discard(held)
            await client.aclose()

    generator = closer()
    held = (generator, asyncio.ensure_future(generator.__anext__()))
    _HELD.add(held)  # strong references until the loop finalizes the generator


_HELD: set[tuple[Any, ...]] = set()


STORES = {"redis": make_redis}
ASYNC_STORES = {"redis": make_async_redis}
