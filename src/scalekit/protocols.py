"""The small protocol layer the building blocks share.

Only what at least two building blocks use lives here. Every protocol is a
:class:`typing.Protocol`, so any object with the right methods conforms; nothing
has to inherit from scalekit.

- :class:`Clock`: where time comes from. Every timed algorithm takes ``clock=``
  (``time.monotonic`` by default), so tests can use
  :class:`scalekit.testing.FakeClock` instead of sleeping.
- :class:`HashFunction`: how keys are placed (sharding, balancing by key, sketches).
- :class:`Store` / :class:`AsyncStore`: string-keyed get/set with an optional TTL,
  ``add`` (set only if absent) and ``ttl_of``; what a cache tier, a sharded store and
  a live migration are built on.
- :class:`SupportsNodeFor`: a sharder seen from outside (``node_for(key)``); the
  replica router places keys on primaries with one.
- :class:`SupportsPick`: a balancer seen from outside (``pick``, ``mark_down``,
  ``mark_up``); the replica router spreads reads with one.
- :class:`SupportsStats`: objects that report a frozen snapshot of their counters.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Protocol, TypeVar, runtime_checkable

__all__ = [
    "AsyncStore",
    "Clock",
    "HashFunction",
    "Store",
    "SupportsNodeFor",
    "SupportsPick",
    "SupportsStats",
    "monotonic",
]

_V = TypeVar("_V")
_S_co = TypeVar("_S_co", covariant=True)
_N_co = TypeVar("_N_co", covariant=True)
_B = TypeVar("_B")


@runtime_checkable
class Clock(Protocol):
    """A zero-argument callable returning the current time in seconds.

    Only differences between two readings are meaningful, so a monotonic clock is
    the right default: :func:`time.monotonic`.
    """

    def __call__(self) -> float: ...


monotonic: Clock = time.monotonic
"""The default :class:`Clock` of every scalekit structure."""


@runtime_checkable
class HashFunction(Protocol):
    """Maps ``bytes`` or ``str`` to an unsigned integer, identically in every process.

    The default is :func:`scalekit.hashing.default_hash` (seeded MurmurHash3). The
    builtin :func:`hash` does not qualify: it is randomized per process.
    """

    def __call__(self, data: bytes | str, /) -> int: ...


@runtime_checkable
class Store(Protocol[_V]):
    """A string-keyed store of values with optional per-item expiry.

    ``ttl`` is in seconds; ``None`` means the store's default (often: never expire)
    and ``math.inf`` an item that never expires whatever the default, so that an
    item copied between stores (a resharding) keeps "forever". A missing or expired
    key reads as ``default``.
    """

    def get(self, key: str, default: _V | None = None, /) -> _V | None:
        """Return the value of ``key``, or ``default`` when it is missing."""
        ...

    def set(self, key: str, value: _V, /, *, ttl: float | None = None) -> None:
        """Store ``value`` under ``key``, replacing any previous value."""
        ...

    def add(self, key: str, value: _V, /, *, ttl: float | None = None) -> bool:
        """Store ``value`` only if ``key`` is absent (or expired); return whether it did.

        Atomic at the store (memcached ``add``, Redis ``SET NX``), so two processes
        that both add one key never both succeed.
        """
        ...

    def ttl_of(self, key: str, /) -> float | None:
        """The seconds ``key`` has left to live; ``None`` if it never expires.

        Raises :class:`KeyError` when ``key`` is missing or expired.
        """
        ...

    def delete(self, key: str, /) -> bool:
        """Remove ``key``; return whether it was present."""
        ...

    def get_many(self, keys: Iterable[str], /) -> dict[str, _V]:
        """Return the present keys among ``keys`` with their values."""
        ...

    def set_many(self, items: Mapping[str, _V], /, *, ttl: float | None = None) -> None:
        """Store every item of ``items`` with the same ``ttl``."""
        ...


@runtime_checkable
class AsyncStore(Protocol[_V]):
    """The ``async`` twin of :class:`Store`: the same methods, awaited."""

    async def get(self, key: str, default: _V | None = None, /) -> _V | None:
        """Return the value of ``key``, or ``default`` when it is missing."""
        ...

    async def set(self, key: str, value: _V, /, *, ttl: float | None = None) -> None:
        """Store ``value`` under ``key``, replacing any previous value."""
        ...

    async def add(self, key: str, value: _V, /, *, ttl: float | None = None) -> bool:
        """Store ``value`` only if ``key`` is absent (or expired); return whether it did.

        Atomic at the store (memcached ``add``, Redis ``SET NX``), so two processes
        that both add one key never both succeed.
        """
        ...

    async def ttl_of(self, key: str, /) -> float | None:
        """The seconds ``key`` has left to live; ``None`` if it never expires.

        Raises :class:`KeyError` when ``key`` is missing or expired.
        """
        ...

    async def delete(self, key: str, /) -> bool:
        """Remove ``key``; return whether it was present."""
        ...

    async def get_many(self, keys: Iterable[str], /) -> dict[str, _V]:
        """Return the present keys among ``keys`` with their values."""
        ...

    async def set_many(self, items: Mapping[str, _V], /, *, ttl: float | None = None) -> None:
        """Store every item of ``items`` with the same ``ttl``."""
        ...


@runtime_checkable
class SupportsNodeFor(Protocol[_N_co]):
    """Places keys on nodes: every sharder of :mod:`scalekit.sharding` is one."""

    def node_for(self, key: str | bytes | int, /) -> _N_co:
        """The node that owns ``key``."""
        ...


@runtime_checkable
class SupportsPick(Protocol[_B]):
    """Picks a backend per request and routes around the ones marked down: every
    balancer of :mod:`scalekit.balancing` is one."""

    def pick(self, key: object = None) -> _B:
        """Choose a backend for one request."""
        ...

    def mark_down(self, backend: _B) -> None:
        """Take ``backend`` out of rotation until :meth:`mark_up`."""
        ...

    def mark_up(self, backend: _B) -> None:
        """Put ``backend`` back into rotation."""
        ...


@runtime_checkable
class SupportsStats(Protocol[_S_co]):
    """An object that reports its counters as an immutable snapshot.

    ``stats()`` returns a frozen dataclass; taking it never resets anything.
    """

    def stats(self) -> _S_co: ...
