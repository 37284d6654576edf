"""Message bodies: bytes, str or JSON values, stored the same way on every backend.

A body is kept as ``(kind, data)``: ``b`` raw bytes, ``s`` UTF-8 text, ``j`` JSON
text. Decoding gives back the same type the producer put (JSON values come back
as a fresh copy, so a consumer never shares an object with the producer).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, TypeAlias

__all__ = ["Body", "JsonText", "decode", "encode", "from_stored", "to_stored"]

Body: TypeAlias = Any
"""bytes, str, or any JSON-serializable value (dict, list, int, float, bool, None)."""

_dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode


class JsonText(str):
    """A body stored as JSON text (as opposed to a ``str`` body)."""

    __slots__ = ()


def encode(body: Body) -> bytes | str:
    """The stored form of ``body``: bytes and str as they are, anything else as
    :class:`JsonText`. Raises ``TypeError`` for what JSON cannot hold."""
    kind = type(body)
    if kind is bytes or kind is str:
        return body  # type: ignore[no-any-return]
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body)
    if isinstance(body, str):
        return str(body)
    try:
        return JsonText(_dumps(body))
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"a message body is bytes, str or a JSON value; "
            f"this {type(body).__name__} is not ({exc})"
        ) from None


def decode(stored: bytes | str) -> Body:
    """The body a consumer sees for the stored form ``stored``."""
    if type(stored) is JsonText:
        return json.loads(stored)
    return stored


def to_stored(stored: bytes | str) -> tuple[str, bytes]:
    """``(kind, data)`` for a database column pair."""
    if isinstance(stored, bytes):
        return "b", stored
    if type(stored) is JsonText:
        return "j", stored.encode()
    return "s", stored.encode()


def from_stored(kind: str, data: bytes) -> bytes | str:
    """The inverse of :func:`to_stored`; ``ValueError`` for an unknown kind."""
    if kind == "b":
        return bytes(data)
    if kind == "s":
        return bytes(data).decode()
    if kind == "j":
        return JsonText(bytes(data).decode())
    raise ValueError(f"unknown body kind {kind!r}")


def check_headers(headers: Mapping[str, str] | None) -> dict[str, str] | None:
    """A private copy of ``headers`` (None or empty: None); str keys and values only."""
    if not headers:
        if headers is None or isinstance(headers, Mapping):
            return None
        raise TypeError(f"headers must be a mapping of str to str, got {type(headers).__name__}")
    if not isinstance(headers, Mapping):
        raise TypeError(f"headers must be a mapping of str to str, got {type(headers).__name__}")
    copy = dict(headers)
    for key, value in copy.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"headers must map str to str, got {key!r}: {value!r}")
    return copy
