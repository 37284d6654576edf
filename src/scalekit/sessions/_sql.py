"""SQL session stores: :class:`SqlSessionStore` and, for asyncio, :class:`AsyncSqlSessionStore`.

SQLite is the embedded default (a file that every thread and process on the machine
shares); PostgreSQL is for production, where every web server of the tier reaches
one database::

    SqlSessionStore("sqlite:///sessions.db")
    SqlSessionStore("postgresql://app@db.internal/app")
    AsyncSqlSessionStore("postgresql://app@db.internal/app")

Any SQLAlchemy engine works too. One table, one row per session::

    scalekit_sessions
      id           VARCHAR(64)     primary key: the 43-character session id
      data         BLOB / BYTEA    the serialized session (JSON); never unpickled
      version      BIGINT          +1 on every save: the compare-and-set token
      created_at   DOUBLE          seconds of the store's clock (wall time by default)
      accessed_at  DOUBLE          the last save or touch
      expires_at   DOUBLE          indexed (``ix_<table>_expires_at``): the purge
                                   deletes a range of it; +inf without timeouts

Each primitive is one statement in autocommit mode, so one round trip, except
``_rotate``: one transaction that deletes the old id only if its version is the
expected one (``DELETE ... WHERE id = :old AND version = :expected``) and inserts
the new id. A save is ``UPDATE ... WHERE id = :id AND version = :expected``: zero
rows updated means another request saved first, and the base class merges.

SQLAlchemy (the ``sql`` extra) is imported when a store is made, never by
``import scalekit.sessions``. Errors of the database or driver are raised as
:class:`~scalekit.errors.BackendError` (``backend="sql"``) with the original as
``__cause__``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from scalekit.errors import (
    BackendError,
    ConfigurationError,
    IncompatibleStore,
    SessionCorrupted,
)
from scalekit.sessions._session import Record
from scalekit.sessions._store import AsyncSessionStoreBase, SessionStoreBase

if TYPE_CHECKING:
    from sqlalchemy import URL, Connection, Engine, MetaData, Table
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
    from sqlalchemy.sql.dml import Delete, Insert, Update
    from sqlalchemy.sql.selectable import Select

__all__ = ["AsyncSqlSessionStore", "SqlSessionStore", "session_table"]

T = TypeVar("T")

DEFAULT_TABLE = "scalekit_sessions"
COLUMNS = ("id", "data", "version", "created_at", "accessed_at", "expires_at")
SQLITE_BUSY_TIMEOUT_MS = 30_000  # how long a write waits for another one's lock

_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,47}\Z")  # the index name stays <= 63
# The driver a bare URL gets: the one the ``sql`` extra installs (SQLAlchemy would
# pick psycopg2 for "postgresql://"). "postgres://" is what Heroku and others hand out.
_SYNC_DRIVERS = {"postgresql": "postgresql+psycopg", "postgres": "postgresql+psycopg"}
_ASYNC_DRIVERS = {**_SYNC_DRIVERS, "sqlite": "sqlite+aiosqlite"}


def _import_sqlalchemy() -> None:
    try:
        import sqlalchemy  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            "the SQL session stores need SQLAlchemy: install the sql extra from the "
            "repository (pip install '.[sql]' in a clone); pip install 'scalekit[sql]' "
            "would install an unrelated package that has that name on the index"
        ) from exc


def session_table(name: str = DEFAULT_TABLE, metadata: MetaData | None = None) -> Table:
    """The sessions table, as a SQLAlchemy ``Table`` in ``metadata`` (a new one by
    default): add it to your own metadata to create it with your migrations
    (Alembic), then pass ``create_table=False`` to the store.

    Cost: no I/O.
    """
    _import_sqlalchemy()
    from sqlalchemy import BigInteger, Column, Double, Index, LargeBinary, String, Table
    from sqlalchemy import MetaData as MetaData_

    if not isinstance(name, str) or not _TABLE_NAME.match(name):
        raise ConfigurationError(
            f"table is an SQL identifier of at most 48 letters, digits and _, got {name!r}"
        )
    table = Table(
        name,
        MetaData_() if metadata is None else metadata,
        Column("id", String(64), primary_key=True),
        Column("data", LargeBinary, nullable=False),
        Column("version", BigInteger, nullable=False),
        Column("created_at", Double, nullable=False),
        Column("accessed_at", Double, nullable=False),
        Column("expires_at", Double, nullable=False),
        sqlite_with_rowid=False,  # the id is the key: one B-tree, not a rowid table + index
    )
    Index(f"ix_{name}_expires_at", table.c.expires_at)
    return table


class _Sql:
    """The statements of one table, and turning rows into records: no I/O, shared by
    the sync and async stores."""

    def __init__(self, table: Table) -> None:
        from sqlalchemy import bindparam, delete, insert, select, update

        c = table.c
        self.table = table
        self.read: Select[Any] = select(c.data, c.version, c.created_at, c.accessed_at).where(
            c.id == bindparam("b_id")
        )
        self.insert: Insert = insert(table).values(
            id=bindparam("b_id"),
            data=bindparam("b_data"),
            version=bindparam("b_version"),
            created_at=bindparam("b_created"),
            accessed_at=bindparam("b_accessed"),
            expires_at=bindparam("b_expires"),
        )
        self.replace: Update = (
            update(table)
            .where(c.id == bindparam("b_id"), c.version == bindparam("b_expected"))
            .values(
                data=bindparam("b_data"),
                version=bindparam("b_version"),
                accessed_at=bindparam("b_accessed"),
                expires_at=bindparam("b_expires"),
            )
        )
        self.touch: Update = (
            update(table)
            .where(c.id == bindparam("b_id"))
            .values(accessed_at=bindparam("b_accessed"), expires_at=bindparam("b_expires"))
        )
        self.delete: Delete = delete(table).where(c.id == bindparam("b_id"))
        self.delete_version: Delete = delete(table).where(
            c.id == bindparam("b_id"), c.version == bindparam("b_expected")
        )
        self.purge: Delete = delete(table).where(c.expires_at <= bindparam("b_now"))

    @staticmethod
    def row(session_id: str, record: Record, expires: float) -> dict[str, Any]:
        return {
            "b_id": session_id,
            "b_data": record.data,
            "b_version": record.version,
            "b_created": record.created_at,
            "b_accessed": record.accessed_at,
            "b_expires": expires,
        }

    def record(self, row: Any) -> Record | None:
        """The record of a row of :attr:`read`; :class:`SessionCorrupted` if its values
        are not of the types this store writes (a row someone else wrote)."""
        if row is None:
            return None
        data, version, created_at, accessed_at = row
        if isinstance(data, (bytearray, memoryview)):
            data = bytes(data)
        if (
            type(data) is not bytes
            or type(version) is not int
            or not _is_time(created_at)
            or not _is_time(accessed_at)
        ):
            raise SessionCorrupted(
                f"a row of table {self.table.name!r} does not hold what this store writes "
                f"(data {type(data).__name__}, version {type(version).__name__}, "
                f"times {type(created_at).__name__}/{type(accessed_at).__name__})"
            )
        return Record(data, version, float(created_at), float(accessed_at))

    def error(self, dialect: str, doing: str, exc: BaseException) -> BackendError:
        cause = getattr(exc, "orig", None) or exc
        text = " ".join(str(cause).split()) or type(cause).__name__
        return BackendError(
            f"SQL session store ({dialect}, table {self.table.name!r}): {doing} failed: {text}",
            backend="sql",
        )


def _is_time(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _prepare(conn: Connection, table: Table, create: bool) -> None:
    """Create the table if asked (IF NOT EXISTS), check that it has every column this
    store uses, then create its index if asked (IF NOT EXISTS)."""
    from sqlalchemy import inspect
    from sqlalchemy.schema import CreateIndex, CreateTable

    if create:
        conn.execute(CreateTable(table, if_not_exists=True))
    inspector = inspect(conn)
    if not inspector.has_table(table.name):
        raise IncompatibleStore(
            f"there is no table {table.name!r} (create_table=False): create it with "
            "session_table() in your migrations, or pass create_table=True",
            backend="sql",
        )
    have = {column["name"] for column in inspector.get_columns(table.name)}
    missing = [name for name in COLUMNS if name not in have]
    if missing:
        raise IncompatibleStore(
            f"table {table.name!r} is not a scalekit session table: it has no column "
            f"{', '.join(missing)} (it has {', '.join(sorted(have))}); nothing was changed",
            backend="sql",
        )
    if create:
        for index in table.indexes:
            conn.execute(CreateIndex(index, if_not_exists=True))


def _url(engine_or_url: Any, drivers: Mapping[str, str], kind: str) -> URL:
    from sqlalchemy import URL, make_url
    from sqlalchemy.exc import ArgumentError

    if not isinstance(engine_or_url, (str, URL)):
        raise ConfigurationError(
            f"{kind} takes an engine or a database URL such as 'sqlite:///sessions.db', "
            f"got {type(engine_or_url).__name__}"
        )
    try:
        url = make_url(engine_or_url)
    except ArgumentError as exc:
        raise ConfigurationError(
            f"{engine_or_url!r} is not a database URL; for a SQLite file write "
            f"'sqlite:///{engine_or_url}'"
        ) from exc
    if url.drivername in drivers:
        url = url.set(drivername=drivers[url.drivername])
    return url


def _sqlite_memory(url: URL) -> bool:
    """Whether ``url`` is an in-memory SQLite database (one per connection)."""
    if url.get_backend_name() != "sqlite":
        return False
    database = url.database or ""
    return (
        database in ("", ":memory:")
        or database.startswith("file::memory:")
        or url.query.get("mode") == "memory"
    )


def _sqlite_file_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """On each new connection to a SQLite file: wait for locks rather than fail, and
    write-ahead logging (readers never block the writer, commits need no fsync with
    ``synchronous=NORMAL``: a power cut may lose the last saves, a crash none)."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
    finally:
        cursor.close()


def _engine_kwargs(url: URL, is_async: bool) -> dict[str, Any]:
    from sqlalchemy.pool import StaticPool

    # Single statements need no transaction; _rotate asks for one on its connection
    # and always ends it, so a connection comes back with nothing to roll back.
    kwargs: dict[str, Any] = {"isolation_level": "AUTOCOMMIT", "pool_reset_on_return": None}
    if not _sqlite_memory(url):
        return kwargs
    # One database, so one connection shared by every thread (and the store's lock).
    kwargs["poolclass"] = StaticPool
    if not is_async:
        kwargs["connect_args"] = {"check_same_thread": False}
    return kwargs


def _autocommits(engine: Engine) -> bool:
    """Whether ``engine`` was made with ``isolation_level="AUTOCOMMIT"`` (as the
    store makes its own): then single statements run on it as they are, with no
    switch of isolation level on each connection it lends."""
    return getattr(engine.dialect, "_on_connect_isolation_level", None) == "AUTOCOMMIT"


def _check_pool(engine: Engine) -> bool:
    """Whether the engine shares one connection (``StaticPool``): then the store
    runs one operation at a time. Refuses an in-memory SQLite database on a pool
    that would give each thread its own, empty, database."""
    from sqlalchemy.pool import StaticPool

    shared = isinstance(engine.pool, StaticPool)
    if _sqlite_memory(engine.url) and not shared:
        raise ConfigurationError(
            "an in-memory SQLite engine needs poolclass=StaticPool (with "
            f"{type(engine.pool).__name__} each thread gets its own empty database); "
            "or pass the URL 'sqlite://' and the store makes one"
        )
    return shared


def _pool_capacity(engine: Engine) -> int | None:
    """How many connections the engine's pool can hand out at once (None: no limit)."""
    from sqlalchemy.pool import QueuePool, StaticPool

    pool = engine.pool
    if isinstance(pool, StaticPool):
        return 1
    if isinstance(pool, QueuePool):
        overflow = getattr(pool, "_max_overflow", 0)
        return None if overflow < 0 else pool.size() + overflow
    return None


class _Gate:
    """At most ``size`` operations of an async store at once, so none waits in the
    engine's pool. Unlike the pool's queue it is not first come, first served: a
    task that frees a slot may take it again at once (woken tasks queue in order
    for the next one). On a hot session this matters: a task that loaded goes on
    to save before the others' loads, rather than after a whole round of them,
    each one of which would make its save lose the compare-and-set."""

    __slots__ = ("_free", "_waiters")

    def __init__(self, size: int) -> None:
        self._free = size
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def __aenter__(self) -> None:
        while self._free <= 0:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # woken, then cancelled: pass the slot on
                raise
        self._free -= 1

    async def __aexit__(self, *exc_info: object) -> None:
        self._free += 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


class SqlSessionStore(SessionStoreBase):
    """Sessions in a SQL table, shared by every process that reaches the database.

    ``engine_or_url`` is a SQLAlchemy ``Engine`` (used as configured) or a database
    URL: ``"sqlite:///sessions.db"`` (the embedded default: WAL, a 30 s busy timeout,
    ``synchronous=NORMAL``), ``"postgresql://user@host/db"`` (with psycopg 3),
    ``"sqlite://"`` (in memory, for tests). ``table`` names the table; with
    ``create_table`` it and its index are created if missing (else they must exist:
    see :func:`session_table`). ``settings`` are those of :class:`SessionStoreBase`
    (``idle_timeout``, ``absolute_timeout``, ``max_bytes``, ``serializer``,
    ``clock``). Thread-safe: each operation takes a connection from the engine's pool.
    An engine made from a URL runs in autocommit mode (a statement is one round trip,
    with no BEGIN or COMMIT); pass one made with ``isolation_level="AUTOCOMMIT"`` to
    get the same, or any other engine (each operation then asks its connection for
    autocommit).

    Cost: ``load`` one SELECT by primary key; ``save`` one UPDATE (plus a SELECT and
    an UPDATE for each concurrent save it merges); ``create`` one INSERT; ``touch`` a
    SELECT and an UPDATE; ``delete`` one DELETE; ``rotate`` one transaction of a
    DELETE and an INSERT; ``purge_expired`` one DELETE on the ``expires_at`` index,
    O(log n + expired). Load + save of a 1 KB session, measured on a shared 2-core
    machine: 0.12 ms on a SQLite file, 0.5 ms on a local PostgreSQL 15 (memory:
    0.02 ms; the async store: 1.0 ms on SQLite with aiosqlite, 0.7 ms on PostgreSQL).

    >>> store = SqlSessionStore("sqlite://")
    >>> session = store.create({"user": 42})
    >>> store.load(session.id)["user"]
    42
    >>> store.close()
    """

    def __init__(
        self,
        engine_or_url: Engine | URL | str,
        *,
        table: str = DEFAULT_TABLE,
        create_table: bool = True,
        **settings: Any,
    ) -> None:
        super().__init__(**settings)
        _import_sqlalchemy()
        from sqlalchemy import Engine, create_engine, event
        from sqlalchemy.exc import IntegrityError, SQLAlchemyError

        if hasattr(engine_or_url, "sync_engine"):  # no import of sqlalchemy.ext.asyncio
            raise ConfigurationError("an AsyncEngine goes to AsyncSqlSessionStore")
        self._sql = _Sql(session_table(table))
        if isinstance(engine_or_url, Engine):
            self.engine = engine_or_url
            self._owns_engine = False
        else:
            url = _url(engine_or_url, _SYNC_DRIVERS, type(self).__name__)
            self.engine = create_engine(url, **_engine_kwargs(url, is_async=False))
            self._owns_engine = True
            if url.get_backend_name() == "sqlite" and not _sqlite_memory(url):
                event.listen(self.engine, "connect", _sqlite_file_pragmas)
        self._lock: contextlib.AbstractContextManager[Any] = (
            threading.Lock() if _check_pool(self.engine) else contextlib.nullcontext()
        )
        self._dialect = self.engine.dialect.name
        self._autocommit = (
            self.engine
            if _autocommits(self.engine)
            else self.engine.execution_options(isolation_level="AUTOCOMMIT")
        )
        self._IntegrityError = IntegrityError
        self._SQLAlchemyError = SQLAlchemyError
        try:
            self._setup(create_table)
        except BaseException:
            self.close()  # no store, so nobody else would close its connections
            raise

    @property
    def table(self) -> Table:
        """The SQLAlchemy ``Table`` this store uses."""
        return self._sql.table

    def _setup(self, create: bool) -> None:
        table = self._sql.table
        try:
            with self._lock, self.engine.begin() as conn:
                _prepare(conn, table, create)
        except self._SQLAlchemyError as exc:
            if not create:
                raise self._error("checking the table", exc) from exc
            try:  # another process may have created it meanwhile (a race in CREATE)
                with self._lock, self.engine.begin() as conn:
                    _prepare(conn, table, False)
            except (self._SQLAlchemyError, IncompatibleStore):
                raise self._error("creating the table", exc) from exc

    def _error(self, doing: str, exc: BaseException) -> BackendError:
        return self._sql.error(self._dialect, doing, exc)

    def _run(self, doing: str, work: Callable[[Connection], T]) -> T:
        """``work`` on an autocommit connection: each statement commits on its own."""
        try:
            with self._lock, self._autocommit.connect() as conn:
                return work(conn)
        except self._SQLAlchemyError as exc:
            raise self._error(doing, exc) from exc

    # -- the primitives ----------------------------------------------------------

    def _read(self, session_id: str) -> Record | None:
        """The stored record. Cost: one SELECT by primary key."""
        sql = self._sql
        row = self._run(
            "reading a session", lambda conn: conn.execute(sql.read, {"b_id": session_id}).first()
        )
        return sql.record(row)

    def _insert(self, session_id: str, record: Record, expires: float, op: bytes) -> bool:
        """Cost: one INSERT; a taken id is an integrity error, so False."""
        params = self._sql.row(session_id, record, expires)

        def work(conn: Connection) -> bool:
            try:
                conn.execute(self._sql.insert, params)
            except self._IntegrityError:
                return False
            return True

        return self._run("creating a session", work)

    def _replace(
        self, session_id: str, record: Record, expires: float, expected: int, op: bytes
    ) -> bool:
        """Cost: one UPDATE ``WHERE id = :id AND version = :expected``; False if it
        updated no row."""
        params = self._sql.row(session_id, record, expires)
        params["b_expected"] = expected
        updated = self._run(
            "saving a session", lambda conn: conn.execute(self._sql.replace, params).rowcount
        )
        return updated == 1

    def _touch(self, session_id: str, accessed_at: float, expires: float) -> bool:
        """Cost: one UPDATE of two columns; the data is not rewritten."""
        params = {"b_id": session_id, "b_accessed": accessed_at, "b_expires": expires}
        updated = self._run(
            "touching a session", lambda conn: conn.execute(self._sql.touch, params).rowcount
        )
        return updated == 1

    def _delete(self, session_id: str) -> None:
        """Cost: one DELETE by primary key."""
        self._run(
            "deleting a session", lambda conn: conn.execute(self._sql.delete, {"b_id": session_id})
        )

    def _rotate(
        self, old_id: str, new_id: str, record: Record, expires: float, expected: int, op: bytes
    ) -> bool:
        """Cost: one transaction: DELETE the old id if its version is ``expected``,
        INSERT the new one; rolled back (False) if either finds nothing to do."""
        sql = self._sql
        params = sql.row(new_id, record, expires)
        try:
            with self._lock, self.engine.connect() as conn:
                conn.execution_options(isolation_level=conn.default_isolation_level)
                return self._rotate_in(conn, old_id, expected, params)
        except self._SQLAlchemyError as exc:
            raise self._error("rotating a session", exc) from exc

    def _rotate_in(
        self, conn: Connection, old_id: str, expected: int, params: dict[str, Any]
    ) -> bool:
        sql = self._sql
        with conn.begin() as transaction:
            deleted = conn.execute(
                sql.delete_version, {"b_id": old_id, "b_expected": expected}
            ).rowcount
            if deleted != 1:
                transaction.rollback()
                return False
            try:
                conn.execute(sql.insert, params)
            except self._IntegrityError:
                transaction.rollback()
                return False
            return True

    def _purge(self, now: float) -> int:
        """Cost: one DELETE of the range ``expires_at <= now`` of the index."""
        deleted: int = self._run(
            "purging expired sessions",
            lambda conn: conn.execute(self._sql.purge, {"b_now": now}).rowcount,
        )
        return deleted

    # -- lifetime -------------------------------------------------------------------

    def close(self) -> None:
        """Close the connections of an engine the store made from a URL (an engine you
        passed is yours to dispose). The store reconnects if used again.

        Cost: closing each idle pooled connection."""
        if self._owns_engine:
            self.engine.dispose()

    def __enter__(self) -> SqlSessionStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._dialect}, table={self._sql.table.name!r})"


class AsyncSqlSessionStore(AsyncSessionStoreBase):
    """:class:`SqlSessionStore` for asyncio, on a SQLAlchemy ``AsyncEngine``.

    ``async_engine_or_url`` is an ``AsyncEngine`` or a URL: ``"sqlite:///sessions.db"``
    (with aiosqlite), ``"postgresql://user@host/db"`` (psycopg 3, async). The table
    is created (if ``create_table``) and checked on first use. A store serves one
    event loop at a time; when a store that made its own engine finds itself in a
    new loop (the old one closed: ``asyncio.run`` called again), it drops the old
    loop's connections first. It runs at most as many operations at once as the
    engine's pool has connections, so no task waits in the pool's first-come queue
    (on a hot session that queue makes almost every save lose its race; see
    ``_Gate``).

    Cost: that of :class:`SqlSessionStore`, the same statements, awaited.
    """

    def __init__(
        self,
        async_engine_or_url: AsyncEngine | URL | str,
        *,
        table: str = DEFAULT_TABLE,
        create_table: bool = True,
        **settings: Any,
    ) -> None:
        super().__init__(**settings)
        _import_sqlalchemy()
        from sqlalchemy import Engine, event
        from sqlalchemy.exc import IntegrityError, SQLAlchemyError
        from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

        if isinstance(async_engine_or_url, Engine):
            raise ConfigurationError(
                "a sync Engine goes to SqlSessionStore; AsyncSqlSessionStore takes an "
                "AsyncEngine (sqlalchemy.ext.asyncio.create_async_engine)"
            )
        self._sql = _Sql(session_table(table))
        if isinstance(async_engine_or_url, AsyncEngine):
            self.engine = async_engine_or_url
            self._owns_engine = False
        else:
            url = _url(async_engine_or_url, _ASYNC_DRIVERS, type(self).__name__)
            self.engine = create_async_engine(url, **_engine_kwargs(url, is_async=True))
            self._owns_engine = True
            if url.get_backend_name() == "sqlite" and not _sqlite_memory(url):
                event.listen(self.engine.sync_engine, "connect", _sqlite_file_pragmas)
        _check_pool(self.engine.sync_engine)
        self._capacity = _pool_capacity(self.engine.sync_engine)
        self._dialect = self.engine.dialect.name
        self._autocommit = (
            self.engine
            if _autocommits(self.engine.sync_engine)
            else self.engine.execution_options(isolation_level="AUTOCOMMIT")
        )
        self._IntegrityError = IntegrityError
        self._SQLAlchemyError = SQLAlchemyError
        self._create_table = create_table
        self._prepared = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = False  # prepared, and in the current loop
        self._stale = False  # the pool holds connections of a previous loop
        self._setup_lock: asyncio.Lock | None = None
        self._gate: _Gate | None = None

    @property
    def table(self) -> Table:
        """The SQLAlchemy ``Table`` this store uses."""
        return self._sql.table

    def _error(self, doing: str, exc: BaseException) -> BackendError:
        return self._sql.error(self._dialect, doing, exc)

    async def _ensure(self) -> None:
        """Bind to the running loop and create or check the table, once."""
        loop = asyncio.get_running_loop()
        if loop is self._loop and self._ready:
            return
        if loop is not self._loop:
            self._stale = self._loop is not None and self._owns_engine
            self._loop = loop
            self._ready = False
            self._setup_lock = asyncio.Lock()
            self._gate = None if self._capacity is None else _Gate(self._capacity)
        assert self._setup_lock is not None
        async with self._setup_lock:
            if not self._ready:
                if self._stale:  # pooled connections of a closed loop
                    await self.engine.dispose()
                    self._stale = False
                if not self._prepared:
                    await self._setup()
                    self._prepared = True
                self._ready = True

    async def _setup(self) -> None:
        table, create = self._sql.table, self._create_table
        try:
            async with self._guard(), self.engine.begin() as conn:
                await conn.run_sync(_prepare, table, create)
        except self._SQLAlchemyError as exc:
            if not create:
                raise self._error("checking the table", exc) from exc
            try:  # another process may have created it meanwhile (a race in CREATE)
                async with self._guard(), self.engine.begin() as conn:
                    await conn.run_sync(_prepare, table, False)
            except (self._SQLAlchemyError, IncompatibleStore):
                raise self._error("creating the table", exc) from exc

    def _guard(self) -> contextlib.AbstractAsyncContextManager[Any]:
        gate = self._gate
        return contextlib.nullcontext() if gate is None else gate

    async def _execute(self, doing: str, statement: Any, params: dict[str, Any]) -> Any:
        """Run one statement on an autocommit connection; its (buffered) result."""
        await self._ensure()
        try:
            async with self._guard(), self._autocommit.connect() as conn:
                return await conn.execute(statement, params)
        except self._SQLAlchemyError as exc:
            raise self._error(doing, exc) from exc

    # -- the primitives ----------------------------------------------------------

    async def _read(self, session_id: str) -> Record | None:
        """:meth:`SqlSessionStore._read`."""
        result = await self._execute("reading a session", self._sql.read, {"b_id": session_id})
        return self._sql.record(result.first())

    async def _insert(self, session_id: str, record: Record, expires: float, op: bytes) -> bool:
        """:meth:`SqlSessionStore._insert`."""
        await self._ensure()
        params = self._sql.row(session_id, record, expires)
        try:
            async with self._guard(), self._autocommit.connect() as conn:
                await conn.execute(self._sql.insert, params)
        except self._IntegrityError:
            return False
        except self._SQLAlchemyError as exc:
            raise self._error("creating a session", exc) from exc
        return True

    async def _replace(
        self, session_id: str, record: Record, expires: float, expected: int, op: bytes
    ) -> bool:
        """:meth:`SqlSessionStore._replace`."""
        params = self._sql.row(session_id, record, expires)
        params["b_expected"] = expected
        result = await self._execute("saving a session", self._sql.replace, params)
        return bool(result.rowcount == 1)

    async def _touch(self, session_id: str, accessed_at: float, expires: float) -> bool:
        """:meth:`SqlSessionStore._touch`."""
        params = {"b_id": session_id, "b_accessed": accessed_at, "b_expires": expires}
        result = await self._execute("touching a session", self._sql.touch, params)
        return bool(result.rowcount == 1)

    async def _delete(self, session_id: str) -> None:
        """:meth:`SqlSessionStore._delete`."""
        await self._execute("deleting a session", self._sql.delete, {"b_id": session_id})

    async def _rotate(
        self, old_id: str, new_id: str, record: Record, expires: float, expected: int, op: bytes
    ) -> bool:
        """:meth:`SqlSessionStore._rotate`."""
        await self._ensure()
        sql = self._sql
        params = sql.row(new_id, record, expires)
        try:
            async with self._guard(), self.engine.connect() as conn:
                await conn.execution_options(isolation_level=conn.default_isolation_level)
                return await self._rotate_in(conn, old_id, expected, params)
        except self._SQLAlchemyError as exc:
            raise self._error("rotating a session", exc) from exc

    async def _rotate_in(
        self, conn: AsyncConnection, old_id: str, expected: int, params: dict[str, Any]
    ) -> bool:
        sql = self._sql
        async with conn.begin() as transaction:
            result = await conn.execute(
                sql.delete_version, {"b_id": old_id, "b_expected": expected}
            )
            if result.rowcount != 1:
                await transaction.rollback()
                return False
            try:
                await conn.execute(sql.insert, params)
            except self._IntegrityError:
                await transaction.rollback()
                return False
            return True

    async def _purge(self, now: float) -> int:
        """:meth:`SqlSessionStore._purge`."""
        result = await self._execute("purging expired sessions", self._sql.purge, {"b_now": now})
        deleted: int = result.rowcount
        return deleted

    # -- lifetime -------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the connections of an engine the store made from a URL (an engine you
        passed is yours to dispose). The store reconnects if used again.

        Cost: closing each idle pooled connection."""
        if self._owns_engine:
            await self.engine.dispose()
        self._loop = None
        self._ready = False

    async def __aenter__(self) -> AsyncSqlSessionStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._dialect}, table={self._sql.table.name!r})"
