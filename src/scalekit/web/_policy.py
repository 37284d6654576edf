"""What a shared cache may store and reuse (RFC 9111), without I/O.

:class:`Stored` is one stored response: its status, headers and body, with what
its freshness needs (when it was received, its age then, its freshness lifetime,
its stale windows) worked out once when it is stored. :func:`store_policy`
decides whether a response may be stored and builds that record;
:func:`current_age` and :meth:`Stored.remaining` say how fresh it is now.

The order of freshness (RFC 9111 4.2.1), first found wins: ``Surrogate-Control:
max-age`` (meant for this cache), ``s-maxage`` (shared caches), ``max-age``,
``Expires`` minus ``Date``, then, only where the configuration opts in, a
heuristic (10% of the time since ``Last-Modified``, capped) or a default TTL.

>>> policy = Policy(shared=True, default_ttl=None, heuristic=False, max_heuristic=86400.0)
>>> stored = store_policy(
...     policy, 200, [("Cache-Control", "max-age=60"), ("Age", "10")], b"hi",
...     request_time=1000.0, response_time=1000.0, authorized=False)
>>> stored.lifetime, current_age(stored, 1005.0), stored.remaining(1005.0)
(60.0, 15.0, 45.0)
>>> store_policy(policy, 200, [("Set-Cookie", "a=1"), ("Cache-Control", "max-age=60")], b"",
...     request_time=0.0, response_time=0.0, authorized=False) is None
True
"""

from __future__ import annotations

import base64
import math
import random
import re
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from scalekit.web._headers import directives, http_date, names, seconds

__all__ = [
    "HEURISTIC",
    "NOT_STORED_FIELDS",
    "Policy",
    "Stored",
    "VaryMarker",
    "current_age",
    "decode",
    "store_policy",
    "update_from_304",
]

HEURISTIC = frozenset({200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501})
"""Statuses that are heuristically cacheable (RFC 9110 15.1), less 206 (no ranges here)."""

# Statuses stored with explicit freshness: final, understood and complete. Server
# errors other than 501 are never stored, so an outage does not replace a good
# response (stale-if-error serves that one instead).
_EXPLICIT = frozenset(range(200, 500)) - {206, 304} | {501}

_UNDERSTOOD = frozenset(status.value for status in HTTPStatus) & _EXPLICIT

NOT_STORED_FIELDS = frozenset(
    {
        "age",
        "cache-status",
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authentication-info",
        "proxy-authorization",
        "proxy-connection",
        "set-cookie",
        "surrogate-control",
        "surrogate-key",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
"""Response fields never stored: hop-by-hop, per-user, or this cache's own."""

# RFC 9111 3.2: the field a 304 must not change in the stored response
_KEPT_ON_304 = frozenset({"content-length"})


class Policy:
    """The configuration :func:`store_policy` needs."""

    __slots__ = ("default_ttl", "heuristic", "max_heuristic", "shared")

    def __init__(
        self, *, shared: bool, default_ttl: float | None, heuristic: bool, max_heuristic: float
    ) -> None:
        self.shared = shared
        self.default_ttl = default_ttl
        self.heuristic = heuristic
        self.max_heuristic = max_heuristic


class VaryMarker:
    """What the primary key holds when the response varies: the ``Vary`` field
    names and the generation of the variants (their keys include it, so an
    invalidation that drops the marker orphans every variant at once)."""

    __slots__ = ("generation", "key_size", "names")

    def __init__(self, names: tuple[str, ...], generation: str) -> None:
        self.names = names
        self.generation = generation
        self.key_size = 0  # the length of its key, for a store that sizes by memory

    def to_json(self) -> list[Any]:
        return ["vary", list(self.names), self.generation]

    @classmethod
    def from_json(cls, data: list[Any]) -> VaryMarker:
        """The marker :meth:`to_json` wrote; ``ValueError`` for anything else."""
        names, generation = data[1], data[2]
        if (
            type(names) not in _ARRAYS
            or not names
            or not all(type(name) is str for name in names)
            or type(generation) is not str
        ):
            raise ValueError("not a stored Vary marker")
        return cls(tuple(names), generation)


class Stored:
    """One stored response and its freshness data (times are the cache's clock).

    ``initial_age`` is the corrected initial age of RFC 9111 4.2.3; ``lifetime``
    the freshness lifetime; ``stale_while`` and ``stale_if_error`` the windows of
    RFC 5861 (0: none); ``revalidate`` is set by ``no-cache`` (never reused
    without revalidation); ``no_stale`` by ``must-revalidate``,
    ``proxy-revalidate`` and, in a shared cache, ``s-maxage`` (never served
    stale). ``tags`` maps each ``Surrogate-Key`` tag to its version when stored.
    """

    __slots__ = (
        "_asgi",
        "_wsgi",
        "body",
        "etag",
        "headers",
        "id",
        "initial_age",
        "key_size",
        "last_modified",
        "lifetime",
        "no_stale",
        "response_time",
        "revalidate",
        "stale_if_error",
        "stale_while",
        "status",
        "surrogate",
        "tags",
        "vary",
        "vary_values",
    )

    def __init__(
        self,
        status: int,
        headers: list[tuple[str, str]],
        body: bytes,
        response_time: float,
        initial_age: float,
        lifetime: float,
        stale_while: float,
        stale_if_error: float,
        revalidate: bool,
        no_stale: bool,
        vary: tuple[str, ...] = (),
        vary_values: tuple[str | None, ...] = (),
        tags: dict[str, str] | None = None,
        id: str | None = None,
        surrogate: str | None = None,
    ) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.response_time = response_time
        self.initial_age = initial_age
        self.lifetime = lifetime
        self.stale_while = stale_while
        self.stale_if_error = stale_if_error
        self.revalidate = revalidate
        self.no_stale = no_stale
        self.vary = vary
        self.vary_values = vary_values
        self.tags = tags or {}
        self.id = id or f"{random.getrandbits(64):016x}"
        self.surrogate = surrogate  # its Surrogate-Control field, kept for a 304's update
        etag = last_modified = None
        for name, value in headers:
            lower = name.lower()
            if lower == "etag":
                etag = value
            elif lower == "last-modified":
                last_modified = value
        self.etag = etag
        self.last_modified = last_modified
        self._asgi: list[tuple[bytes, bytes]] | None = None
        self._wsgi: list[tuple[str, str]] | None = None
        self.key_size = 0  # the length of its key, for a store that sizes by memory

    def footprint(self) -> int:
        """About how many bytes it holds in memory, with its key: the body, the
        headers, the ``Vary`` values (twice: the key holds them too).

        Runtime complexity: O(number of headers).
        """
        size = 512 + len(self.body) + self.key_size
        for name, value in self.headers:
            size += 100 + len(name) + len(value)
        for varied in self.vary_values:
            size += 50 + (len(varied) if varied is not None else 0)
        return size

    def remaining(self, now: float) -> float:
        """Seconds of freshness left at ``now`` (negative: stale for that long).

        Runtime complexity: O(1).
        """
        return self.lifetime - (self.initial_age + now - self.response_time)

    def validators(self) -> bool:
        """Whether it can be revalidated (it has an ``ETag`` or ``Last-Modified``)."""
        return self.etag is not None or self.last_modified is not None

    def asgi_headers(self) -> list[tuple[bytes, bytes]]:
        """Its headers as ASGI sends them (lower-case names, latin-1 bytes), made once."""
        found = self._asgi
        if found is None:
            found = self._asgi = [
                (name.lower().encode("latin-1"), value.encode("latin-1"))
                for name, value in self.headers
            ]
        return found

    def to_json(self) -> list[Any]:
        """A JSON-able list (the body in base64), for stores that keep JSON."""
        return [
            "resp",
            self.status,
            [[name, value] for name, value in self.headers],
            base64.b64encode(self.body).decode("ascii"),
            self.response_time,
            self.initial_age,
            self.lifetime,
            self.stale_while,
            self.stale_if_error,
            self.revalidate,
            self.no_stale,
            list(self.vary),
            list(self.vary_values),
            self.tags,
            self.id,
            self.surrogate,
        ]

    @classmethod
    def from_json(cls, data: list[Any]) -> Stored:
        """The response :meth:`to_json` wrote; ``ValueError`` for anything this
        version would not have written (a foreign or corrupt value is a miss,
        never served): each field of its type, times finite, headers that can
        be sent as they are and none that is never stored, the body base64 of
        its ``Content-Length``.

        Runtime complexity: O(size of the value).
        """
        status, headers, body = data[1], data[2], data[3]
        if type(status) is not int or status not in _EXPLICIT:
            raise ValueError("not a stored status")
        if type(headers) not in _ARRAYS or not all(_storable_field(pair) for pair in headers):
            raise ValueError("not stored headers")
        if type(body) is not str:
            raise ValueError("not a base64 body")
        times = [_time(value) for value in data[4:9]]
        flags, vary, values, tags = data[9:11], data[11], data[12], data[13]
        if not all(type(flag) is bool for flag in flags):
            raise ValueError("not stored flags")
        if (
            type(vary) not in _ARRAYS
            or type(values) not in _ARRAYS
            or len(values) not in (0, len(vary))
            or not all(type(name) is str for name in vary)
            or not all(value is None or type(value) is str for value in values)
        ):
            raise ValueError("not stored Vary names and values")
        if type(tags) is not dict or not all(
            type(tag) is str and type(version) is str for tag, version in tags.items()
        ):
            raise ValueError("not stored tags")
        if type(data[14]) is not str or (data[15] is not None and type(data[15]) is not str):
            raise ValueError("not a stored id or Surrogate-Control")
        content = base64.b64decode(body, validate=True)
        for name, value in headers:
            if name.lower() == "content-length" and value != str(len(content)):
                raise ValueError("a body that is not its Content-Length")
        return cls(
            status,
            [(name, value) for name, value in headers],
            content,
            times[0],
            times[1],
            times[2],
            times[3],
            times[4],
            flags[0],
            flags[1],
            tuple(vary),
            tuple(values),
            tags,
            data[14],
            data[15],
        )


_ARRAYS = (list, tuple)  # what a serializer may give back for a JSON array
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*\Z")


def _storable_field(pair: object) -> bool:
    """Whether ``pair`` is a ``[name, value]`` a stored response may hold and send."""
    if not isinstance(pair, (list, tuple)) or len(pair) != 2:
        return False
    name, value = pair
    return (
        type(name) is str
        and type(value) is str
        and _TOKEN.match(name) is not None
        and _VALUE.match(value) is not None
        and name.lower() not in NOT_STORED_FIELDS
    )


def _time(value: object) -> float:
    """A stored time or duration: a finite number."""
    if not isinstance(value, (int, float)) or type(value) is bool or not math.isfinite(value):
        raise ValueError("not a stored time")
    return float(value)


def decode(value: Any) -> Stored | VaryMarker | None:
    """A value read from a store as a :class:`Stored` or :class:`VaryMarker`;
    ``None`` for anything else (a value that is not ours is a miss, never served).
    """
    if isinstance(value, (Stored, VaryMarker)):
        return value
    if isinstance(value, list) and value:
        try:
            if value[0] == "resp" and len(value) == 16:
                return Stored.from_json(value)
            if value[0] == "vary" and len(value) == 3:
                return VaryMarker.from_json(value)
        except (TypeError, ValueError, AttributeError, KeyError):
            return None
    return None


def current_age(stored: Stored, now: float) -> float:
    """The current age of ``stored`` at ``now`` (RFC 9111 4.2.3).

    Runtime complexity: O(1).
    """
    return stored.initial_age + max(0.0, now - stored.response_time)


def _field(headers: Sequence[tuple[str, str]], name: str) -> str | None:
    """The value of field ``name`` (lower case); repeated fields joined by ``, ``."""
    found = [value for key, value in headers if key.lower() == name]
    if not found:
        return None
    return found[0] if len(found) == 1 else ", ".join(found)


def _lifetime(
    policy: Policy,
    status: int,
    control: dict[str, str | None],
    surrogate: dict[str, str | None],
    headers: Sequence[tuple[str, str]],
    date: float,
) -> tuple[float | None, bool]:
    """The freshness lifetime, and whether it was explicit; ``None`` when the
    response has none and none may be assumed."""
    if "max-age" in surrogate:
        return float(seconds(surrogate["max-age"]) or 0), True
    if policy.shared and "s-maxage" in control:
        return float(seconds(control["s-maxage"]) or 0), True
    if "max-age" in control:
        return float(seconds(control["max-age"]) or 0), True
    expires = _field(headers, "expires")
    if expires is not None:
        when = http_date(expires)  # an invalid Expires means already expired
        return (max(0.0, when - date) if when is not None else 0.0), True
    if status not in HEURISTIC and "public" not in control:
        return None, False
    if policy.heuristic:
        modified = http_date(_field(headers, "last-modified"))
        if modified is not None and modified < date:
            return min(0.1 * (date - modified), policy.max_heuristic), False
    if policy.default_ttl is not None:
        return policy.default_ttl, False
    return None, False


def store_policy(
    policy: Policy,
    status: int,
    headers: Sequence[tuple[str, str]],
    body: bytes,
    *,
    request_time: float,
    response_time: float,
    authorized: bool,
) -> Stored | None:
    """The record to store for a response to a GET, or ``None`` when it must not
    be stored (RFC 9111 3, and the stricter defaults: never a ``Set-Cookie``,
    never without explicit freshness unless the policy opts in).

    ``authorized``: the request carried ``Authorization`` (RFC 9111 3.5).
    ``headers`` are the response's, names in any case.

    Runtime complexity: O(number of headers).
    """
    if status not in _EXPLICIT:
        return None
    control: dict[str, str | None] = {}
    surrogate: dict[str, str | None] = {}
    kept: list[tuple[str, str]] = []
    vary_field: list[str] = []
    date_field = age_field = surrogate_field = None
    for name, value in headers:
        lower = name.lower()
        if lower == "set-cookie":
            return None
        if lower == "cache-control":
            for directive, argument in directives(value).items():
                control.setdefault(directive, argument)
        elif lower == "surrogate-control":
            surrogate_field = value if surrogate_field is None else f"{surrogate_field}, {value}"
            for directive, argument in directives(value).items():
                surrogate.setdefault(directive, argument)
        elif lower == "vary":
            vary_field.extend(names(value))
        elif lower == "date":
            date_field = value
        elif lower == "age":
            age_field = value
        elif lower == "pragma" and "no-cache" in directives(value):
            control.setdefault("no-cache", None)
        if lower not in NOT_STORED_FIELDS:
            kept.append((name, value))
    if "must-understand" in control:
        # RFC 9111 5.2.2.3: stored only when the status is understood, and then
        # the no-store sent along for caches that do not understand it is ignored
        if status not in _UNDERSTOOD:
            return None
        control.pop("no-store", None)
    if "max-age" in surrogate:
        control.pop("no-store", None)  # Surrogate-Control rules this cache
    if "no-store" in control or "no-store" in surrogate or "*" in vary_field:
        return None
    if policy.shared and "private" in control:
        return None
    if (
        authorized
        and policy.shared
        and not ({"must-revalidate", "public", "s-maxage"} & control.keys())
    ):
        return None
    date = http_date(date_field)
    if date is None:
        date = response_time
    lifetime, _explicit = _lifetime(policy, status, control, surrogate, headers, date)
    if lifetime is None:
        return None
    age_value = seconds(age_field.strip()) if age_field is not None else None
    apparent_age = max(0.0, response_time - date)
    corrected_age = (age_value or 0) + max(0.0, response_time - request_time)
    initial_age = max(apparent_age, float(corrected_age))
    stale_while = seconds(
        surrogate.get("stale-while-revalidate", control.get("stale-while-revalidate"))
    )
    stale_if_error = seconds(surrogate.get("stale-if-error", control.get("stale-if-error")))
    # Surrogate-Control's max-age is meant for this cache: its directives, not
    # Cache-Control's (meant for the browsers after it), say how to revalidate
    ruling = surrogate if "max-age" in surrogate else control
    no_stale = bool(
        {"must-revalidate", "proxy-revalidate"} & ruling.keys()
        or (policy.shared and "s-maxage" in ruling)
    )
    if status != 204 and not any(name.lower() == "content-length" for name, _ in kept):
        kept.append(("content-length", str(len(body))))  # hits need no chunked encoding
    return Stored(
        status,
        kept,
        body,
        response_time,
        initial_age,
        lifetime,
        float(stale_while or 0),
        float(stale_if_error or 0),
        "no-cache" in ruling,
        no_stale,
        tuple(vary_field),
        surrogate=surrogate_field,
    )


def update_from_304(stored: Stored, headers: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The stored response's headers updated by a 304's (RFC 9111 4.3.4): each
    field the 304 carries replaces the stored field of that name, except those
    that describe the stored content (``Content-Length``, ``Content-Type``...)."""
    fresh: dict[str, list[tuple[str, str]]] = {}
    for name, value in headers:
        lower = name.lower()
        if lower in _KEPT_ON_304:
            continue
        fresh.setdefault(lower, []).append((name, value))
    merged: list[tuple[str, str]] = []
    for name, value in stored.headers:
        if name.lower() not in fresh:
            merged.append((name, value))
    for values in fresh.values():
        merged.extend(values)
    return merged
