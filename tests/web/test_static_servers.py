"""The ASGI and WSGI shells of scalekit.web.static: called directly, through
httpx.ASGITransport, and under a real uvicorn server on loopback."""

from __future__ import annotations

import asyncio
import gzip
import http.client
import io
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import brotli
import httpx
import pytest

from scalekit.web.static import StaticFiles, WSGIStaticFiles, build
from tests.web.test_static_core import CSS, JS, make_site

BIG = os.urandom(300 * 1024) + b"tail"  # over the in-memory limit: streamed in chunks


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("site")
    folder = make_site(root)
    (root / "src" / "video.mp4").write_bytes(BIG)
    build(root / "src", folder)
    return folder


async def _fallback(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"app:" + scope["path"].encode()})


def asgi_call(
    app: Any, path: str, headers: dict[str, str] | None = None, **scope: Any
) -> tuple[int, dict[str, str], bytes, list[dict[str, Any]]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    full = {
        "type": "http",
        "method": "GET",
        "path": path,
        "headers": [(k.encode(), v.encode()) for k, v in (headers or {}).items()],
        **scope,
    }
    asyncio.run(app(full, receive, send))
    start = sent[0]
    assert start["type"] == "http.response.start"
    body = b"".join(m.get("body", b"") for m in sent[1:])
    assert sent[-1].get("more_body", False) is False
    response_headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], response_headers, body, sent


def test_asgi_serves_hashed_files(out: Path) -> None:
    app = StaticFiles(out)
    status, headers, body, _ = asgi_call(app, app.url_for("css/app.css"))
    assert status == 200
    assert body == CSS
    assert headers["cache-control"] == "public, max-age=31536000, immutable"
    status, headers, body, _ = asgi_call(
        app, app.url_for("css/app.css"), {"Accept-Encoding": "gzip, br"}
    )
    assert headers["content-encoding"] == "br"
    assert brotli.decompress(body) == CSS
    status, headers, body, _ = asgi_call(
        app, app.url_for("js/app.js"), {"accept-encoding": "gzip", "range": "bytes=-20"}
    )
    assert status == 206
    assert body == gzip.compress(JS, 9, mtime=0)[-20:]


def test_asgi_streams_big_files_in_chunks(out: Path) -> None:
    app = StaticFiles(out)
    status, headers, body, sent = asgi_call(app, app.url_for("video.mp4"))
    assert status == 200
    assert body == BIG
    assert len(sent) >= 1 + len(BIG) // (64 * 1024)
    assert all(len(m["body"]) <= 64 * 1024 for m in sent[1:])
    status, headers, body, _ = asgi_call(app, app.url_for("video.mp4"), {"range": "bytes=100-"})
    assert status == 206
    assert body == BIG[100:]
    assert headers["content-range"] == f"bytes 100-{len(BIG) - 1}/{len(BIG)}"


def test_asgi_without_memory_reads_small_files_each_time(out: Path) -> None:
    app = StaticFiles(out, memory_limit=0)
    for _ in range(2):
        _, _, body, _ = asgi_call(app, app.url_for("css/app.css"), {"range": "bytes=5-9"})
        assert body == CSS[5:10]
    assert app._bodies == {}
    kept = StaticFiles(out)
    asgi_call(kept, kept.url_for("css/app.css"))
    assert list(kept._bodies.values()) == [CSS]


def test_asgi_pathsend_for_whole_big_files(out: Path) -> None:
    app = StaticFiles(out)
    extensions = {"http.response.pathsend": {}}
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": app.url_for("video.mp4"),
        "headers": [],
        "extensions": extensions,
    }
    asyncio.run(app(scope, None, send))  # type: ignore[arg-type]
    assert sent[1] == {
        "type": "http.response.pathsend",
        "path": str(out / app.manifest["video.mp4"].path),
    }
    status, _, body, _ = asgi_call(
        app, app.url_for("video.mp4"), {"range": "bytes=0-3"}, extensions=extensions
    )
    assert status == 206
    assert body == BIG[:4]


def test_asgi_head_and_errors(out: Path) -> None:
    app = StaticFiles(out)
    status, headers, body, _ = asgi_call(app, app.url_for("css/app.css"), method="HEAD")
    assert (status, body, headers["content-length"]) == (200, b"", str(len(CSS)))
    status, headers, _, _ = asgi_call(app, app.url_for("css/app.css"), method="POST")
    assert (status, headers["allow"]) == (405, "GET, HEAD")
    assert asgi_call(app, "/static/../etc/passwd")[0] == 400
    assert asgi_call(app, "/static/nothing")[0] == 404
    assert asgi_call(app, "/elsewhere")[0] == 404


def test_asgi_passes_other_paths_and_scopes_to_the_app(out: Path) -> None:
    app = StaticFiles(out, app=_fallback)
    assert asgi_call(app, "/index")[2] == b"app:/index"
    assert asgi_call(app, "/static/nothing")[0] == 404  # the static namespace is ours
    assert asgi_call(app, app.url_for("css/app.css"))[2] == CSS


def test_asgi_lifespan_and_websocket_without_an_app(out: Path) -> None:
    app = StaticFiles(out)
    inbox = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return inbox.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app({"type": "lifespan"}, receive, send))
    assert sent == [{"type": "lifespan.startup.complete"}, {"type": "lifespan.shutdown.complete"}]
    sent.clear()
    asyncio.run(app({"type": "websocket", "path": "/static/x"}, receive, send))
    assert sent == [{"type": "websocket.close", "code": 1000}]


def test_through_httpx_asgi_transport(out: Path) -> None:
    app = StaticFiles(out)

    async def main() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            url = app.url_for("css/app.css")
            first = await client.get(url, headers={"accept-encoding": "br, gzip"})
            assert first.status_code == 200
            assert first.headers["content-encoding"] == "br"
            assert first.content == CSS  # httpx decoded it
            again = await client.get(
                url, headers={"accept-encoding": "br", "if-none-match": first.headers["etag"]}
            )
            assert again.status_code == 304
            assert again.content == b""
            part = await client.get(
                url, headers={"accept-encoding": "identity", "range": "bytes=0-3"}
            )
            assert part.status_code == 206
            assert part.content == CSS[:4]
            logical = await client.get("/static/robots.txt")
            assert logical.headers["cache-control"] == "public, max-age=60"

    asyncio.run(main())


# -- WSGI -------------------------------------------------------------------------


class Wrapper:
    """A wsgi.file_wrapper that records its use."""

    used: ClassVar[list[int]] = []

    def __init__(self, handle: Any, size: int) -> None:
        self.handle = handle
        Wrapper.used.append(size)

    def __iter__(self) -> Iterator[bytes]:
        return iter(lambda: self.handle.read(8192), b"")

    def close(self) -> None:
        self.handle.close()


def wsgi_call(
    app: Any, path: str, headers: dict[str, str] | None = None, **environ: Any
) -> tuple[str, dict[str, str], bytes]:
    captured: list[Any] = []
    full = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "wsgi.input": io.BytesIO(),
        **{"HTTP_" + k.upper().replace("-", "_"): v for k, v in (headers or {}).items()},
        **environ,
    }
    result = app(full, lambda status, response_headers: captured.append((status, response_headers)))
    try:
        body = b"".join(result)
    finally:
        if hasattr(result, "close"):
            result.close()
    status, response_headers = captured[0]
    return status, dict(response_headers), body


def test_wsgi_serves_the_same_answers(out: Path) -> None:
    app = WSGIStaticFiles(out)
    url = app.url_for("css/app.css")
    status, headers, body = wsgi_call(app, url)
    assert (status, body) == ("200 OK", CSS)
    assert headers["etag"] == f'"{app.manifest["css/app.css"].etag}"'
    status, headers, body = wsgi_call(app, url, {"accept-encoding": "gzip"})
    assert gzip.decompress(body) == CSS
    status, _, body = wsgi_call(
        app, url, {"if-none-match": headers["etag"], "accept-encoding": "gzip"}
    )
    assert (status, body) == ("304 Not Modified", b"")
    status, headers, body = wsgi_call(app, url, {"range": "bytes=10-19"})
    assert (status, body, headers["content-range"]) == (
        "206 Partial Content",
        CSS[10:20],
        f"bytes 10-19/{len(CSS)}",
    )
    assert wsgi_call(app, url, {"range": "bytes=99999-"})[0] == "416 Range Not Satisfiable"
    assert wsgi_call(app, url, REQUEST_METHOD="DELETE")[0] == "405 Method Not Allowed"
    assert wsgi_call(app, url, REQUEST_METHOD="HEAD")[2] == b""


def test_wsgi_uses_the_file_wrapper_for_whole_big_files(out: Path) -> None:
    app = WSGIStaticFiles(out)
    Wrapper.used.clear()
    url = app.url_for("video.mp4")
    status, _, body = wsgi_call(app, url, **{"wsgi.file_wrapper": Wrapper})
    assert (status, body) == ("200 OK", BIG)
    assert Wrapper.used == [64 * 1024]
    status, _, body = wsgi_call(app, url, {"range": "bytes=-4"}, **{"wsgi.file_wrapper": Wrapper})
    assert (status, body) == ("206 Partial Content", b"tail")
    assert Wrapper.used == [64 * 1024]  # a range is read by ourselves
    assert wsgi_call(app, url)[2] == BIG  # no wrapper: chunks


def test_wsgi_paths(out: Path) -> None:
    def fallback(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"app"]

    app = WSGIStaticFiles(out, app=fallback)
    assert wsgi_call(app, "/other")[2] == b"app"
    assert wsgi_call(app, "/static/%2e%2e/x")[0] == "404 Not Found"
    assert wsgi_call(app, "/static/../manifest.json")[0] == "400 Bad Request"
    assert wsgi_call(app, "/static/\xff\xfe")[0] == "400 Bad Request"  # not UTF-8
    space = WSGIStaticFiles(out)
    assert wsgi_call(space, "/x")[0] == "404 Not Found"


def test_wsgi_decodes_utf8_paths(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "café.css").write_bytes(b"x")
    build(tmp_path / "src", tmp_path / "out")
    app = WSGIStaticFiles(tmp_path / "out")
    path = app.assets.manifest["café.css"].path
    assert app.url_for("café.css") == "/static/caf%C3%A9." + path.split(".", 1)[1]
    status, _, body = wsgi_call(app, "/static/" + path.encode().decode("latin-1"))
    assert (status, body) == ("200 OK", b"x")


# -- a real server ----------------------------------------------------------------


def test_under_uvicorn_on_loopback(out: Path) -> None:
    uvicorn = pytest.importorskip("uvicorn")
    app = StaticFiles(out)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)  # connections queue here until uvicorn accepts them
    port = listener.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

        def request(path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
            connection.request(
                "GET", path, headers={k.replace("_", "-"): v for k, v in headers.items()}
            )
            response = connection.getresponse()
            return (
                response.status,
                {k.lower(): v for k, v in response.getheaders()},
                response.read(),
            )

        url = app.url_for("css/app.css")
        status, headers, body = request(url, accept_encoding="gzip")
        assert status == 200
        assert headers["content-encoding"] == "gzip"
        assert headers["vary"] == "Accept-Encoding"
        assert gzip.decompress(body) == CSS
        status, _, body = request(url, accept_encoding="gzip", if_none_match=headers["etag"])
        assert (status, body) == (304, b"")
        status, headers, body = request(app.url_for("video.mp4"), range="bytes=1000-")
        assert (status, body) == (206, BIG[1000:])
        status, _, body = request(app.url_for("video.mp4"))  # same keep-alive connection
        assert (status, body) == (200, BIG)
        assert request("/static/%2e%2e/%2e%2e/etc/passwd")[0] == 400  # decoded by uvicorn
        assert request("/static/..%2fmanifest.json")[0] == 400
        connection.close()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        listener.close()
    assert not thread.is_alive()


def test_under_wsgiref_on_loopback(out: Path) -> None:
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    app = WSGIStaticFiles(out)
    server = make_server("127.0.0.1", 0, app, handler_class=Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        connection = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=10)
        connection.request("GET", app.url_for("video.mp4"))  # wsgiref's file_wrapper
        response = connection.getresponse()
        assert (response.status, response.read()) == (200, BIG)
        connection.close()
        connection = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=10)
        connection.request("GET", app.url_for("video.mp4"), headers={"Range": "bytes=-4"})
        response = connection.getresponse()
        assert (response.status, response.read()) == (206, b"tail")
        connection.close()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_mounted_in_a_starlette_app(out: Path) -> None:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route

    static = StaticFiles(out)

    async def home(request: Any) -> PlainTextResponse:
        return PlainTextResponse(static.url_for("css/app.css"))

    app = Starlette(routes=[Route("/", home), Mount("/static", app=static)])

    async def main() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            url = (await client.get("/")).text
            response = await client.get(url)
            assert response.status_code == 200
            assert response.content == CSS
            assert response.headers["cache-control"] == "public, max-age=31536000, immutable"

    asyncio.run(main())
