"""Cache keys of HTTP requests, without I/O.

A stored response is found by its *primary key*: scheme, host, path and the
normalised query (parameters sorted by name, the ignored ones such as ``utm_*``
dropped). GET and HEAD share it. A response that varies (``Vary``) is stored
under a *variant key*: the primary key, the generation of the variants (new after
an invalidation) and the request's values of the ``Vary`` fields, each
length-prefixed so that no two lists of values give one key.

>>> query = QueryNormaliser(("utm_*", "fbclid"))
>>> query("b=2&utm_source=x&a=1&a=0")
'a=1&a=0&b=2'
>>> primary_key("web:", "https", "example.com", "/a b", "a=1")
'web:https://example.com/4:/a b?a=1'
>>> variant_key("k", "g", ["gzip, br", None])
'k#g#7:gzip,br!'
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence
from urllib.parse import unquote_plus

__all__ = [
    "QueryNormaliser",
    "encoded_path",
    "normal_host",
    "normal_path",
    "normal_value",
    "primary_key",
    "variant_key",
]

_HOST = re.compile(r"(?:[a-z0-9\-._~!$&'()*+,;=]+|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?\Z")
_DEFAULT_PORTS = {"http": ":80", "https": ":443"}


def normal_host(host: str, scheme: str) -> str | None:
    """``host`` lower-cased without the scheme's default port, or ``None`` when it
    is not a host name (a request with such a ``Host`` is not cached).

    >>> normal_host("Example.COM:443", "https"), normal_host("a/b", "http")
    ('example.com', None)
    """
    host = host.strip().lower()
    if not _HOST.match(host):
        return None
    port = _DEFAULT_PORTS.get(scheme)
    if port is not None and host.endswith(port):
        host = host[: -len(port)]
    return host


class QueryNormaliser:
    """Normalises query strings: ``&``-separated parameters, stably sorted by name
    (so repeated parameters keep their order), empty ones and those whose
    (decoded) name matches an ignored glob pattern dropped.

    A ``#`` (a server may leave a fragment in the query) is written ``%23``:
    the keys of variants and leases append ``#`` and text to a primary key, so
    no query may.

    Runtime complexity: O(p log p) for p parameters; O(1) for a query string
    seen recently (the last 4096 are remembered).
    """

    __slots__ = ("_ignore", "_memo")

    def __init__(self, ignore: Iterable[str]) -> None:
        patterns = list(ignore)
        self._ignore = (
            re.compile("|".join(fnmatch.translate(pattern) for pattern in patterns))
            if patterns
            else None
        )
        self._memo: dict[str, str] = {}

    def __call__(self, query: str) -> str:
        if not query:
            return ""
        found = self._memo.get(query)
        if found is not None:
            return found
        pairs = []
        for part in query.split("&"):
            if not part:
                continue
            name = part.split("=", 1)[0]
            if self._ignore is not None and self._ignore.match(unquote_plus(name)):
                continue
            pairs.append((name, part))
        pairs.sort(key=_first)
        found = "&".join(part for _, part in pairs)
        if "#" in found:  # the keys' separator (variants, leases): %23 means the same here
            found = found.replace("#", "%23")
        if len(query) <= 512:  # a client's long queries would fill memory
            if len(self._memo) >= 4096:
                self._memo.clear()
            self._memo[query] = found
        return found


# RFC 3986 3.3: what a path segment holds as it is (pchar, and "/"); the rest is %XX
_PCHAR = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@/"
_KEEP = frozenset(_PCHAR)
_UNRESERVED = frozenset(_PCHAR[:66])
_HEX = frozenset(b"0123456789abcdefABCDEF")
_PLAIN = re.compile(rb"[A-Za-z0-9\-._~!$&'()*+,;=:@/]*\Z")
_ESCAPED = [chr(byte) if byte in _KEEP else f"%{byte:02X}" for byte in range(256)]


def encoded_path(path: bytes) -> str:
    """A *decoded* path's bytes as a key part: each byte a path may not hold as
    it is (``%`` too) percent-encoded, so distinct paths stay distinct.

    Runtime complexity: O(len(path)).

    >>> encoded_path("/café 100%".encode()), encoded_path(b"/a/b")
    ('/caf%C3%A9%20100%25', '/a/b')
    """
    if _PLAIN.match(path):
        return path.decode("ascii")
    return "".join([_ESCAPED[byte] for byte in path])


def normal_path(raw: bytes) -> str:
    """A *raw* (percent-encoded, as received) path as a key part, normalised as
    RFC 3986 6.2.2 allows: encoded unreserved characters decoded, other
    encodings in upper case, bytes a path may not hold encoded. Encodings that
    change the meaning stay: ``/a%2Fb`` is not ``/a/b``, ``%E9`` is not ``%C3%A9``.

    Runtime complexity: O(len(raw)).

    >>> normal_path(b"/%7euser/a%2fb"), normal_path(b"/x%e9 %"), normal_path(b"/a/b")
    ('/~user/a%2Fb', '/x%E9%20%25', '/a/b')
    """
    if _PLAIN.match(raw):
        return raw.decode("ascii")
    parts: list[str] = []
    position, end = 0, len(raw)
    while position < end:
        byte = raw[position]
        if byte == 0x25 and position + 2 < end and _is_hex(raw, position):
            value = int(raw[position + 1 : position + 3], 16)
            parts.append(chr(value) if value in _UNRESERVED else f"%{value:02X}")
            position += 3
            continue
        parts.append(_ESCAPED[byte])
        position += 1
    return "".join(parts)


def _is_hex(raw: bytes, position: int) -> bool:
    return raw[position + 1] in _HEX and raw[position + 2] in _HEX


def _first(pair: tuple[str, str]) -> str:
    return pair[0]


def primary_key(prefix: str, scheme: str, host: str, path: str, query: str) -> str:
    """The key of every stored response to ``scheme://host/path?query``.

    The host has no ``/`` and the path is length-prefixed, so the parts cannot
    run into one another whatever characters the (decoded) path holds.
    """
    return f"{prefix}{scheme}://{host}/{len(path)}:{path}?{query}"


def normal_value(value: str | None) -> str | None:
    """A request field's value as a ``Vary`` key part: list members stripped.

    >>> normal_value(" gzip ,  br "), normal_value(None)
    ('gzip,br', None)
    """
    if value is None:
        return None
    return ",".join(part.strip() for part in value.split(","))


def variant_key(primary: str, generation: str, values: Sequence[str | None]) -> str:
    """The key of the variant of ``primary`` whose ``Vary`` fields had ``values``
    (``None``: the field was absent, which differs from empty)."""
    parts = [primary, "#", generation, "#"]
    for value in values:
        if value is None:
            parts.append("!")
        else:
            value = normal_value(value) or ""
            parts.append(f"{len(value)}:{value}")
    return "".join(parts)
