"""The file: what a scalekit.mq store is, how it is opened, checked and created.

Opening refuses, without changing it, a file that is not a scalekit.mq store of
this schema: a non-SQLite file, a damaged header, another application's
database, a newer schema, or a store missing one of its tables.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from scalekit.errors import BackendError, IncompatibleStore

__all__ = ["APPLICATION_ID", "SCHEMA_VERSION", "open_store", "wrap_error"]

APPLICATION_ID = 0x534B4D51
"""``PRAGMA application_id`` of a scalekit.mq store ("SKMQ")."""

SCHEMA_VERSION = 1
"""``PRAGMA user_version`` of the schema this module reads and writes."""

_STORE_KIND = "scalekit.mq"
_BUSY_TIMEOUT = 30.0  # seconds a transaction waits for another process's lock
_SQLITE_HEADER = b"SQLite format 3\x00"
_PAGE_SIZE = 1024
# Checkpoint when the WAL holds this many pages: 4 MiB of 1 KiB pages, the size
# SQLite's default (1,000 pages) gives its default 4 KiB pages. Each checkpoint
# costs about three fsyncs (the WAL, the file, the WAL's new header); at 1,000
# 1 KiB pages a durable put + get + ack (~10 pages) paid one every ~100 messages.
_WAL_AUTOCHECKPOINT = 4000

_SCHEMA = (
    "CREATE TABLE scalekit_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
    """CREATE TABLE mq_queues (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        created_at REAL NOT NULL,
        size INTEGER NOT NULL DEFAULT 0,
        head INTEGER NOT NULL DEFAULT 0,
        delivered INTEGER NOT NULL DEFAULT 0,
        redelivered INTEGER NOT NULL DEFAULT 0,
        acked INTEGER NOT NULL DEFAULT 0,
        dead_lettered INTEGER NOT NULL DEFAULT 0
    )""",
    "CREATE TABLE mq_sequence (id INTEGER PRIMARY KEY CHECK (id = 1), last INTEGER NOT NULL)",
    "INSERT INTO mq_sequence VALUES (1, 0)",
    """CREATE TABLE mq_messages (
        id INTEGER PRIMARY KEY,
        queue INTEGER NOT NULL,
        state INTEGER NOT NULL,
        rank REAL NOT NULL,
        seq INTEGER NOT NULL,
        turn INTEGER,
        priority INTEGER NOT NULL,
        attempts INTEGER NOT NULL,
        enqueued_at REAL NOT NULL,
        kind TEXT NOT NULL,
        body BLOB NOT NULL,
        headers TEXT
    )""",
    "CREATE INDEX mq_messages_line ON mq_messages (queue, state, rank, seq)",
    """CREATE TABLE mq_dedup (
        queue INTEGER NOT NULL,
        key TEXT NOT NULL,
        message INTEGER NOT NULL,
        expires REAL NOT NULL,
        PRIMARY KEY (queue, key)
    ) WITHOUT ROWID""",
    "CREATE INDEX mq_dedup_expiry ON mq_dedup (queue, expires)",
    """CREATE TABLE mq_subscriptions (
        topic TEXT NOT NULL,
        grp TEXT NOT NULL,
        seq INTEGER NOT NULL,
        PRIMARY KEY (topic, grp)
    ) WITHOUT ROWID""",
)

_SCHEMA_NAMES = frozenset(
    {
        "scalekit_meta",
        "mq_queues",
        "mq_sequence",
        "mq_messages",
        "mq_messages_line",
        "mq_dedup",
        "mq_dedup_expiry",
        "mq_subscriptions",
    }
)


def wrap_error(exc: sqlite3.Error, doing: str, path: str) -> BackendError:
    """The scalekit error for a sqlite3 error (raise it ``from exc``)."""
    text = str(exc)
    if isinstance(exc, sqlite3.DatabaseError) and ("malformed" in text or "not a database" in text):
        return IncompatibleStore(
            f"{path}: the SQLite file is damaged ({text}) while {doing}", backend="sqlite"
        )
    return BackendError(f"{path}: SQLite failed while {doing}: {text}", backend="sqlite")


def open_store(path: str, synchronous: str) -> sqlite3.Connection:
    """A connection to the store at ``path``, created if missing. Refuses, without
    changing it, a file that is not a scalekit.mq store of a schema this reads."""
    if _check_file(path):
        _check_read_only(path)
    try:
        conn = sqlite3.connect(
            path, timeout=_BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
        )
    except sqlite3.Error as exc:
        raise wrap_error(exc, "opening", path) from exc
    try:
        if not _is_ours(conn, path):
            _create(conn, path)
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise BackendError(
                f"{path}: cannot use WAL journal mode (got {mode!r})", backend="sqlite"
            )
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        conn.execute(f"PRAGMA wal_autocheckpoint = {_WAL_AUTOCHECKPOINT}")
    except BaseException as exc:
        conn.close()
        if isinstance(exc, sqlite3.Error):
            raise wrap_error(exc, "opening", path) from exc
        raise
    return conn


def _check_file(path: str) -> bool:
    """Refuse a file that is not an SQLite database before SQLite sees it; True
    if there is a file with something in it."""
    try:
        with open(path, "rb") as file:
            header = file.read(len(_SQLITE_HEADER))
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise BackendError(f"{path}: cannot read the file: {exc}", backend="sqlite") from exc
    if header and header != _SQLITE_HEADER:
        raise IncompatibleStore(
            f"{path} is not an SQLite database (it does not start with the SQLite header); "
            "refusing to use it as a scalekit.mq store",
            backend="sqlite",
        )
    if header:
        _check_pages(path)
    return bool(header)


def _check_pages(path: str) -> None:
    """Cheap signs of a damaged database, from its 100-byte header (O(1);
    ``PRAGMA quick_check`` reads every page): a header cut short, a page size
    SQLite never writes, or fields the file format fixes to one value
    (format versions 1 or 2, payload fractions 64, 32, 32). Only what no crash can
    leave behind: a file cut mid-checkpoint is whole again once its WAL is
    replayed, so the file's size is not judged here."""
    try:
        with open(path, "rb") as file:
            head = file.read(100)
    except OSError as exc:
        raise BackendError(f"{path}: cannot read the file: {exc}", backend="sqlite") from exc
    damaged = None
    if len(head) < 100:
        damaged = f"its header is cut short ({len(head)} bytes)"
    else:
        page = int.from_bytes(head[16:18], "big")
        page = 65536 if page == 1 else page
        if page < 512 or page & (page - 1):
            damaged = f"its header gives a page size of {page}"
        elif head[18] not in (1, 2) or head[19] not in (1, 2) or head[21:24] != b"\x40\x20\x20":
            damaged = "its header's fixed fields are wrong"
    if damaged is not None:
        raise IncompatibleStore(
            f"{path}: the SQLite file is damaged ({damaged}); refusing to use it",
            backend="sqlite",
        )


def _check_read_only(path: str) -> None:
    """Check an existing database through a read-only connection, which can change
    nothing (a read-write one may recover or checkpoint another application's
    WAL into the file when it closes)."""
    try:
        conn = sqlite3.connect(
            Path(path).absolute().as_uri() + "?mode=ro", uri=True, timeout=_BUSY_TIMEOUT
        )
    except sqlite3.Error as exc:
        raise wrap_error(exc, "opening", path) from exc
    try:
        _is_ours(conn, path)
    except sqlite3.Error as exc:
        raise wrap_error(exc, "checking the schema", path) from exc
    finally:
        conn.close()


def _is_ours(conn: sqlite3.Connection, path: str) -> bool:
    """True for a scalekit.mq store of this schema, False for an empty database;
    raises :class:`IncompatibleStore` for anything else."""
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if app_id == 0 and version == 0:
        tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if tables == 0:
            return False
        raise IncompatibleStore(
            f"{path} is an SQLite database of some other application "
            f"({tables} schema objects, no scalekit application_id); refusing to use it",
            backend="sqlite",
        )
    if app_id != APPLICATION_ID:
        raise IncompatibleStore(
            f"{path} is an SQLite database of another application "
            f"(application_id {app_id:#x}, scalekit.mq is {APPLICATION_ID:#x})",
            backend="sqlite",
        )
    if version > SCHEMA_VERSION:
        raise IncompatibleStore(
            f"{path} has scalekit.mq schema version {version}, newer than the version "
            f"{SCHEMA_VERSION} this scalekit reads; upgrade scalekit",
            backend="sqlite",
        )
    try:
        meta = dict(conn.execute("SELECT key, value FROM scalekit_meta").fetchall())
    except sqlite3.OperationalError as exc:
        raise IncompatibleStore(
            f"{path} has the scalekit.mq application_id but no scalekit_meta table: it is damaged",
            backend="sqlite",
        ) from exc
    if meta.get("store") != _STORE_KIND or meta.get("schema_version") != str(version):
        raise IncompatibleStore(
            f"{path}: scalekit_meta says {meta!r}, expected store={_STORE_KIND!r} and "
            f"schema_version={version}: the store is damaged",
            backend="sqlite",
        )
    if version != SCHEMA_VERSION:
        raise IncompatibleStore(
            f"{path} has scalekit.mq schema version {version}; this scalekit reads "
            f"version {SCHEMA_VERSION} only",
            backend="sqlite",
        )
    names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    missing = _SCHEMA_NAMES - names
    if missing:
        raise IncompatibleStore(
            f"{path}: the scalekit.mq store is damaged: {sorted(missing)} are missing",
            backend="sqlite",
        )
    return True


def _create(conn: sqlite3.Connection, path: str) -> None:
    """Create the schema in an empty database (another process may race us).

    Pages of 1 KiB rather than SQLite's 4 KiB: a put or an ack changes a row and
    an index entry or two, and each commit writes every page it changed to the
    WAL, so smaller pages make commits cheaper (measured: ~30 % more messages/s
    with synchronous="NORMAL", bodies of 100 B to 1 KB)."""
    conn.execute(f"PRAGMA page_size = {_PAGE_SIZE}")  # only takes on a new, empty file
    conn.execute("BEGIN IMMEDIATE")
    try:
        if _is_ours(conn, path):  # created by another process meanwhile
            conn.execute("ROLLBACK")
            return
        for statement in _SCHEMA:
            conn.execute(statement)
        conn.executemany(
            "INSERT INTO scalekit_meta VALUES (?, ?)",
            [("store", _STORE_KIND), ("schema_version", str(SCHEMA_VERSION))],
        )
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
