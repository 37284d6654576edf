"""The SQLite backend's env for the queue contract (loaded by tests/mq/conftest.py)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from scalekit.mq import Broker
from scalekit.mq._sqlite import SqliteBackend
from scalekit.testing import FakeClock
from tests.contracts.queue_contract import QueueEnv


def sqlite_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[QueueEnv]:
    """A broker on a fresh SQLite file, with a FakeClock."""
    clock = FakeClock(1_700_000_000.0)
    broker = Broker(SqliteBackend(tmp_path / "queues.db"), clock=clock)

    def advance(seconds: float) -> None:
        clock.advance(seconds)

    made = itertools.count()

    def make_backend() -> SqliteBackend:
        return SqliteBackend(tmp_path / f"check-{next(made)}.db", synchronous="NORMAL")

    yield QueueEnv(broker, advance, fake_time=True, make_backend=make_backend)
    broker.close()


BACKENDS: dict[str, Callable[[pytest.FixtureRequest, Path], Iterator[QueueEnv]]] = {
    "sqlite": sqlite_env,
}
