"""The session store operations, written once and free of I/O.

Each public operation of a store (``create``, ``load``, ``save``, ``touch``,
``rotate``, ``delete``, ``purge_expired``) is a generator here. It yields the store
primitives it needs as tuples, ``(method name, *arguments)``, receives each one's
result, and returns the operation's result::

    ("_read", session_id)                                         -> Record | None
    ("_insert", session_id, record, expires, op)                  -> bool
    ("_replace", session_id, record, expires, expected, op)       -> bool
    ("_touch", session_id, accessed_at, expires)                  -> bool
    ("_touch_live", session_id, now)                              -> bool
    ("_rotate", old_id, new_id, record, expires, expected, op)    -> bool
    ("_delete", session_id)                                       -> None
    ("_purge", now)                                               -> int
    ("sleep", seconds)                                            -> None (the runner waits)

:func:`run` drives a flow with direct calls to a sync store, :func:`run_async` with
awaited calls to an async one, so the sync and async stores are thin shells that
cannot drift apart. ``op`` is 8 random bytes that name one write: a store whose
client may send a command twice (redis-py retries after a lost connection) makes
the second run of the same op a no-op that answers as the first did.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Generator, Mapping
from typing import Any, TypeVar

from scalekit._flow import drive, drive_async
from scalekit._validate import (
    check_callable,
    check_count,
    check_name,
    check_seconds,
    check_str,
    type_name,
)
from scalekit.errors import ArgumentTypeError, SessionConflict, SessionTooLarge
from scalekit.protocols import Clock
from scalekit.sessions._session import (
    Policy,
    Record,
    Serializer,
    Session,
    check_policies,
    merge,
    new_id,
    valid_id,
)
from scalekit.sessions._stats import Tally

__all__ = [
    "MAX_RETRIES",
    "Flow",
    "Settings",
    "create",
    "delete",
    "load",
    "purge",
    "rotate",
    "run",
    "run_async",
    "save",
    "touch",
]

_log = logging.getLogger("scalekit.sessions")


def _conflict(
    settings: Settings, session_id: str, reason: str, exc: SessionConflict
) -> SessionConflict:
    """Count and log a conflict (the id's first 8 characters, never the data) and
    return it."""
    settings.tally.add("conflicts")
    key = getattr(exc, "key", None)
    _log.warning(
        "session %s...: conflict, %s%s",
        session_id[:8],
        reason,
        "" if key is None else f" (key {key!r})",
        extra={"session": session_id[:8], "reason": reason, "key": key},
    )
    return exc


_R = TypeVar("_R")
Step = tuple[Any, ...]
Flow = Generator[Step, Any, _R]

MAX_RETRIES = 64  # merges in a row before a save gives up (each one lost a race)


def new_op() -> bytes:
    """8 random bytes naming one write (see the module docstring). They need to
    differ only from the ids of the few writes a record remembers, not to be
    secret: :mod:`random` (reseeded in a forked child) is 30 times cheaper than
    ``os.urandom`` here."""
    return random.getrandbits(64).to_bytes(8, "big")


def _backoff(retry: int) -> float:
    """Seconds to wait before merge number ``retry``: random, growing to 50 ms, so
    requests that lose the compare-and-set together do not retry in lockstep."""
    return random.random() * min(0.05, 0.001 * 2.0 ** (retry - 1))


class Settings:
    """Timeouts, size limit, merge policies, serializer and clock of one store, and
    the tally of what its operations did.

    Every argument is checked here, before the store exists: an error of
    :mod:`scalekit.errors` that names it.
    """

    __slots__ = (
        "_absolute",
        "_idle",
        "absolute_timeout",
        "clock",
        "idle_timeout",
        "max_bytes",
        "policies",
        "serializer",
        "tally",
    )

    def __init__(
        self,
        *,
        idle_timeout: float | None,
        absolute_timeout: float | None,
        max_bytes: int | None,
        serializer: Serializer,
        clock: Clock,
        policies: Mapping[str, Policy] | None = None,
    ) -> None:
        self.idle_timeout = (
            None if idle_timeout is None else check_seconds(idle_timeout, "idle_timeout")
        )
        self.absolute_timeout = (
            None
            if absolute_timeout is None
            else check_seconds(absolute_timeout, "absolute_timeout")
        )
        self.max_bytes = (
            None if max_bytes is None else check_count(max_bytes, "max_bytes", minimum=2)
        )
        for method in ("dumps", "loads"):
            check_callable(getattr(serializer, method, None), f"serializer.{method}")
        self.serializer = serializer
        self.clock: Clock = check_callable(clock, "clock")
        self.policies: dict[str, Policy] = check_policies(policies)
        # the timeouts as numbers (inf: none), for expires() on every request
        self._idle = math.inf if self.idle_timeout is None else float(self.idle_timeout)
        self._absolute = math.inf if self.absolute_timeout is None else float(self.absolute_timeout)
        self.tally = Tally()

    def expires(self, created_at: float, accessed_at: float) -> float:
        """:func:`~scalekit.sessions._session.expires_at` with these timeouts.

        >>> Settings(idle_timeout=10, absolute_timeout=None, max_bytes=None,
        ...          serializer=Serializer(), clock=time.time).expires(0.0, 5.0)
        15.0
        """
        idle = accessed_at + self._idle
        absolute = created_at + self._absolute
        return absolute if absolute < idle else idle

    def encode(self, data: Mapping[str, Any]) -> bytes:
        raw = self.serializer.dumps(data)
        if self.max_bytes is not None and len(raw) > self.max_bytes:
            raise SessionTooLarge(
                f"the session is {len(raw):,} bytes serialized, over max_bytes={self.max_bytes:,}"
            )
        return raw

    def session(self, session_id: str, record: Record, expires: float | None = None) -> Session:
        """The session a stored ``record`` holds (never new: it is stored), which
        expires at ``expires`` (None: computed from the record)."""
        if expires is None:
            expires = self.expires(record.created_at, record.accessed_at)
        return Session(
            session_id,
            self.serializer.loads(record.data),
            version=record.version,
            created_at=record.created_at,
            accessed_at=record.accessed_at,
            expires_at=expires,
        )

    def live(self, record: Record | None, now: float) -> bool:
        return record is not None and self.expires(record.created_at, record.accessed_at) > now

    def blank(self) -> Session:
        now = self.clock()
        return Session(
            new_id(),
            {},
            version=0,
            created_at=now,
            accessed_at=now,
            expires_at=self.expires(now, now),
            is_new=True,
        )


def _check_session(session: object) -> Session:
    if not isinstance(session, Session):
        raise ArgumentTypeError(f"session must be a Session, got {type_name(session)}")
    return session


def _check_data(data: object) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ArgumentTypeError(
            f"data must be a mapping of str to JSON values, got {type_name(data)}"
        )
    for key in data:
        if type(key) is not str:
            raise ArgumentTypeError(f"data keys must be str, got {type_name(key)}")
        if not key.isascii():
            check_name(key, "a data key")
    return dict(data)


def _check_id(session_id: object) -> bool:
    """Whether ``session_id`` has the shape of an id; a str of another shape (a
    cookie's garbage) is just not one, anything but a str is a mistake."""
    if type(session_id) is not str:
        check_str(session_id, "session_id", allow_empty=True)
    return valid_id(session_id)


# -- the operations ------------------------------------------------------------------


def create(settings: Settings, data: object) -> Flow[Session]:
    """A new session with a fresh id, stored at once (retried under another id in
    the unlikely case that the id is taken)."""
    checked = _check_data(data)
    now = settings.clock()
    try:
        raw = settings.encode(checked)
    except ArgumentTypeError as exc:
        raise ArgumentTypeError(f"data must hold JSON values only: {exc}") from None
    record = Record(raw, 1, now, now)
    expires = settings.expires(now, now)
    op = new_op()
    while True:
        session_id = new_id()
        if (yield ("_insert", session_id, record, expires, op)):
            settings.tally.add("created")
            return settings.session(session_id, record)


def load(settings: Settings, session_id: object) -> Flow[Session | None]:
    """The session, or None for an unknown, malformed or expired id."""
    if not _check_id(session_id):
        settings.tally.add("not_found")
        return None
    assert isinstance(session_id, str)
    record: Record | None = yield ("_read", session_id)
    if record is None:
        settings.tally.add("not_found")
        return None
    expires = settings.expires(record.created_at, record.accessed_at)
    if expires <= settings.clock():
        settings.tally.add("not_found")
        return None
    session = settings.session(session_id, record, expires)
    settings.tally.add("loaded")
    return session


def save(settings: Settings, session: object, native_touch: bool) -> Flow[None]:
    """Store ``session``'s changes by compare-and-set on its version, merging onto
    every newer version found (see :func:`~scalekit.sessions._session.merge`); only
    touch it if nothing changed; store a blank session only if it holds data."""
    session = _check_session(session)
    if session.is_new:
        if session:
            yield from _store_new(settings, session)
        return
    changed, deleted, encoded = session._changes()
    if not (changed or deleted):
        yield from touch(settings, session.id, native_touch)
        return
    data = dict(session._data)
    expected = session.version
    op = new_op()
    for retry in range(MAX_RETRIES):
        if retry:
            yield ("sleep", _backoff(retry))
        now = settings.clock()
        record = Record(settings.encode(data), expected + 1, session.created_at, now)
        expires = settings.expires(session.created_at, now)
        if (yield ("_replace", session.id, record, expires, expected, op)):
            # unmerged, the keys noted keep their JSON: the one loaded, or the one
            # _changes() just made for a changed key
            session._saved(data, expected + 1, now, expires, encoded if retry == 0 else None)
            settings.tally.add("saved")
            return
        current: Record | None = yield ("_read", session.id)
        if current is None or not settings.live(current, now):
            raise _conflict(
                settings,
                session.id,
                "deleted or expired",
                SessionConflict(f"session {session.id[:8]}... was deleted or expired"),
            )
        try:
            data = merge(session, settings.serializer.loads(current.data), settings.policies)
        except SessionConflict as exc:
            _conflict(settings, session.id, "changed by another request", exc)
            raise
        settings.tally.add("merged")
        expected = current.version
    raise _conflict(
        settings,
        session.id,
        f"{MAX_RETRIES} saves in a row lost",
        SessionConflict(f"session {session.id[:8]}...: {MAX_RETRIES} saves in a row lost"),
    )


def _store_new(settings: Settings, session: Session) -> Flow[None]:
    data = dict(session._data)
    now = settings.clock()
    record = Record(settings.encode(data), 1, session.created_at, now)
    expires = settings.expires(session.created_at, now)
    op = new_op()
    while not (yield ("_insert", session.id, record, expires, op)):
        session.id = new_id()
    session._saved(data, 1, now, expires)
    settings.tally.add("created")


def touch(settings: Settings, session_id: object, native: bool) -> Flow[bool]:
    """Extend the idle expiry; False if the session is unknown or expired. A store
    with ``native`` touch decides that itself, in one step (``_touch_live``)."""
    if not _check_id(session_id):
        return False
    assert isinstance(session_id, str)
    now = settings.clock()
    if native:
        touched = bool((yield ("_touch_live", session_id, now)))
    else:
        record: Record | None = yield ("_read", session_id)
        if record is None or not settings.live(record, now):
            return False
        expires = settings.expires(record.created_at, now)
        touched = bool((yield ("_touch", session_id, now, expires)))
    if touched:
        settings.tally.add("touched")
    return touched


def rotate(settings: Settings, session: object) -> Flow[Session]:
    """The session under a new id with this request's changes, the old id deleted
    in the same atomic step; :class:`SessionConflict` if it changed meanwhile."""
    session = _check_session(session)
    now = settings.clock()
    data = dict(session._data)
    record = Record(settings.encode(data), session.version + 1, session.created_at, now)
    expires = settings.expires(session.created_at, now)
    op = new_op()
    while True:
        fresh = new_id()
        if (yield ("_rotate", session.id, fresh, record, expires, session.version, op)):
            rotated = settings.session(fresh, record)
            session.id = fresh
            session._saved(data, record.version, now, expires)
            settings.tally.add("rotated")
            return rotated
        current: Record | None = yield ("_read", session.id)
        if current is None or current.version != session.version:
            raise _conflict(
                settings,
                session.id,
                "changed or deleted before rotating",
                SessionConflict(
                    f"session {session.id[:8]}... changed or was deleted before rotating"
                ),
            )


def delete(settings: Settings, session_id: object) -> Flow[None]:
    """Delete the session; an unknown or malformed id is a no-op."""
    if _check_id(session_id):
        yield ("_delete", session_id)
        settings.tally.add("deleted")


def purge(settings: Settings) -> Flow[int]:
    """Delete every expired session; how many."""
    purged = int((yield ("_purge", settings.clock())))
    settings.tally.add("purged", purged)
    return purged


# -- the runners ---------------------------------------------------------------------


def run(flow: Flow[_R], store: Any) -> _R:
    """Drive ``flow`` with direct calls to the primitives of a sync ``store``.

    A step is ``(primitive, *arguments)``, or ``("sleep", seconds)``; what a
    primitive raises is raised in the flow at its ``yield``, so a flow may handle it.
    """

    def perform(step: Step) -> Any:
        if step[0] == "sleep":
            return time.sleep(step[1])
        return getattr(store, step[0])(*step[1:])

    return drive(flow, perform)


async def run_async(flow: Flow[_R], store: Any, *, on_thread: bool = False) -> _R:
    """:func:`run` awaiting the primitives of an async ``store``, or, with
    ``on_thread``, calling a sync store's on a worker thread."""

    async def perform(step: Step) -> Any:
        if step[0] == "sleep":
            return await asyncio.sleep(step[1])
        if on_thread:
            return await asyncio.to_thread(getattr(store, step[0]), *step[1:])
        return await getattr(store, step[0])(*step[1:])

    return await drive_async(flow, perform)
