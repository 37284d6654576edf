"""WSGICacheMiddleware: the WSGI shell of :class:`~scalekit.web.HttpCache`.

It builds the cache's :class:`~scalekit.web._cache.Request` from the environ and
drives the request's flow with direct calls: the store (a sync one), the app
(its body buffered up to ``max_body``, then streamed through), a wait on another
thread's flight, and background refreshes on daemon threads.
"""

from __future__ import annotations

import contextlib
import io
import threading
from collections.abc import Callable, Iterable, Iterator
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from scalekit._flow import drive
from scalekit._validate import check_callable, type_name
from scalekit.errors import ArgumentTypeError, ConfigurationError
from scalekit.web._cache import (
    STORE_STEPS,
    STREAMED,
    Flow,
    HttpCache,
    Request,
    Response,
    Step,
    store_step,
)
from scalekit.web._keys import encoded_path

if TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["WSGICacheMiddleware"]

_STRIPPED = frozenset({"surrogate-key", "surrogate-control", "cache-status"})
_SPECIAL = {"content-type": "CONTENT_TYPE", "content-length": "CONTENT_LENGTH"}
_environ_names: dict[str, str] = {}
_sets: dict[frozenset[str], frozenset[str]] = {}


def _environ_name(name: str) -> str:
    found = _environ_names.get(name)
    if found is None:
        found = _SPECIAL.get(name) or "HTTP_" + name.upper().replace("-", "_")
        if len(_environ_names) < 4096:
            _environ_names[name] = found
    return found


class _EnvironHeaders:
    """A request's header fields read from a WSGI environ by lower-case name.

    A request the server authenticated (``REMOTE_USER`` set: Apache's or
    mod_wsgi's auth, which need not pass ``Authorization`` on) counts as
    carrying ``Authorization``: its page may be the user's.
    """

    __slots__ = ("_environ",)

    def __init__(self, environ: WSGIEnvironment) -> None:
        self._environ = environ

    def get(self, name: str, default: None = None, /) -> str | None:
        value = self._environ.get(_environ_name(name))
        return value if isinstance(value, str) else None

    def any_of(self, names: frozenset[str], /) -> bool:
        keys = _sets.get(names)
        if keys is None:
            keys = frozenset(_environ_name(name) for name in names)
            if "authorization" in names:
                keys |= {"REMOTE_USER"}
            _sets[names] = keys
        return not keys.isdisjoint(self._environ)

    def __contains__(self, name: object) -> bool:
        if name == "authorization" and "REMOTE_USER" in self._environ:
            return True
        return isinstance(name, str) and _environ_name(name) in self._environ


def _request(environ: WSGIEnvironment) -> Request:
    scheme = environ.get("wsgi.url_scheme", "http")
    host = environ.get("HTTP_HOST")
    if not host:
        host = f"{environ.get('SERVER_NAME', '')}:{environ.get('SERVER_PORT', '')}"
    path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    target: str | None
    if path.isascii():
        target = encoded_path(path.encode("ascii") or b"/")
    else:
        # PEP 3333 strings are bytes as latin-1; paths are UTF-8 on the wire. The
        # key holds the bytes (b"/\xe9" is not "/é"); a string that is not
        # latin-1 (a lone surrogate) breaks PEP 3333: not cached
        try:
            raw = path.encode("latin-1")
        except UnicodeEncodeError:
            target = None
        else:
            target = encoded_path(raw)
            with contextlib.suppress(UnicodeDecodeError):
                path = raw.decode("utf-8")
    return Request(
        environ.get("REQUEST_METHOD", "GET"),
        scheme,
        host,
        path or "/",
        environ.get("QUERY_STRING", ""),
        _EnvironHeaders(environ),
        target,
    )


def _changed_environ(environ: WSGIEnvironment, changes: dict[str, str | None]) -> WSGIEnvironment:
    environ = dict(environ)
    for name, value in changes.items():
        key = _environ_name(name)
        if value is None:
            environ.pop(key, None)
        else:
            environ[key] = value
    return environ


def _code(status: str) -> int:
    """The status code of a WSGI status line (``"200 OK"``)."""
    return int(status.split(None, 1)[0])


_status_lines: dict[int, str] = {}


def _status_line(status: int) -> str:
    """The WSGI status line of a code, remembered: an ``HTTPStatus`` lookup cost
    about as much as the rest of a cached hit."""
    line = _status_lines.get(status)
    if line is None:
        try:
            line = f"{status} {HTTPStatus(status).phrase}"
        except ValueError:
            line = f"{status} Unknown"
        if len(_status_lines) < 1024:
            _status_lines[status] = line
    return line


def _with_status(headers: list[tuple[str, str]], cache_status: str) -> list[tuple[str, str]]:
    kept = [(name, value) for name, value in headers if name.lower() not in _STRIPPED]
    kept.append(("Cache-Status", cache_status))
    return kept


class _Passing:
    """The app's body passed through after what was read of it, closed with it."""

    def __init__(self, first: list[bytes], rest: Iterator[bytes], source: Iterable[bytes]) -> None:
        self._first = first
        self._rest = rest
        self._source = source

    def __iter__(self) -> Iterator[bytes]:
        yield from self._first
        self._first = []
        yield from self._rest

    def close(self) -> None:
        close = getattr(self._source, "close", None)
        if close is not None:
            close()


class WSGICacheMiddleware:
    """PEP 3333 middleware that serves responses from ``cache``
    (:class:`~scalekit.web.HttpCache`, over a sync store).

    The rules and headers are :class:`~scalekit.web.CacheMiddleware`'s. It is
    thread-safe: concurrent misses of one key in threads of one process make one
    app call (the others wait for it); a stale-while-revalidate refresh runs on a
    daemon thread, with an empty body and a copy of the environ.

    >>> from scalekit.testing import FakeClock
    >>> from scalekit.web import HttpCache, WSGICacheMiddleware
    >>> def app(environ, start_response):
    ...     start_response("200 OK", [("Cache-Control", "max-age=60")])
    ...     return [b"hello"]
    >>> cached = WSGICacheMiddleware(app, HttpCache(clock=FakeClock(1_700_000_000)))
    >>> def get(path):
    ...     environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "HTTP_HOST": "example.com",
    ...                "wsgi.url_scheme": "http", "QUERY_STRING": ""}
    ...     started = []
    ...     body = b"".join(cached(environ, lambda status, headers: started.append(headers)))
    ...     return dict(started[0])["Cache-Status"], body
    >>> get("/a")
    ('scalekit; fwd=uri-miss; stored', b'hello')
    >>> get("/a")
    ('scalekit; hit; ttl=60', b'hello')
    """

    def __init__(self, app: WSGIApplication, cache: HttpCache) -> None:
        check_callable(app, "app")
        if not isinstance(cache, HttpCache):
            raise ArgumentTypeError(f"cache must be an HttpCache, got {type_name(cache)}")
        if cache.asynchronous:
            raise ConfigurationError("a WSGI app needs an HttpCache over a sync store")
        self.app = app
        self.cache = cache

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        request = _request(environ)
        passing: list[Iterable[bytes]] = []
        reply = self._drive(self.cache.handle(request), request, environ, start_response, passing)
        if reply is None:
            return passing[0] if passing else []
        stored = reply.stored
        headers = [*(stored.headers if stored is not None else reply.headers or ()), *reply.extra]
        start_response(_status_line(reply.status), headers)
        return [reply.body]

    def _drive(
        self,
        flow: Flow,
        request: Request | None,
        environ: WSGIEnvironment,
        start_response: StartResponse | None,
        passing: list[Iterable[bytes]],
    ) -> Any:
        """Run ``flow`` with :func:`~scalekit._flow.drive` and :meth:`_perform`."""
        context = (request, environ, start_response, passing)
        return drive(flow, self._perform, BaseException, context)

    def _perform(
        self,
        step: Step,
        request: Request | None,
        environ: WSGIEnvironment,
        start_response: StartResponse | None,
        passing: list[Iterable[bytes]],
    ) -> Any:
        """Do one step of a flow. A store call that raises an ``Exception`` answers
        the cache's fallback (``store_failed``); whatever else a step raises, the
        driver throws into the flow, so its cleanups (its flight) run."""
        name = step[0]
        if name in STORE_STEPS:
            cache = self.cache
            try:
                return store_step(cache.store, step)
            except Exception as exc:
                return cache.store_failed(exc, step)
        if name == "call":
            assert request is not None
            return self._call(request, environ, start_response, step[1], step[2], step[3], passing)
        if name == "forward":
            assert start_response is not None
            passing.append(self._forward(environ, start_response, step[1], step[2]))
        elif name == "join":
            step[1].wait()
        elif name == "sleep":
            threading.Event().wait(step[1])
        elif name == "refresh":
            self._background(step[1], request, environ)
        else:  # pragma: no cover - the core yields no other step
            raise AssertionError(f"unknown step {name!r}")
        return None

    def _call(
        self,
        request: Request,
        environ: WSGIEnvironment,
        start_response: StartResponse | None,
        changes: dict[str, str | None],
        cache_status: str,
        release: Any,
        passing: list[Iterable[bytes]],
    ) -> Any:
        limit = self.cache.max_body
        started: list[Any] = []
        sent = False

        def capture(
            status: str, headers: list[tuple[str, str]], exc_info: OptExcInfo | None = None
        ) -> Callable[[bytes], object]:
            # PEP 3333: with exc_info, headers not sent yet are replaced (they are
            # held here until the body ends); without, a second call is an error
            if exc_info is not None:
                if sent:
                    raise exc_info[1].with_traceback(exc_info[2])  # type: ignore[union-attr]
            elif started:
                raise RuntimeError("the app called start_response twice without exc_info")
            started[:] = [status, headers]
            return written.append

        written: list[bytes] = []
        result: Iterable[bytes] | None = self.app(_changed_environ(environ, changes), capture)
        assert result is not None
        parts = written
        size = sum(len(part) for part in parts)
        iterator = iter(result)
        decided = False
        try:
            while True:
                if not decided and started:
                    decided = True
                    if not self.cache.buffers(_code(started[0]), started[1]):
                        size = limit + 1  # not storable: pass it through now
                if size > limit:
                    if start_response is None:  # a background refresh: store nothing
                        return STREAMED
                    request.started = sent = True
                    if release is not None:
                        self._drive(release(), None, {}, None, [])
                    status, headers = started
                    start_response(status, _with_status(headers, cache_status))
                    passing.append(_Passing(parts, iterator, result))
                    result = None  # closed by the server, through _Passing
                    return STREAMED
                try:
                    chunk = next(iterator)
                except StopIteration:
                    break
                parts.append(chunk)
                size += len(chunk)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        if not started:
            raise RuntimeError("the app returned without calling start_response")
        status, headers = started
        return Response(_code(status), list(headers), b"".join(parts))

    def _forward(
        self,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        cache_status: str,
        on_start: Any,
    ) -> Iterable[bytes]:
        def passing(
            status: str, headers: list[tuple[str, str]], exc_info: OptExcInfo | None = None
        ) -> Callable[[bytes], object]:
            if on_start is not None:
                self._drive(
                    on_start(int(status.split(None, 1)[0]), list(headers)), None, {}, None, []
                )
            if exc_info is None:
                return start_response(status, _with_status(headers, cache_status))
            return start_response(status, _with_status(headers, cache_status), exc_info)

        return self.app(environ, passing)

    def _background(self, flow: Flow, request: Request | None, environ: WSGIEnvironment) -> None:
        copy = dict(environ)
        copy["wsgi.input"] = io.BytesIO(b"")
        copy["CONTENT_LENGTH"] = "0"

        def refresh() -> None:
            try:
                self._drive(flow, request, copy, None, [])
            except Exception as exc:
                self.cache.refresh_failed(exc)

        threading.Thread(target=refresh, name="scalekit-web-refresh", daemon=True).start()
