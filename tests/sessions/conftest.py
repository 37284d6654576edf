"""``stores`` and ``astores``: build session stores of every backend (see STORES)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from scalekit.sessions import AsyncMemorySessionStore, MemorySessionStore
from scalekit.testing import FakeClock
from tests.contracts.session_contract import StoreEnv
from tests.sessions import env_redis, env_sql

Factory = Callable[..., Iterator[Any]]


def make_memory(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock, **settings: Any
) -> Iterator[Any]:
    yield MemorySessionStore(clock=clock, **settings)


def make_async_memory(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock, **settings: Any
) -> Iterator[Any]:
    yield AsyncMemorySessionStore(clock=clock, **settings)


STORES: dict[str, Factory] = {"memory": make_memory, **env_sql.STORES, **env_redis.STORES}
ASYNC_STORES: dict[str, Factory] = {
    "memory": make_async_memory,
    **env_sql.ASYNC_STORES,
    **env_redis.ASYNC_STORES,
}


def _env(request: pytest.FixtureRequest, tmp_path: Path, factory: Factory) -> Iterator[StoreEnv]:
    made: list[Iterator[Any]] = []

    def make(**settings: Any) -> Any:
        settings.setdefault("clock", FakeClock(1_700_000_000.0))
        generator = factory(request, tmp_path, settings.pop("clock"), **settings)
        made.append(generator)
        return next(generator)

    yield StoreEnv(make)
    for generator in made:
        with contextlib.suppress(StopIteration):
            next(generator)


@pytest.fixture(params=sorted(STORES))
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreEnv]:
    yield from _env(request, tmp_path, STORES[request.param])


@pytest.fixture(params=sorted(ASYNC_STORES))
def astores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreEnv]:
    yield from _env(request, tmp_path, ASYNC_STORES[request.param])
