"""What only the SQL session stores do: the table and its index, an indexed purge,
one database shared by several stores and processes, lost updates under real
concurrency, crafted rows, database failures, and configuration.

The store contract runs on SQLite and PostgreSQL too (tests/sessions/env_sql.py);
these tests add what the contract cannot see. Every test runs on a SQLite file of
its own and, when the ``postgres_dsn`` fixture has a server, on PostgreSQL in a
table of its own, dropped afterwards.
"""

from __future__ import annotations

import asyncio
import math
import os
import pickle
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from scalekit.errors import (
    BackendError,
    ConfigurationError,
    IncompatibleStore,
    SessionConflict,
    SessionCorrupted,
)
from scalekit.sessions import Record, Session
from scalekit.sessions._session import new_id
from scalekit.sessions._sql import (
    COLUMNS,
    AsyncSqlSessionStore,
    SqlSessionStore,
    _sqlite_file_pragmas,
    session_table,
)
from scalekit.testing import FakeClock
from tests.sessions.env_sql import drop_table, sqlite_url, unique_table
from tests.sessions.stress import check, hammer, hammer_async

sqlalchemy = pytest.importorskip("sqlalchemy")
pytest.importorskip("aiosqlite")

START = 1_700_000_000.0


def psycopg_url(dsn: str) -> str:
    return dsn.replace("postgresql://", "postgresql+psycopg://", 1)


@dataclass
class Backend:
    """One database for a test: ``make`` and ``amake`` build stores on its table,
    ``execute`` runs SQL on it with the driver alone (no SQLAlchemy, no store)."""

    name: str
    url: str
    table: str
    clock: FakeClock
    made: list[Any] = field(default_factory=list)

    def settings(self, settings: dict[str, Any]) -> dict[str, Any]:
        settings.setdefault("clock", self.clock)
        settings.setdefault("table", self.table)
        return settings

    def make(self, engine: Any = None, **settings: Any) -> SqlSessionStore:
        store = SqlSessionStore(engine or self.url, **self.settings(settings))
        self.made.append(store)
        return store

    def amake(self, engine: Any = None, **settings: Any) -> AsyncSqlSessionStore:
        store = AsyncSqlSessionStore(engine or self.url, **self.settings(settings))
        self.made.append(store)
        return store

    def engine(self, **kwargs: Any) -> Any:
        """A sync engine of this database, configured as a user might."""
        if self.name == "sqlite":
            engine = sqlalchemy.create_engine(self.url, **kwargs)
            sqlalchemy.event.listen(engine, "connect", _sqlite_file_pragmas)
        else:
            engine = sqlalchemy.create_engine(psycopg_url(self.url), **kwargs)
        self.made.append(engine)
        return engine

    def async_engine(self, **kwargs: Any) -> Any:
        from sqlalchemy.ext.asyncio import create_async_engine

        if self.name == "sqlite":
            engine = create_async_engine(self.url.replace("sqlite:", "sqlite+aiosqlite:"), **kwargs)
            sqlalchemy.event.listen(engine.sync_engine, "connect", _sqlite_file_pragmas)
        else:
            engine = create_async_engine(psycopg_url(self.url), **kwargs)
        self.made.append(engine)
        return engine

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run ``sql`` (``?`` placeholders) with the driver, in its own transaction."""
        if self.name == "sqlite":
            connection = sqlite3.connect(self.url.removeprefix("sqlite:///"), timeout=30)
            try:
                with connection:
                    return connection.execute(sql, params).fetchall()
            finally:
                connection.close()
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as pg:
            cursor = pg.execute(sql.replace("?", "%s"), params)
            return cursor.fetchall() if cursor.description else []

    def insert_row(self, session_id: str, data: Any, version: Any = 1, **times: Any) -> None:
        """A row written into the table directly, as an attacker with SQL access might."""
        now = self.clock()
        self.execute(
            f"INSERT INTO {self.table} VALUES (?, ?, ?, ?, ?, ?)",
            (
                session_id,
                data,
                version,
                times.get("created_at", now),
                times.get("accessed_at", now),
                times.get("expires_at", now + 3600),
            ),
        )

    def close(self) -> None:
        for made in reversed(self.made):
            if isinstance(made, SqlSessionStore):
                made.close()
            elif isinstance(made, AsyncSqlSessionStore):
                asyncio.run(made.aclose())
            elif hasattr(made, "sync_engine"):
                asyncio.run(made.dispose())
            else:
                made.dispose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> Iterator[Backend]:
    if request.param == "sqlite":
        made = Backend("sqlite", sqlite_url(tmp_path), "scalekit_sessions", clock)
        try:
            yield made
        finally:
            made.close()
        return
    dsn = request.getfixturevalue("postgres_dsn")
    made = Backend("postgres", dsn, unique_table(), clock)
    try:
        yield made
    finally:
        made.close()
        drop_table(dsn, made.table)


# -- the module and the table ----------------------------------------------------------


def test_importing_the_stores_does_not_import_sqlalchemy() -> None:
    code = (
        "import sys, scalekit.sessions, scalekit.sessions._sql\n"
        "assert 'sqlalchemy' not in sys.modules, 'sqlalchemy imported'\n"
        "from scalekit.sessions import SqlSessionStore, AsyncSqlSessionStore\n"
        "assert 'sqlalchemy' not in sys.modules, 'sqlalchemy imported by the names'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_without_sqlalchemy_the_package_imports_and_the_stores_say_what_is_missing() -> None:
    code = textwrap.dedent(
        """
        import sys

        class NoSqlAlchemy:
            def find_spec(self, name, path=None, target=None):
                if name == "sqlalchemy" or name.startswith("sqlalchemy."):
                    raise ImportError(f"No module named {name!r}")
                return None

        sys.meta_path.insert(0, NoSqlAlchemy())
        import scalekit.sessions
        from scalekit.sessions import MemorySessionStore, SqlSessionStore

        MemorySessionStore().create({"a": 1})
        try:
            SqlSessionStore("sqlite://")
        except ImportError as exc:
            assert "pip install 'scalekit[sql]'" in str(exc), exc
        else:
            raise AssertionError("no ImportError")
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_the_package_exports_the_stores() -> None:
    import scalekit.sessions

    assert scalekit.sessions.SqlSessionStore is SqlSessionStore
    assert scalekit.sessions.AsyncSqlSessionStore is AsyncSqlSessionStore


def test_the_table_and_its_index_exist(backend: Backend) -> None:
    store = backend.make()
    inspector = sqlalchemy.inspect(store.engine)
    columns = {column["name"]: column for column in inspector.get_columns(backend.table)}
    assert sorted(columns) == sorted(COLUMNS)
    assert not any(column["nullable"] for column in columns.values())
    assert inspector.get_pk_constraint(backend.table)["constrained_columns"] == ["id"]
    indexes = {
        index["name"]: index["column_names"] for index in inspector.get_indexes(backend.table)
    }
    assert indexes[f"ix_{backend.table}_expires_at"] == ["expires_at"]
    assert store.table.name == backend.table
    if backend.name == "sqlite":
        (sql,) = backend.execute("SELECT sql FROM sqlite_master WHERE name = ?", (backend.table,))[
            0
        ]
        assert "WITHOUT ROWID" in sql
        with store.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000


def test_a_second_store_finds_the_table_made_by_the_first(backend: Backend) -> None:
    first = backend.make()
    session = first.create({"a": 1})
    second = backend.make()  # CREATE ... IF NOT EXISTS: nothing changed
    loaded = second.load(session.id)
    assert loaded is not None
    assert loaded.to_dict() == {"a": 1}


def test_the_table_can_come_from_your_own_migrations(backend: Backend) -> None:
    engine = backend.engine()
    metadata = sqlalchemy.MetaData()
    session_table(backend.table, metadata)
    metadata.create_all(engine)
    store = backend.make(engine, create_table=False)
    session = store.create({"a": 1})
    assert store.load(session.id) is not None


def test_a_missing_table_is_refused_without_create_table(backend: Backend) -> None:
    with pytest.raises(IncompatibleStore, match="create_table"):
        backend.make(create_table=False)


def test_a_foreign_table_of_that_name_is_refused_and_left_alone(backend: Backend) -> None:
    backend.execute(f"CREATE TABLE {backend.table} (id VARCHAR(64) PRIMARY KEY, payload TEXT)")
    backend.execute(f"INSERT INTO {backend.table} VALUES ('k', 'theirs')")
    with pytest.raises(IncompatibleStore, match="no column data, version") as raised:
        backend.make()
    assert raised.value.backend == "sql"
    assert backend.execute(f"SELECT id, payload FROM {backend.table}") == [("k", "theirs")]

    async def main() -> None:
        await backend.amake().load(new_id())

    with pytest.raises(IncompatibleStore):
        asyncio.run(main())


# -- what the rows hold ---------------------------------------------------------------------


def test_a_save_writes_one_row_and_a_touch_leaves_the_data(backend: Backend) -> None:
    store = backend.make(idle_timeout=100, absolute_timeout=1000)
    session = store.create({"a": 1})
    session["b"] = [1, 2]
    backend.clock.advance(10)
    store.save(session)
    select = f"SELECT data, version, created_at, accessed_at, expires_at FROM {backend.table}"
    ((data, version, created_at, accessed_at, expires_at),) = backend.execute(select)
    assert (bytes(data), version) == (b'{"a":1,"b":[1,2]}', 2)
    assert (created_at, accessed_at, expires_at) == (START, START + 10, START + 110)
    backend.clock.advance(50)
    assert store.touch(session.id)
    ((data_after, version_after, *times),) = backend.execute(select)
    assert (bytes(data_after), version_after) == (bytes(data), 2)
    assert times == [START, START + 60, START + 160]


def test_timestamps_are_stored_exactly(backend: Backend) -> None:
    clock = FakeClock(START + 0.123456789)
    store = backend.make(clock=clock)
    session = store.create({})
    loaded = store.load(session.id)
    assert loaded is not None
    assert (loaded.created_at, loaded.accessed_at) == (START + 0.123456789,) * 2


def test_without_timeouts_a_session_never_expires(backend: Backend) -> None:
    store = backend.make(idle_timeout=None, absolute_timeout=None)
    session = store.create({"a": 1})
    assert session.expires_at == math.inf
    assert backend.execute(f"SELECT expires_at FROM {backend.table}") == [(math.inf,)]
    backend.clock.advance(10**9)
    assert store.purge_expired() == 0
    assert store.load(session.id) is not None


def test_purge_deletes_the_expired_rows_by_the_index(backend: Backend) -> None:
    store = backend.make()
    now = backend.clock()
    rows = [
        (new_id(), b"{}", 1, now, now, now - 10 if n % 100 == 0 else now + 3600)
        for n in range(2000)
    ]
    if backend.name == "sqlite":
        connection = sqlite3.connect(backend.url.removeprefix("sqlite:///"))
        with connection:
            connection.executemany(f"INSERT INTO {backend.table} VALUES (?,?,?,?,?,?)", rows)
            connection.execute("ANALYZE")
        connection.close()
    else:
        import psycopg

        with psycopg.connect(backend.url, autocommit=True) as pg:
            with pg.cursor() as cursor:
                cursor.executemany(f"INSERT INTO {backend.table} VALUES (%s,%s,%s,%s,%s,%s)", rows)
            pg.execute(f"ANALYZE {backend.table}")
    # the plan of the very statement the store runs
    statement = store._sql.purge.compile(dialect=store.engine.dialect)
    with store.engine.connect() as connection:
        if backend.name == "sqlite":
            plan = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", (now,)).all()
            text = " ".join(str(row[-1]) for row in plan)
        else:
            plan = connection.exec_driver_sql(f"EXPLAIN {statement}", {"b_now": now}).all()
            text = " ".join(row[0] for row in plan)
    assert f"ix_{backend.table}_expires_at" in text, text
    assert "SCAN" not in text.replace("Index Scan", "").replace("Bitmap Heap Scan", ""), text
    assert store.purge_expired() == 20
    assert backend.execute(f"SELECT COUNT(*) FROM {backend.table}") == [(1980,)]
    assert store.purge_expired() == 0


# -- one database, several stores and processes -------------------------------------------


def test_two_store_objects_share_one_database(backend: Backend) -> None:
    web1, web2 = backend.make(), backend.make()
    session = web1.create({"cart": []})
    on_web1, on_web2 = web1.load(session.id), web2.load(session.id)
    assert on_web1 is not None
    assert on_web2 is not None
    on_web2["theme"] = "dark"
    web2.save(on_web2)
    on_web1["cart"] = ["book"]
    web1.save(on_web1)  # web2 saved meanwhile: merged
    with pytest.raises(SessionConflict):
        web2.rotate(on_web2)  # web1 saved since web2 did
    current = web2.load(session.id)
    assert current is not None
    rotated = web2.rotate(current)
    assert web1.load(session.id) is None
    again = web1.load(rotated.id)
    assert again is not None
    assert again.to_dict() == {"cart": ["book"], "theme": "dark"}
    backend.clock.advance(86_400)
    assert web2.purge_expired() == 1
    assert web1.load(rotated.id) is None


CHILD = textwrap.dedent(
    """
    import sys, threading
    from scalekit.errors import SessionConflict
    from scalekit.sessions._sql import SqlSessionStore

    url, table, session_id, name, rounds = sys.argv[1:6]
    store = SqlSessionStore(url, table=table)

    def worker(key):
        for _ in range(int(rounds)):
            while True:
                loaded = store.load(session_id)
                loaded[key] = loaded.get(key, 0) + 1
                try:
                    store.save(loaded)
                    break
                except SessionConflict as exc:
                    assert exc.key is None, exc

    threads = [threading.Thread(target=worker, args=(f"{name}-{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    store.close()
    """
)


def test_two_processes_share_one_database_and_lose_no_update(backend: Backend) -> None:
    """Two processes, four threads each, change one session at once."""
    store = backend.make(clock=time.time)
    session = store.create({})
    rounds = 40
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, backend.url, backend.table, session.id, name, str(rounds)]
        )
        for name in ("p1", "p2")
    ]
    for child in children:
        assert child.wait(120) == 0
    final = store.load(session.id)
    assert final is not None
    assert final.to_dict() == {f"{p}-{n}": rounds for p in ("p1", "p2") for n in range(4)}
    assert final.version == 1 + 2 * 4 * rounds


# -- lost updates --------------------------------------------------------------------------


class CountingStore(SqlSessionStore):
    """Counts the compare-and-sets that lost a race (the saves that merged)."""

    lost = 0

    def _replace(
        self, session_id: str, record: Record, expires: float, expected: int, op: bytes
    ) -> bool:
        stored = super()._replace(session_id, record, expires, expected, op)
        if not stored:
            self.lost += 1
        return stored


class AsyncCountingStore(AsyncSqlSessionStore):
    lost = 0

    async def _replace(
        self, session_id: str, record: Record, expires: float, expected: int, op: bytes
    ) -> bool:
        stored = await super()._replace(session_id, record, expires, expected, op)
        if not stored:
            self.lost += 1
        return stored


def stress_engine(backend: Backend, make: Callable[..., Any]) -> Any:
    """An engine as the store makes its own (autocommit, no reset on return), with
    two connections: the 32 workers still interleave between each one's load and
    save (the test checks that saves did merge), and the database does the work of
    3,000 increments in seconds on a small machine rather than in minutes of lost
    races (each of 32 workers in the database at once wins ~1 race in 32)."""
    return make(
        pool_size=2, max_overflow=0, isolation_level="AUTOCOMMIT", pool_reset_on_return=None
    )


@pytest.mark.slow
def test_32_threads_lose_no_update(backend: Backend) -> None:
    """tests/sessions/stress.py on threads (as a threaded WSGI server runs requests)."""
    store = CountingStore(stress_engine(backend, backend.engine), table=backend.table)
    backend.made.append(store)
    check(*hammer(store))
    assert store.lost > 100  # the saves really raced, and merged


@pytest.mark.slow
def test_32_tasks_lose_no_update(backend: Backend) -> None:
    """The same with 32 asyncio tasks on one AsyncSqlSessionStore."""
    store = AsyncCountingStore(stress_engine(backend, backend.async_engine), table=backend.table)
    backend.made.append(store)
    check(*asyncio.run(hammer_async(store)))
    assert store.lost > 100


def test_an_in_memory_database_is_one_database_for_every_thread() -> None:
    """``sqlite://`` is one connection shared (under a lock) by the store's threads."""
    with SqlSessionStore("sqlite://") as store:
        session = store.create({})

        def worker(n: int) -> None:
            for _ in range(25):
                while True:
                    loaded = store.load(session.id)
                    assert loaded is not None
                    loaded[f"t{n}"] = loaded.get(f"t{n}", 0) + 1
                    try:
                        store.save(loaded)
                        break
                    except SessionConflict:
                        pass

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        final = store.load(session.id)
        assert final is not None
        assert final.to_dict() == {f"t{n}": 25 for n in range(8)}


def test_an_async_in_memory_database_works_too() -> None:
    async def main() -> dict[str, Any]:
        async with AsyncSqlSessionStore("sqlite://") as store:
            session = await store.create({"a": 1})

            async def add(n: int) -> None:
                loaded = await store.load(session.id)
                assert loaded is not None
                loaded[f"t{n}"] = n
                await store.save(loaded)

            await asyncio.gather(*(add(n) for n in range(8)))
            final = await store.load(session.id)
            assert final is not None
            return final.to_dict()

    assert asyncio.run(main()) == {"a": 1, **{f"t{n}": n for n in range(8)}}


# -- rotation is one transaction ---------------------------------------------------------


def test_a_rotation_that_cannot_insert_deletes_nothing(backend: Backend) -> None:
    store = backend.make()
    session = store.create({"mine": 1})
    other = store.create({"theirs": 1})
    record = Record(b'{"mine":2}', 2, session.created_at, backend.clock())
    # the new id is taken: the DELETE of the old id is rolled back with the INSERT
    assert store._rotate(session.id, other.id, record, math.inf, 1, b"op-00001") is False
    # the old id's version is not the expected one: nothing happens
    assert store._rotate(session.id, new_id(), record, math.inf, 7, b"op-00001") is False
    kept, theirs = store.load(session.id), store.load(other.id)
    assert kept is not None
    assert theirs is not None
    assert (kept.to_dict(), kept.version) == ({"mine": 1}, 1)
    assert theirs.to_dict() == {"theirs": 1}
    assert backend.execute(f"SELECT COUNT(*) FROM {backend.table}") == [(2,)]

    async def main() -> None:
        astore = backend.amake()
        assert await astore._rotate(session.id, other.id, record, math.inf, 1, b"op-00001") is False
        assert await astore._rotate(session.id, new_id(), record, math.inf, 7, b"op-00001") is False
        fresh = new_id()
        assert await astore._rotate(session.id, fresh, record, math.inf, 1, b"op-00001") is True
        assert await astore.load(session.id) is None
        moved = await astore.load(fresh)
        assert moved is not None
        assert moved.to_dict() == {"mine": 2}

    asyncio.run(main())


def test_a_connection_that_rotated_commits_every_statement_again(backend: Backend) -> None:
    """One connection, configured as the store configures its own (autocommit, no
    rollback on return): after the transaction of a rotation it is back in autocommit,
    so what it writes next is seen by everyone at once."""
    config = {
        "pool_size": 1,
        "max_overflow": 0,
        "isolation_level": "AUTOCOMMIT",
        "pool_reset_on_return": None,
    }
    writer, reader = backend.make(backend.engine(**config)), backend.make()
    session = writer.rotate(writer.create({"n": 0}))
    for n in range(1, 4):
        session["n"] = n
        writer.save(session)
        seen = reader.load(session.id)
        assert seen is not None
        assert seen["n"] == n

    async def main() -> None:
        awriter = backend.amake(backend.async_engine(**config))
        moved = await awriter.rotate(session)
        for n in range(4, 7):
            moved["n"] = n
            await awriter.save(moved)
            seen = reader.load(moved.id)
            assert seen is not None
            assert seen["n"] == n

    asyncio.run(main())


def test_rotate_retries_with_another_id_when_the_new_one_is_taken(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    import scalekit.sessions._core as store_module

    store = backend.make()
    taken = store.create({"theirs": 1})
    session = store.create({"mine": 1})
    fresh = new_id()
    ids = iter([taken.id, fresh])
    monkeypatch.setattr(store_module, "new_id", lambda: next(ids))
    rotated = store.rotate(session)
    assert rotated.id == fresh
    theirs = store.load(taken.id)
    assert theirs is not None
    assert theirs.to_dict() == {"theirs": 1}


# -- crafted rows ----------------------------------------------------------------------------

UNPICKLED: list[str] = []


def unpickled(what: str) -> None:
    UNPICKLED.append(what)


class SetsAFlag:
    """Unpickling this calls a function of this module: it records that it ran."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (unpickled, ("ran",))


class MakesADirectory:
    """Unpickling this creates a directory (``os.mkdir``)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.path),))


def test_a_pickle_payload_in_the_table_is_rejected_and_never_unpickled(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    markers = [tmp_path / "pwned-0", tmp_path / "pwned-5"]
    payloads = [
        pickle.dumps(SetsAFlag(), protocol=protocol) for protocol in (0, 2, pickle.HIGHEST_PROTOCOL)
    ] + [
        pickle.dumps(MakesADirectory(marker), protocol=protocol)
        for marker, protocol in zip(markers, (0, pickle.HIGHEST_PROTOCOL), strict=True)
    ]
    ids = [new_id() for _ in payloads]
    store = backend.make()
    for session_id, payload in zip(ids, payloads, strict=True):
        backend.insert_row(session_id, payload)

    def no_unpickling(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("something tried to unpickle a session")

    with monkeypatch.context() as patch:
        for name in ("loads", "load", "Unpickler", "_loads", "_load", "_Unpickler"):
            if hasattr(pickle, name):
                patch.setattr(pickle, name, no_unpickling)
        for session_id in ids:
            with pytest.raises(SessionCorrupted):
                store.load(session_id)

        async def main() -> None:
            astore = backend.amake()
            for session_id in ids:
                with pytest.raises(SessionCorrupted):
                    await astore.load(session_id)

        asyncio.run(main())
    assert UNPICKLED == []
    assert not any(marker.exists() for marker in markers)
    # the payloads were live: unpickled, they run
    try:
        for payload in payloads:
            pickle.loads(payload)
        assert UNPICKLED == ["ran"] * 3
        assert all(marker.is_dir() for marker in markers)
    finally:
        UNPICKLED.clear()


def test_rows_of_the_wrong_types_are_corrupted() -> None:
    """SQLite keeps what it is given: text in the data column, a version that is not
    an integer. The store refuses them as SessionCorrupted."""
    store = SqlSessionStore("sqlite://", clock=FakeClock(START))
    rows = {
        "text-data": ("{}", 1, START),
        "text-version": (b"{}", "one", START),
        "real-version": (b"{}", 1.5, START),
        "text-time": (b"{}", 1, "yesterday"),
    }
    with store.engine.connect() as connection:
        for name, (data, version, created) in rows.items():
            connection.exec_driver_sql(
                "INSERT INTO scalekit_sessions VALUES (?, ?, ?, ?, ?, ?)",
                (name.ljust(43, "x"), data, version, created, START, START + 60),
            )
    for name in rows:
        with pytest.raises(SessionCorrupted, match="does not hold what this store writes"):
            store.load(name.ljust(43, "x"))
    store.close()


# -- database failures ------------------------------------------------------------------------


def test_database_errors_are_backend_errors(backend: Backend) -> None:
    store = backend.make()
    session = store.create({"a": 1})
    session["b"] = 2
    backend.execute(f"DROP TABLE {backend.table}")
    calls: list[Callable[[], Any]] = [
        lambda: store.load(session.id),
        lambda: store.create({}),
        lambda: store.save(session),
        lambda: store.touch(session.id),
        lambda: store.delete(session.id),
        lambda: store.rotate(session),
        store.purge_expired,
    ]
    for call in calls:
        with pytest.raises(BackendError) as raised:
            call()
        assert raised.value.backend == "sql"
        assert isinstance(raised.value.__cause__, sqlalchemy.exc.SQLAlchemyError)
        assert backend.table in str(raised.value)

    async def main() -> None:
        astore = backend.amake(create_table=True)  # made again on first use
        made = await astore.create({"a": 1})
        made["b"] = 2
        backend.execute(f"DROP TABLE {backend.table}")
        for call in (
            lambda: astore.load(made.id),
            lambda: astore.create({}),
            lambda: astore.save(made),
            lambda: astore.touch(made.id),
            lambda: astore.delete(made.id),
            lambda: astore.rotate(made),
            astore.purge_expired,
        ):
            with pytest.raises(BackendError) as raised:
                await call()
            assert isinstance(raised.value.__cause__, sqlalchemy.exc.SQLAlchemyError)

    asyncio.run(main())


def test_an_unreachable_server_is_a_backend_error() -> None:
    url = "postgresql://postgres@127.0.0.1:1/test?connect_timeout=2"
    with pytest.raises(BackendError) as raised:
        SqlSessionStore(url)
    assert raised.value.backend == "sql"
    assert isinstance(raised.value.__cause__, sqlalchemy.exc.OperationalError)

    async def main() -> None:
        store = AsyncSqlSessionStore(url)
        try:
            with pytest.raises(BackendError):
                await store.load(new_id())
        finally:
            await store.aclose()

    asyncio.run(main())


# -- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "table", ["", "1abc", "sessions; DROP TABLE users", 'a"b', "x" * 49, "schema.table", None]
)
def test_table_names_are_plain_identifiers(table: Any) -> None:
    with pytest.raises(ConfigurationError, match="table"):
        SqlSessionStore("sqlite://", table=table)


def test_what_engine_or_url_accepts(tmp_path: Path) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    with pytest.raises(ConfigurationError, match=r"sqlite:///sessions\.db"):
        SqlSessionStore("sessions.db")
    with pytest.raises(ConfigurationError, match="Path"):
        SqlSessionStore(tmp_path / "sessions.db")  # type: ignore[arg-type]
    async_engine = create_async_engine("sqlite+aiosqlite://")
    with pytest.raises(ConfigurationError, match="AsyncSqlSessionStore"):
        SqlSessionStore(async_engine)  # type: ignore[arg-type]
    engine = sqlalchemy.create_engine("sqlite://")
    with pytest.raises(ConfigurationError, match="StaticPool"):
        SqlSessionStore(engine)  # each thread would get its own database
    with pytest.raises(ConfigurationError, match="SqlSessionStore"):
        AsyncSqlSessionStore(engine)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="idle_timeout"):
        SqlSessionStore("sqlite://", idle_timeout=0)
    engine.dispose()
    asyncio.run(async_engine.dispose())


@pytest.mark.postgres
def test_a_bare_postgresql_url_gets_psycopg(postgres_dsn: str) -> None:
    with SqlSessionStore(postgres_dsn, table=unique_table()) as store:
        try:
            assert store.engine.dialect.driver == "psycopg"
            assert repr(store) == f"SqlSessionStore(postgresql, table={store.table.name!r})"
        finally:
            drop_table(postgres_dsn, store.table.name)


def test_an_engine_passed_in_is_not_disposed(tmp_path: Path) -> None:
    engine = sqlalchemy.create_engine(sqlite_url(tmp_path))
    store = SqlSessionStore(engine)
    session = store.create({"a": 1})
    store.close()
    with engine.connect() as connection:  # still usable, and the store reconnects
        assert connection.exec_driver_sql("SELECT COUNT(*) FROM scalekit_sessions").scalar() == 1
    assert store.load(session.id) is not None
    engine.dispose()


# -- async specifics -------------------------------------------------------------------------------


def test_an_async_store_outlives_its_event_loop(backend: Backend) -> None:
    """``asyncio.run`` twice: the store drops the first loop's connections."""
    store = backend.amake()
    session = asyncio.run(store.create({"a": 1}))

    async def second() -> Session | None:
        loaded = await store.load(session.id)
        assert loaded is not None
        loaded["b"] = 2
        await asyncio.gather(*(store.touch(session.id) for _ in range(20)))
        await store.save(loaded)
        return await store.load(session.id)

    loaded = asyncio.run(second())
    assert loaded is not None
    assert loaded.to_dict() == {"a": 1, "b": 2}


def test_sync_and_async_stores_share_the_table(backend: Backend) -> None:
    sync_store = backend.make()
    async_store = backend.amake()
    created = sync_store.create({"from": "sync"})

    async def main() -> str:
        loaded = await async_store.load(created.id)
        assert loaded is not None
        loaded["async"] = True
        await async_store.save(loaded)
        rotated = await async_store.rotate(loaded)
        return rotated.id

    rotated_id = asyncio.run(main())
    assert sync_store.load(created.id) is None
    final = sync_store.load(rotated_id)
    assert final is not None
    assert final.to_dict() == {"from": "sync", "async": True}
    assert final.version == 3


def test_async_context_manager_and_repr(tmp_path: Path) -> None:
    async def main() -> str:
        async with AsyncSqlSessionStore(sqlite_url(tmp_path), table="web") as store:
            await store.create({})
            return repr(store)

    assert asyncio.run(main()) == "AsyncSqlSessionStore(sqlite, table='web')"


def test_the_gate_lets_a_task_go_on_and_hands_slots_on_in_order() -> None:
    from scalekit.sessions._sql import _Gate

    async def main() -> list[str]:
        gate = _Gate(1)
        order: list[str] = []

        async def task(name: str) -> None:
            async with gate:
                order.append(name)
                await asyncio.sleep(0)

        await asyncio.gather(*(task(name) for name in "abcd"))
        # a cancelled waiter gives its turn on, it does not keep the slot
        await gate.__aenter__()
        waiting = asyncio.ensure_future(task("cancelled"))
        after = asyncio.ensure_future(task("after"))
        await asyncio.sleep(0)
        waiting.cancel()
        await gate.__aexit__(None, None, None)
        await asyncio.gather(waiting, after, return_exceptions=True)
        return order

    assert asyncio.run(main()) == ["a", "b", "c", "d", "after"]
