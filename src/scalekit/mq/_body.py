"""Message bodies and headers: what every backend accepts, stored the same way everywhere.

A body is kept as ``(kind, data)``: ``b`` raw bytes, ``s`` UTF-8 text, ``j`` JSON
text. Decoding gives back the same type the producer put (JSON values come back
as a fresh copy, so a consumer never shares an object with the producer).

Every backend accepts exactly the same bodies and headers, because every put
goes through :func:`encode` and :func:`check_headers` here: text must be valid
UTF-8 (a ``str`` holding a lone surrogate such as ``"\\ud800"`` is refused with
:class:`~scalekit.errors.ConfigurationError`, in a body, inside a JSON body, in a
header), JSON must be standard JSON (no NaN or infinity).

JSON goes through orjson when it is installed (the ``fast`` extra), else through
the standard library; both write standard JSON and read it back as the same
values. A value orjson does not take (an int beyond 64 bits, a dict with
non-str keys, a subclass of dict, list, str or int) is encoded by the standard
library. With orjson, enum members and UUIDs encode as their JSON value; without
it, they are refused as the standard library refuses them.

A stored body that cannot be decoded (a damaged row or entry) raises
:class:`UndecodableBody` from :func:`from_stored`; the durable backends send such
a message to the dead letters with the reason instead of delivering it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, TypeAlias

from scalekit._json import ORJSON_OPTIONS, has_wide_number, orjson, std_dumps
from scalekit._validate import check_str, type_name
from scalekit.errors import ArgumentTypeError, ConfigurationError

__all__ = [
    "Body",
    "JsonText",
    "UndecodableBody",
    "check_headers",
    "check_text",
    "decode",
    "dumps_headers",
    "encode",
    "from_stored",
    "loads_headers",
    "to_stored",
]

Body: TypeAlias = Any
"""bytes, str, or any JSON-serializable value (dict, list, int, float, bool, None)."""

_std_dumps = std_dumps
_std_loads = json.loads

_orjson: Any = orjson  # one codec for every block: scalekit._json
_OPTIONS = ORJSON_OPTIONS
fast_loads: Callable[[bytes], Any] = _std_loads if orjson is None else orjson.loads
"""The codec's ``loads`` for the bytes of a ``(data,)`` :data:`JsonText`."""
orjson_dumps: Any = None if orjson is None else orjson.dumps
"""``orjson.dumps`` (with :data:`JSON_OPTIONS`), None without orjson."""
JSON_OPTIONS = ORJSON_OPTIONS


class UndecodableBody(ValueError):
    """A stored body or header that cannot be decoded (a damaged row or entry)."""


class _WideJson(tuple[bytes]):
    """JSON text with a number only the standard library reads exactly (>= 2**63)."""

    __slots__ = ()


JsonText: TypeAlias = tuple[bytes]
"""A body stored as JSON (as opposed to a bytes or str body): a 1-tuple holding the
UTF-8 JSON text; a plain tuple when the fast codec reads it exactly, a
``_WideJson`` when it has a number only the standard library reads exactly
(``>= 2**63``). A tuple, not a subclass of bytes or str: it costs nothing to make,
and orjson reads its bytes as they are."""

Stored: TypeAlias = bytes | str | JsonText
"""A body as a backend keeps it: bytes, str, or :data:`JsonText`."""


def check_text(value: str, name: str) -> str:
    """``value`` if it is valid text (encodes as UTF-8: no lone surrogate), else
    :class:`~scalekit.errors.ConfigurationError` naming ``name``. The one rule
    for text that every backend must be able to store."""
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:
            raise ConfigurationError(
                f"{name} must be valid text (UTF-8, no lone surrogate), got {value[:40]!r}"
            ) from None
    return value


def _json(data: bytes) -> JsonText:
    return _WideJson((data,)) if has_wide_number(data) else (data,)


def _std_encode(body: Body) -> JsonText:
    try:
        text = _std_dumps(body)
    except (TypeError, ValueError) as exc:
        raise ArgumentTypeError(
            f"a message body is bytes, str or a JSON value; this {type_name(body)} is not ({exc})"
        ) from None
    return _json(check_text(text, "body").encode())


def encode_json(body: Body) -> Stored:
    """:func:`encode` for a dict or list body (the common JSON body, first)."""
    if _orjson is not None:
        try:
            data = _orjson.dumps(body, option=_OPTIONS)
        except TypeError:  # not JSON, or not for orjson (a lone surrogate, a wide int...)
            return _std_encode(body)
        if data.find(b"null") < 0:  # orjson writes NaN and infinity as null: json refuses
            return (data,)
    return _std_encode(body)


def encode(body: Body) -> Stored:
    """The stored form of ``body``: bytes and str as they are, anything else as
    :data:`JsonText`. Raises :class:`~scalekit.errors.ArgumentTypeError` for what
    JSON cannot hold and :class:`~scalekit.errors.ConfigurationError` for text
    with a lone surrogate or a NaN. Runtime complexity: O(size of the body)."""
    kind = body.__class__
    if kind is dict or kind is list:
        return encode_json(body)
    if kind is bytes:
        return body  # type: ignore[no-any-return]
    if kind is str:
        return check_text(body, "body")
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body)
    if isinstance(body, str):
        return check_text(str(body), "body")
    return _std_encode(body)


def decode(stored: Stored) -> Body:
    """The body a consumer sees for the stored form ``stored``: a fresh copy of
    a JSON value. Runtime complexity: O(size of the body)."""
    kind = stored.__class__
    if kind is tuple:
        return fast_loads(stored[0])  # type: ignore[arg-type]
    if kind is _WideJson:
        return _std_loads(stored[0])  # type: ignore[arg-type]
    return stored


def to_stored(stored: Stored) -> tuple[str, bytes]:
    """``(kind, data)`` for a database column pair."""
    if isinstance(stored, bytes):
        return "b", stored
    if isinstance(stored, tuple):
        return "j", stored[0]
    return "s", stored.encode()


def from_stored(kind: str, data: bytes) -> Stored:
    """The inverse of :func:`to_stored`; :class:`UndecodableBody` for an unknown
    kind or text that is not UTF-8."""
    if kind == "b":
        return bytes(data)
    try:
        text = bytes(data).decode()
    except UnicodeDecodeError as exc:
        raise UndecodableBody(f"a body of kind {kind!r} is not UTF-8 ({exc})") from None
    if kind == "s":
        return text
    if kind == "j":
        stored = _json(bytes(data))
        try:
            decode(stored)
        except ValueError as exc:
            raise UndecodableBody(f"a JSON body is not JSON ({exc})") from None
        return stored
    raise UndecodableBody(f"unknown body kind {kind!r}")


def check_headers(headers: Mapping[str, str] | None) -> dict[str, str] | None:
    """A private copy of ``headers`` (None or empty: None): names are non-empty
    valid text, values valid text. Runtime complexity: O(total size)."""
    if not headers:
        if headers is None or isinstance(headers, Mapping):
            return None
        raise ArgumentTypeError(
            f"headers must be a mapping of str to str, got {type_name(headers)}"
        )
    if not isinstance(headers, Mapping):
        raise ArgumentTypeError(
            f"headers must be a mapping of str to str, got {type_name(headers)}"
        )
    copy = dict(headers)
    for key, value in copy.items():
        check_text(check_str(key, "a header name"), "a header name")
        check_text(check_str(value, f"header {key!r}", allow_empty=True), f"header {key!r}")
    return copy


def dumps_headers(headers: dict[str, str] | None) -> str | None:
    """Headers as JSON text for a column or field; None for none."""
    return _std_dumps(headers) if headers else None


def loads_headers(text: str | bytes | None) -> dict[str, str] | None:
    """The inverse of :func:`dumps_headers`; :class:`UndecodableBody` if damaged."""
    if not text:
        return None
    try:
        headers = _std_loads(text)
    except ValueError as exc:
        raise UndecodableBody(f"the headers are not JSON ({exc})") from None
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise UndecodableBody(f"the headers are not a JSON object of strings: {text!r}")
    return headers
