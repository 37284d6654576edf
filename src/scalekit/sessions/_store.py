"""The ``SessionStore`` protocol and the logic every store shares.

A store implements a handful of atomic primitives on records (``_read``,
``_insert``, ``_replace`` as a compare-and-set on the version, ``_touch``,
``_delete``, ``_rotate``, ``_purge``); :class:`SessionStoreBase` builds the public
API on them: ids, expiry, size limits, and the merge that makes concurrent saves
lose no update.
"""

from __future__ import annotations

import asyncio
import math
import random
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from scalekit.errors import ConfigurationError, SessionConflict, SessionTooLarge
from scalekit.protocols import Clock
from scalekit.sessions._session import (
    JSON,
    Record,
    Serializer,
    Session,
    expires_at,
    merge,
    new_id,
    valid_id,
)

__all__ = [
    "AsyncMemorySessionStore",
    "AsyncSessionStore",
    "AsyncSessionStoreBase",
    "MemorySessionStore",
    "SessionStore",
    "SessionStoreBase",
]

MAX_RETRIES = 64  # merges in a row before a save gives up (each one lost a race)


def _backoff(retry: int) -> float:
    """Seconds to wait before merge number ``retry``: random, growing to 50 ms, so
    requests that lose the compare-and-set together do not retry in lockstep."""
    return random.random() * min(0.05, 0.001 * 2.0 ** (retry - 1))


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


class _Settings:
    """Timeouts, size limit, serializer and clock, shared by sync and async stores."""

    def __init__(
        self,
        *,
        idle_timeout: float | None,
        absolute_timeout: float | None,
        max_bytes: int | None,
        serializer: Serializer,
        clock: Clock,
    ) -> None:
        for name, value in (("idle_timeout", idle_timeout), ("absolute_timeout", absolute_timeout)):
            if value is not None and not (0 < value < math.inf):
                raise ConfigurationError(f"{name} is seconds > 0 or None, got {value!r}")
        if max_bytes is not None and (
            isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 2
        ):
            raise ConfigurationError(f"max_bytes is an int >= 2 or None, got {max_bytes!r}")
        self.idle_timeout = idle_timeout
        self.absolute_timeout = absolute_timeout
        self.max_bytes = max_bytes
        self.serializer = serializer
        self.clock = clock

    def expires(self, created_at: float, accessed_at: float) -> float:
        return expires_at(created_at, accessed_at, self.idle_timeout, self.absolute_timeout)

    def encode(self, data: Mapping[str, Any]) -> bytes:
        raw = self.serializer.dumps(data)
        if self.max_bytes is not None and len(raw) > self.max_bytes:
            raise SessionTooLarge(
                f"the session is {len(raw):,} bytes serialized, over max_bytes={self.max_bytes:,}"
            )
        return raw

    def first_save(self, session: Session) -> tuple[dict[str, Any], Record, float, float]:
        """For storing a blank session: its data, record (version 1), expiry, and now."""
        data = dict(session._data)
        now = self.clock()
        record = Record(self.encode(data), 1, session.created_at, now)
        return data, record, self.expires(session.created_at, now), now

    def session(self, session_id: str, record: Record, *, is_new: bool = False) -> Session:
        return Session(
            session_id,
            self.serializer.loads(record.data),
            version=record.version,
            created_at=record.created_at,
            accessed_at=record.accessed_at,
            expires_at=self.expires(record.created_at, record.accessed_at),
            is_new=is_new,
        )

    def live(self, record: Record | None, now: float) -> bool:
        return record is not None and self.expires(record.created_at, record.accessed_at) > now


class _ConfiguredStore:
    """Settings and blank sessions, shared by the sync and async store bases."""

    def __init__(
        self,
        *,
        idle_timeout: float | None = 1800.0,
        absolute_timeout: float | None = 43200.0,
        max_bytes: int | None = 64 * 1024,
        serializer: Serializer = JSON,
        clock: Clock = time.time,
    ) -> None:
        self.settings = _Settings(
            idle_timeout=idle_timeout,
            absolute_timeout=absolute_timeout,
            max_bytes=max_bytes,
            serializer=serializer,
            clock=clock,
        )

    def blank(self) -> Session:
        """A new, empty session that is not stored yet: :meth:`save` stores it if it
        gets data (so anonymous visitors cost the store nothing)."""
        now = self.settings.clock()
        return Session(
            new_id(),
            {},
            version=0,
            created_at=now,
            accessed_at=now,
            expires_at=self.settings.expires(now, now),
            is_new=True,
        )


class SessionStoreBase(_ConfiguredStore, ABC):
    """The public session API over a store's atomic primitives.

    ``idle_timeout`` (sliding, refreshed by every save and touch) and
    ``absolute_timeout`` (from creation) bound a session's life; an expired session
    loads as None. ``max_bytes`` bounds its serialized size
    (:class:`SessionTooLarge`). Data is JSON; a stored record that is not (a pickle,
    say) raises :class:`SessionCorrupted` and is never executed.
    """

    # -- primitives a store implements (each atomic) --------------------------

    @abstractmethod
    def _read(self, session_id: str) -> Record | None: ...

    @abstractmethod
    def _insert(self, session_id: str, record: Record, expires: float) -> bool:
        """Store a new session; False if the id is taken."""

    @abstractmethod
    def _replace(self, session_id: str, record: Record, expires: float, expected: int) -> bool:
        """Store ``record`` if the stored version is ``expected``; False if not (or gone)."""

    @abstractmethod
    def _touch(self, session_id: str, accessed_at: float, expires: float) -> bool: ...

    @abstractmethod
    def _delete(self, session_id: str) -> None: ...

    @abstractmethod
    def _rotate(
        self, old_id: str, new_id: str, record: Record, expires: float, expected: int
    ) -> bool:
        """Store ``record`` under ``new_id`` and delete ``old_id`` at once, if the old
        one's version is ``expected``; False if not."""

    @abstractmethod
    def _purge(self, now: float) -> int: ...

    # -- the public API ---------------------------------------------------------

    def create(self, data: Mapping[str, Any] | None = None) -> Session:
        """A new session with a fresh 256-bit id, stored at once.

        Raises :class:`SessionTooLarge` or ``TypeError`` (not JSON) before storing.
        """
        settings = self.settings
        now = settings.clock()
        raw = settings.encode(dict(data or {}))
        record = Record(raw, 1, now, now)
        expires = settings.expires(now, now)
        while True:
            session_id = new_id()
            if self._insert(session_id, record, expires):
                return settings.session(session_id, record, is_new=False)

    def load(self, session_id: str) -> Session | None:
        """The session, or None for an unknown, malformed or expired id (the store's
        data is not touched). Raises :class:`SessionCorrupted` for a record this
        store did not write."""
        if not valid_id(session_id):
            return None
        record = self._read(session_id)
        if record is None or not self.settings.live(record, self.settings.clock()):
            return None
        return self.settings.session(session_id, record)

    def save(self, session: Session) -> None:
        """Store this request's changes, or only extend the expiry if there are none.

        A compare-and-set on the version: if another request saved meanwhile, only
        the keys this request changed or deleted are applied onto the newer data.
        Raises :class:`SessionConflict` when both changed the same key, or when the
        session was deleted or expired meanwhile; nothing is stored then.
        """
        settings = self.settings
        if session.is_new:
            if session:
                self._store_new(session)
            return
        if not session.modified:
            self.touch(session.id)
            return
        data = dict(session._data)
        expected = session.version
        for retry in range(MAX_RETRIES):
            if retry:
                time.sleep(_backoff(retry))
            now = settings.clock()
            raw = settings.encode(data)
            record = Record(raw, expected + 1, session.created_at, now)
            expires = settings.expires(session.created_at, now)
            if self._replace(session.id, record, expires, expected):
                session._saved(data, expected + 1, now, expires)
                return
            current = self._read(session.id)
            if current is None or not settings.live(current, now):
                raise SessionConflict(f"session {session.id[:8]}... was deleted or expired")
            data = merge(session, settings.serializer.loads(current.data))
            expected = current.version
        raise SessionConflict(f"session {session.id[:8]}...: {MAX_RETRIES} saves in a row lost")

    def _store_new(self, session: Session) -> None:
        data, record, expires, now = self.settings.first_save(session)
        while not self._insert(session.id, record, expires):
            session.id = new_id()
        session._saved(data, 1, now, expires)

    def delete(self, session_id: str) -> None:
        """Delete the session (logout). An unknown or malformed id is a no-op."""
        if valid_id(session_id):
            self._delete(session_id)

    def touch(self, session_id: str) -> bool:
        """Extend the idle expiry without rewriting the data; False if the session
        is unknown or expired."""
        if not valid_id(session_id):
            return False
        record = self._read(session_id)
        now = self.settings.clock()
        if record is None or not self.settings.live(record, now):
            return False
        return self._touch(session_id, now, self.settings.expires(record.created_at, now))

    def rotate(self, session: Session) -> Session:
        """The session under a new id, with this request's changes saved, and the old
        id deleted in the same atomic step (session-fixation protection: rotate on
        login). Raises :class:`SessionConflict` if the session changed meanwhile."""
        settings = self.settings
        now = settings.clock()
        data = dict(session._data)
        record = Record(settings.encode(data), session.version + 1, session.created_at, now)
        expires = settings.expires(session.created_at, now)
        while True:
            fresh = new_id()
            if self._rotate(session.id, fresh, record, expires, session.version):
                rotated = settings.session(fresh, record)
                session.id = fresh
                session._saved(data, record.version, now, expires)
                return rotated
            current = self._read(session.id)
            if current is None or current.version != session.version:
                raise SessionConflict(
                    f"session {session.id[:8]}... changed or was deleted before rotating"
                )

    def purge_expired(self) -> int:
        """Delete every expired session; return how many (stores with native expiry,
        like Redis, have nothing to purge)."""
        return self._purge(self.settings.clock())


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

    def _insert(self, session_id: str, record: Record, expires: float) -> bool:
        with self._lock:
            if session_id in self._records:
                return False
            self._records[session_id] = (record, expires)
            return True

    def _replace(self, session_id: str, record: Record, expires: float, expected: int) -> bool:
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
        self, old_id: str, new_id: str, record: Record, expires: float, expected: int
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


class AsyncSessionStoreBase(_ConfiguredStore, ABC):
    """:class:`SessionStoreBase` for asyncio: the same API and semantics, awaited,
    over awaitable primitives."""

    @abstractmethod
    async def _read(self, session_id: str) -> Record | None: ...

    @abstractmethod
    async def _insert(self, session_id: str, record: Record, expires: float) -> bool: ...

    @abstractmethod
    async def _replace(
        self, session_id: str, record: Record, expires: float, expected: int
    ) -> bool: ...

    @abstractmethod
    async def _touch(self, session_id: str, accessed_at: float, expires: float) -> bool: ...

    @abstractmethod
    async def _delete(self, session_id: str) -> None: ...

    @abstractmethod
    async def _rotate(
        self, old_id: str, new_id: str, record: Record, expires: float, expected: int
    ) -> bool: ...

    @abstractmethod
    async def _purge(self, now: float) -> int: ...

    async def create(self, data: Mapping[str, Any] | None = None) -> Session:
        """:meth:`SessionStoreBase.create`."""
        settings = self.settings
        now = settings.clock()
        record = Record(settings.encode(dict(data or {})), 1, now, now)
        expires = settings.expires(now, now)
        while True:
            session_id = new_id()
            if await self._insert(session_id, record, expires):
                return settings.session(session_id, record)

    async def load(self, session_id: str) -> Session | None:
        """:meth:`SessionStoreBase.load`."""
        if not valid_id(session_id):
            return None
        record = await self._read(session_id)
        if record is None or not self.settings.live(record, self.settings.clock()):
            return None
        return self.settings.session(session_id, record)

    async def save(self, session: Session) -> None:
        """:meth:`SessionStoreBase.save`."""
        settings = self.settings
        if session.is_new:
            if session:
                data, record, expires, now = settings.first_save(session)
                while not await self._insert(session.id, record, expires):
                    session.id = new_id()
                session._saved(data, 1, now, expires)
            return
        if not session.modified:
            await self.touch(session.id)
            return
        data = dict(session._data)
        expected = session.version
        for retry in range(MAX_RETRIES):
            if retry:
                await asyncio.sleep(_backoff(retry))
            now = settings.clock()
            record = Record(settings.encode(data), expected + 1, session.created_at, now)
            expires = settings.expires(session.created_at, now)
            if await self._replace(session.id, record, expires, expected):
                session._saved(data, expected + 1, now, expires)
                return
            current = await self._read(session.id)
            if current is None or not settings.live(current, now):
                raise SessionConflict(f"session {session.id[:8]}... was deleted or expired")
            data = merge(session, settings.serializer.loads(current.data))
            expected = current.version
        raise SessionConflict(f"session {session.id[:8]}...: {MAX_RETRIES} saves in a row lost")

    async def delete(self, session_id: str) -> None:
        """:meth:`SessionStoreBase.delete`."""
        if valid_id(session_id):
            await self._delete(session_id)

    async def touch(self, session_id: str) -> bool:
        """:meth:`SessionStoreBase.touch`."""
        if not valid_id(session_id):
            return False
        record = await self._read(session_id)
        now = self.settings.clock()
        if record is None or not self.settings.live(record, now):
            return False
        return await self._touch(session_id, now, self.settings.expires(record.created_at, now))

    async def rotate(self, session: Session) -> Session:
        """:meth:`SessionStoreBase.rotate`."""
        settings = self.settings
        now = settings.clock()
        data = dict(session._data)
        record = Record(settings.encode(data), session.version + 1, session.created_at, now)
        expires = settings.expires(session.created_at, now)
        while True:
            fresh = new_id()
            if await self._rotate(session.id, fresh, record, expires, session.version):
                rotated = settings.session(fresh, record)
                session.id = fresh
                session._saved(data, record.version, now, expires)
                return rotated
            current = await self._read(session.id)
            if current is None or current.version != session.version:
                raise SessionConflict(
                    f"session {session.id[:8]}... changed or was deleted before rotating"
                )

    async def purge_expired(self) -> int:
        """:meth:`SessionStoreBase.purge_expired`."""
        return await self._purge(self.settings.clock())


class AsyncMemorySessionStore(AsyncSessionStoreBase):
    """:class:`MemorySessionStore` for asyncio (tests, single-process ASGI apps)."""

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self._sync = MemorySessionStore(**settings)

    async def _read(self, session_id: str) -> Record | None:
        return self._sync._read(session_id)

    async def _insert(self, session_id: str, record: Record, expires: float) -> bool:
        return self._sync._insert(session_id, record, expires)

    async def _replace(
        self, session_id: str, record: Record, expires: float, expected: int
    ) -> bool:
        return self._sync._replace(session_id, record, expires, expected)

    async def _touch(self, session_id: str, accessed_at: float, expires: float) -> bool:
        return self._sync._touch(session_id, accessed_at, expires)

    async def _delete(self, session_id: str) -> None:
        self._sync._delete(session_id)

    async def _rotate(
        self, old_id: str, new_id: str, record: Record, expires: float, expected: int
    ) -> bool:
        return self._sync._rotate(old_id, new_id, record, expires, expected)

    async def _purge(self, now: float) -> int:
        return self._sync._purge(now)
