"""Drive CacheMiddleware and WSGICacheMiddleware by hand: fake ASGI and WSGI servers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

from scalekit.web import CacheMiddleware, WSGICacheMiddleware

Route = Callable[[dict[str, str]], tuple[int, list[tuple[str, str]], bytes]]


class Origin:
    """An app, ASGI and WSGI, answering each path with a route; counts its calls."""

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


def _split(url: str) -> tuple[str, str]:
    path, _, query = url.partition("?")
    return path, query


async def asgi_request(
    app: CacheMiddleware,
    url: str,
    headers: Iterable[tuple[str, str]] = (),
    method: str = "GET",
    host: str = "example.com",
) -> Result:
    path, query = _split(url)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": method,
        "scheme": "http",
        "path": path,
        "query_string": query.encode(),
        "server": ("127.0.0.1", 80),
        "headers": [(b"host", host.encode())]
        + [(n.lower().encode(), v.encode()) for n, v in headers],
    }
    await app(scope, receive, send)
    start = sent[0]
    body = b"".join(m.get("body", b"") for m in sent[1:] if m["type"] == "http.response.body")
    return Result(start["status"], [(n.decode(), v.decode()) for n, v in start["headers"]], body)


def asgi_get(
    app: CacheMiddleware,
    url: str,
    headers: Iterable[tuple[str, str]] = (),
    method: str = "GET",
    host: str = "example.com",
) -> Result:
    return asyncio.run(asgi_request(app, url, headers, method, host))


def wsgi_get(
    app: WSGICacheMiddleware,
    url: str,
    headers: Iterable[tuple[str, str]] = (),
    method: str = "GET",
    host: str = "example.com",
) -> Result:
    import io

    path, query = _split(url)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "HTTP_HOST": host,
        "wsgi.url_scheme": "http",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "80",
        "wsgi.input": io.BytesIO(b""),
    }
    for name, value in headers:
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    started: list[Any] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        started[:] = [status, headers]
        return lambda data: None

    chunks = app(environ, start_response)
    try:
        body = b"".join(chunks)
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    return Result(int(started[0].split()[0]), list(started[1]), body)
