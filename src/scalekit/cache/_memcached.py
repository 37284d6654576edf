"""The shared cache tier on memcached: :class:`MemcachedCache`, over pymemcache."""

from __future__ import annotations

import base64
import hashlib
import math
import socket
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from datetime import timedelta
from typing import Any, Generic, TypeVar

from scalekit._validate import check_methods
from scalekit.cache._remote import JSON, Codec, Counters, Serializer, StoreStats
from scalekit.errors import BackendError, ConfigurationError, ItemTooLarge

__all__ = ["MemcachedCache"]

V = TypeVar("V")
_MISSING: Any = object()

MAX_KEY_BYTES = 250
"""The longest key memcached takes."""

RELATIVE_LIMIT = 30 * 86400
"""memcached reads an expiry above 30 days as a Unix time, not a duration."""

_SAFE = bytes(range(0x21, 0x7F))
_HASHED = b"~"  # the first byte of a hashed key; a key starting with it is always hashed


def _is_safe(name: bytes) -> bool:
    return (
        len(name) <= MAX_KEY_BYTES
        and not name.translate(None, _SAFE)
        and not name.startswith(_HASHED)
    )


def _hashed(name: bytes) -> bytes:
    digest = hashlib.blake2b(name, digest_size=24).digest()
    return _HASHED + base64.urlsafe_b64encode(digest)


def _metadump(server: tuple[Any, Any], timeout: float) -> list[bytes]:
    """The keys memcached lists for ``lru_crawler metadump all`` (percent-decoded)."""
    with socket.create_connection((server[0], int(server[1])), timeout=timeout) as sock:
        sock.sendall(b"lru_crawler metadump all\r\n")
        data = b""
        while not data.endswith(b"END\r\n"):
            chunk = sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("memcached closed the connection during metadump")
            data += chunk
            if data.startswith((b"BUSY", b"ERROR", b"CLIENT_ERROR", b"SERVER_ERROR")):
                raise ConnectionError(f"memcached refused metadump: {data.strip()!r}")
    names = []
    for line in data[: -len(b"END\r\n")].splitlines():
        field = line.split(b" ", 1)[0]
        if field.startswith(b"key="):
            names.append(urllib.parse.unquote_to_bytes(field[4:]))
    return names


def expiry(seconds: float | None, now: float) -> int:
    """memcached's ``exptime`` for an item living ``seconds`` (``None``: forever).

    memcached counts whole seconds on a clock that ticks once a second, so an
    item given ``n`` may expire up to a second early: one second is added, and
    an item lives at least ``seconds`` and at most about two seconds more.
    Beyond 30 days the expiry is sent as a Unix time, as memcached requires.

    >>> expiry(None, 0.0), expiry(0.2, 0.0), expiry(5, 0.0)
    (0, 2, 6)
    >>> expiry(40 * 86400, 1_700_000_000.0)
    1703456001
    """
    if seconds is None:
        return 0
    whole = math.ceil(seconds) + 1
    if whole > RELATIVE_LIMIT:
        return math.ceil(now + seconds) + 1
    return whole


class MemcachedCache(Generic[V]):
    """A :class:`~scalekit.protocols.Store` on memcached servers, over a pymemcache
    client (the ``memcached`` extra).

    ``client`` is a ``pymemcache`` ``Client`` (one connection: one thread) or
    ``PooledClient`` (many threads), built without a serde: this store encodes
    values itself with ``serializer`` (strict JSON by default, never pickle).
    For many servers, route with :class:`scalekit.sharding.ShardedStore` (or
    pymemcache's ``HashClient``).

    Keys are any ``str``: one memcached cannot take (over 250 bytes, or with
    spaces, control characters or non-ASCII text) is sent as a hash of itself
    (``"~"`` and 32 characters of BLAKE2b), so every key works. TTLs are whole
    seconds on the server, rounded up so that an item never expires early.
    ``ttl_of`` uses the meta protocol (memcached 1.6 or newer).

    Runtime complexity: one round trip per call; O(len(keys)) to encode and decode.
    """

    def __init__(
        self,
        client: Any,
        *,
        prefix: str = "",
        ttl: float | timedelta | None = None,
        serializer: Serializer[V] = JSON,
    ) -> None:
        from pymemcache.exceptions import MemcacheError, MemcacheServerError

        self._codec = Codec[V]("MemcachedCache", prefix, ttl, serializer)
        if not _is_safe(self._codec.prefix) and self._codec.prefix:
            raise ConfigurationError(
                f"prefix must be printable ASCII without spaces and at most "
                f"{MAX_KEY_BYTES - 40} bytes, got {prefix!r}"
            )
        if len(self._codec.prefix) > MAX_KEY_BYTES - 40:
            raise ConfigurationError(f"prefix is longer than {MAX_KEY_BYTES - 40} bytes")
        self._client = check_methods(
            client, "client", "a pymemcache client", ("get", "set", "add", "delete", "get_many")
        )
        self._counters = Counters()
        self._errors = (MemcacheError, OSError)
        self._too_large = MemcacheServerError

    @property
    def client(self) -> Any:
        """The pymemcache client this store talks through."""
        return self._client

    @property
    def ttl(self) -> float | None:
        """The TTL of items written with ``ttl=None``; ``None`` for never."""
        return self._codec.default_ttl

    def _name(self, key: str) -> bytes:
        name = self._codec.key(key)
        if _is_safe(name):
            return name
        prefix = self._codec.prefix
        return prefix + _hashed(name[len(prefix) :])

    def _failed(self, exc: BaseException) -> Exception:
        self._counters.failed()
        if isinstance(exc, self._too_large) and b"too large" in str(exc).encode():
            return ItemTooLarge(f"memcached refused the value as too large: {exc}")
        return BackendError(f"memcached failed: {type(exc).__name__}: {exc}", backend="memcached")

    def get(self, key: str, default: V | None = None, /) -> V | None:
        """The value of ``key``, or ``default`` when it is missing or expired."""
        name = self._name(key)
        try:
            data = self._client.get(name)
        except self._errors as exc:
            raise self._failed(exc) from exc
        if data is None:
            self._counters.looked_up(0, 1)
            return default
        self._counters.looked_up(1, 0)
        return self._codec.loads(data, key)

    def _store(self, command: str, key: str, value: V, ttl: float | timedelta | None) -> bool:
        exptime = expiry(self._codec.ttl(ttl), time.time())
        name, data = self._name(key), self._codec.dumps(value)
        try:
            stored = bool(getattr(self._client, command)(name, data, exptime, noreply=False))
        except self._errors as exc:
            raise self._failed(exc) from exc
        if stored:
            self._counters.wrote(1)
        return stored

    def set(self, key: str, value: V, /, *, ttl: float | timedelta | None = None) -> None:
        """Store ``value`` under ``key`` for ``ttl`` seconds (``math.inf``: forever)."""
        if not self._store("set", key, value, ttl):
            raise BackendError(f"memcached did not store {key!r}", backend="memcached")

    def add(self, key: str, value: V, /, *, ttl: float | timedelta | None = None) -> bool:
        """Store ``value`` only if ``key`` is absent (memcached ``add``); return whether it did."""
        return self._store("add", key, value, ttl)

    def delete(self, key: str, /) -> bool:
        """Remove ``key``; return whether it was there."""
        name = self._name(key)
        try:
            deleted = bool(self._client.delete(name, noreply=False))
        except self._errors as exc:
            raise self._failed(exc) from exc
        self._counters.deleted()
        return deleted

    def ttl_of(self, key: str, /) -> float | None:
        """Seconds ``key`` has left (``None``: never expires); :class:`KeyError` if missing.

        Whole seconds, as memcached counts them (the meta command ``mg <key> t``).
        """
        name = self._name(key)
        try:
            reply = self._client.raw_command(b"mg " + name + b" t", b"\r\n")
        except self._errors as exc:
            raise self._failed(exc) from exc
        words = reply.split()
        if not words or words[0] == b"EN":
            raise KeyError(key)
        for word in words[1:]:
            if word.startswith(b"t"):
                left = int(word[1:])
                return None if left < 0 else float(left)
        raise BackendError(f"memcached answered mg with {reply!r}", backend="memcached")

    def get_many(self, keys: Iterable[str], /) -> dict[str, V]:
        """The present keys among ``keys`` with their values, in one ``get``."""
        names = {self._name(key): key for key in self._codec.keys(keys).values()}
        if not names:
            return {}
        try:
            replies = self._client.get_many(list(names))
        except self._errors as exc:
            raise self._failed(exc) from exc
        found = {}
        for name, key in names.items():
            data = replies.get(name)
            if data is not None:
                found[key] = self._codec.loads(data, key)
        self._counters.looked_up(len(found), len(names) - len(found))
        return found

    def set_many(self, items: Mapping[str, V], /, *, ttl: float | timedelta | None = None) -> None:
        """Store every item with the same ``ttl``, sent together in one round trip."""
        exptime = expiry(self._codec.ttl(ttl), time.time())
        encoded = {self._name(key): data for key, data in self._codec.items(items).values()}
        if not encoded:
            return
        try:
            failed = self._client.set_many(encoded, exptime, noreply=False)
        except self._errors as exc:
            raise self._failed(exc) from exc
        self._counters.wrote(len(encoded) - len(failed))
        if failed:
            raise BackendError(
                f"memcached did not store {len(failed)} of {len(encoded)} items",
                backend="memcached",
            )

    def check_items(self, items: Mapping[str, V], /) -> None:
        """Raise what ``set_many(items)`` would raise for a bad key or value, with
        no I/O (see :meth:`RedisCache.check_items`)."""
        self._codec.items(items)

    def keys(self) -> Iterator[str]:
        """Every key of this store that the server holds, read with ``lru_crawler
        metadump all`` (memcached 1.4.31 or newer) on a connection of its own.

        Keys that were sent hashed (see the class) cannot be read back and are
        left out, so a :class:`~scalekit.sharding.ShardedStore` reshard does not
        move them: they are missed once at their new owner and refilled, as with
        libmemcached, while the old copy lives out its TTL.

        Runtime complexity: O(items on the server), one connection.
        """
        server = getattr(self._client, "server", None)
        if not (isinstance(server, tuple) and len(server) == 2):
            raise ConfigurationError(
                f"{type(self._client).__name__} does not say its server: keys() needs a "
                "pymemcache Client or PooledClient"
            )
        try:
            dump = _metadump(server, float(getattr(self._client, "timeout", None) or 10.0))
        except OSError as exc:
            raise self._failed(exc) from exc
        prefix = self._codec.prefix
        return iter(
            [
                name[len(prefix) :].decode("utf-8", "surrogatepass")
                for name in dump
                if name.startswith(prefix) and not name[len(prefix) :].startswith(_HASHED)
            ]
        )

    def stats(self) -> StoreStats:
        """A snapshot of the counters. Runtime complexity: O(1)."""
        return self._counters.snapshot()

    def reset_stats(self) -> None:
        """Set every counter back to zero."""
        self._counters.reset()

    def __repr__(self) -> str:
        return f"MemcachedCache({self._client!r}, ttl={self.ttl!r})"
