"""The shared cache tier on one SQLite file: :class:`SQLiteCache`.

Every process and thread on one host that opens the same file sees the same
items, with no server to run: the shared tier of a single-host deployment (and
of ``scalekit demo``). Keys, TTLs, values and counters are those of the remote
stores (:mod:`scalekit.cache._remote`); only the transport differs.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import timedelta
from typing import Any, Generic, TypeVar

from scalekit._validate import check_callable, check_count, check_seconds, check_str, type_name
from scalekit.cache._remote import JSON, Codec, Counters, Serializer, StoreStats
from scalekit.errors import (
    ArgumentTypeError,
    BackendError,
    ClosedError,
    ConfigurationError,
    IncompatibleStore,
)

__all__ = [
    "SQLiteCache",
    "check_path",
    "check_table",
    "connect",
    "file_id",
    "forks",
    "table_shape",
    "wrap_error",
]

V = TypeVar("V")
_MISSING: Any = object()
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}\Z")
_CHUNK = 500  # keys per statement of a batch: under every build's variable limit (999)
_SWEEP_EVERY = 64  # writes of one store between two sweeps of expired rows
_SWEEP_BATCH = 256  # rows a sweep deletes at most: 4 a write, more than a write adds
_SHAPE = [("key", "BLOB", 1), ("value", "BLOB", 0), ("expires", "REAL", 0)]
FILE_CHECK_EVERY = 0.05
"""Seconds between two looks at which file is under the name: a store follows its
file removed or replaced within this long (calls in between use the old one)."""

# Forks seen by this process: a connection must not cross a fork, so a child
# drops the pool it inherited (without closing it: that is the parent's).
_forks = [0]
_abandoned: list[sqlite3.Connection] = []  # kept referenced: never closed in the child
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: _forks.__setitem__(0, _forks[0] + 1))


def forks() -> int:
    """How many forks led to this process (0 in the process that started).
    Runtime complexity: O(1)."""
    return _forks[0]


def check_path(path: object) -> str:
    """``path`` as a file name SQLite can open, shared by every connection: a
    ``str`` or ``os.PathLike`` naming a file (not ``""`` or ``":memory:"``, which
    each connection would see as a database of its own). Runtime complexity:
    O(len(path))."""
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if not isinstance(path, str):
        raise ArgumentTypeError(f"path must be a str or os.PathLike, got {type_name(path)}")
    if path in ("", ":memory:") or path.startswith("file:"):
        raise ConfigurationError(
            f"path must be a file name (not ':memory:' or a URI), got {path!r}"
        )
    if "\x00" in path:
        raise ConfigurationError(f"path must not contain NUL, got {path!r}")
    try:
        path.encode()
    except UnicodeEncodeError:
        raise ConfigurationError(f"path must be valid text, got {path!r}") from None
    return path


def check_table(table: object, name: str = "table") -> str:
    """``table`` if it is a plain SQL identifier (letters, digits, ``_``; at most
    63 characters) that SQLite does not keep for itself (``sqlite_...``).
    Runtime complexity: O(len(table))."""
    text = check_str(table, name)
    if not _IDENTIFIER.match(text):
        raise ConfigurationError(
            f"{name} must be letters, digits and _ (not first), at most 63, got {text!r}"
        )
    if text.lower().startswith("sqlite_"):
        raise ConfigurationError(f"{name} must not start with sqlite_ (SQLite's own), got {text!r}")
    return text


def connect(path: str, timeout: float) -> sqlite3.Connection:
    """A connection to ``path`` in autocommit mode (transactions are explicit),
    usable from any thread (it is lent to one at a time), waiting up to
    ``timeout`` seconds for another writer's lock. Runtime complexity: O(1)."""
    conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
    try:
        # NORMAL in WAL mode: a commit survives a crash of the process, and loses
        # only the last transactions on a power cut: right for a cache
        conn.execute("PRAGMA synchronous = NORMAL")
    except BaseException:
        conn.close()
        raise
    return conn


def file_id(path: str) -> tuple[int, int] | None:
    """The device and inode of ``path`` (``None`` when it is missing): another file
    put under the same name differs. Runtime complexity: O(1), one ``stat``."""
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return None
    return status.st_dev, status.st_ino


def table_shape(conn: sqlite3.Connection, table: str) -> list[tuple[str, str, int]]:
    """``(column, declared type, position in the primary key)`` of each column of
    ``table``: what tells our table from another of the same name.
    Runtime complexity: O(columns)."""
    rows = conn.execute(f'PRAGMA table_info("{table}")').fetchall()
    return [(row[1], str(row[2]).upper(), row[5]) for row in rows]


def wrap_error(exc: sqlite3.Error, path: str, doing: str) -> BackendError:
    """The library's error for an error of sqlite3 (``raise ... from exc``).
    Runtime complexity: O(1)."""
    if type(exc) is sqlite3.DatabaseError:  # "file is not a database" and the like
        return IncompatibleStore(f"{path!r} is not an SQLite database: {exc}", backend="sqlite")
    return BackendError(f"sqlite failed {doing} on {path!r}: {exc}", backend="sqlite")


def _fetch_all(sql: str, args: tuple[Any, ...], conn: sqlite3.Connection) -> list[Any]:
    return conn.execute(sql, args).fetchall()


def _after(prefix: bytes) -> bytes | None:
    """The smallest ``bytes`` above every name starting with ``prefix``; ``None``
    when there is none (``prefix`` is empty or all ``0xff``)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


class SQLiteCache(Generic[V]):
    """A :class:`~scalekit.protocols.Store` on one SQLite file, shared by every
    process and thread that opens it: the shared tier on one host, with no server.

    ``path`` is the file (created if missing, with the directory existing);
    ``prefix`` is put before every key, so stores sharing a file keep apart;
    ``ttl`` is the TTL of items written without one (``None``: never expire);
    values go through ``serializer`` (strict JSON by default, never pickle);
    ``table`` names the table in the file. ``timeout`` is how long a write waits
    for another process's write (SQLite's busy timeout) before it fails.

    Expiry is wall-clock (``timer``, :func:`time.time` by default), since every
    process reads the same deadlines: an expired row is never returned, and is
    deleted later, a bounded batch every few writes (:meth:`sweep`), never by a
    scan of the table. The file is in WAL mode: readers never wait for a writer.
    ``add`` is one ``INSERT ... ON CONFLICT DO UPDATE ... WHERE expired``
    statement, so two processes adding one key never both succeed (what the
    lease of :func:`~scalekit.cache.cached` relies on); ``set_many`` is one
    transaction.

    Each call borrows a connection from this object's pool and gives it back (a
    thread never waits for another thread's connection: the pool opens one more),
    so there are at most as many connections as calls at once, whatever threads
    come and go. Errors of sqlite3 are raised as
    :class:`~scalekit.errors.BackendError` with the error as ``__cause__``.

    Runtime complexity: O(log(n)) per key (a B-tree lookup), n the rows in the file.

    >>> import os, tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     with SQLiteCache(os.path.join(folder, "cache.db"), prefix="users:", ttl=300) as cache:
    ...         cache.set("42", {"name": "Ada"})
    ...         print(cache.get("42"), cache.add("42", "other"), round(cache.ttl_of("42")))
    {'name': 'Ada'} False 300
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        prefix: str = "",
        ttl: float | timedelta | None = None,
        serializer: Serializer[V] = JSON,
        table: str = "scalekit_cache",
        timeout: float = 5.0,
        timer: Callable[[], float] = time.time,
    ) -> None:
        self._path = check_path(path)
        self._codec: Codec[V] = Codec(type(self).__name__, prefix, ttl, serializer)
        self._table = check_table(table)
        self._timeout = check_seconds(timeout, "timeout", allow_zero=True, maximum=86400.0)
        self._timer = check_callable(timer, "timer")
        self._counters = Counters()
        self._idle: list[sqlite3.Connection] = []
        # every connection idle or in use -> the file it was opened on
        self._opened: dict[sqlite3.Connection, tuple[int, int] | None] = {}
        self._file: tuple[int, int] | None = None  # the file under the name, last seen
        self._pool_lock = threading.Lock()  # the pool, the file, closing
        self._next_check = 0.0  # when to look up the file under the name again
        self._forks = _forks[0]
        self._closed = False
        self._writes = itertools.count(1)
        start = self._codec.prefix
        end = _after(start)
        self._range = (start, end)
        t = f'"{self._table}"'
        self._sql_get = f"SELECT value, expires FROM {t} WHERE key = ?"
        self._sql_expires = f"SELECT expires FROM {t} WHERE key = ?"
        self._sql_set = (
            f"INSERT INTO {t} (key, value, expires) VALUES (?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires = excluded.expires"
        )
        self._sql_set_if = (
            f"INSERT INTO {t} (key, value, expires) SELECT ?1, ?2, ?3 WHERE EXISTS "
            f"(SELECT 1 FROM {t} WHERE key = ?4 AND value = ?5 "
            "AND (expires IS NULL OR expires > ?6)) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires = excluded.expires"
        )
        self._sql_add = (
            f"INSERT INTO {t} (key, value, expires) VALUES (?1, ?2, ?3) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires = excluded.expires "
            f"WHERE {t}.expires IS NOT NULL AND {t}.expires <= ?4"
        )
        self._sql_delete = f"DELETE FROM {t} WHERE key = ? RETURNING expires"
        self._sql_sweep = (
            f"DELETE FROM {t} WHERE key IN "
            f"(SELECT key FROM {t} WHERE expires <= ? ORDER BY expires LIMIT ?)"
        )
        upper = "" if end is None else " AND key < ?"
        self._sql_keys = f"SELECT key, expires FROM {t} WHERE key > ?{upper} ORDER BY key LIMIT ?"
        self._sql_first = f"SELECT key, expires FROM {t} WHERE key >= ?{upper} ORDER BY key LIMIT ?"
        self._sql_clear = f"DELETE FROM {t} WHERE key >= ?{upper}"
        self._open_schema()

    # -- connections -------------------------------------------------------------------

    def _open_schema(self) -> None:
        """Open the first connection to the file under the name (creating it if
        missing): WAL mode, the table and its index. Called under the pool lock
        (or before the object is shared)."""
        t = self._table
        try:
            conn = connect(self._path, self._timeout)
            found = file_id(self._path)
        except sqlite3.Error as exc:
            raise wrap_error(exc, self._path, "opening the file") from exc
        except OSError as exc:
            raise BackendError(f"cannot open {self._path!r}: {exc}", backend="sqlite") from exc
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(
                f'CREATE TABLE IF NOT EXISTS "{t}" '
                "(key BLOB PRIMARY KEY, value BLOB NOT NULL, expires REAL) WITHOUT ROWID"
            )
            columns = table_shape(conn, t)
            if columns == _SHAPE:
                conn.execute(
                    f'CREATE INDEX IF NOT EXISTS "{t}_expires" ON "{t}" (expires) '
                    "WHERE expires IS NOT NULL"
                )
        except sqlite3.Error as exc:
            conn.close()
            raise wrap_error(exc, self._path, "creating the table") from exc
        if columns != _SHAPE:
            conn.close()
            raise IncompatibleStore(
                f"the table {t!r} of {self._path!r} is not a SQLiteCache's (columns {columns})",
                backend="sqlite",
            )
        self._file = found
        self._opened[conn] = found
        self._idle.append(conn)

    def _take(self) -> sqlite3.Connection:
        """A connection to the file now under the name: if another file took the
        name (or it was removed), the pool is dropped and the file opened again,
        as :class:`SQLiteInvalidation` does, so every store and channel on the
        name keeps using one file. The name is looked up at most every
        :data:`FILE_CHECK_EVERY` seconds (a ``stat`` costs as much as a sixth of
        a read)."""
        if self._forks != _forks[0]:
            self._after_fork()
        now = time.monotonic()
        if now >= self._next_check:
            self._follow_file(now)
        with self._pool_lock:
            if self._closed:
                raise self._closed_error()
            if self._idle:
                return self._idle.pop()
            file = self._file
        return self._connect(file)

    def _follow_file(self, now: float) -> None:
        """Look up the file under the name; if it is another one (or none), drop
        the pool and open the file now there."""
        try:
            found = file_id(self._path)
        except OSError as exc:
            self._counters.failed()
            raise BackendError(f"cannot reach {self._path!r}: {exc}", backend="sqlite") from exc
        stale: list[sqlite3.Connection] = []
        with self._pool_lock:
            if self._closed:
                raise self._closed_error()
            if found != self._file:
                stale, self._idle = self._idle, []
                for conn in stale:
                    del self._opened[conn]
                try:
                    self._open_schema()
                except BackendError:
                    self._counters.failed()
                    raise
                finally:
                    for conn in stale:
                        conn.close()
            self._next_check = now + FILE_CHECK_EVERY

    def _closed_error(self) -> ClosedError:
        return ClosedError(f"this SQLiteCache on {self._path!r} is closed")

    def _connect(self, file: tuple[int, int] | None) -> sqlite3.Connection:
        """A new connection, for the pool of ``file``."""
        try:
            conn = connect(self._path, self._timeout)
        except sqlite3.Error as exc:
            raise self._failed(exc, "opening a connection") from exc
        with self._pool_lock:
            self._opened[conn] = file
        return conn

    def _give(self, conn: sqlite3.Connection) -> None:
        """Put ``conn`` back in the pool, or close it: the store is closed, the
        file under the name changed, or a failed ``COMMIT`` left a transaction
        open (which would hold the write lock in the pool)."""
        with self._pool_lock:
            if self._opened.get(conn, _MISSING) == self._file and not (
                self._closed or conn.in_transaction
            ):
                self._idle.append(conn)
                return
            self._opened.pop(conn, None)
        conn.close()

    def _after_fork(self) -> None:
        with self._pool_lock:
            if self._forks == _forks[0]:
                return
            _abandoned.extend(self._opened)
            self._idle, self._opened = [], {}
            self._forks = _forks[0]

    def _failed(self, exc: sqlite3.Error, doing: str) -> BackendError:
        self._counters.failed()
        return wrap_error(exc, self._path, doing)

    def _run(self, doing: str, work: Callable[[sqlite3.Connection], Any]) -> Any:
        conn = self._take()
        try:
            return work(conn)
        except sqlite3.Error as exc:
            raise self._failed(exc, doing) from exc
        finally:
            self._give(conn)

    def _transaction(self, doing: str, work: Callable[[sqlite3.Connection], Any]) -> Any:
        """``work(conn)`` in one write transaction (``BEGIN IMMEDIATE``: the write
        lock is taken at once, so it never fails half way for want of it)."""

        def transaction(conn: sqlite3.Connection) -> Any:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = work(conn)
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

        return self._run(doing, transaction)

    def _wrote(self, count: int) -> None:
        self._counters.wrote(count)
        if next(self._writes) % _SWEEP_EVERY == 0:
            with contextlib.suppress(BackendError, ClosedError):
                self.sweep()  # a failure is counted; the next sweep takes these rows

    # -- properties --------------------------------------------------------------------

    @property
    def path(self) -> str:
        """The file of this store."""
        return self._path

    @property
    def table(self) -> str:
        """The table of this store in the file."""
        return self._table

    @property
    def prefix(self) -> str:
        """What is put before every key in the table."""
        return self._codec.prefix.decode("utf-8", "surrogatepass")

    @property
    def ttl(self) -> float | None:
        """The TTL of items written with ``ttl=None``; ``None`` for never."""
        return self._codec.default_ttl

    # -- reading -----------------------------------------------------------------------

    def _left(self, expires: float | None, now: float | None = None) -> float | None:
        """Seconds left before ``expires``: ``None`` for never, ``<= 0`` when expired."""
        if expires is None:
            return None
        return expires - (self._timer() if now is None else now)

    def get(self, key: str, default: V | None = None, /) -> V | None:
        """The value of ``key``, or ``default`` when it is missing or expired.

        Runtime complexity: O(log(n)).
        """
        name = self._codec.key(key)
        conn = self._take()
        try:
            row = conn.execute(self._sql_get, (name,)).fetchone()
        except sqlite3.Error as exc:
            raise self._failed(exc, "reading") from exc
        finally:
            self._give(conn)
        if row is None or (row[1] is not None and row[1] <= self._timer()):
            self._counters.looked_up(0, 1)
            return default
        self._counters.looked_up(1, 0)
        return self._codec.loads(row[0], key)

    def get_with_ttl(self, key: str, default: Any = None, /) -> tuple[Any, float | None]:
        """``(value, seconds left)`` of ``key`` in one read; ``(default, None)``
        when it is missing; ``None`` seconds when it never expires. What a near
        cache fills itself with. Runtime complexity: O(log(n))."""
        name = self._codec.key(key)
        row = self._run("reading", lambda conn: conn.execute(self._sql_get, (name,)).fetchone())
        left = None if row is None else self._left(row[1])
        if row is None or (left is not None and left <= 0):
            self._counters.looked_up(0, 1)
            return default, None
        self._counters.looked_up(1, 0)
        return self._codec.loads(row[0], key), left

    def _select(self, names: dict[bytes, str]) -> list[tuple[bytes, bytes, float | None]]:
        """The rows of ``names`` (expired ones too), in one read snapshot."""
        if not names:
            return []
        listed = list(names)
        t = self._table

        def read(conn: sqlite3.Connection) -> list[Any]:
            rows: list[Any] = []
            many = len(listed) > _CHUNK
            if many:
                conn.execute("BEGIN")
            try:
                for start in range(0, len(listed), _CHUNK):
                    chunk = listed[start : start + _CHUNK]
                    marks = ",".join("?" * len(chunk))
                    sql = f'SELECT key, value, expires FROM "{t}" WHERE key IN ({marks})'
                    rows += conn.execute(sql, chunk).fetchall()
            finally:
                if many and conn.in_transaction:
                    conn.execute("COMMIT")
            return rows

        return self._run("reading", read)  # type: ignore[no-any-return]

    def get_many_with_ttl(self, keys: Iterable[str], /) -> dict[str, tuple[V, float | None]]:
        """``key -> (value, seconds left)`` of the present keys, in one read
        snapshot. Runtime complexity: O(len(keys) * log(n))."""
        names = self._codec.keys(keys)
        rows = self._select(names)
        now = self._timer()
        found = {}
        for name, data, expires in rows:
            left = self._left(expires, now)
            if left is None or left > 0:
                key = names[name]
                found[key] = (self._codec.loads(data, key), left)
        self._counters.looked_up(len(found), len(names) - len(found))
        return {key: found[key] for key in names.values() if key in found}

    def get_many(self, keys: Iterable[str], /) -> dict[str, V]:
        """The present keys among ``keys`` with their values, in one read snapshot
        (one statement per 500 keys). Runtime complexity: O(len(keys) * log(n))."""
        return {key: value for key, (value, _) in self.get_many_with_ttl(keys).items()}

    def ttl_of(self, key: str, /) -> float | None:
        """Seconds ``key`` has left (``None``: never expires); :class:`KeyError` if
        it is missing or expired. Runtime complexity: O(log(n))."""
        name = self._codec.key(key)
        row = self._run("reading", lambda conn: conn.execute(self._sql_expires, (name,)).fetchone())
        left = None if row is None else self._left(row[0])
        if row is None or (left is not None and left <= 0):
            raise KeyError(key)
        return left

    def keys(self, *, count: int = 1000) -> Iterator[str]:
        """Every live key of this store (under its prefix), in byte order of their
        UTF-8, read ``count`` at a time (each page a statement of its own: a key
        written or deleted meanwhile may or may not be seen).

        Runtime complexity: O(k * log(n)) for the k rows under the prefix.
        """
        count = check_count(count, "count", minimum=1)
        return self._keys(count)

    def _keys(self, count: int) -> Iterator[str]:
        start, end = self._range
        cut = len(start)
        sql, after = self._sql_first, start
        while True:
            args = (after, count) if end is None else (after, end, count)
            rows = self._run("listing keys", functools.partial(_fetch_all, sql, args))
            now = self._timer()
            for name, expires in rows:
                if expires is None or expires > now:
                    yield bytes(name[cut:]).decode("utf-8", "surrogatepass")
            if len(rows) < count:
                return
            sql, after = self._sql_keys, rows[-1][0]

    def __iter__(self) -> Iterator[str]:
        return self.keys()

    # -- writing -----------------------------------------------------------------------

    def _deadline(self, ttl: float | timedelta | None) -> float | None:
        seconds = self._codec.ttl(ttl)
        return None if seconds is None else self._timer() + seconds

    def set(self, key: str, value: V, /, *, ttl: float | timedelta | None = None) -> None:
        """Store ``value`` under ``key`` for ``ttl`` seconds (``math.inf``: forever).

        Runtime complexity: O(log(n)).
        """
        name, data = self._codec.key(key), self._codec.dumps(value)
        deadline = self._deadline(ttl)
        self._run("writing", lambda conn: conn.execute(self._sql_set, (name, data, deadline)))
        self._wrote(1)

    def add(self, key: str, value: V, /, *, ttl: float | timedelta | None = None) -> bool:
        """Store ``value`` only if ``key`` is absent or expired; return whether it
        did. One statement: atomic across processes. Runtime complexity: O(log(n))."""
        name, data = self._codec.key(key), self._codec.dumps(value)
        seconds = self._codec.ttl(ttl)
        now = self._timer()
        deadline = None if seconds is None else now + seconds
        added = self._run(
            "adding",
            lambda conn: conn.execute(self._sql_add, (name, data, deadline, now)).rowcount == 1,
        )
        if added:
            self._wrote(1)
        return bool(added)

    @property
    def atomic_set_if(self) -> bool:
        """:meth:`set_if` is one statement: always atomic."""
        return True

    def set_if(
        self,
        key: str,
        value: V,
        /,
        *,
        guard: str,
        expected: Any,
        ttl: float | timedelta | None = None,
    ) -> bool:
        """Store ``value`` under ``key`` only if ``guard`` holds ``expected`` (and
        has not expired), in one statement; return whether it did. What ``cached``
        stores a result with, its lease as the guard, so that an invalidation
        (which drops the lease) is never undone by a call in flight.

        Runtime complexity: O(log(n))."""
        name, data = self._codec.key(key), self._codec.dumps(value)
        guard_name = self._codec.key(guard, "the guard")
        wanted = self._codec.dumps(expected, "expected (the guard's value)")
        seconds = self._codec.ttl(ttl)
        now = self._timer()
        deadline = None if seconds is None else now + seconds
        arguments = (name, data, deadline, guard_name, wanted, now)
        stored = self._run(
            "writing", lambda conn: conn.execute(self._sql_set_if, arguments).rowcount == 1
        )
        if stored:
            self._wrote(1)
        return bool(stored)

    def set_many(self, items: Mapping[str, V], /, *, ttl: float | timedelta | None = None) -> None:
        """Store every item with the same ``ttl``, in one transaction: all or none.
        Runtime complexity: O(len(items) * log(n))."""
        encoded = self._codec.items(items)
        deadline = self._deadline(ttl)
        if not encoded:
            return
        rows = [(name, data, deadline) for name, (_, data) in encoded.items()]
        self._transaction("writing", lambda conn: conn.executemany(self._sql_set, rows))
        self._wrote(len(rows))

    def check_items(self, items: Mapping[str, V], /) -> None:
        """Raise what ``set_many(items)`` would raise for a bad key or value, with
        no I/O. Runtime complexity: O(size of the items)."""
        self._codec.items(items)

    def delete(self, key: str, /) -> bool:
        """Remove ``key``; return whether it was there (and not expired).

        Runtime complexity: O(log(n)).
        """
        name = self._codec.key(key)
        rows = self._run(
            "deleting", lambda conn: conn.execute(self._sql_delete, (name,)).fetchall()
        )
        self._counters.deleted()
        if not rows:
            return False
        left = self._left(rows[0][0])
        return left is None or left > 0

    def sweep(self, limit: int = _SWEEP_BATCH) -> int:
        """Delete up to ``limit`` expired rows (of any prefix), the longest
        expired first; how many it deleted. Writes call it every 64 writes; call
        it yourself to trim a file that is only read.

        Runtime complexity: O(limit * log(n)), through the index of deadlines.
        """
        limit = check_count(limit, "limit", minimum=1)
        now = self._timer()
        return self._run(  # type: ignore[no-any-return]
            "sweeping", lambda conn: conn.execute(self._sql_sweep, (now, limit)).rowcount
        )

    def clear(self) -> None:
        """Delete every item under this store's prefix (every item, with none).

        Runtime complexity: O(k * log(n)) for the k rows under the prefix.
        """
        start, end = self._range
        bounds = (start,) if end is None else (start, end)
        self._run("clearing", lambda conn: conn.execute(self._sql_clear, bounds))

    # -- counters and life -------------------------------------------------------------

    def stats(self) -> StoreStats:
        """A snapshot of this object's counters (not of other processes').

        Runtime complexity: O(1).
        """
        return self._counters.snapshot()

    def reset_stats(self) -> None:
        """Set every counter back to zero. Runtime complexity: O(1)."""
        self._counters.reset()

    def close(self) -> None:
        """Close every connection (one in use closes when its call ends); the
        file stays. Calls after this raise :class:`~scalekit.errors.ClosedError`.
        Runtime complexity: O(connections)."""
        if self._forks != _forks[0]:
            self._after_fork()  # the parent's connections are not this process's to close
        with self._pool_lock:
            self._closed = True
            idle, self._idle = self._idle, []
            for conn in idle:
                self._opened.pop(conn, None)
        for conn in idle:
            conn.close()

    def __enter__(self) -> SQLiteCache[V]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _check(self) -> None:
        """Assert the invariants: every row under the prefix has a key that
        decodes, a deadline that is a number or none; the counters are counts;
        no connection is both idle and lent."""
        start, end = self._range
        bounds = (start,) if end is None else (start, end)
        upper = "" if end is None else " AND key < ?"
        rows = self._run(
            "checking",
            lambda conn: conn.execute(
                f'SELECT key, value, expires FROM "{self._table}" WHERE key >= ?{upper}', bounds
            ).fetchall(),
        )
        for name, value, expires in rows:
            assert isinstance(name, bytes), name
            assert name.startswith(start), name
            bytes(name[len(start) :]).decode("utf-8", "surrogatepass")
            assert isinstance(value, bytes), (name, value)
            assert expires is None or (isinstance(expires, float) and expires == expires), expires
        stats = self._counters.snapshot()  # StoreStats checks its fields are counts
        assert stats.hits + stats.misses >= 0
        with self._pool_lock:
            assert len(self._idle) == len(set(self._idle))
            assert self._closed or set(self._idle) <= set(self._opened)
            assert all(self._opened[conn] == self._file for conn in self._idle)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self._path!r}, prefix={self.prefix!r}, ttl={self.ttl!r}, "
            f"table={self._table!r})"
        )
