"""What every store on a server shares, free of I/O: keys, TTLs, values and counters.

A remote store (:class:`~scalekit.cache.RedisCache`, its async twin,
:class:`~scalekit.cache.MemcachedCache`) checks its arguments and encodes them
here, sends what this module built, and reads the replies back here, so the sync
and async shells only move bytes.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Generic, Protocol, TypeVar

from scalekit import _json
from scalekit._validate import check_count, check_seconds, check_str, type_name
from scalekit.errors import ArgumentTypeError, ConfigurationError, IncompatibleStore

__all__ = [
    "BYTES",
    "JSON",
    "BytesSerializer",
    "JSONSerializer",
    "Serializer",
    "StoreStats",
]

V = TypeVar("V")


class Serializer(Protocol[V]):
    """Turns the values of a remote store into bytes and back.

    ``dumps`` raises :class:`TypeError` or :class:`ValueError` for a value it
    cannot keep; ``loads`` raises :class:`ValueError` for bytes it did not write.
    """

    def dumps(self, value: V, /) -> bytes: ...

    def loads(self, data: bytes, /) -> V: ...


class JSONSerializer:
    """Strict JSON (``scalekit._json``: orjson when installed, the same text
    either way). The default of every remote store: never pickle, since a store
    shared by many servers must not run code it reads.

    JSON has no tuples and only ``str`` object keys: ``(1, 2)`` reads back as
    ``[1, 2]``, ``{1: "a"}`` as ``{"1": "a"}``.

    >>> JSON.loads(JSON.dumps({"n": 1, "tags": ["a"]}))
    {'n': 1, 'tags': ['a']}
    """

    name = "json"

    def dumps(self, value: Any, /) -> bytes:
        try:
            return _json.dumps(value)
        except TypeError as exc:
            raise ArgumentTypeError(f"value is not JSON: {exc}") from None
        except ValueError as exc:  # NaN, infinities, lone surrogates
            raise ConfigurationError(f"value is not JSON: {exc}") from None

    def loads(self, data: bytes, /) -> Any:
        return _json.loads(data)


class BytesSerializer:
    """Keeps ``bytes`` values as they are, for values the caller encodes itself.

    >>> BYTES.dumps(b"\\x00raw")
    b'\\x00raw'
    """

    name = "bytes"

    def dumps(self, value: bytes, /) -> bytes:
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise ArgumentTypeError(
                f"value must be bytes for this serializer, got {type_name(value)}"
            )
        return bytes(value)

    def loads(self, data: bytes, /) -> bytes:
        return bytes(data)


JSON = JSONSerializer()
BYTES = BytesSerializer()


@dataclass(frozen=True)
class StoreStats:
    """A snapshot of a remote store's counters, taken by its ``stats()``.

    ``hits`` and ``misses`` count keys looked up (``get`` and each key of
    ``get_many``); ``writes`` counts items sent by ``set``, ``add`` and
    ``set_many``; ``errors`` counts calls that raised a ``BackendError``.
    """

    hits: int
    misses: int
    writes: int
    deletes: int
    errors: int

    def __post_init__(self) -> None:
        for name in ("hits", "misses", "writes", "deletes", "errors"):
            check_count(getattr(self, name), name)

    @property
    def hit_ratio(self) -> float:
        """``hits / (hits + misses)``, or 0.0 before the first lookup."""
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0


class Counters:
    """The counters behind :class:`StoreStats`, safe to bump from many threads."""

    __slots__ = ("_lock", "deletes", "errors", "hits", "misses", "writes")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.hits = self.misses = self.writes = self.deletes = self.errors = 0

    def looked_up(self, hits: int, misses: int) -> None:
        with self._lock:
            self.hits += hits
            self.misses += misses

    def wrote(self, count: int) -> None:
        with self._lock:
            self.writes += count

    def deleted(self) -> None:
        with self._lock:
            self.deletes += 1

    def failed(self) -> None:
        with self._lock:
            self.errors += 1

    def snapshot(self) -> StoreStats:
        with self._lock:
            return StoreStats(self.hits, self.misses, self.writes, self.deletes, self.errors)

    def reset(self) -> None:
        with self._lock:
            self.hits = self.misses = self.writes = self.deletes = self.errors = 0


def check_serializer(serializer: object) -> Serializer[Any]:
    """``serializer`` if it has callable ``dumps`` and ``loads``."""
    if not (
        callable(getattr(serializer, "dumps", None))
        and callable(getattr(serializer, "loads", None))
    ):
        raise ArgumentTypeError(
            "serializer must have dumps(value) -> bytes and loads(bytes), "
            f"got {type_name(serializer)}"
        )
    return serializer  # type: ignore[return-value]


def check_ttl(ttl: object, name: str = "ttl") -> float:
    """A TTL in seconds, ``math.inf`` for "never expires"."""
    return check_seconds(ttl, name, allow_inf=True)


class Codec(Generic[V]):
    """Keys, TTLs and values of one store, checked and encoded.

    ``prefix`` is put before every key on the server, so stores sharing a
    server (or a database) keep apart. Keys are ``str`` and are sent as UTF-8;
    a lone surrogate is kept (``surrogatepass``), so every ``str`` is a key of
    its own and reads back as itself.
    """

    __slots__ = ("default_ttl", "name", "prefix", "serializer")

    def __init__(self, name: str, prefix: object, ttl: object, serializer: object) -> None:
        self.name = name
        self.prefix = check_str(prefix, "prefix", allow_empty=True).encode("utf-8", "surrogatepass")
        self.default_ttl = None if ttl is None else check_ttl(ttl)
        self.serializer: Serializer[V] = check_serializer(serializer)

    def key(self, key: object, what: str = "a key") -> bytes:
        """The server's name of ``key`` (``what`` names it in an error).
        Runtime complexity: O(len(key))."""
        if type(key) is not str and not isinstance(key, str):
            raise ArgumentTypeError(f"{what} of {self.name} must be a str, got {type_name(key)}")
        return self.prefix + key.encode("utf-8", "surrogatepass")

    def keys(self, keys: object) -> dict[bytes, str]:
        """``server name -> key`` for an iterable of keys (duplicates once, in order)."""
        if not isinstance(keys, Iterable) or isinstance(keys, (str, bytes)):
            raise ArgumentTypeError(f"keys must be an iterable of str, got {type_name(keys)}")
        return {self.key(key): key for key in keys}

    def ttl(self, ttl: float | timedelta | None) -> float | None:
        """The seconds an item written with ``ttl`` lives; ``None`` for never."""
        seconds = self.default_ttl if ttl is None else check_ttl(ttl)
        return None if seconds is None or seconds == math.inf else seconds

    def dumps(self, value: V, what: str = "this value") -> bytes:
        try:
            data = self.serializer.dumps(value)
        except TypeError as exc:
            raise ArgumentTypeError(f"{self.name} cannot store {what}: {exc}") from None
        except ValueError as exc:
            raise ConfigurationError(f"{self.name} cannot store {what}: {exc}") from None
        if not isinstance(data, bytes):
            raise ArgumentTypeError(
                f"the serializer of {self.name} returned {type_name(data)}, not bytes"
            )
        return data

    def items(self, items: object) -> dict[bytes, tuple[str, bytes]]:
        """``server name -> (key, encoded value)`` for a mapping; every item is
        encoded before anything is sent, so a bad one stores nothing."""
        if not isinstance(items, Mapping):
            raise ArgumentTypeError(f"items must be a mapping, got {type_name(items)}")
        encoded = {}
        for key, value in items.items():
            try:
                encoded[self.key(key)] = (key, self.dumps(value))
            except (ArgumentTypeError, ConfigurationError) as exc:
                raise type(exc)(f"items[{key!r}]: {exc}") from None
        return encoded

    def loads(self, data: bytes | str, key: str) -> V:
        if isinstance(data, str):  # a client made with decode_responses=True
            data = data.encode("utf-8", "surrogatepass")
        try:
            return self.serializer.loads(data)
        except ValueError as exc:
            raise IncompatibleStore(
                f"the value of {key!r} in {self.name} was not written by this serializer: {exc}",
                backend=self.name,
            ) from exc
