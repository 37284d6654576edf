"""Tools for testing code built on scalekit, and for testing your own backends.

- :class:`FakeClock`: a :class:`~scalekit.protocols.Clock` that moves only when told
  to, so TTLs, ejection windows and redelivery timeouts are tested without sleeping.
- :func:`check_cache`: the cache and :class:`~scalekit.protocols.Store` contract,
  for your own cache or store.
- :func:`check_balancer`: the :class:`~scalekit.protocols.SupportsPick` contract,
  for your own balancer.
- :func:`check_queue_backend`: the message-queue backend contract (at-least-once
  delivery, redelivery, dead letters, delays), for your own backend.
- :func:`check_session_store` and :func:`check_async_session_store`: the session
  store contract (compare-and-set saves, merges, expiry, rotation), sync and async.
- :func:`check_store` and :func:`check_async_store`: the
  :class:`~scalekit.protocols.Store` contract (get, set, add, TTLs, expiry, batches,
  hostile arguments), for your own key-value store, sync and async.
- :func:`check_sharder`: the sharding-scheme contract (placement, exact plans,
  minimal movement), for your own scheme.

Each ``check_*`` function runs a protocol's whole contract on the implementation
its factory builds and raises :class:`AssertionError` naming the first broken
promise; scalekit's own implementations pass the same functions in its test suite.
Importing this module imports no test framework: everything here runs under any
runner, or none.
"""

from __future__ import annotations

from scalekit.testing._balancer import BALANCER_CHECKS, check_balancer
from scalekit.testing._cache import check_cache
from scalekit.testing._clock import FakeClock
from scalekit.testing._queue import QUEUE_CHECKS, check_queue_backend
from scalekit.testing._sessions import (
    SESSION_STORE_CHECKS,
    check_async_session_store,
    check_session_store,
)
from scalekit.testing._sharder import SHARDER_CHECKS, check_sharder
from scalekit.testing._store import STORE_CHECKS, check_async_store, check_store

__all__ = [
    "BALANCER_CHECKS",
    "QUEUE_CHECKS",
    "SESSION_STORE_CHECKS",
    "SHARDER_CHECKS",
    "STORE_CHECKS",
    "FakeClock",
    "check_async_session_store",
    "check_async_store",
    "check_balancer",
    "check_cache",
    "check_queue_backend",
    "check_session_store",
    "check_sharder",
    "check_store",
]
