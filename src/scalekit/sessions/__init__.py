"""Sessions for stateless web tiers: any server behind the balancer serves any request.

A :class:`SessionStore` keeps :class:`Session` mappings of JSON values under
256-bit random ids, with idle and absolute expiry. Saves are compare-and-set on a
version: when two requests change one session at once, each one's changed keys
are merged onto the other's, so no update is lost. A key both changed raises
:class:`~scalekit.errors.SessionConflict` (equal values or not), unless it was
changed by :meth:`Session.increment` (the deltas add up) or the store's
``policies`` name it (``"max"``, ``"last_write_wins"``). Data is JSON, never pickle.

Stores: :class:`MemorySessionStore`, :class:`SqlSessionStore` (extra ``sql``),
:class:`RedisSessionStore` (extra ``redis``), and their async twins.
:class:`SessionMiddleware` (ASGI) and :class:`WsgiSessionMiddleware` (WSGI) keep
the session id in a cookie.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from scalekit.errors import SessionConflict, SessionCorrupted, SessionTooLarge
from scalekit.sessions._middleware import (
    SessionMiddleware,
    WsgiSessionMiddleware,
    logout,
    rotate_id,
)
from scalekit.sessions._session import Record, Serializer, Session
from scalekit.sessions._stats import SessionStats
from scalekit.sessions._store import (
    AsyncMemorySessionStore,
    AsyncSessionStore,
    AsyncSessionStoreBase,
    MemorySessionStore,
    SessionStore,
    SessionStoreBase,
)

if TYPE_CHECKING:
    from scalekit.sessions._redis import AsyncRedisSessionStore, RedisSessionStore
    from scalekit.sessions._sql import AsyncSqlSessionStore, SqlSessionStore

__all__ = [
    "AsyncMemorySessionStore",
    "AsyncRedisSessionStore",
    "AsyncSessionStore",
    "AsyncSessionStoreBase",
    "AsyncSqlSessionStore",
    "MemorySessionStore",
    "Record",
    "RedisSessionStore",
    "Serializer",
    "Session",
    "SessionConflict",
    "SessionCorrupted",
    "SessionMiddleware",
    "SessionStats",
    "SessionStore",
    "SessionStoreBase",
    "SessionTooLarge",
    "SqlSessionStore",
    "WsgiSessionMiddleware",
    "logout",
    "rotate_id",
]

_LAZY = {
    "RedisSessionStore": "scalekit.sessions._redis",
    "AsyncRedisSessionStore": "scalekit.sessions._redis",
    "SqlSessionStore": "scalekit.sessions._sql",
    "AsyncSqlSessionStore": "scalekit.sessions._sql",
}


def __getattr__(name: str) -> Any:
    # The Redis and SQL stores load on first use: their libraries are optional extras.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'scalekit.sessions' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
