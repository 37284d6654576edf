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

__all__ = ["QueryNormaliser", "normal_host", "normal_value", "primary_key", "variant_key"]

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
        if len(self._memo) >= 4096:
            self._memo.clear()
        self._memo[query] = found
        return found


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
