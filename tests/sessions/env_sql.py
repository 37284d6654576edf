"""The SQL session stores for the store contract (tests/sessions/conftest.py).

SQLite: a fresh file in the test's ``tmp_path``. PostgreSQL: the server of the
``postgres_dsn`` fixture (skipped without it, failed when
SCALEKIT_REQUIRE_SERVICES=1), one table of a unique name per store, dropped
afterwards. The contract makes its async stores inside ``asyncio.run``; they are
closed after that loop has ended, in a loop of their own (the store drops
connections of a closed loop, see AsyncSqlSessionStore).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scalekit.sessions._sql import AsyncSqlSessionStore, SqlSessionStore
from scalekit.testing import FakeClock

__all__ = [
    "ASYNC_STORES",
    "STORES",
    "drop_table",
    "make_async_postgres",
    "make_async_sqlite",
    "make_postgres",
    "make_sqlite",
    "sqlite_url",
    "unique_table",
]


def unique_table() -> str:
    """A table name no other test uses."""
    return f"sk_sessions_{uuid.uuid4().hex[:16]}"


def sqlite_url(tmp_path: Path, name: str = "sessions.db") -> str:
    return f"sqlite:///{tmp_path / name}"


def drop_table(dsn: str, table: str) -> None:
    """Drop ``table`` (and its index) from the PostgreSQL database at ``dsn``."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute(f'DROP TABLE IF EXISTS "{table}"')


def make_sqlite(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock, **settings: Any
) -> Iterator[SqlSessionStore]:
    store = SqlSessionStore(sqlite_url(tmp_path, f"{uuid.uuid4().hex}.db"), clock=clock, **settings)
    try:
        yield store
    finally:
        store.close()


def make_postgres(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock, **settings: Any
) -> Iterator[SqlSessionStore]:
    dsn = request.getfixturevalue("postgres_dsn")
    table = unique_table()
    try:
        store = SqlSessionStore(dsn, table=table, clock=clock, **settings)
        try:
            yield store
        finally:
            store.close()
    finally:
        drop_table(dsn, table)


def _close(store: AsyncSqlSessionStore) -> None:
    """Close an async store from outside any event loop (the test's has ended)."""
    asyncio.run(store.aclose())


def make_async_sqlite(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock, **settings: Any
) -> Iterator[AsyncSqlSessionStore]:
    store = AsyncSqlSessionStore(
        sqlite_url(tmp_path, f"{uuid.uuid4().hex}.db"), clock=clock, **settings
    )
    try:
        yield store
    finally:
        _close(store)


def make_async_postgres(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock, **settings: Any
) -> Iterator[AsyncSqlSessionStore]:
    dsn = request.getfixturevalue("postgres_dsn")
    table = unique_table()
    try:
        store = AsyncSqlSessionStore(dsn, table=table, clock=clock, **settings)
        try:
            yield store
        finally:
            _close(store)
    finally:
        drop_table(dsn, table)


STORES = {"sqlite": make_sqlite, "postgres": make_postgres}
ASYNC_STORES = {"sqlite": make_async_sqlite, "postgres": make_async_postgres}
