"""Scripted ASGI and WSGI apps and in-process drivers for the web cache tests.

A test scripts what the app answers (:class:`Reply`, a list of them, or a function of
the :class:`Request`), then sends requests through ``CacheMiddleware(app, cache)`` or
``WSGICacheMiddleware(app, cache)`` with a fake ``receive``/``send`` or
``environ``/``start_response``. Both drivers have the same methods, so one test runs on
both shells: ``request`` (one request), ``many`` (concurrent requests: ``asyncio.gather``
on ASGI, a thread pool on WSGI) and ``wait_for`` (poll a condition while background work
runs). The app counts its calls and records the requests it received.

Smaller tests use :class:`Origin` (an app, ASGI and WSGI, answering each path with a
route) and the one-shot ``asgi_get`` / ``asgi_request`` / ``wsgi_get``, which build
the same scope and environ as the drivers and return a :class:`Result`.
"""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any

import pytest

from scalekit.testing import FakeClock

__all__ = [
    "HOST",
    "START",
    "AsgiDriver",
    "Driver",
    "Make",
    "Origin",
    "Reply",
    "Request",
    "Response",
    "Result",
    "ScriptedApp",
    "WsgiDriver",
    "asgi_get",
    "asgi_request",
    "asgi_scope",
    "d_fixture",
    "http_date",
    "make_driver",
    "make_fixture",
    "reply",
    "wsgi_environ",
    "wsgi_get",
]

START = 1_700_000_000
HOST = "example.com"
TIMEOUT = 5.0

Make = Callable[..., "Driver"]
Headers = Mapping[str, str] | Sequence[tuple[str, str]]


def http_date(timestamp: float) -> str:
    """An IMF-fixdate for ``timestamp`` (Date, Expires, Last-Modified)."""
    return formatdate(timestamp, usegmt=True)


def _pairs(headers: Headers | None) -> list[tuple[str, str]]:
    if headers is None:
        return []
    if isinstance(headers, Mapping):
        return [(str(k), str(v)) for k, v in headers.items()]
    return [(str(k), str(v)) for k, v in headers]


def _get(pairs: Iterable[tuple[str, str]], name: str) -> str | None:
    values = [v for k, v in pairs if k.lower() == name.lower()]
    return ", ".join(values) if values else None


@dataclass
class Request:
    """What the app received."""

    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        """The field's values joined by ", ", or None when absent."""
        return _get(self.headers, name)


@dataclass
class Reply:
    """What the app answers: status, headers, body chunks; optional failures and delays.

    ``raises`` is raised before the response starts; ``fail_after`` raises after that many
    body chunks were sent; ``takes`` advances the fake clock by that many seconds while the
    app "renders".
    """

    status: int = 200
    headers: Headers = ()
    body: bytes | Sequence[bytes] = b"body"
    raises: BaseException | None = None
    fail_after: int | None = None
    takes: float = 0.0

    def chunks(self) -> list[bytes]:
        return [self.body] if isinstance(self.body, bytes) else list(self.body)


Script = Reply | Sequence[Reply] | Callable[[Request], Reply]


class AppFailure(Exception):
    """Raised by the scripted app when a Reply asks for it."""


class ScriptedApp:
    """One scripted app with an ASGI face (:meth:`asgi`) and a WSGI face (:meth:`wsgi`)."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.requests: list[Request] = []
        self.render_seconds = 0.0
        self.yields = 0
        self._script: Script = Reply()
        self._lock = threading.Lock()
        self._gate = threading.Event()
        self._gate.set()

    # -- scripting -------------------------------------------------------------------

    def set(self, script: Script) -> None:
        """Answer every call with this Reply, these Replies in turn (the last repeats), or
        this function's result."""
        self._script = list(script) if isinstance(script, (list, tuple)) else script

    def hold(self) -> None:
        """Make the next app calls wait (before answering) until :meth:`release`."""
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    @property
    def calls(self) -> int:
        return len(self.requests)

    @property
    def last(self) -> Request:
        return self.requests[-1]

    def _answer(self, request: Request) -> Reply:
        with self._lock:
            self.requests.append(request)
            script = self._script
            if isinstance(script, list):
                reply = script.pop(0) if len(script) > 1 else script[0]
            elif isinstance(script, Reply):
                reply = script
            else:
                reply = None
        if reply is None:
            assert callable(script)
            reply = script(request)
        if reply.takes:
            self.clock.advance(reply.takes)
        return reply

    # -- ASGI ------------------------------------------------------------------------

    async def asgi(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http", scope["type"]
        body = b""
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        request = Request(
            scope["method"], scope["path"], scope["query_string"].decode("latin-1"), headers, body
        )
        reply = self._answer(request)
        if not self._gate.is_set():
            opened = await asyncio.to_thread(self._gate.wait, TIMEOUT)
            if not opened:
                raise AppFailure("the app was held and never released")
        for _ in range(self.yields):
            await asyncio.sleep(0)
        if self.render_seconds:
            await asyncio.sleep(self.render_seconds)
        if reply.raises is not None:
            raise reply.raises
        await send(
            {
                "type": "http.response.start",
                "status": reply.status,
                "headers": [
                    (k.lower().encode("latin-1"), v.encode("latin-1"))
                    for k, v in _pairs(reply.headers)
                ],
            }
        )
        chunks = reply.chunks()
        for index, chunk in enumerate(chunks):
            if reply.fail_after is not None and index >= reply.fail_after:
                raise AppFailure("the app failed in the middle of the body")
            await send(
                {"type": "http.response.body", "body": chunk, "more_body": index < len(chunks) - 1}
            )
        if not chunks:
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    # -- WSGI ------------------------------------------------------------------------

    def wsgi(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        headers = []
        for key, value in environ.items():
            if key.startswith("HTTP_"):
                headers.append((key[5:].replace("_", "-").lower(), value))
            elif key in ("CONTENT_TYPE", "CONTENT_LENGTH") and value:
                headers.append((key.replace("_", "-").lower(), value))
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        request = Request(
            environ["REQUEST_METHOD"],
            environ["PATH_INFO"],
            environ.get("QUERY_STRING", ""),
            headers,
            body,
        )
        reply = self._answer(request)
        if not self._gate.wait(TIMEOUT):
            raise AppFailure("the app was held and never released")
        if self.render_seconds:
            time.sleep(self.render_seconds)
        if reply.raises is not None:
            raise reply.raises
        start_response(f"{reply.status} X", _pairs(reply.headers))
        return self._wsgi_body(reply)

    @staticmethod
    def _wsgi_body(reply: Reply) -> Iterator[bytes]:
        for index, chunk in enumerate(reply.chunks()):
            if reply.fail_after is not None and index >= reply.fail_after:
                raise AppFailure("the app failed in the middle of the body")
            yield chunk


@dataclass
class Response:
    """What the client received (status 500 with ``error`` set when the middleware raised)."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    error: BaseException | None = None
    complete: bool = True

    def header(self, name: str) -> str | None:
        return _get(self.headers, name)

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    @property
    def age(self) -> int | None:
        value = self.header("age")
        return None if value is None else int(value)

    @property
    def cache_status(self) -> str:
        """The last (closest to the client) member of Cache-Status: this cache's."""
        values = self.all("cache-status")
        assert values, f"no Cache-Status in {self.headers}"
        return values[-1].split(",")[-1].strip()

    @property
    def cs(self) -> dict[str, Any]:
        """This cache's Cache-Status parameters: {"hit": True, "ttl": 5, ...}."""
        name, *params = (part.strip() for part in self.cache_status.split(";"))
        assert name == "scalekit", self.cache_status
        parsed: dict[str, Any] = {}
        for param in params:
            key, sep, value = param.partition("=")
            if not sep:
                parsed[key] = True
            elif key in ("ttl", "fwd-status"):
                parsed[key] = int(value)
            else:
                parsed[key] = value.strip('"')
        return parsed


@dataclass
class Driver:
    """The common face of both drivers."""

    kind: str
    cache: Any
    clock: FakeClock
    app: ScriptedApp
    middleware: Any = field(repr=False)

    def request(
        self,
        method: str = "GET",
        path: str = "/",
        headers: Headers | None = None,
        *,
        query: str | None = None,
        body: bytes = b"",
        host: str = HOST,
        scheme: str = "http",
    ) -> Response:
        raise NotImplementedError

    def get(self, path: str = "/", headers: Headers | None = None, **kwargs: Any) -> Response:
        return self.request("GET", path, headers, **kwargs)

    def many(self, requests: Sequence[Mapping[str, Any]]) -> list[Response]:
        """Send these requests (keyword arguments of :meth:`request`) concurrently."""
        raise NotImplementedError

    def wait_for(self, condition: Callable[[], bool], timeout: float = TIMEOUT) -> None:
        """Let background work run until ``condition()`` holds (fail after ``timeout``)."""
        raise NotImplementedError

    def close(self) -> None:
        pass


def _split(path: str, query: str | None) -> tuple[str, str]:
    """``path`` and ``query``; without an explicit query, the path's ``?`` starts it."""
    if query is None:
        path, _, query = path.partition("?")
    return path, query


def asgi_scope(
    method: str, path: str, headers: Headers | None, query: str | None, host: str, scheme: str
) -> dict[str, Any]:
    """The ASGI HTTP scope of one request, as a server sends it."""
    path, query = _split(path, query)
    pairs = [("host", host), *_pairs(headers)]
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": scheme,
        "path": path,
        "raw_path": path.encode("latin-1"),
        "query_string": query.encode("latin-1"),
        "root_path": "",
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in pairs],
        "server": (host, 443 if scheme == "https" else 80),
        "client": ("127.0.0.1", 50000),
    }


def wsgi_environ(
    method: str,
    path: str,
    headers: Headers | None,
    query: str | None,
    host: str,
    scheme: str,
    body: bytes = b"",
) -> dict[str, Any]:
    """The PEP 3333 environ of one request, as a server builds it (a repeated field's
    values joined by ", ")."""
    path, query = _split(path, query)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "SERVER_NAME": host.partition(":")[0],
        "SERVER_PORT": "443" if scheme == "https" else "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": host,
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scheme,
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": io.StringIO(),
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    if body:
        environ["CONTENT_LENGTH"] = str(len(body))
    for name, value in _pairs(headers):
        key = name.upper().replace("-", "_")
        if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            environ[key] = value
        else:
            key = "HTTP_" + key
            environ[key] = f"{environ[key]}, {value}" if key in environ else value
    return environ


class AsgiDriver(Driver):
    """Drives ``CacheMiddleware`` on one event loop kept for the whole test.

    A request returns when its response is complete; what the middleware does after that
    (a background refresh) keeps running whenever the loop runs again.
    """

    def __init__(self, cache: Any, clock: FakeClock, app: ScriptedApp, middleware: Any) -> None:
        super().__init__("asgi", cache, clock, app, middleware)
        self.loop = asyncio.new_event_loop()

    async def arequest(
        self,
        method: str = "GET",
        path: str = "/",
        headers: Headers | None = None,
        *,
        query: str | None = None,
        body: bytes = b"",
        host: str = HOST,
        scheme: str = "http",
    ) -> Response:
        scope = asgi_scope(method, path, headers, query, host, scheme)
        sent: list[dict[str, Any]] = []
        done = asyncio.get_running_loop().create_future()
        request_sent = False

        async def receive() -> dict[str, Any]:
            nonlocal request_sent
            if not request_sent:
                request_sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await done
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            assert not done.done(), f"message after the response completed: {message}"
            sent.append(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                done.set_result(None)

        task = asyncio.ensure_future(self.middleware(scope, receive, send))
        await asyncio.wait([task, done], timeout=TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        if not done.done() and not task.done():
            raise AssertionError(f"no complete response within {TIMEOUT} s: {sent}")
        error = task.exception() if task.done() else None
        return _assemble(sent, error, done.done())

    def request(self, method: str = "GET", path: str = "/", headers: Headers | None = None,
                **kwargs: Any) -> Response:  # fmt: skip
        return self.loop.run_until_complete(self.arequest(method, path, headers, **kwargs))

    def many(self, requests: Sequence[Mapping[str, Any]]) -> list[Response]:
        async def run() -> list[Response]:
            return list(await asyncio.gather(*(self.arequest(**r) for r in requests)))

        return self.loop.run_until_complete(run())

    def wait_for(self, condition: Callable[[], bool], timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError("condition not met in time")
            self.loop.run_until_complete(asyncio.sleep(0.001))

    def settle(self) -> None:
        """Run the loop until every background task finished."""

        async def run() -> None:
            me = asyncio.current_task()
            pending = [t for t in asyncio.all_tasks() if t is not me]
            if pending:
                await asyncio.wait(pending, timeout=TIMEOUT)

        self.loop.run_until_complete(run())

    def close(self) -> None:
        self.app.release()
        loop = self.loop
        try:
            self.settle()
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()


def _assemble(sent: list[dict[str, Any]], error: BaseException | None, complete: bool) -> Response:
    starts = [m for m in sent if m["type"] == "http.response.start"]
    if not starts:
        return Response(500, [], b"", error=error or AssertionError("no response"), complete=False)
    assert len(starts) == 1, starts
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in starts[0]["headers"]]
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return Response(starts[0]["status"], headers, body, error=error, complete=complete)


class WsgiDriver(Driver):
    """Drives ``WSGICacheMiddleware`` as a WSGI server would (threads for :meth:`many`)."""

    def __init__(self, cache: Any, clock: FakeClock, app: ScriptedApp, middleware: Any) -> None:
        super().__init__("wsgi", cache, clock, app, middleware)
        self.pool = ThreadPoolExecutor(max_workers=32)

    def request(
        self,
        method: str = "GET",
        path: str = "/",
        headers: Headers | None = None,
        *,
        query: str | None = None,
        body: bytes = b"",
        host: str = HOST,
        scheme: str = "http",
    ) -> Response:
        environ = wsgi_environ(method, path, headers, query, host, scheme, body)
        started: list[tuple[str, list[tuple[str, str]]]] = []

        def start_response(status: str, response_headers: list[tuple[str, str]],
                           exc_info: Any = None) -> Callable[[bytes], None]:  # fmt: skip
            if started and exc_info is None:
                raise AssertionError("start_response called twice without exc_info")
            started[:] = [(status, list(response_headers))]
            return lambda data: None

        try:
            result = self.middleware(environ, start_response)
        except Exception as exc:
            return Response(500, [], b"", error=exc, complete=False)
        chunks: list[bytes] = []
        error: BaseException | None = None
        try:
            for chunk in result:
                assert isinstance(chunk, bytes), type(chunk)
                chunks.append(chunk)
        except Exception as exc:
            error = exc
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        if not started:
            return Response(500, [], b"", error=error, complete=False)
        status, response_headers = started[0]
        return Response(
            int(status.split(" ", 1)[0]),
            response_headers,
            b"".join(chunks),
            error=error,
            complete=error is None,
        )

    def many(self, requests: Sequence[Mapping[str, Any]]) -> list[Response]:
        futures = [self.pool.submit(lambda r=r: self.request(**r)) for r in requests]
        return [f.result(timeout=TIMEOUT * 4) for f in futures]

    def wait_for(self, condition: Callable[[], bool], timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError("condition not met in time")
            time.sleep(0.001)

    def close(self) -> None:
        self.app.release()
        self.pool.shutdown(wait=True)


def make_driver(
    kind: str, clock: FakeClock | None = None, *store: Any, **cache_kwargs: Any
) -> Driver:
    """A driver of ``kind`` ("asgi" or "wsgi") over a new HttpCache(*store, clock=clock, ...)."""
    from scalekit.web import CacheMiddleware, HttpCache, WSGICacheMiddleware

    clock = clock if clock is not None else FakeClock(start=START)
    cache = HttpCache(*store, clock=clock, **cache_kwargs)
    app = ScriptedApp(clock)
    if kind == "asgi":
        return AsgiDriver(cache, clock, app, CacheMiddleware(app.asgi, cache))
    if kind == "wsgi":
        return WsgiDriver(cache, clock, app, WSGICacheMiddleware(app.wsgi, cache))
    raise ValueError(kind)


def reply(
    cache_control: str | None = None,
    body: bytes = b"v1",
    status: int = 200,
    headers: Headers | None = None,
    **options: Any,
) -> Reply:
    """A Reply with this Cache-Control (None: no Cache-Control) and these other headers."""
    pairs = _pairs(headers)
    if cache_control is not None:
        pairs.insert(0, ("Cache-Control", cache_control))
    return Reply(status, pairs, body, **options)


@pytest.fixture(name="make", params=["asgi", "wsgi"])
def make_fixture(request: pytest.FixtureRequest) -> Iterator[Callable[..., Driver]]:
    """A factory of drivers of the parametrized kind: make(**HttpCache options)."""
    drivers: list[Driver] = []

    def factory(*store: Any, **cache_kwargs: Any) -> Driver:
        driver = make_driver(request.param, None, *store, **cache_kwargs)
        drivers.append(driver)
        return driver

    yield factory
    for driver in drivers:
        driver.close()
        driver.cache._check()  # every conformance case ends with the invariants held


@pytest.fixture(name="d")
def d_fixture(make: Callable[..., Driver]) -> Driver:
    """A driver over HttpCache with the default options."""
    return make()


# -- one-shot requests to a routed app ---------------------------------------------

Route = Callable[[dict[str, str]], tuple[int, list[tuple[str, str]], bytes]]


class Origin:
    """An app, ASGI and WSGI, answering each path with a route; counts its calls.

    A route gets the request's fields by lower-case name, with ``:path`` and
    ``:method``; ``gate`` (ASGI) holds every call until set; a path in ``raise_on``
    makes the app raise.
    """

    def __init__(self, routes: dict[str, Route] | None = None) -> None:
        self.routes = routes or {}
        self.calls = 0
        self.seen: list[dict[str, str]] = []
        self.gate: asyncio.Event | None = None
        self.raise_on: set[str] = set()

    def route(
        self,
        path: str,
        status: int = 200,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"body",
    ) -> None:
        fixed = list(headers)
        self.routes[path] = lambda request: (status, list(fixed), body)

    def answer(self, request: dict[str, str]) -> tuple[int, list[tuple[str, str]], bytes]:
        self.calls += 1
        self.seen.append(request)
        if request[":path"] in self.raise_on:
            raise RuntimeError("the app failed")
        return self.routes[request[":path"]](request)

    async def asgi(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        request = {name.decode(): value.decode() for name, value in scope["headers"]}
        request[":path"] = scope["path"]
        request[":method"] = scope["method"]
        if self.gate is not None:
            await self.gate.wait()
        status, headers, body = self.answer(request)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(n.lower().encode(), v.encode()) for n, v in headers],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def wsgi(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        request = {
            key[5:].lower().replace("_", "-"): value
            for key, value in environ.items()
            if key.startswith("HTTP_")
        }
        request[":path"] = environ["PATH_INFO"]
        request[":method"] = environ["REQUEST_METHOD"]
        status, headers, body = self.answer(request)
        start_response(f"{status} X", headers)
        return [body]


class Result:
    """What a one-shot request received: ``headers`` by lower-case name (the last
    of a repeated field), ``header_list`` as sent."""

    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.header_list = headers
        self.headers = {name.lower(): value for name, value in headers}
        self.body = body

    @property
    def cache_status(self) -> str:
        return self.headers["cache-status"]

    def __repr__(self) -> str:
        return f"Result({self.status}, {self.header_list}, {self.body!r})"


async def asgi_request(
    app: Any,
    url: str,
    headers: Iterable[tuple[str, str]] = (),
    method: str = "GET",
    host: str = HOST,
) -> Result:
    """One request through the ASGI ``app``, awaited to its end."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(asgi_scope(method, url, list(headers), None, host, "http"), receive, send)
    start = sent[0]
    body = b"".join(m.get("body", b"") for m in sent[1:] if m["type"] == "http.response.body")
    return Result(start["status"], [(n.decode(), v.decode()) for n, v in start["headers"]], body)


def asgi_get(
    app: Any,
    url: str,
    headers: Iterable[tuple[str, str]] = (),
    method: str = "GET",
    host: str = HOST,
) -> Result:
    """:func:`asgi_request` on an event loop of its own."""
    return asyncio.run(asgi_request(app, url, headers, method, host))


def wsgi_get(
    app: Any,
    url: str,
    headers: Iterable[tuple[str, str]] = (),
    method: str = "GET",
    host: str = HOST,
) -> Result:
    """One request through the WSGI ``app``, its body read and closed."""
    started: list[Any] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        started[:] = [status, headers]
        return lambda data: None

    chunks = app(wsgi_environ(method, url, list(headers), None, host, "http"), start_response)
    try:
        body = b"".join(chunks)
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    return Result(int(started[0].split()[0]), list(started[1]), body)
