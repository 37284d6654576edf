"""Telling every process's near cache that a key changed, through one SQLite file:
:class:`SQLiteInvalidation`.

The channel of a :class:`~scalekit.cache.TieredCache` whose shared tier is a
:class:`~scalekit.cache.SQLiteCache`, as :class:`~scalekit.cache.RedisInvalidation`
is for Redis. A writer appends the keys it changed to a log table, with an
increasing sequence number; a listener thread in each process polls the log
every ``interval`` seconds and hands the keys it had not seen to the near caches
attached. The log is pruned of rows older than ``retention``; a listener that
fell behind the pruned point, or whose poll fails, flushes its near caches (it
may have missed keys) and bumps :attr:`~SQLiteInvalidation.generation`, as a
dropped Redis connection does. :meth:`~SQLiteInvalidation.sync` is a barrier: a
poll started after the call, delivered before it returns (read-your-writes across
processes).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from scalekit._validate import check_callable, check_seconds, check_str, type_name
from scalekit.cache._sqlite import (
    SQLiteCache,
    check_path,
    check_table,
    connect,
    forks,
    table_shape,
    wrap_error,
)
from scalekit.errors import (
    ArgumentTypeError,
    BackendError,
    ClosedError,
    ConfigurationError,
    IncompatibleStore,
)

__all__ = ["SQLiteInvalidation"]

_log = logging.getLogger("scalekit.cache")

OnKeys = Callable[[list[str]], object]
OnFlush = Callable[[], object]

_PRUNE_BATCH = 1000  # log rows a prune reads and deletes at most
_LOG_COLUMNS = [
    ("seq", "INTEGER", 1),
    ("at", "REAL", 0),
    ("prefix", "BLOB", 0),
    ("keys", "TEXT", 0),
]
_PRUNED_COLUMNS = [("id", "INTEGER", 1), ("seq", "INTEGER", 0)]


class SQLiteInvalidation:
    """Invalidation messages for the keys under ``prefix``, through a log table in
    one SQLite file: the channel of a :class:`~scalekit.cache.TieredCache` over a
    :class:`~scalekit.cache.SQLiteCache`, for app-server processes on one host.

    ``path_or_cache`` is the file, or the :class:`~scalekit.cache.SQLiteCache`
    whose file (and, unless ``prefix`` is given, whose prefix) to use. ``prefix``
    is the shared store's prefix: keys are reported under it. ``interval`` is the
    seconds between two polls of the log; ``retention`` how long a log row is
    kept (a listener whose process stalls longer than that flushes its near
    caches when it wakes); ``table`` names the log table (and, with ``_pruned``
    after it, the table of the pruned point); ``timer`` stamps the rows
    (wall-clock: every process reads them).

    Staleness: a process sees another's write at its next poll, so its near cache
    may answer with the old value for up to one ``interval`` (plus the poll's own
    time, well under a millisecond) after the writer's ``publish`` returned. A
    poll first asks SQLite whether the file changed at all (``PRAGMA
    data_version``), so an idle poll costs a few microseconds.

    A poll that fails (the file replaced or damaged, the table dropped, an I/O
    error) flushes the near caches, bumps :attr:`generation`, logs a warning on
    ``logging.getLogger("scalekit.cache")``, and the listener opens the file again
    every ``interval`` until it can; it flushes once more when it is back.

    The listener thread starts with the first :meth:`attach`; :meth:`close`
    stops it. Counters: :meth:`stats`.

    Runtime complexity: :meth:`publish` is one insert, O(log(n)); a poll is
    O(r * log(n)) for the r rows written since the last one.
    """

    def __init__(
        self,
        path_or_cache: str | os.PathLike[str] | SQLiteCache[Any],
        *,
        prefix: str | None = None,
        interval: float = 0.01,
        retention: float = 60.0,
        table: str = "scalekit_invalidation",
        timeout: float = 5.0,
        timer: Callable[[], float] = time.time,
    ) -> None:
        if isinstance(path_or_cache, SQLiteCache):
            path = path_or_cache.path
            if prefix is None:
                prefix = path_or_cache.prefix
        else:
            try:
                path = check_path(path_or_cache)
            except ArgumentTypeError:
                raise ArgumentTypeError(
                    "path_or_cache must be a file path or a SQLiteCache, "
                    f"got {type_name(path_or_cache)}"
                ) from None
            except ConfigurationError as exc:
                raise ConfigurationError(f"path_or_cache: {exc}") from None
        if prefix is None:
            prefix = ""
        self._prefix = check_str(prefix, "prefix", allow_empty=True).encode(
            "utf-8", "surrogatepass"
        )
        self._interval = check_seconds(interval, "interval", maximum=3600.0)
        self._retention = check_seconds(retention, "retention")
        if self._retention <= self._interval:
            raise ConfigurationError(
                f"retention must be longer than interval, got {retention!r} <= {interval!r}"
            )
        self._log_table = check_table(table)
        self._pruned_table = check_table(table + "_pruned", "table")
        self._timeout = check_seconds(timeout, "timeout", allow_zero=True, maximum=86400.0)
        self._timer = check_callable(timer, "timer")
        self._path = path
        self._lock = threading.Lock()  # listeners, counters
        self._write_lock = threading.Lock()  # the publishing connection
        self._listeners: list[tuple[OnKeys, OnFlush]] = []
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self._wake = threading.Event()  # set by sync() and close(): poll now
        self._cycles = threading.Condition()  # polls started and delivered, for sync()
        self._started = self._delivered = 0
        self._thread: threading.Thread | None = None
        self._generation = 0
        self._closed = False
        self._pruned_at = -float("inf")
        self._counts = {
            "polls": 0,
            "messages": 0,
            "keys": 0,
            "flushes": 0,
            "connects": 0,
            "drops": 0,
            "published": 0,
            "pruned": 0,
        }
        log, pruned = self._log_table, self._pruned_table
        self._sql_insert = f'INSERT INTO "{log}" (at, prefix, keys) VALUES (?, ?, ?)'
        self._sql_rows = f'SELECT seq, prefix, keys FROM "{log}" WHERE seq > ? ORDER BY seq'
        self._sql_pruned = f'SELECT seq FROM "{pruned}" WHERE id = 0'
        self._sql_top = f'SELECT coalesce(max(seq), 0) FROM "{log}"'
        self._sql_oldest = f'SELECT seq, at FROM "{log}" ORDER BY seq LIMIT {_PRUNE_BATCH}'
        self._sql_prune = f'DELETE FROM "{log}" WHERE seq <= ?'
        self._sql_mark = f'UPDATE "{pruned}" SET seq = max(seq, ?) WHERE id = 0'
        self._writer = self._open()
        self._writer_file = _inode(path)
        self._forks = forks()

    # -- the file --------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        """A connection to the file, with the log's tables created if missing."""
        log, pruned = self._log_table, self._pruned_table
        try:
            conn = connect(self._path, self._timeout)
        except sqlite3.Error as exc:
            raise wrap_error(exc, self._path, "opening the file") from exc
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                f'CREATE TABLE IF NOT EXISTS "{log}" (seq INTEGER PRIMARY KEY AUTOINCREMENT, '
                "at REAL NOT NULL, prefix BLOB NOT NULL, keys TEXT NOT NULL)"
            )
            conn.execute(
                f'CREATE TABLE IF NOT EXISTS "{pruned}" '
                "(id INTEGER PRIMARY KEY CHECK (id = 0), seq INTEGER NOT NULL)"
            )
            found: dict[str, object] = {name: table_shape(conn, name) for name in (log, pruned)}
            # without AUTOINCREMENT a seq could be used again once the log is pruned
            # empty: below every listener's mark, never read
            sql = conn.execute(
                "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (log,)
            ).fetchone()
            if sql is None or "AUTOINCREMENT" not in str(sql[0]).upper():
                found[log] = f"{found[log]} without AUTOINCREMENT"
            if found[log] == _LOG_COLUMNS and found[pruned] == _PRUNED_COLUMNS:
                conn.execute(f'INSERT OR IGNORE INTO "{pruned}" (id, seq) VALUES (0, 0)')
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            conn.close()
            raise wrap_error(exc, self._path, "creating the invalidation log") from exc
        for name, columns in ((log, _LOG_COLUMNS), (pruned, _PRUNED_COLUMNS)):
            if found[name] != columns:
                conn.close()
                raise IncompatibleStore(
                    f"the table {name!r} of {self._path!r} is not a SQLiteInvalidation's "
                    f"(columns {found[name]}); give another table=",
                    backend="sqlite",
                )
        return conn

    # -- for near caches -------------------------------------------------------------

    def attach(self, on_keys: OnKeys, on_flush: OnFlush) -> None:
        """Call ``on_keys(keys)`` for every published batch of keys under the
        prefix and ``on_flush()`` whenever some may have been missed; starts
        listening on first use. Runtime complexity: O(1)."""
        check_callable(on_keys, "on_keys")
        check_callable(on_flush, "on_flush")
        with self._lock:
            if self._closed:
                raise ClosedError("this SQLiteInvalidation is closed")
            self._check_process()
            self._listeners.append((on_keys, on_flush))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._listen, name="scalekit-sqlite-invalidation", daemon=True
                )
                self._thread.start()

    def detach(self, on_keys: OnKeys) -> None:
        """Stop calling the listener attached with ``on_keys``.
        Runtime complexity: O(listeners)."""
        with self._lock:
            # ==, not is: a bound method is a new object at each access
            self._listeners = [pair for pair in self._listeners if pair[0] != on_keys]

    @property
    def path(self) -> str:
        """The file of the log."""
        return self._path

    @property
    def prefix(self) -> str:
        """The prefix of the keys reported (cut from the keys handed to listeners)."""
        return self._prefix.decode("utf-8", "surrogatepass")

    @property
    def interval(self) -> float:
        """Seconds between two polls: how long a near cache may stay stale."""
        return self._interval

    @property
    def ready(self) -> bool:
        """Whether the log is being polled now (near caches may keep values);
        never in a child forked from the process that made this object, where no
        listener thread runs: a near cache there keeps nothing."""
        return self._ready.is_set() and forks() == self._forks

    @property
    def generation(self) -> int:
        """Changes whenever keys may have been missed (a failed poll, a listener
        behind the pruned point) and when polling starts again."""
        return self._generation

    def wait_ready(self, timeout: float = 5.0) -> bool:
        """Wait until polling; whether it is (never in a forked child, see
        :attr:`ready`). Runtime complexity: O(1)."""
        seconds = check_seconds(timeout, "timeout", allow_zero=True)
        if forks() != self._forks:
            return False
        return self._ready.wait(seconds)

    def sync(self, timeout: float = 1.0) -> bool:
        """Wait until a poll that started after this call has been delivered, so
        every change published before the call has reached the listeners; whether
        it did within ``timeout`` seconds (False while not polling: a near cache
        keeps nothing then).

        Runtime complexity: one poll of the log, O(r * log(n)) for r new rows.
        """
        seconds = check_seconds(timeout, "timeout", allow_zero=True)
        if not self.ready:
            return False
        with self._cycles:
            wanted = self._started + 1
        self._wake.set()
        with self._cycles:
            return self._cycles.wait_for(lambda: self._delivered >= wanted, seconds)

    def publish(self, keys: Iterable[str]) -> None:
        """Report ``keys`` as changed: one row appended to the log (and, at most
        once a second in this process, a bounded prune of rows older than
        ``retention``). Raises :class:`~scalekit.errors.BackendError` when SQLite
        fails. Runtime complexity: O(len(keys) + log(n))."""
        if not isinstance(keys, Iterable) or isinstance(keys, (str, bytes)):
            raise ArgumentTypeError(f"keys must be an iterable of str, got {type_name(keys)}")
        names = list(keys)
        for key in names:
            if not isinstance(key, str):
                raise ArgumentTypeError(f"a key must be a str, got {type_name(key)}")
        if not names:
            return
        # ASCII JSON: a key with a lone surrogate travels as a \ud800 escape
        payload = json.dumps(names, ensure_ascii=True)
        with self._write_lock:
            if self._closed:
                raise ClosedError("this SQLiteInvalidation is closed")
            self._check_process()
            now = self._timer()
            try:
                self._reopen_if_replaced()
                self._writer.execute(self._sql_insert, (now, self._prefix, payload))
            except sqlite3.Error as exc:
                if self._writer.in_transaction:
                    self._writer.execute("ROLLBACK")
                raise wrap_error(exc, self._path, "publishing an invalidation") from exc
            except OSError as exc:
                raise BackendError(
                    f"publishing an invalidation to {self._path!r} failed: {exc}", backend="sqlite"
                ) from exc
            # the row is written: a prune that fails must not report it as unwritten
            pruned = self._prune(now) if now - self._pruned_at >= self._prune_every() else 0
        with self._lock:
            self._counts["published"] += 1
            self._counts["pruned"] += pruned

    def _check_process(self) -> None:
        """Refuse to run in a child forked from the process that made this object:
        its connection belongs to the parent, and its listener thread did not
        come along."""
        if forks() != self._forks:
            raise BackendError(
                f"this SQLiteInvalidation on {self._path!r} was made before a fork; "
                "make one in this (forked) process",
                backend="sqlite",
            )

    def _reopen_if_replaced(self) -> None:
        """Open the file again if another file took its name (a connection would
        go on writing to the one that was removed, which no listener reads)."""
        try:
            found: tuple[int, int] | None = _inode(self._path)
        except FileNotFoundError:
            found = None  # removed: opening creates it again
        if found != self._writer_file:
            writer = self._open()
            self._writer.close()
            self._writer, self._writer_file = writer, _inode(self._path)

    def _prune_every(self) -> float:
        return min(1.0, self._retention / 2)

    def _prune(self, now: float) -> int:
        """Delete the oldest log rows older than ``retention`` (at most
        :data:`_PRUNE_BATCH`; when there were that many, the next publish prunes
        too, not a second later) and record the last one deleted; how many. A
        failure is logged and rolled back (the next prune takes these rows)."""
        self._pruned_at = now
        conn, cutoff = self._writer, now - self._retention
        try:
            conn.execute("BEGIN IMMEDIATE")
            upto = count = 0
            for seq, at in conn.execute(self._sql_oldest).fetchall():
                if at >= cutoff:
                    break
                upto, count = seq, count + 1
            if count:
                conn.execute(self._sql_prune, (upto,))
                conn.execute(self._sql_mark, (upto,))
            conn.execute("COMMIT")
            if count == _PRUNE_BATCH:  # more are due: the next publish prunes again, so
                self._pruned_at = -math.inf  # pruning keeps up with any rate of writes
        except sqlite3.Error as exc:
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # closing the connection at the next reopen rolls it back
            _log.warning(
                "pruning the invalidation log of %r failed: %s",
                self._path,
                exc,
                extra=self._fields(reason="prune failed", error=str(exc)),
            )
            return 0
        return count

    def stats(self) -> dict[str, int]:
        """Polls, batches and keys received, flushes, connects, drops, batches
        published and log rows pruned, by this object. Runtime complexity: O(1)."""
        with self._lock:
            return dict(self._counts)

    def close(self) -> None:
        """Stop polling and close the connections (the file stays).
        Runtime complexity: O(1), and the wait for the listener's last poll."""
        with self._lock:
            self._closed = True
            thread = self._thread
        self._stopping.set()
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(5)
        with self._write_lock:
            if forks() == self._forks:  # a forked child leaves the parent's connection be
                self._writer.close()

    def __enter__(self) -> SQLiteInvalidation:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self._path!r}, prefix={self.prefix!r}, "
            f"interval={self._interval!r}, retention={self._retention!r})"
        )

    # -- the listener thread ---------------------------------------------------------

    def _flush(self) -> None:
        with self._lock:
            self._generation += 1
            self._counts["flushes"] += 1
            listeners = list(self._listeners)
        for _, on_flush in listeners:
            _call(on_flush)

    def _deliver(self, batches: list[list[str]]) -> None:
        with self._lock:
            self._counts["messages"] += len(batches)
            self._counts["keys"] += sum(map(len, batches))
            listeners = list(self._listeners)
        for keys in batches:
            for on_keys, _ in listeners:
                _call(on_keys, keys)

    def _fields(self, **more: Any) -> dict[str, Any]:
        """The ``extra`` of a log line: the file, the log table and ``more``."""
        return {"path": self._path, "table": self._log_table, **more}

    def _listening(self) -> int:
        with self._lock:
            return len(self._listeners)

    def _listen(self) -> None:
        lost = False  # a poll or an open failed: the return is logged
        poller: _Poller | None = None
        try:
            while not self._stopping.is_set():
                if poller is None:
                    try:
                        poller = _Poller(self)
                    except (BackendError, OSError) as exc:
                        if not lost:
                            lost = True
                            _log.warning(
                                "invalidation log %r unreadable, retrying every %g s: %s",
                                self._path,
                                self._interval,
                                exc,
                                extra=self._fields(reason="connect failed", error=str(exc)),
                            )
                        self._stopping.wait(self._interval)
                        continue
                    with self._lock:
                        self._counts["connects"] += 1
                    self._flush()  # what was cached before polling may be stale
                    if lost:
                        lost = False
                        _log.info(
                            "invalidation log %r readable again; %d near cache(s) flushed",
                            self._path,
                            self._listening(),
                            extra=self._fields(reason="reconnected", flushed=self._listening()),
                        )
                    self._ready.set()
                with self._cycles:
                    self._started += 1
                    cycle = self._started
                try:
                    batches, behind = poller.poll()
                except (sqlite3.Error, OSError, BackendError) as exc:
                    lost = True
                    self._ready.clear()
                    poller.close()
                    poller = None
                    self._flush()  # keys may have been missed
                    with self._lock:  # counted once flushed: a reader of drops sees l1 empty
                        self._counts["drops"] += 1
                    _log.warning(
                        "invalidation connection lost: polling %r failed: %s; "
                        "flushing %d near cache(s), reopening",
                        self._path,
                        exc,
                        self._listening(),
                        extra=self._fields(
                            reason="connection lost", error=str(exc), flushed=self._listening()
                        ),
                    )
                    self._stopping.wait(self._interval)
                    continue
                with self._lock:
                    self._counts["polls"] += 1
                if behind:
                    self._flush()
                    _log.warning(
                        "invalidation listener fell behind the pruned log of %r (no poll "
                        "for over %g s); flushing %d near cache(s)",
                        self._path,
                        self._retention,
                        self._listening(),
                        extra=self._fields(reason="fell behind", flushed=self._listening()),
                    )
                if batches:
                    self._deliver(batches)
                with self._cycles:
                    self._delivered = cycle
                    self._cycles.notify_all()
                self._wake.wait(self._interval)
                self._wake.clear()
        finally:
            self._ready.clear()
            if poller is not None:
                poller.close()


def _call(callback: Callable[..., object], *args: Any) -> None:
    """Call a listener; its failure is logged, never the listener thread's end."""
    try:
        callback(*args)
    except Exception:
        _log.exception("an invalidation listener raised")


class _Poller:
    """The listener's connection to the log, and where it has read up to."""

    def __init__(self, channel: SQLiteInvalidation) -> None:
        self._channel = channel
        self._path = channel.path
        self._conn = channel._open()  # creates the file if it was removed
        try:
            self._inode = _inode(self._path)
        except OSError:
            self._conn.close()
            raise
        self._version: int | None = None
        try:
            self._conn.execute("BEGIN")
            pruned = self._conn.execute(channel._sql_pruned).fetchone()
            top = self._conn.execute(channel._sql_top).fetchone()[0]
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._conn.close()
            raise wrap_error(exc, self._path, "reading the invalidation log") from exc
        self._seen = max(top, 0 if pruned is None else pruned[0])

    def poll(self) -> tuple[list[list[str]], bool]:
        """The batches of keys under the prefix written since the last poll, and
        whether rows this listener never read were pruned meanwhile."""
        conn, channel = self._conn, self._channel
        if _inode(self._path) != self._inode:
            raise BackendError(f"{self._path!r} was replaced by another file", backend="sqlite")
        version = conn.execute("PRAGMA data_version").fetchone()[0]
        if version == self._version:
            return [], False
        conn.execute("BEGIN")
        try:
            pruned = conn.execute(channel._sql_pruned).fetchone()
            rows = conn.execute(channel._sql_rows, (self._seen,)).fetchall()
        finally:
            if conn.in_transaction:
                conn.execute("COMMIT")
        if pruned is None:
            raise BackendError(f"the invalidation log of {self._path!r} was emptied")
        self._version = version
        behind = pruned[0] > self._seen
        prefix = channel._prefix
        batches = []
        for _, row_prefix, payload in rows:
            if row_prefix == prefix:
                try:
                    batches.append([str(key) for key in json.loads(payload)])
                except (ValueError, TypeError) as exc:
                    raise BackendError(
                        f"an invalidation row of {self._path!r} is not ours: {exc}",
                        backend="sqlite",
                    ) from exc
        if rows:
            self._seen = rows[-1][0]
        elif behind:
            self._seen = pruned[0]
        return batches, behind

    def close(self) -> None:
        self._conn.close()


def _inode(path: str) -> tuple[int, int]:
    """The device and inode of ``path``: a file replaced under the same name differs."""
    status = os.stat(path)
    return status.st_dev, status.st_ino
