"""The demo's "database": one SQLite file per shard, and a replica file for each.

A shard is a key-value table whose rows carry ``at``, the commit position: a
microsecond wall-clock stamp taken inside the write transaction and made larger
than every earlier one of the shard, so positions grow in commit order. Deletes
leave a tombstone (``value`` NULL) for the replicator to carry.

:class:`Replicator` (a thread of the main process) copies each shard to its
replica a little behind: under the shard's write lock it reads the rows committed
up to ``now - delay`` and records that cut as the replica's position. Every later
write gets a larger ``at``, so the position is a true read-your-writes bound:
a replica at position ``p`` holds every write with ``at <= p``. Its lag is how far
the position is behind the clock.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "Replicator",
    "ShardFile",
    "create",
    "replica_lag",
    "replica_position",
    "replica_read",
    "write_json",
]

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT, at INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS kv_at ON kv (at)",
    "CREATE TABLE IF NOT EXISTS meta (id INTEGER PRIMARY KEY CHECK (id = 0), position INTEGER)",
)


def _now_us() -> int:
    return time.time_ns() // 1000


def _connect(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    return connection


def create(path: Path) -> None:
    """Create the tables of a shard or replica file."""
    connection = _connect(path)
    try:
        for statement in _SCHEMA:
            connection.execute(statement)
        connection.execute("INSERT OR IGNORE INTO meta (id, position) VALUES (0, 0)")
    finally:
        connection.close()


class ShardFile:
    """A shard's primary as a :class:`~scalekit.protocols.Store` (get, set, add,
    ttl_of, delete, iteration), which :class:`~scalekit.sharding.Migration` moves
    keys between. Values are JSON. One connection per thread.

    :attr:`last_write` is the position of this thread's last write here: the
    read-your-writes token of that write.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()

    def _db(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "db", None)
        if connection is None:
            connection = self._local.db = _connect(self.path)
        return connection

    @property
    def last_write(self) -> int:
        return int(getattr(self._local, "at", 0))

    def close(self) -> None:
        connection = getattr(self._local, "db", None)
        if connection is not None:
            connection.close()
            self._local.db = None

    def get(self, key: str, default: Any = None) -> Any:
        row = self._db().execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return default if row is None or row[0] is None else json.loads(row[0])

    def _write(self, key: str, value: Any, *, only_if_absent: bool = False) -> bool:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            if only_if_absent:
                row = db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
                if row is not None and row[0] is not None:
                    db.execute("COMMIT")
                    return False
            (last,) = db.execute("SELECT COALESCE(MAX(at), 0) FROM kv").fetchone()
            at = max(_now_us(), last + 1)
            text = None if value is None else json.dumps(value)
            db.execute(
                "INSERT OR REPLACE INTO kv (key, value, at) VALUES (?, ?, ?)", (key, text, at)
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._local.at = at
        return True

    def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        self._write(key, value)

    def add(self, key: str, value: Any, ttl: float | None = None) -> bool:
        return self._write(key, value, only_if_absent=True)

    def ttl_of(self, key: str) -> float | None:
        if self.get(key, None) is None:
            raise KeyError(key)
        return None

    def delete(self, key: str) -> None:
        if self.get(key, None) is not None:
            self._write(key, None)

    def __iter__(self) -> Iterator[str]:
        rows = self._db().execute("SELECT key FROM kv WHERE value IS NOT NULL").fetchall()
        return iter([row[0] for row in rows])

    def __len__(self) -> int:
        (count,) = self._db().execute("SELECT COUNT(*) FROM kv WHERE value IS NOT NULL").fetchone()
        return int(count)

    def items(self) -> dict[str, Any]:
        rows = self._db().execute("SELECT key, value FROM kv WHERE value IS NOT NULL").fetchall()
        return {key: json.loads(value) for key, value in rows}


_readers = threading.local()


def _reader(path: Path) -> sqlite3.Connection:
    connections: dict[Path, sqlite3.Connection] = _readers.__dict__.setdefault("db", {})
    connection = connections.get(path)
    if connection is None:
        connection = connections[path] = _connect(path)
    return connection


def replica_read(path: Path, key: str) -> Any:
    """The value of ``key`` in a replica file, None if absent."""
    row = _reader(path).execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
    return None if row is None or row[0] is None else json.loads(row[0])


def replica_position(path: Path) -> int:
    """The position a replica file has replayed up to (microseconds)."""
    (position,) = _reader(path).execute("SELECT position FROM meta WHERE id = 0").fetchone()
    return int(position)


def replica_lag(path: Path) -> float:
    """Seconds the replica is behind the clock (inf before its first copy)."""
    position = replica_position(path)
    return math.inf if position == 0 else max(0.0, (_now_us() - position) / 1e6)


class Replicator:
    """Copies every shard to its replica every ``period`` seconds, ``delay`` behind.

    :meth:`set_delay` makes one replica fall further behind (the lag the demo injects).
    """

    def __init__(self, folder: Path, shards: list[str], *, delay: float, period: float) -> None:
        self._folder = folder
        self._shards = list(shards)
        self._delay = dict.fromkeys(shards, delay)
        self._period = period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="replicator", daemon=True)
        self._connections: dict[str, tuple[sqlite3.Connection, sqlite3.Connection]] = {}
        self.copied = 0
        self.errors = 0

    def set_delay(self, shard: str, delay: float) -> None:
        self._delay[shard] = delay

    def start(self) -> Replicator:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        for primary, replica in self._connections.values():
            primary.close()
            replica.close()

    def _loop(self) -> None:
        while not self._stop.wait(self._period):
            for shard in self._shards:
                try:
                    self.copy(shard)
                except sqlite3.Error:
                    self.errors += 1

    def copy(self, shard: str) -> int:
        """Copy what ``shard`` committed up to ``delay`` ago; returns the position."""
        pair = self._connections.get(shard)
        if pair is None:
            pair = self._connections[shard] = (
                _connect(self._folder / f"{shard}.db"),
                _connect(self._folder / f"{shard}.replica.db"),
            )
        primary, replica = pair
        (applied,) = replica.execute("SELECT position FROM meta WHERE id = 0").fetchone()
        primary.execute("BEGIN IMMEDIATE")  # no write is half-way: every later one is newer
        try:
            cut = _now_us() - int(self._delay[shard] * 1e6)
            rows = primary.execute(
                "SELECT key, value, at FROM kv WHERE at > ? AND at <= ?", (applied, cut)
            ).fetchall()
        finally:
            primary.execute("COMMIT")
        if cut <= applied:
            return int(applied)
        replica.execute("BEGIN IMMEDIATE")
        try:
            replica.executemany("INSERT OR REPLACE INTO kv (key, value, at) VALUES (?, ?, ?)", rows)
            replica.execute("UPDATE meta SET position = ? WHERE id = 0", (cut,))
            replica.execute("COMMIT")
        except BaseException:
            replica.execute("ROLLBACK")
            raise
        self.copied += len(rows)
        return cut


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` atomically (readers see old or new)."""
    partial = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
    partial.write_text(json.dumps(data))
    os.replace(partial, path)
