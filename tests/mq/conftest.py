"""The ``env`` fixture: one broker per backend on a fresh store (see BACKENDS)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from scalekit.mq import Broker, MemoryBackend
from scalekit.testing import FakeClock
from tests.contracts.queue_contract import QueueEnv
from tests.mq import env_redis, env_sqlite


def memory_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[QueueEnv]:
    clock = FakeClock(1_700_000_000.0)
    broker = Broker(MemoryBackend(), clock=clock)
    yield QueueEnv(broker, clock.advance, fake_time=True, make_backend=MemoryBackend)
    broker.close()


BACKENDS: dict[str, Callable[[pytest.FixtureRequest, Path], Iterator[QueueEnv]]] = {
    "memory": memory_env,
    **env_sqlite.BACKENDS,
    **env_redis.BACKENDS,
}


@pytest.fixture(params=sorted(BACKENDS))
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[QueueEnv]:
    yield from BACKENDS[request.param](request, tmp_path)
