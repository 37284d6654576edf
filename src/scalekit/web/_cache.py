"""HttpCache: the RFC 9111 shared cache, written once as flows that do no I/O.

:meth:`HttpCache.handle` takes a :class:`Request` and returns a *flow*: a
generator that yields the steps it needs and receives their results. The ASGI and
WSGI middlewares only drive it (:mod:`scalekit.web._asgi`, :mod:`scalekit.web._wsgi`)::

    ("get", key)                         -> the stored value or None
    ("get_many", keys)                   -> {key: value} of those present
    ("set", key, value, ttl)             -> None
    ("add", key, value, ttl)             -> whether it was added
    ("delete", key)                      -> None
    ("sleep", seconds)                   -> None
    ("join", latch)                      -> None, once another request's flight ended
    ("call", headers, cache_status,      -> Response, or STREAMED: call the app with
        release)                            ``headers`` changed in the request (None
                                            removes one); a response that may not be
                                            stored (:meth:`HttpCache.buffers`), or
                                            grows over ``max_body``, streams to the
                                            client with ``cache_status``, after the
                                            shell ran the flow ``release()`` (if any)
    ("forward", cache_status, on_start)  -> None: call the app, its response straight
                                            to the client with ``Cache-Status`` added;
                                            ``on_start(status, headers)`` is a flow of
                                            store steps run before the response starts
    ("refresh", flow)                    -> None: run ``flow`` in the background
                                            (its calls have no client)

The flow returns the :class:`Reply` to send, or None when the response was sent
already. A store step that raises counts an error and answers as if the store
were empty (``get``), or did nothing: a failing store costs speed, never a
request (see :func:`store_step`).
"""

from __future__ import annotations

import itertools
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import unquote, urljoin, urlsplit

from scalekit._validate import (
    check_bool,
    check_callable,
    check_count,
    check_methods,
    check_name,
    check_seconds,
    type_name,
)
from scalekit._waiting import Latch
from scalekit.errors import ArgumentTypeError, ConfigurationError
from scalekit.web._headers import (
    MEMO_TEXT,
    directives,
    format_http_date,
    http_date,
    seconds,
    weak_match,
)
from scalekit.web._keys import (
    QueryNormaliser,
    encoded_path,
    normal_host,
    normal_path,
    primary_key,
    variant_key,
)
from scalekit.web._policy import (
    Policy,
    Stored,
    VaryMarker,
    current_age,
    store_policy,
    update_from_304,
)

__all__ = [
    "STREAMED",
    "CacheStats",
    "DictHeaders",
    "HttpCache",
    "Reply",
    "Request",
    "Response",
    "store_step",
]

_log = logging.getLogger("scalekit.web")

Step = tuple[Any, ...]
Flow = Generator[Step, Any, Any]

STREAMED: Any = type("Streamed", (), {"__repr__": lambda self: "STREAMED"})()
"""What a ``call`` step answers when the response was too large and went to the client."""

_SAFE = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
_CONDITIONALS = (
    "if-none-match",
    "if-modified-since",
    "if-range",
    "if-match",
    "if-unmodified-since",
)
# RFC 9110 15.4.5: what a 304 carries of the 200 it stands for
_304_FIELDS = frozenset(
    {"cache-control", "content-location", "date", "etag", "expires", "last-modified", "vary"}
)
_FALLBACK: dict[str, Any] = {"get": None, "get_many": {}, "set": None, "add": True, "delete": False}
_MAX_STORE_TTL = 100 * 365.25 * 86400.0
_DECODED_BYTES = 16 * 1024 * 1024  # bodies kept decoded from a JSON store, at most
_MISSING: Any = object()


class Headers(Protocol):
    """A request's header fields, read by lower-case name (repeats joined by ``, ``)."""

    def get(self, name: str, default: None = None, /) -> str | None: ...

    def __contains__(self, name: object, /) -> bool: ...

    def any_of(self, names: frozenset[str], /) -> bool:
        """Whether the request has any of the fields ``names`` (lower case)."""
        ...


class DictHeaders(dict[str, str]):
    """:class:`Headers` in a plain dict of lower-case names (tests, doctests)."""

    def any_of(self, names: frozenset[str], /) -> bool:
        return not names.isdisjoint(self)


class Request:
    """What the cache needs of a request; the middlewares build it.

    ``path`` is decoded (as ASGI's ``path`` and WSGI's ``PATH_INFO``); ``query``
    is the raw query string. ``target`` is the path as the key holds it
    (:func:`~scalekit.web._keys.normal_path` of the raw path when the server
    gave it, :func:`~scalekit.web._keys.encoded_path` of ``path`` otherwise,
    the default): two paths the app can tell apart (``/a%2Fb`` and ``/a/b``
    in ASGI's ``raw_path``) have two targets; ``None``: not cached. ``started``
    is set by a shell when the app's response started going to the client
    (nothing can replace it then).
    """

    __slots__ = ("headers", "host", "method", "path", "query", "scheme", "started", "target")

    def __init__(
        self,
        method: str,
        scheme: str,
        host: str,
        path: str,
        query: str,
        headers: Headers,
        target: str | None = "",
    ) -> None:
        self.method = method
        self.scheme = scheme
        self.host = host
        self.path = path
        self.target = (
            encoded_path(path.encode("utf-8", "surrogatepass")) if target == "" else target
        )
        self.query = query
        self.headers = headers
        self.started = False


class Response:
    """A response the app sent, buffered: status, headers (names as sent), body."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


class Reply:
    """What a middleware sends: ``status``; the stored response's headers
    (``stored``) or ``headers``; then ``extra`` (with ``stored``: exactly
    ``Age`` then ``Cache-Status``)."""

    __slots__ = ("body", "extra", "headers", "status", "stored")

    def __init__(
        self,
        status: int,
        stored: Stored | None,
        headers: list[tuple[str, str]] | None,
        body: bytes,
        extra: list[tuple[str, str]],
    ) -> None:
        self.status = status
        self.stored = stored
        self.headers = headers
        self.body = body
        self.extra = extra


@dataclass(frozen=True)
class CacheStats:
    """Counters of an :class:`HttpCache` since it was made.

    ``hits``: fresh responses served from the store; ``stale_hits``: stale ones
    served (stale-while-revalidate, stale-if-error); ``coalesced``: requests
    answered with the response another request in flight fetched; ``misses``:
    cacheable requests that found no usable stored response (those then
    answered by another's flight count in ``coalesced`` too, those served stale
    after an error in ``stale_hits`` too); ``revalidations``: the ones the
    app answered 304 (the stored response was updated); ``refreshes``:
    background refreshes started; ``stores``: responses stored; ``bypasses``:
    requests the cache did not serve by rule (unsafe method, ``Cookie``,
    ``no-store``...); ``not_modified``: 304s answered from the store;
    ``purges``: tags purged; ``errors``: store calls that failed (the request
    was served anyway) and background refreshes that failed.
    """

    hits: int
    stale_hits: int
    coalesced: int
    misses: int
    revalidations: int
    refreshes: int
    stores: int
    bypasses: int
    not_modified: int
    purges: int
    errors: int

    @property
    def hit_ratio(self) -> float:
        """Requests served without calling the app (hits, stale hits,
        coalesced) over the cacheable ones (hits, stale hits, misses); 0.0
        before any."""
        total = self.hits + self.stale_hits + self.misses
        served = self.hits + self.stale_hits + self.coalesced
        return served / total if total else 0.0


_COUNTERS = tuple(CacheStats.__dataclass_fields__)


def _tally(counter: itertools.count[int]) -> int:
    """How many times ``next(counter)`` was called (``count(n)`` reprs as ``count(n)``)."""
    return int(repr(counter)[6:-1])


class _Flight:
    """A response being fetched in this process for one key, joined by others.
    ``invalidated``: an unsafe request changed the URI meanwhile, so what the
    fetch gets may predate the change and is not stored."""

    __slots__ = ("done", "failed", "invalidated", "lease", "stored")

    def __init__(self) -> None:
        self.done = Latch()
        self.stored: Stored | None = None
        self.invalidated = False
        # until the app answers below 500: the leader raised, was cancelled or got
        # a server error, and its joiners elect another leader rather than stampede
        self.failed = True
        self.lease: tuple[str, str] | None = None  # (key, token) of its cross-process lease


def store_step(store: Any, step: Step) -> Any:
    """Make the store call of ``step`` on a sync ``store`` (the ASGI shell awaits
    the same calls on an async one)."""
    name = step[0]
    if name == "get":
        return store.get(step[1])
    if name == "set":
        return store.set(step[1], step[2], ttl=step[3])
    if name == "get_many":
        return store.get_many(step[1])
    if name == "add":
        return store.add(step[1], step[2], ttl=step[3])
    return store.delete(step[1])


async def store_step_async(store: Any, step: Step) -> Any:
    """:func:`store_step` awaiting an async store."""
    name = step[0]
    if name == "get":
        return await store.get(step[1])
    if name == "set":
        return await store.set(step[1], step[2], ttl=step[3])
    if name == "get_many":
        return await store.get_many(step[1])
    if name == "add":
        return await store.add(step[1], step[2], ttl=step[3])
    return await store.delete(step[1])


STORE_STEPS = frozenset(_FALLBACK)


def _strings(value: object, name: str) -> tuple[str, ...]:
    """An iterable of names (not one ``str``: that would be its characters)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ArgumentTypeError(
            f"{name} must be an iterable of str (a list), got {type_name(value)}"
        )
    return tuple(check_name(item, f"{name} item") for item in value)


def _default_store(clock: Callable[[], float]) -> Any:
    from scalekit.cache import LRUCache, ThreadSafeCache

    return ThreadSafeCache(LRUCache(64 * 1024 * 1024, _size_of, timer=clock), threading.Lock())


def _size_of(value: Any) -> float:
    """The memory a stored value takes, key included (a key of a long URL, or of
    long ``Vary`` values, can outweigh its body)."""
    if isinstance(value, Stored):
        return float(value.footprint())
    if isinstance(value, VaryMarker):
        return float(256 + value.key_size + sum(len(name) for name in value.names))
    return 128.0


def _is_in_process(store: Any) -> bool:
    from scalekit.cache import Cache, ThreadSafeCache

    return isinstance(store, (Cache, ThreadSafeCache))


class HttpCache:
    """An RFC 9111 shared HTTP cache that does no I/O: it decides what may be
    stored and reused, builds the cache keys, and tells its middlewares
    (:class:`~scalekit.web.CacheMiddleware`,
    :class:`~scalekit.web.WSGICacheMiddleware`) which store calls and app calls
    to make.

    - ``store``: any :class:`~scalekit.protocols.Store` or
      :class:`~scalekit.protocols.AsyncStore`. ``None``: an in-process LRU of
      64 MiB, bodies, headers and keys counted (a thread-safe
      :class:`~scalekit.cache.LRUCache` timed by ``clock``). An in-process cache
      keeps the stored responses as objects;
      any other store gets JSON values (bodies in base64), so
      :class:`~scalekit.cache.RedisCache` and :class:`~scalekit.cache.TieredCache`
      work with their default serializer. A sync store is called inline, on the
      event loop under ASGI: give ASGI apps an in-process store, a
      :class:`~scalekit.cache.TieredCache` (hits from its near cache) or an async
      store.
    - ``shared``: shared-cache rules (``private`` is not stored, ``s-maxage``
      counts); False for a private cache.
    - ``default_ttl``: seconds of freshness for responses without any; ``None``
      (default) stores none of those. ``heuristic``: 10% of the time since
      ``Last-Modified``, at most ``max_heuristic`` seconds, where RFC 9111 4.2.2
      allows it (opt-in too).
    - ``allow_hosts``: the hosts served from the cache (others bypass it);
      ``None``: any host (the host is in the key).
    - ``ignore_params``: glob patterns of query parameters left out of the key.
    - ``public``: paths whose requests are cached even with ``Cookie`` or
      ``Authorization`` (elsewhere those requests bypass the cache), each with
      what lies under it by whole segments: ``"/news"`` covers ``/news`` and
      ``/news/today``, not ``/newsletter``.
    - ``max_body``: larger responses are not stored (they stream through).
    - ``coalesce``: concurrent misses of one key make one app call per process,
      and, with a store shared by processes (any store that is not an
      in-process cache), one across processes while a ``lease`` (seconds) holds.
    - ``clock``: wall-clock seconds (:func:`time.time`).
    - ``prefix``: put before every key in the store.

    What it does not cache: requests with ``Range`` (they go to the app, as do
    methods other than GET and HEAD); responses to HEAD (a HEAD is answered from
    a stored GET); server errors other than 501; partial responses (206).

    A store that fails (raises) never fails a request: the flow reads a failed
    ``get`` as a miss and goes on without a failed write, the app serves the
    request, ``stats().errors`` counts it, and the ``scalekit.web`` logger warns.
    :meth:`purge` is the exception: a lost purge would be silent, so it raises.

    Building the key of a request:

    >>> cache = HttpCache(ignore_params=["utm_*"])
    >>> request = Request(
    ...     "GET", "https", "Example.com:443", "/news", "b=2&utm_medium=x&a=1", DictHeaders()
    ... )
    >>> cache.key_of(request)
    'web:https://example.com/5:/news?a=1&b=2'

    Runtime complexity: a hit is one store ``get`` (two when the response
    varies, three with ``Surrogate-Key`` tags) and O(number of headers).
    """

    def __init__(
        self,
        store: Any = None,
        *,
        shared: bool = True,
        default_ttl: float | None = None,
        heuristic: bool = False,
        max_heuristic: float = 86400.0,
        allow_hosts: Iterable[str] | None = None,
        ignore_params: Iterable[str] = ("utm_*", "fbclid", "gclid"),
        public: Iterable[str] = (),
        max_body: int = 1024 * 1024,
        coalesce: bool = True,
        lease: float = 10.0,
        clock: Callable[[], float] = time.time,
        prefix: str = "web:",
    ) -> None:
        if store is not None:
            check_methods(store, "store", "a Store", ("get", "set", "add", "delete", "get_many"))
        check_bool(shared, "shared")
        ttl = None if default_ttl is None else check_seconds(default_ttl, "default_ttl")
        check_bool(heuristic, "heuristic")
        cap = check_seconds(max_heuristic, "max_heuristic")
        hosts: frozenset[str] | None = None
        if allow_hosts is not None:
            named = _strings(allow_hosts, "allow_hosts")
            if not named:
                raise ConfigurationError("allow_hosts must name at least one host (None: any)")
            normal = set()
            for host in named:
                found = normal_host(host, "")
                if found is None:
                    raise ConfigurationError(f"allow_hosts has {host!r}, which is not a host")
                normal.add(found)
            hosts = frozenset(normal)
        ignored = _strings(ignore_params, "ignore_params")
        prefixes = _strings(public, "public")
        for path in prefixes:
            if not path.startswith("/"):
                raise ConfigurationError(f"public paths must start with '/', got {path!r}")
        self.max_body = check_count(max_body, "max_body", maximum=2**40)
        check_bool(coalesce, "coalesce")
        self.lease = check_seconds(lease, "lease", maximum=3600.0)
        self.clock: Callable[[], float] = check_callable(clock, "clock")
        self.prefix = check_name(prefix, "prefix")
        self.store: Any = _default_store(self.clock) if store is None else store
        self.policy = Policy(shared=shared, default_ttl=ttl, heuristic=heuristic, max_heuristic=cap)
        self.shared = shared
        self.allow_hosts = hosts
        self.ignore_params = ignored
        self.public = prefixes
        self._public_paths = frozenset(path.rstrip("/") or "/" for path in prefixes)
        self._public_under = tuple(path.rstrip("/") + "/" for path in prefixes)
        self.coalesce = coalesce
        self.asynchronous = _is_async(self.store)
        self._native = _is_in_process(self.store)
        self._query = QueryNormaliser(ignored)
        self._lock = threading.Lock()
        self._flights: dict[str, _Flight] = {}
        self._refreshing: set[str] = set()
        self._decoded: dict[str, Stored] = {}  # responses decoded lately, by id
        self._decoded_bytes = 0
        self._hosts: dict[tuple[str, str], str | None] = {}
        self._purge_epoch = 0  # purges made by this process, so far
        for name in _COUNTERS:
            setattr(self, "_n_" + name, itertools.count())
        self._n_hits: itertools.count[int]

    # -- reading ---------------------------------------------------------------

    def stats(self) -> CacheStats:
        """A snapshot of the counters (taking it resets nothing)."""
        return CacheStats(*(_tally(getattr(self, "_n_" + name)) for name in _COUNTERS))

    def _check(self) -> None:
        """Assert the cache's invariants (the property tests call it): a flight
        in the table is unfinished, one per key and without a stored response
        yet; the memo tables stay bounded; the counters add up; the default
        store's own invariants hold."""
        with self._lock:
            for key, flight in self._flights.items():
                assert isinstance(key, str)
                assert key.startswith(self.prefix)
                assert not flight.done.is_set(), f"finished flight left for {key!r}"
            assert all(key.startswith(self.prefix) for key in self._refreshing)
            assert len(self._hosts) <= 1024
            assert len(self._decoded) <= 512
        stats = self.stats()
        assert all(getattr(stats, name) >= 0 for name in _COUNTERS)
        assert stats.coalesced <= stats.misses
        assert stats.revalidations <= stats.misses
        check = getattr(self.store, "_check", None) if self._native else None
        if check is not None:
            check()

    def _count(self, name: str) -> None:
        next(getattr(self, "_n_" + name))

    def key_of(self, request: Request) -> str | None:
        """The primary key of ``request``'s URI; None when its host is not served.

        Runtime complexity: O(len(query)) (O(1) for a query seen recently).
        """
        scheme = request.scheme
        target = request.target
        if target is None:
            return None
        try:
            host = self._hosts[scheme, request.host]
        except KeyError:
            host = normal_host(request.host, scheme)
            if host is not None and (
                self.allow_hosts is not None
                and _bare(host) not in self.allow_hosts
                and host not in self.allow_hosts
            ):
                host = None
            if len(request.host) <= MEMO_TEXT:
                if len(self._hosts) >= 1024:
                    self._hosts.clear()
                self._hosts[scheme, request.host] = host
        if host is None:
            return None
        return primary_key(self.prefix, request.scheme, host, target, self._query(request.query))

    def tag_key(self, tag: str) -> str:
        """Where the version of ``tag`` is kept in the store."""
        return f"{self.prefix}tag:{tag}"

    def buffers(self, status: int, headers: list[tuple[str, str]]) -> bool:
        """Whether a response that starts with ``status`` and ``headers`` is worth
        holding back until its end: one that may be stored (and fits
        ``max_body``), a 304 (a revalidation's answer) or a server error (which a
        stale response may replace). Any other streams through at once, so a
        stream of events is never held.

        Runtime complexity: O(number of headers).
        """
        if status == 304 or status >= 500:
            return True
        for name, value in headers:
            if name.lower() == "content-length":
                length = value.strip()
                if length.isdigit() and len(length) < 19 and int(length) > self.max_body:
                    return False
        now = self.clock()
        stored = store_policy(
            self.policy, status, headers, b"", request_time=now, response_time=now, authorized=False
        )
        return stored is not None

    def store_failed(self, exc: BaseException, step: Step) -> Any:
        """Count a failed store call and return what the flow reads instead."""
        self._count("errors")
        _log.warning(
            "store %s failed (%s: %s); serving without it", step[0], type(exc).__name__, exc
        )
        return _FALLBACK[step[0]]

    def refresh_failed(self, exc: BaseException) -> None:
        """Count a background refresh that raised."""
        self._count("errors")
        _log.warning("background refresh failed", exc_info=exc)

    def _value(self, item: Stored | VaryMarker) -> Any:
        return item if self._native else item.to_json()

    def _decode(self, value: Any) -> Stored | VaryMarker | None:
        if value is None:
            return None
        if isinstance(value, (Stored, VaryMarker)):
            return value
        if isinstance(value, list) and len(value) == 16 and value[0] == "resp":
            identity = value[14]
            found = self._decoded.get(identity) if isinstance(identity, str) else None
            if found is not None:
                return found
            try:
                found = Stored.from_json(value)
            except (TypeError, ValueError, AttributeError, KeyError):
                return None
            size = len(found.body)
            if len(self._decoded) >= 512 or self._decoded_bytes + size > _DECODED_BYTES:
                self._decoded.clear()
                self._decoded_bytes = 0
            self._decoded[found.id] = found
            self._decoded_bytes += size
            return found
        if isinstance(value, list) and len(value) == 3 and value[0] == "vary":
            try:
                return VaryMarker.from_json(value)
            except ValueError:
                return None
        return None

    # -- purging ---------------------------------------------------------------

    def purges_key(self) -> str:
        """Where the store keeps a token that every purge, in any process, renews."""
        return f"{self.prefix}purges"

    def purge_flow(self, tag: object) -> Flow:
        """The flow of :meth:`purge`: a new purge token, then a new version for ``tag``.

        In that order: a response fetched while a purge was under way, in any
        process, sees the new token when it is about to be stored (it reads the
        tag versions first, then the token) and is not stored, or it recorded
        the tag's old version and is dropped by the new one.
        """
        name = check_name(tag, "tag")
        if name.split() != [name]:
            # Surrogate-Key splits its tags at white space: no stored tag has any
            raise ConfigurationError(f"tag must have no white space, got {tag!r}")
        self._count("purges")
        self._purge_epoch += 1
        yield ("set", self.purges_key(), _token(), None)
        yield ("set", self.tag_key(name), _token(), None)

    def purge(self, tag: str) -> None:
        """Drop every stored response whose ``Surrogate-Key`` listed ``tag``.

        Writes a new version of the tag: responses stored under the old one are
        never served again (they expire from the store by themselves). With a
        :class:`~scalekit.cache.TieredCache` and its invalidation channel, every
        app server's near cache drops the old version too. A store error is
        raised (:class:`~scalekit.errors.BackendError`): a purge must not be
        lost silently. Needs a sync store (:meth:`purge_async` takes both).

        Runtime complexity: one store ``set``.
        """
        if self.asynchronous:
            raise ConfigurationError("purge() needs a sync store: await purge_async(tag)")
        for step in self.purge_flow(tag):
            store_step(self.store, step)

    async def purge_async(self, tag: str) -> None:
        """:meth:`purge` for an async store (or a sync one, called inline)."""
        for step in self.purge_flow(tag):
            if self.asynchronous:
                await store_step_async(self.store, step)
            else:
                store_step(self.store, step)

    # -- the request flow --------------------------------------------------------

    def handle(self, request: Request) -> Flow:
        """The flow of one request (see the module docstring)."""
        now = self.clock()
        method = request.method
        if method != "GET" and method != "HEAD":
            self._count("bypasses")
            on_start = None if method in _SAFE else self._after_unsafe(request)
            yield ("forward", "scalekit; fwd=bypass", on_start)
            return None
        headers = request.headers
        key = self.key_of(request)
        field = headers.get("cache-control")
        control = directives(field) if field is not None else _pragma(headers)
        if (
            key is None
            or "no-store" in control
            or (
                headers.any_of(_BYPASSING)
                and (
                    "range" in headers
                    or (
                        ("cookie" in headers or "authorization" in headers)
                        and not self._is_public(request)
                    )
                )
            )
        ):
            self._count("bypasses")
            yield ("forward", "scalekit; fwd=bypass", None)
            return None
        if "no-cache" in control:
            self._count("bypasses")
            return (yield from self._upstream(request, key, None, None, "bypass", now))
        found = self._decode((yield ("get", key)))
        marker = None
        if isinstance(found, VaryMarker):
            marker = found
            values = [headers.get(name) for name in marker.names]
            found = self._decode((yield ("get", variant_key(key, marker.generation, values))))
            kind = "vary-miss"
            if not isinstance(found, Stored):
                found = None
        else:
            kind = "uri-miss"
        if found is not None and found.tags:
            tags = list(found.tags)
            current = yield ("get_many", [self.tag_key(tag) for tag in tags])
            if any(current.get(self.tag_key(tag)) != found.tags[tag] for tag in tags):
                found = None  # purged
        if found is None:
            if "only-if-cached" in control:
                return Reply(504, None, [], b"", [("Cache-Status", "scalekit; fwd=uri-miss")])
            return (yield from self._fetch(request, key, marker, None, kind, now))
        remaining = found.remaining(now)
        fresh = remaining > 0 and not found.revalidate
        if control:
            usable, fresh = _acceptable(found, control, now, remaining, fresh)
            if not usable:
                if "only-if-cached" in control:
                    return Reply(504, None, [], b"", [("Cache-Status", "scalekit; fwd=request")])
                return (yield from self._fetch(request, key, marker, found, "request", now))
        if fresh:
            next(self._n_hits)
            return self._serve(request, found, now, f"scalekit; hit; ttl={math.floor(remaining)}")
        if 0 < found.stale_while >= -remaining and not found.no_stale and not found.revalidate:
            self._count("stale_hits")
            with self._lock:  # a HEAD's response has no body to refresh with
                start = method == "GET" and key not in self._refreshing
                if start:
                    self._refreshing.add(key)
            if start:
                # one refresh across processes too: whoever adds the key's lease
                lease_key, token = key + "#lease", _token()
                if self._native or (yield ("add", lease_key, token, self.lease)):
                    self._count("refreshes")
                    yield ("refresh", self._refresh(request, key, marker, found, token))
                else:
                    with self._lock:
                        self._refreshing.discard(key)
            status = f"scalekit; hit; ttl={math.floor(remaining)}; detail=stale"
            return self._serve(request, found, now, status)
        if "only-if-cached" in control:
            return Reply(504, None, [], b"", [("Cache-Status", "scalekit; fwd=stale")])
        return (yield from self._fetch(request, key, marker, found, "stale", now))

    def _is_public(self, request: Request) -> bool:
        path = request.path
        if not self.public or ("/." in path and _dot_segments(path)):
            return False  # RFC 3986 5.2.4: /news/../account is /account
        return path in self._public_paths or path.startswith(self._public_under)

    def _serve(self, request: Request, stored: Stored, now: float, status: str) -> Reply:
        """The reply of a stored response: a 304 when the request's conditions
        say the client has it (RFC 9111 4.3.2), the headers only for HEAD."""
        extra = [("Age", str(int(current_age(stored, now)))), ("Cache-Status", status)]
        headers = request.headers
        if stored.status == 200 and headers.any_of(_CONDITIONAL) and _not_modified(headers, stored):
            self._count("not_modified")
            kept = [(name, value) for name, value in stored.headers if name.lower() in _304_FIELDS]
            return Reply(304, None, kept, b"", extra)
        return Reply(
            stored.status, stored, None, b"" if request.method == "HEAD" else stored.body, extra
        )

    def _refresh(
        self, request: Request, key: str, marker: VaryMarker | None, stale: Stored, token: str
    ) -> Flow:
        """A background revalidation of ``stale`` (stale-while-revalidate), under
        the lease ``token`` when the store is shared by processes."""
        try:
            try:
                yield from self._upstream(
                    request, key, marker, stale, "stale", self.clock(), client=False
                )
            except Exception:
                yield from self._release(key + "#lease", token)
                raise
            yield from self._release(key + "#lease", token)
        finally:
            with self._lock:
                self._refreshing.discard(key)

    def _release(self, lease_key: str, token: str) -> Flow:
        """Drop a lease of a shared store if it is still this caller's."""
        if not self._native and (yield ("get", lease_key)) == token:
            yield ("delete", lease_key)

    def _fetch(
        self,
        request: Request,
        key: str,
        marker: VaryMarker | None,
        stale: Stored | None,
        kind: str,
        now: float,
    ) -> Flow:
        """Get the response from the app, coalesced with the other requests for
        ``key`` in this process (and in others, by a lease, when the store is shared)."""
        self._count("misses")
        if request.method == "HEAD":
            yield ("forward", f"scalekit; fwd={kind}", None)
            return None
        if not self.coalesce:
            return (yield from self._upstream(request, key, marker, stale, kind, now))
        for rounds in range(_ROUNDS):
            with self._lock:
                joined = self._flights.get(key)
                leads = joined is None
                flight = self._flights[key] = _Flight() if joined is None else joined
            if leads:
                if rounds:  # a later leader may have stored it already
                    try:
                        found = yield from self._lookup(request, key)
                    except BaseException:  # cancelled: its joiners must not wait forever
                        self._end_flight(key, flight)
                        raise
                    if found is not None and found is not stale:
                        later = self.clock()
                        if self._reusable(found, request, later):
                            flight.stored, flight.failed = found, False  # for its joiners
                            self._end_flight(key, flight)
                            self._count("coalesced")
                            return self._serve(
                                request, found, later, "scalekit; hit; detail=coalesced"
                            )
                break
            yield ("join", flight.done)
            got = flight.stored
            if got is not None and self._reusable(got, request, self.clock()):
                self._count("coalesced")
                return self._serve(request, got, self.clock(), "scalekit; hit; detail=coalesced")
            if flight.failed and self._stale_if_error(request, stale):
                self._count("stale_hits")  # the error is the leader's: no need to repeat it
                return self._serve_stale(request, stale)  # type: ignore[arg-type]
            if not flight.failed or rounds == _ROUNDS - 1:
                # not storable (or failing again): each calls the app, at once
                return (yield from self._upstream(request, key, marker, stale, kind, now))
        try:
            if self._native:
                return (yield from self._upstream(request, key, marker, stale, kind, now, flight))
            return (yield from self._leased(request, key, marker, stale, kind, now, flight))
        finally:
            self._end_flight(key, flight)

    def _end_flight(self, key: str, flight: _Flight) -> None:
        """Let the requests that joined ``flight`` go on (twice is harmless)."""
        with self._lock:
            if self._flights.get(key) is flight:
                del self._flights[key]
        flight.done.set()

    def _streaming(self, key: str, flight: _Flight) -> Callable[[], Flow]:
        """What a shell runs when the leader's response streams through (it will
        not be stored): the joiners go and call the app themselves now, rather
        than wait for the end of a stream, and the lease is dropped."""

        def release() -> Flow:
            flight.failed = False
            self._end_flight(key, flight)
            lease, flight.lease = flight.lease, None
            if lease is not None and (yield ("get", lease[0])) == lease[1]:
                yield ("delete", lease[0])

        return release

    def _reusable(self, stored: Stored, request: Request, now: float) -> bool:
        """Whether a response another request just fetched can answer this one:
        fresh, and stored for this request's values of its ``Vary`` fields."""
        if stored.remaining(now) <= 0 or stored.revalidate:
            return False
        headers = request.headers
        return all(
            _same(headers.get(name), value)
            for name, value in zip(stored.vary, stored.vary_values, strict=True)
        )

    def _lookup(self, request: Request, key: str) -> Generator[Step, Any, Stored | None]:
        """The response stored for ``request`` (its variant), if any."""
        found = self._decode((yield ("get", key)))
        if isinstance(found, VaryMarker):
            values = [request.headers.get(name) for name in found.names]
            found = self._decode((yield ("get", variant_key(key, found.generation, values))))
        return found if isinstance(found, Stored) else None

    def _leased(
        self,
        request: Request,
        key: str,
        marker: VaryMarker | None,
        stale: Stored | None,
        kind: str,
        now: float,
        flight: _Flight,
    ) -> Flow:
        """The leader's fetch across processes: whoever adds the lease fetches;
        the others poll the store for what it stores, until the lease goes."""
        lease_key, token = key + "#lease", _token()
        taken = yield ("add", lease_key, token, self.lease)
        if taken:
            flight.lease = (lease_key, token)
        waited, delay = 0.0, 0.005
        while not taken and waited < self.lease:
            yield ("sleep", delay)
            waited += delay
            delay = min(delay * 2, 0.1)
            found = yield from self._lookup(request, key)
            if found is not None and found is not stale:
                later = self.clock()
                if self._reusable(found, request, later):
                    flight.stored = found
                    self._count("coalesced")
                    return self._serve(request, found, later, "scalekit; hit; detail=coalesced")
            if (yield ("get", lease_key)) is None:
                break  # the holder ended without storing a usable response, or died
        try:
            return (yield from self._upstream(request, key, marker, stale, kind, now, flight))
        finally:
            if flight.lease is not None:
                yield from self._release(lease_key, token)

    def _upstream(
        self,
        request: Request,
        key: str,
        marker: VaryMarker | None,
        stale: Stored | None,
        kind: str,
        now: float,
        flight: _Flight | None = None,
        *,
        client: bool = True,
    ) -> Flow:
        """Call the app (conditionally, with ``stale``'s validators), store what
        may be stored, and reply; a 304 updates ``stale``; an error or a 5xx
        serves ``stale`` within its stale-if-error window."""
        changes: dict[str, str | None] = dict.fromkeys(_CONDITIONALS)
        if stale is not None:
            if stale.etag is not None:
                changes["if-none-match"] = stale.etag
            if stale.last_modified is not None:
                changes["if-modified-since"] = stale.last_modified
        status = f"scalekit; fwd={kind}"
        epoch = self._purge_epoch
        # other processes' purges: the token before the call, checked before storing
        purges = _MISSING if self._native else (yield ("get", self.purges_key()))
        try:
            release = None if flight is None else self._streaming(key, flight)
            response = yield ("call", changes, status, release)
        except Exception:
            if self._stale_if_error(request, stale):
                self._count("stale_hits")
                return self._serve_stale(request, stale)  # type: ignore[arg-type]
            raise
        if response is STREAMED:
            return None
        if flight is not None and response.status < 500:
            flight.failed = False
        if (
            response.status == 304
            and stale is not None
            and stale.validators()
            and not _selects(stale, response.headers)
        ):
            # RFC 9111 4.3.4: a 304 for another representation updates nothing;
            # ask again without conditions for the response to send
            stale = None
            response = yield ("call", dict.fromkeys(_CONDITIONALS), status, release)
            if response is STREAMED:
                return None
        received = self.clock()
        authorized = "authorization" in request.headers
        response_headers = _dated(response.headers, received)
        new: Stored | None
        if response.status == 304 and stale is not None and stale.validators():
            self._count("revalidations")
            merged = update_from_304(stale, response_headers)
            kept = merged
            if stale.surrogate is not None and not any(
                name.lower() == "surrogate-control" for name, _ in merged
            ):
                kept = [*merged, ("Surrogate-Control", stale.surrogate)]
            new = store_policy(
                self.policy,
                stale.status,
                kept,
                stale.body,
                request_time=now,
                response_time=received,
                authorized=authorized,
            )
            tags = _tags(response.headers)
            tag_names = list(stale.tags) if tags is None else tags
            reply_status, reply_headers, body = stale.status, merged, stale.body
        else:
            if response.status >= 500 and self._stale_if_error(request, stale):
                self._count("stale_hits")
                return self._serve_stale(request, stale)  # type: ignore[arg-type]
            new = None
            if len(response.body) <= self.max_body and _complete(response_headers, response.body):
                new = store_policy(
                    self.policy,
                    response.status,
                    response_headers,
                    response.body,
                    request_time=now,
                    response_time=received,
                    authorized=authorized,
                )
            tag_names = _tags(response.headers) or []
            reply_status, reply_headers, body = response.status, response_headers, response.body
        if kind == "stale" or kind == "request":
            status += f"; fwd-status={response.status}"
        if new is not None and (
            (flight is not None and flight.invalidated)
            or (tag_names and epoch != self._purge_epoch)
        ):
            new = None  # changed or purged while it was fetched: it may predate that
        if request.method == "HEAD":
            new = None  # its body is not the GET's
        if new is not None:
            stored_ok = yield from self._store(
                request, key, marker, new, tag_names, received, purges
            )
            if stored_ok:
                status += "; stored"
                if flight is not None:
                    flight.stored = new
        elif stale is not None and response.status < 500:
            yield ("delete", key)  # the URI's response may no longer be stored: forget the old one
        if not client:
            return None
        headers = request.headers
        if (
            new is not None
            and new.status == 200
            and headers.any_of(_CONDITIONAL)
            and _not_modified(headers, new)
        ):
            self._count("not_modified")
            kept = [(n, v) for n, v in new.headers if n.lower() in _304_FIELDS]
            return Reply(304, None, kept, b"", [("Cache-Status", status)])
        sent = [(n, v) for n, v in reply_headers if n.lower() not in _NOT_SENT]
        if request.method == "HEAD":
            body = b""
        return Reply(reply_status, None, sent, body, [("Cache-Status", status)])

    def _stale_if_error(self, request: Request, stale: Stored | None) -> bool:
        if stale is None or stale.no_stale or stale.revalidate or request.started:
            return False
        window = stale.stale_if_error
        field = request.headers.get("cache-control")
        if field is not None:  # RFC 5861 4: a request may allow it too
            window = max(window, float(seconds(directives(field).get("stale-if-error")) or 0))
        return 0 < window >= -stale.remaining(self.clock())

    def _serve_stale(self, request: Request, stale: Stored) -> Reply:
        now = self.clock()
        remaining = stale.remaining(now)
        return self._serve(
            request, stale, now, f"scalekit; hit; ttl={math.floor(remaining)}; detail=stale"
        )

    def _store(
        self,
        request: Request,
        key: str,
        marker: VaryMarker | None,
        new: Stored,
        tag_names: list[str],
        now: float,
        purges: Any = _MISSING,
    ) -> Generator[Step, Any, bool]:
        """Write ``new`` (and its ``Vary`` marker); whether it was worth storing.
        A tagged response is not stored if a purge renewed the ``purges`` token
        read before its call (see :meth:`purge_flow`)."""
        remaining = new.remaining(now)
        ttl = max(remaining, 0.0) + max(new.stale_while, new.stale_if_error)
        if new.validators():
            ttl += min(max(new.lifetime, 60.0), 86400.0)
        if ttl <= 0:
            return False
        ttl = min(ttl, _MAX_STORE_TTL)
        if tag_names:
            keys = [self.tag_key(tag) for tag in tag_names]
            versions = yield ("get_many", keys)
            tags = {}
            for tag, tag_key in zip(tag_names, keys, strict=True):
                version = versions.get(tag_key)
                if not isinstance(version, str):
                    version = _token()
                    if not (yield ("add", tag_key, version, None)):
                        version = yield ("get", tag_key)
                        if not isinstance(version, str):
                            return False
                tags[tag] = version
            if purges is not _MISSING and (yield ("get", self.purges_key())) != purges:
                return False  # a purge somewhere while it was fetched: it may predate it
            new.tags = tags
        target = key
        if new.vary:
            generation = (
                marker.generation if marker is not None and marker.names == new.vary else _token()
            )
            values = tuple(request.headers.get(name) for name in new.vary)
            new.vary_values = values
            vary = VaryMarker(new.vary, generation)
            vary.key_size = len(key)
            yield ("set", key, self._value(vary), ttl)
            target = variant_key(key, generation, values)
        new.key_size = len(target)
        yield ("set", target, self._value(new), ttl)
        self._count("stores")
        return True

    def _after_unsafe(self, request: Request) -> Callable[[int, list[tuple[str, str]]], Flow]:
        """What runs when an unsafe method's response starts: a 2xx or 3xx
        invalidates the target URI and the same-origin ``Location`` and
        ``Content-Location`` (RFC 9111 4.4)."""

        def on_start(status: int, headers: list[tuple[str, str]]) -> Flow:
            if not 200 <= status < 400:
                return
            key = self.key_of(request)
            if key is None:
                return
            keys = [key]
            for name, value in headers:
                if name.lower() in ("location", "content-location"):
                    other = self._same_origin_key(request, value)
                    if other is not None and other not in keys:
                        keys.append(other)
            with self._lock:
                for target in keys:
                    flight = self._flights.get(target)
                    if flight is not None:
                        flight.invalidated = True
            for target in keys:
                yield ("delete", target)

        return on_start

    def _same_origin_key(self, request: Request, uri: str) -> str | None:
        """The primary key of ``uri`` (resolved against the request's URI, RFC
        3986 5.2) when it has the request's origin; None otherwise."""
        base = f"{request.scheme}://{request.host}{request.target or '/'}"
        try:
            parts = urlsplit(urljoin(base, uri.strip()))
        except ValueError:
            return None
        scheme = parts.scheme.lower()
        if scheme != request.scheme or normal_host(parts.netloc, scheme) != normal_host(
            request.host, request.scheme
        ):
            return None
        raw = parts.path.encode("utf-8", "surrogatepass") or b"/"
        return self.key_of(
            Request(
                "GET",
                scheme,
                parts.netloc,
                unquote(parts.path) or "/",
                parts.query,
                DictHeaders(),
                normal_path(raw),
            )
        )


_NOT_SENT = frozenset({"surrogate-key", "surrogate-control", "cache-status"})


def _dot_segments(path: str) -> bool:
    """Whether ``path`` has a ``.`` or ``..`` segment."""
    return any(segment in (".", "..") for segment in path.split("/"))


def _selects(stored: Stored, headers: list[tuple[str, str]]) -> bool:
    """Whether a 304 with ``headers`` is about ``stored`` (RFC 9111 4.3.4): its
    strong ETag, else its Last-Modified, is the stored one's; one with neither
    is about the only response stored."""
    etag = last_modified = None
    for name, value in headers:
        lower = name.lower()
        if lower == "etag":
            etag = value.strip()
        elif lower == "last-modified":
            last_modified = value.strip()
    if etag is not None and not etag.startswith("W/"):
        return stored.etag is not None and stored.etag.strip() == etag
    if last_modified is not None and stored.last_modified is not None:
        return http_date(last_modified) == http_date(stored.last_modified)
    return True


def _dated(headers: list[tuple[str, str]], received: float) -> list[tuple[str, str]]:
    """``headers`` with a ``Date`` of when they were received, if they had none
    (RFC 9110 6.6.1: a cache appends one)."""
    for name, _ in headers:
        if name.lower() == "date":
            return headers
    return [*headers, ("Date", format_http_date(received))]


def _complete(headers: list[tuple[str, str]], body: bytes) -> bool:
    """Whether ``body`` has the ``Content-Length`` announced (when one was):
    a truncated response is never stored (RFC 9111 3.3)."""
    for name, value in headers:
        if name.lower() == "content-length":
            length = value.strip()
            return length.isdigit() and int(length) == len(body)
    return True


def _bare(host: str) -> str:
    """``host`` without its port."""
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if ":" in host else host


_ROUNDS = 2  # flights a request joins at most: one whose leader failed, then one more
_BYPASSING = frozenset({"range", "cookie", "authorization"})
_CONDITIONAL = frozenset({"if-none-match", "if-modified-since"})


def _pragma(headers: Headers) -> dict[str, str | None]:
    """``Pragma: no-cache`` as a request's no-cache, when it has no ``Cache-Control``."""
    pragma = headers.get("pragma")
    if pragma is not None and "no-cache" in directives(pragma):
        return {"no-cache": None}
    return {}


def _same(value: str | None, stored: str | None) -> bool:
    from scalekit.web._keys import normal_value

    return normal_value(value) == normal_value(stored)


def _token() -> str:
    return f"{random.getrandbits(64):016x}"


def _tags(headers: list[tuple[str, str]]) -> list[str] | None:
    found = None
    for name, value in headers:
        if name.lower() == "surrogate-key":
            found = (found or []) + [tag for tag in value.split() if tag]
    return found


def _acceptable(
    stored: Stored, control: Mapping[str, str | None], now: float, remaining: float, fresh: bool
) -> tuple[bool, bool]:
    """Whether the request's directives (RFC 9111 5.2.1) let ``stored`` answer it,
    and whether it counts as fresh (``max-stale`` lets a stale one count)."""
    if "max-age" in control:
        limit = seconds(control["max-age"])
        if limit is None or current_age(stored, now) > limit:
            return False, fresh
    if "min-fresh" in control:
        limit = seconds(control["min-fresh"])
        if limit is None or remaining < limit:
            return False, fresh
    if not fresh and "max-stale" in control and not stored.no_stale and not stored.revalidate:
        limit = seconds(control["max-stale"])
        if control["max-stale"] is None or (limit is not None and -remaining <= limit):
            return True, True
    return True, fresh


def _not_modified(headers: Headers, stored: Stored) -> bool:
    """Whether the request's ``If-None-Match`` (or, without one,
    ``If-Modified-Since``) says the client holds ``stored`` (RFC 9110 13.2.2)."""
    condition = headers.get("if-none-match")
    if condition is not None:
        return weak_match(condition, stored.etag)
    since = http_date(headers.get("if-modified-since"))
    if since is None:
        return False
    modified = http_date(stored.last_modified)
    if modified is None:
        for name, value in stored.headers:
            if name.lower() == "date":
                modified = http_date(value)
        if modified is None:
            modified = stored.response_time
    return modified <= since


def _is_async(store: Any) -> bool:
    import inspect

    return inspect.iscoroutinefunction(getattr(store, "get", None))
