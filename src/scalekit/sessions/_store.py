"""The ``SessionStore`` protocol and the logic every store shares.

A store implements a handful of atomic primitives on records (``_read``,
``_insert``, ``_replace`` as a compare-and-set on the version, ``_touch``,
``_delete``, ``_rotate``, ``_purge``); :class:`SessionStoreBase` and
:class:`AsyncSessionStoreBase` build the public API on them by driving the
operations of ``scalekit.sessions._core`` (ids, expiry, size limits, and the merge
that makes concurrent saves lose no update), written once for both.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from scalekit.protocols import Clock
from scalekit.sessions import _core
from scalekit.sessions._core import Settings, run, run_async
from scalekit.sessions._session import JSON, Policy, Record, Serializer, Session, valid_id
from scalekit.sessions._stats import SessionStats

__all__ = [
    "AsyncMemorySessionStore",
    "AsyncSessionStore",
    "AsyncSessionStoreBase",
    "MemorySessionStore",
    "SessionStore",
    "SessionStoreBase",
]


@runtime_checkable
class SessionStore(Protocol):
    """Where sessions live, for a stateless web tier."""

    def create(self, data: Mapping[str, Any] | None = None) -> Session:
        """A new session with a fresh id, stored at once."""
        ...

    def load(self, session_id: str) -> Session | None:
        """The session, or None if the id is unknown, malformed or expired."""
        ...

    def save(self, session: Session) -> None:
        """Store what this request changed; merges with concurrent saves."""
        ...

    def delete(self, session_id: str) -> None: ...

    def touch(self, session_id: str) -> bool:
        """Extend the session's idle expiry without rewriting its data."""
        ...

    def rotate(self, session: Session) -> Session:
        """The same session under a new id; the old id is gone in the same step."""
        ...

    def purge_expired(self) -> int: ...


@runtime_checkable
class AsyncSessionStore(Protocol):
    """:class:`SessionStore` for asyncio: the same methods, awaited."""

    async def create(self, data: Mapping[str, Any] | None = None) -> Session: ...

    async def load(self, session_id: str) -> Session | None: ...

    async def save(self, session: Session) -> None: ...

    async def delete(self, session_id: str) -> None: ...

    async def touch(self, session_id: str) -> bool: ...

    async def rotate(self, session: Session) -> Session: ...

    async def purge_expired(self) -> int: ...


class _ConfiguredStore:
    """Settings and blank sessions, shared by the sync and async store bases."""

    _native_touch = False  # True: the store's _touch_live decides and touches in one step

    def __init__(
        self,
        *,
        idle_timeout: float | None = 1800.0,
        absolute_timeout: float | None = 43200.0,
        max_bytes: int | None = 64 * 1024,
        serializer: Serializer = JSON,
        clock: Clock = time.time,
        policies: Mapping[str, Policy] | None = None,
    ) -> None:
        self.settings = Settings(
            idle_timeout=idle_timeout,
            absolute_timeout=absolute_timeout,
            max_bytes=max_bytes,
            serializer=serializer,
            clock=clock,
            policies=policies,
        )

    def blank(self) -> Session:
        """A new, empty session that is not stored yet: :meth:`save` stores it if it
        gets data (so anonymous visitors cost the store nothing).

        Runtime complexity: O(1), no I/O."""
        return self.settings.blank()

    def stats(self) -> SessionStats:
        """A snapshot of what this store's operations did (see :class:`SessionStats`).

        >>> store = MemorySessionStore()
        >>> session = store.create({"user": "ada"})
        >>> _ = store.load(session.id), store.load("nope")
        >>> stats = store.stats()
        >>> stats.created, stats.loaded, stats.not_found
        (1, 1, 1)

        Runtime complexity: O(1), no I/O."""
        return self.settings.tally.snapshot()


class SessionStoreBase(_ConfiguredStore, ABC):
    """The public session API over a store's atomic primitives.

    ``idle_timeout`` (sliding, refreshed by every save and touch) and
    ``absolute_timeout`` (from creation) bound a session's life, in seconds (None:
    no such limit); an expired session loads as None. ``max_bytes`` bounds the
    serialized data. ``policies`` maps session keys to how a save merges a key
    that a concurrent request changed too: ``"conflict"`` (the default),
    ``"max"`` or ``"last_write_wins"`` (see :func:`~scalekit.sessions._session.merge`).
    ``clock`` (``time.time`` by default) is a :class:`~scalekit.protocols.Clock`.
    Every argument is checked when the store is made (an error of
    :mod:`scalekit.errors` naming it).

    The operations are written once, free of I/O, in ``scalekit.sessions._core``;
    this class drives them with direct calls to the primitives a store implements:
    ``_read``, ``_insert``, ``_replace`` (a compare-and-set on the version),
    ``_touch``, ``_delete``, ``_rotate`` and ``_purge``.
    """

    @abstractmethod
    def _read(self, session_id: str) -> Record | None:
        """The stored record, expired or not; None if there is none."""

    @abstractmethod
    def _insert(self, session_id: str, record: Record, expires: float, op: bytes) -> bool:
        """Store a new session; False if the id is taken (by another op than ``op``)."""

    @abstractmethod
    def _replace(
        self, session_id: str, record: Record, expires: float, expected: int, op: bytes
    ) -> bool:
        """Store ``record`` if the stored version is ``expected``; False if not (or
        gone). ``op`` names this write: if the same op already ran, True."""

    @abstractmethod
    def _touch(self, session_id: str, accessed_at: float, expires: float) -> bool: ...

    def _touch_live(self, session_id: str, now: float) -> bool:
        """Touch the session if it is live at ``now``, in one step (for a store
        that sets ``_native_touch``)."""
        raise NotImplementedError

    @abstractmethod
    def _delete(self, session_id: str) -> None: ...

    @abstractmethod
    def _rotate(
        self, old_id: str, new_id: str, record: Record, expires: float, expected: int, op: bytes
    ) -> bool:
        """Store ``record`` under ``new_id`` and delete ``old_id`` at once, if the old
        one's version is ``expected``; False if not. If the same op already ran, True."""

    @abstractmethod
    def _purge(self, now: float) -> int: ...

    # -- the public API ---------------------------------------------------------

    def create(self, data: Mapping[str, Any] | None = None) -> Session:
        """A new session with a fresh 256-bit id, stored at once.

        Raises :class:`SessionTooLarge` or :class:`~scalekit.errors.ArgumentTypeError`
        (not JSON, a key that is not a str) before storing.

        Runtime complexity: one ``_insert``, plus the (de)serialization of the data.
        """
        return run(_core.create(self.settings, data), self)

    def load(self, session_id: str) -> Session | None:
        """The session, or None for an unknown, malformed or expired id (the store's
        data is not touched). Raises :class:`SessionCorrupted` for a record this
        store did not write.

        Runtime complexity: one ``_read``, plus the decoding of the data."""
        return run(_core.load(self.settings, session_id), self)

    def save(self, session: Session) -> None:
        """Store this request's changes, or only extend the expiry if there are none.

        A compare-and-set on the version: if another request saved meanwhile, this
        request's changes are merged onto the newer data: keys it set or deleted,
        and the sums of its :meth:`Session.increment` calls. A key it set or deleted
        that the other request changed too raises :class:`SessionConflict` (equal
        values or not), unless ``policies`` says how to merge it; so does a session
        deleted or expired meanwhile. Nothing is stored then.

        Runtime complexity: one ``_replace``; one ``_read`` and ``_replace`` more for
        each concurrent save merged.
        """
        run(_core.save(self.settings, session, self._native_touch), self)

    def delete(self, session_id: str) -> None:
        """Delete the session (logout). An unknown or malformed id is a no-op.

        Runtime complexity: one ``_delete``."""
        run(_core.delete(self.settings, session_id), self)

    def touch(self, session_id: str) -> bool:
        """Extend the idle expiry without rewriting the data; False if the session
        is unknown or expired.

        Runtime complexity: a ``_read`` and a ``_touch`` (one ``_touch_live`` on a
        store that has it)."""
        return run(_core.touch(self.settings, session_id, self._native_touch), self)

    def rotate(self, session: Session) -> Session:
        """The session under a new id, with this request's changes saved, and the old
        id deleted in the same atomic step (session-fixation protection: rotate on
        login). Raises :class:`SessionConflict` if the session changed meanwhile.

        Runtime complexity: one ``_rotate``."""
        return run(_core.rotate(self.settings, session), self)

    def purge_expired(self) -> int:
        """Delete every expired session; return how many (stores with native expiry,
        like Redis, have nothing to purge)."""
        return run(_core.purge(self.settings), self)


class MemorySessionStore(SessionStoreBase):
    """Sessions in this process's memory: for tests and single-process servers.

    Runtime complexity: every operation O(1) plus the (de)serialization of one
    session; ``purge_expired`` O(n).
    """

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self._lock = threading.Lock()
        self._records: dict[str, tuple[Record, float]] = {}

    def _read(self, session_id: str) -> Record | None:
        entry = self._records.get(session_id)
        return None if entry is None else entry[0]

    def _insert(self, session_id: str, record: Record, expires: float, op: bytes) -> bool:
        with self._lock:
            if session_id in self._records:
                return False
            self._records[session_id] = (record, expires)
            return True

    def _replace(
        self, session_id: str, record: Record, expires: float, expected: int, op: bytes
    ) -> bool:
        with self._lock:
            entry = self._records.get(session_id)
            if entry is None or entry[0].version != expected:
                return False
            self._records[session_id] = (record, expires)
            return True

    def _touch(self, session_id: str, accessed_at: float, expires: float) -> bool:
        with self._lock:
            entry = self._records.get(session_id)
            if entry is None:
                return False
            old = entry[0]
            self._records[session_id] = (
                Record(old.data, old.version, old.created_at, accessed_at),
                expires,
            )
            return True

    def _delete(self, session_id: str) -> None:
        with self._lock:
            self._records.pop(session_id, None)

    def _rotate(
        self, old_id: str, new_id: str, record: Record, expires: float, expected: int, op: bytes
    ) -> bool:
        with self._lock:
            entry = self._records.get(old_id)
            if entry is None or entry[0].version != expected or new_id in self._records:
                return False
            del self._records[old_id]
            self._records[new_id] = (record, expires)
            return True

    def _purge(self, now: float) -> int:
        with self._lock:
            expired = [sid for sid, (_, expires) in self._records.items() if expires <= now]
            for sid in expired:
                del self._records[sid]
            return len(expired)

    def __len__(self) -> int:
        """Sessions stored, expired ones included until purged."""
        return len(self._records)

    def _check(self) -> None:
        """Assert the internal invariants (for tests).

        Runtime complexity: O(n)."""
        with self._lock:
            for session_id, (record, expires) in self._records.items():
                assert valid_id(session_id), session_id
                assert isinstance(record.data, bytes)
                assert record.version >= 1
                assert record.created_at <= record.accessed_at or expires <= record.accessed_at
                assert expires == self.settings.expires(record.created_at, record.accessed_at)


class AsyncSessionStoreBase(_ConfiguredStore, ABC):
    """:class:`SessionStoreBase` for asyncio: the same operations (the same code in
    ``scalekit.sessions._core``), driven over awaitable primitives."""

    @abstractmethod
    async def _read(self, session_id: str) -> Record | None: ...

    @abstractmethod
    async def _insert(self, session_id: str, record: Record, expires: float, op: bytes) -> bool: ...

    @abstractmethod
    async def _replace(
        self, session_id: str, record: Record, expires: float, expected: int, op: bytes
    ) -> bool: ...

    @abstractmethod
    async def _touch(self, session_id: str, accessed_at: float, expires: float) -> bool: ...

    async def _touch_live(self, session_id: str, now: float) -> bool:
        """:meth:`SessionStoreBase._touch_live`."""
        raise NotImplementedError

    @abstractmethod
    async def _delete(self, session_id: str) -> None: ...

    @abstractmethod
    async def _rotate(
        self, old_id: str, new_id: str, record: Record, expires: float, expected: int, op: bytes
    ) -> bool: ...

    @abstractmethod
    async def _purge(self, now: float) -> int: ...

    async def create(self, data: Mapping[str, Any] | None = None) -> Session:
        """:meth:`SessionStoreBase.create`."""
        return await run_async(_core.create(self.settings, data), self)

    async def load(self, session_id: str) -> Session | None:
        """:meth:`SessionStoreBase.load`."""
        return await run_async(_core.load(self.settings, session_id), self)

    async def save(self, session: Session) -> None:
        """:meth:`SessionStoreBase.save`."""
        await run_async(_core.save(self.settings, session, self._native_touch), self)

    async def delete(self, session_id: str) -> None:
        """:meth:`SessionStoreBase.delete`."""
        await run_async(_core.delete(self.settings, session_id), self)

    async def touch(self, session_id: str) -> bool:
        """:meth:`SessionStoreBase.touch`."""
        return await run_async(_core.touch(self.settings, session_id, self._native_touch), self)

    async def rotate(self, session: Session) -> Session:
        """:meth:`SessionStoreBase.rotate`."""
        return await run_async(_core.rotate(self.settings, session), self)

    async def purge_expired(self) -> int:
        """:meth:`SessionStoreBase.purge_expired`."""
        return await run_async(_core.purge(self.settings), self)


class AsyncMemorySessionStore(AsyncSessionStoreBase):
    """:class:`MemorySessionStore` for asyncio (tests, single-process ASGI apps)."""

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self._sync = MemorySessionStore(**settings)

    async def _read(self, session_id: str) -> Record | None:
        return self._sync._read(session_id)

    async def _insert(self, session_id: str, record: Record, expires: float, op: bytes) -> bool:
        return self._sync._insert(session_id, record, expires, op)

    async def _replace(
        self, session_id: str, record: Record, expires: float, expected: int, op: bytes
    ) -> bool:
        return self._sync._replace(session_id, record, expires, expected, op)

    async def _touch(self, session_id: str, accessed_at: float, expires: float) -> bool:
        return self._sync._touch(session_id, accessed_at, expires)

    async def _delete(self, session_id: str) -> None:
        self._sync._delete(session_id)

    async def _rotate(
        self, old_id: str, new_id: str, record: Record, expires: float, expected: int, op: bytes
    ) -> bool:
        return self._sync._rotate(old_id, new_id, record, expires, expected, op)

    async def _purge(self, now: float) -> int:
        return self._sync._purge(now)
