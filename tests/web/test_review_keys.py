"""Review: requests for distinct URLs never share a stored response (key
confusion), and a public path reached through dot segments is not public."""

from __future__ import annotations

import asyncio
from typing import Any

from scalekit.testing import FakeClock
from scalekit.web import CacheMiddleware, HttpCache, WSGICacheMiddleware

START = 1_700_000_000.0


async def _echo_raw(scope: dict[str, Any], receive: Any, send: Any) -> None:
    headers = [(b"cache-control", b"max-age=60")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": scope["raw_path"]})


def _asgi(app: Any, path: str, raw: bytes, cookie: bytes | None = None) -> tuple[str, bytes]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [(b"host", b"example.com")]
    if cookie is not None:
        headers.append((b"cookie", cookie))
    scope = {
        "type": "http",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": raw,
        "query_string": b"",
        "headers": headers,
    }
    asyncio.run(app(scope, receive, send))
    return dict(sent[0]["headers"])[b"cache-status"].decode(), sent[1]["body"]


def test_asgi_encoded_slash_is_not_the_slash() -> None:
    app = CacheMiddleware(_echo_raw, HttpCache(clock=FakeClock(START)))
    assert _asgi(app, "/a/b", b"/a/b")[1] == b"/a/b"
    status, body = _asgi(app, "/a/b", b"/a%2Fb")
    assert body == b"/a%2Fb", status


def test_asgi_invalid_utf8_is_not_the_replacement_character() -> None:
    # servers decode raw paths with errors="replace": both are "/\ufffd"
    app = CacheMiddleware(_echo_raw, HttpCache(clock=FakeClock(START)))
    assert _asgi(app, "/\ufffd", b"/%E9")[1] == b"/%E9"
    assert _asgi(app, "/\ufffd", b"/%EF%BF%BD")[1] == b"/%EF%BF%BD"


def test_asgi_equivalent_spellings_share_a_key() -> None:
    # RFC 3986 6.2.2: %7E is ~ and hex case does not matter
    app = CacheMiddleware(_echo_raw, HttpCache(clock=FakeClock(START)))
    assert _asgi(app, "/~u/%2f", b"/%7Eu/%2f")[1] == b"/%7Eu/%2f"
    status, body = _asgi(app, "/~u/%2f", b"/~u/%2F")
    assert (status, body) == ("scalekit; hit; ttl=60", b"/%7Eu/%2f")


def _wsgi_echo(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Cache-Control", "max-age=60")])
    return [environ["PATH_INFO"].encode("latin-1", "backslashreplace")]


def _wsgi(app: Any, path: str) -> tuple[str, bytes]:
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "HTTP_HOST": "example.com",
        "wsgi.url_scheme": "http",
        "QUERY_STRING": "",
    }
    started: list[Any] = []
    body = b"".join(app(environ, lambda status, headers: started.append(headers)))
    return dict(started[0])["Cache-Status"], body


def test_wsgi_invalid_utf8_path_is_not_its_latin1_reading() -> None:
    # PEP 3333: "/\xc3\xa9" is the UTF-8 "/é"; "/\xe9" is the single byte E9
    app = WSGICacheMiddleware(_wsgi_echo, HttpCache(clock=FakeClock(START)))
    assert _wsgi(app, "/\xc3\xa9")[1] == b"/\xc3\xa9"
    status, body = _wsgi(app, "/\xe9")
    assert body == b"/\xe9", status


def test_wsgi_path_that_is_not_latin1_bypasses() -> None:
    app = WSGICacheMiddleware(_wsgi_echo, HttpCache(clock=FakeClock(START)))
    assert _wsgi(app, "/\udce9") == ("scalekit; fwd=bypass", b"/\\udce9")
    assert _wsgi(app, "/\udce9")[0] == "scalekit; fwd=bypass"


def test_a_public_prefix_reached_through_dot_segments_is_not_public() -> None:
    # /news/../account is /account (RFC 3986 5.2.4): with a Cookie it bypasses
    app = CacheMiddleware(_echo_raw, HttpCache(clock=FakeClock(START), public=["/news"]))
    for path, raw in (("/news/../account", b"/news/../account"), ("/news/./x", b"/news/%2e/x")):
        assert _asgi(app, path, raw, cookie=b"id=1")[0] == "scalekit; fwd=bypass"
    assert _asgi(app, "/news/a..b", b"/news/a..b", cookie=b"id=1")[0].endswith("stored")


class _DictStore:
    """A store shared by processes, as far as the cache can tell (leases on)."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.adds: list[tuple[str, bool]] = []

    def get(self, key: str) -> Any:
        return self.data.get(key)

    def get_many(self, keys: list[str]) -> dict[str, Any]:
        return {key: self.data[key] for key in keys if key in self.data}

    def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        self.data[key] = value

    def add(self, key: str, value: Any, ttl: float | None = None) -> bool:
        added = key not in self.data
        if added:
            self.data[key] = value
        self.adds.append((key, added))
        return added

    def delete(self, key: str) -> bool:
        return self.data.pop(key, None) is not None


def _wsgi_query(app: Any, query: str) -> tuple[str, bytes]:
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/p",
        "HTTP_HOST": "example.com",
        "wsgi.url_scheme": "http",
        "QUERY_STRING": query,
    }
    started: list[Any] = []
    body = b"".join(app(environ, lambda status, headers: started.append(headers)))
    return dict(started[0])["Cache-Status"], body


def test_a_query_with_a_hash_cannot_take_another_urls_lease_key() -> None:
    # servers on h11 leave "#..." in the query string: /p?x#lease was keyed on
    # the lease key of /p?x, so a stored response there held that lease forever
    store = _DictStore()

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Cache-Control", "max-age=60")])
        return [environ["QUERY_STRING"].encode()]

    cache = HttpCache(store, clock=FakeClock(START), lease=0.05)
    wsgi = WSGICacheMiddleware(app, cache)
    assert _wsgi_query(wsgi, "x#lease") == ("scalekit; fwd=uri-miss; stored", b"x#lease")
    store.adds.clear()
    assert _wsgi_query(wsgi, "x") == ("scalekit; fwd=uri-miss; stored", b"x")
    assert [added for key, added in store.adds if key.endswith("#lease")] == [True]
    assert _wsgi_query(wsgi, "x#lease") == ("scalekit; hit; ttl=60", b"x#lease")
