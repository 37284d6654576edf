"""Review: personal requests never reach the store, however the scope spells
their header names."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from scalekit.testing import FakeClock
from scalekit.web import CacheMiddleware, HttpCache

START = 1_700_000_000.0


async def _personal(scope: dict[str, Any], receive: Any, send: Any) -> None:
    user = b"anonymous"
    for name, value in scope["headers"]:
        if name.lower() in (b"cookie", b"authorization"):
            user = value
    headers = [(b"cache-control", b"max-age=60")]  # the app forgot private
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": user})


def _get(app: Any, headers: list[tuple[bytes, bytes]]) -> tuple[bytes, bytes]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "scheme": "http",
        "path": "/me",
        "raw_path": b"/me",
        "query_string": b"",
        "headers": headers,
    }
    asyncio.run(app(scope, receive, send))
    return dict(sent[0]["headers"])[b"cache-status"], sent[1]["body"]


@pytest.mark.parametrize("name", [b"Cookie", b"AUTHORIZATION", b"cookie"])
def test_a_personal_request_bypasses_whatever_the_case_of_its_header_names(name: bytes) -> None:
    # a middleware in front of this one may add headers in any case
    app = CacheMiddleware(_personal, HttpCache(clock=FakeClock(START)))
    status, body = _get(app, [(b"host", b"example.com"), (name, b"alice")])
    assert (status, body) == (b"scalekit; fwd=bypass", b"alice")
    status, body = _get(app, [(b"host", b"example.com")])
    assert body == b"anonymous"
    assert app.cache.stats().hits == 0


def test_an_upper_case_host_is_the_host() -> None:
    app = CacheMiddleware(_personal, HttpCache(clock=FakeClock(START)))
    assert _get(app, [(b"Host", b"example.com")])[0] == b"scalekit; fwd=uri-miss; stored"
    assert _get(app, [(b"host", b"example.com")])[0] == b"scalekit; hit; ttl=60"


def test_a_request_the_wsgi_server_authenticated_is_personal() -> None:
    # Apache/mod_wsgi authenticate and set REMOTE_USER, and by default do not
    # pass Authorization on: the user's page was stored and served to others
    from scalekit.web import WSGICacheMiddleware

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Cache-Control", "max-age=60")])
        return [environ.get("REMOTE_USER", "anonymous").encode()]

    cached = WSGICacheMiddleware(app, HttpCache(clock=FakeClock(START)))

    def get(user: str | None) -> tuple[str, bytes]:
        environ = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": "/me",
            "HTTP_HOST": "example.com",
            "wsgi.url_scheme": "http",
            "QUERY_STRING": "",
        }
        if user is not None:
            environ["REMOTE_USER"] = user
        started: list[Any] = []
        body = b"".join(cached(environ, lambda status, headers: started.append(headers)))
        return dict(started[0])["Cache-Status"], body

    assert get("alice") == ("scalekit; fwd=bypass", b"alice")
    assert get(None) == ("scalekit; fwd=uri-miss; stored", b"anonymous")
    assert get("bob") == ("scalekit; fwd=bypass", b"bob")
