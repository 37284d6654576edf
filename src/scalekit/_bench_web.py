"""The in-process web comparison of ``scalekit bench``: one cached hit through
``CacheMiddleware``, against an app sending the same bytes and against hishel.

The app is a bare ASGI callable rendering about 25 KB of JSON with
``Cache-Control: public, max-age=3600``, so no web framework is needed; the
requests are ASGI calls in one event loop, with no socket (``benchmarks/bench_web.py``
measures the same over loopback under uvicorn).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

__all__ = [
    "PAGE",
    "capture_hit",
    "hishel_app",
    "page_app",
    "runner",
    "session_runner",
]

PAGE = json.dumps(
    [
        {
            "id": 10_000 + i,
            "sku": f"SKU-{i:06d}",
            "name": f"Product number {i}",
            "price": round(4.99 + 1.25 * i, 2),
            "tags": ["garden", "tools", f"t{i % 7}"],
            "summary": f"A sturdy tool, number {i:03d}, for every garden: steel, ash and brass.",
        }
        for i in range(120)
    ]
).encode()
_START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(PAGE)).encode()),
        (b"cache-control", b"public, max-age=3600"),
    ],
}
_BODY = {"type": "http.response.body", "body": PAGE, "more_body": False}
_SCOPE: dict[str, Any] = {
    "type": "http",
    "asgi": {"version": "3.0"},
    "http_version": "1.1",
    "method": "GET",
    "scheme": "http",
    "server": ("127.0.0.1", 8000),
    "client": ("127.0.0.1", 50000),
    "root_path": "",
    "path": "/products",
    "raw_path": b"/products",
    "query_string": b"",
    "headers": [(b"host", b"127.0.0.1:8000"), (b"accept", b"*/*")],
}


def page_app() -> Any:
    """The origin: an ASGI app that renders the page on every call."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(_START)
        await send({**_BODY, "body": json.dumps(json.loads(PAGE)).encode()})

    return app


class _Capture:
    """An ASGI ``send`` keeping the last response."""

    def __init__(self) -> None:
        self.start: dict[str, Any] = {}
        self.body = b""

    async def __call__(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.start, self.body = message, b""
        else:
            self.body += message.get("body", b"")


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


def runner(app: Any, loop: asyncio.AbstractEventLoop, batch: int) -> Callable[[], None]:
    """A callable making ``batch`` requests to ``app`` in ``loop``."""
    sink = _Capture()

    async def many() -> None:
        for _ in range(batch):
            await app(dict(_SCOPE), _receive, sink)

    return lambda: loop.run_until_complete(many())


def capture_hit(app: Any, loop: asyncio.AbstractEventLoop) -> tuple[dict[str, str], Any]:
    """Two requests (the miss that stores, then a hit); the hit's headers (lower-cased
    names) and an ASGI app that sends that hit's bytes as they are."""
    capture = _Capture()
    for _ in range(2):
        loop.run_until_complete(app(dict(_SCOPE), _receive, capture))
    if capture.body != PAGE:
        raise AssertionError("the cached response differs from the page")
    headers = {k.decode().lower(): v.decode() for k, v in capture.start["headers"]}
    start = {"type": "http.response.start", "status": capture.start["status"]}
    start["headers"] = list(capture.start["headers"])
    body = {"type": "http.response.body", "body": capture.body, "more_body": False}

    async def bare(scope: Any, receive: Any, send: Any) -> None:
        await send(start)
        await send(body)

    return headers, bare


def hishel_app(folder: str) -> Any:
    """The page app behind hishel's ASGI cache over its default SQLite storage."""
    from hishel import AsyncSqliteStorage
    from hishel.asgi import ASGICacheMiddleware

    storage = AsyncSqliteStorage(database_path=f"{folder}/hishel.db")
    return ASGICacheMiddleware(page_app(), storage)


def _counting_app(seen: list[int]) -> Any:
    """An app that adds one to ``scope["session"]["counter"]``, keeps it in
    ``seen[0]`` and answers ``ok``."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        session = scope["session"]
        session["counter"] = seen[0] = session.get("counter", 0) + 1
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


def session_runner(kind: str, loop: asyncio.AbstractEventLoop, batch: int) -> Callable[[], int]:
    """A callable making ``batch`` requests of one browser (its cookie carried from
    response to request) to a counting app behind ``kind``'s session middleware:
    ``"scalekit"`` (``SessionMiddleware`` over an ``AsyncMemorySessionStore``) or
    ``"starlette"`` (Starlette's, the session signed into the cookie itself).
    Each call returns the requests made so far, having checked that the session's
    counter saw every one of them (the session was kept)."""
    seen = [0]
    if kind == "scalekit":
        from scalekit.sessions import AsyncMemorySessionStore, SessionMiddleware

        app: Any = SessionMiddleware(_counting_app(seen), AsyncMemorySessionStore(), secure=False)
    else:
        from starlette.middleware.sessions import SessionMiddleware as StarletteSessions

        app = StarletteSessions(_counting_app(seen), secret_key="bench-" * 6)
    cookie: list[bytes] = []
    count = 0

    async def send(message: dict[str, Any]) -> None:
        for name, value in message.get("headers", ()):
            if name.lower() == b"set-cookie":
                cookie[:] = [value.split(b";", 1)[0]]

    async def many() -> None:
        nonlocal count
        for _ in range(batch):
            headers = [(b"host", b"127.0.0.1:8000"), *[(b"cookie", c) for c in cookie]]
            await app({**_SCOPE, "headers": headers}, _receive, send)
            count += 1

    def run() -> int:
        loop.run_until_complete(many())
        if seen[0] != count:
            raise AssertionError(f"{kind}: the session counted {seen[0]} of {count} requests")
        return count

    return run
