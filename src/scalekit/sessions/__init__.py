"""Sessions for stateless web tiers: any server behind the balancer serves any request.

A :class:`SessionStore` keeps :class:`Session` mappings of JSON values under
256-bit random ids, with idle and absolute expiry. Saves are compare-and-set on a
version: when two requests change one session at once, each one's changed keys
are merged onto the other's, so no update is lost; only a change of the same key
raises :class:`~scalekit.errors.SessionConflict`. Data is JSON, never pickle.
"""

from scalekit.errors import SessionConflict, SessionCorrupted, SessionTooLarge
from scalekit.sessions._session import Record, Serializer, Session
from scalekit.sessions._store import (
    AsyncMemorySessionStore,
    AsyncSessionStore,
    AsyncSessionStoreBase,
    MemorySessionStore,
    SessionStore,
    SessionStoreBase,
)

__all__ = [
    "AsyncMemorySessionStore",
    "AsyncSessionStore",
    "AsyncSessionStoreBase",
    "MemorySessionStore",
    "Record",
    "Serializer",
    "Session",
    "SessionConflict",
    "SessionCorrupted",
    "SessionStore",
    "SessionStoreBase",
    "SessionTooLarge",
]
