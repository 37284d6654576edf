"""Review: the ASGI shell stores only responses the app finished by the
protocol, passes trailers through, and refuses a second response start."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from scalekit.testing import FakeClock
from scalekit.web import CacheMiddleware, HttpCache
from tests.web.test_review_flights import MAX60, START, _run, _scope, _status


def _cached(app: Any) -> CacheMiddleware:
    return CacheMiddleware(app, HttpCache(clock=FakeClock(START)))


def test_a_body_the_app_did_not_finish_is_never_stored() -> None:
    # more_body=True, then the app returns: the server cuts the response short
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": MAX60})
        await send({"type": "http.response.body", "body": b"the first half", "more_body": True})

    cached = _cached(app)
    for _ in range(2):
        with pytest.raises(RuntimeError, match="end of its response body"):
            asyncio.run(_run(cached))
    assert cached.cache.stats().stores == 0


def test_a_start_without_a_body_is_never_stored() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": MAX60})

    cached = _cached(app)
    with pytest.raises(RuntimeError):
        asyncio.run(_run(cached))
    assert cached.cache.stats().stores == 0


def test_trailers_pass_through_and_the_response_is_not_stored() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        start = {"type": "http.response.start", "status": 200, "headers": MAX60}
        await send({**start, "trailers": True})
        await send({"type": "http.response.body", "body": b"x"})
        trailers = {"type": "http.response.trailers", "headers": [(b"grpc-status", b"0")]}
        await send({**trailers, "more_trailers": False})

    cached = _cached(app)
    for _ in range(2):
        sent = asyncio.run(_run(cached))
        assert sent[0]["trailers"] is True
        assert _status(sent) == b"scalekit; fwd=uri-miss"
        assert sent[-1]["type"] == "http.response.trailers"
    assert cached.cache.stats().stores == 0


def test_a_second_response_start_is_refused() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 500, "headers": MAX60})
        await send({"type": "http.response.start", "status": 200, "headers": MAX60})
        await send({"type": "http.response.body", "body": b"x"})

    cached = _cached(app)
    with pytest.raises(RuntimeError, match="twice"):
        asyncio.run(_run(cached))
    assert cached.cache.stats().stores == 0


def test_a_background_refresh_lets_an_app_wait_for_the_disconnect() -> None:
    # Starlette's StreamingResponse (ASGI spec < 2.4) streams while a second task
    # loops on receive() until http.disconnect; the refresh's receive answered
    # the empty body again at once, forever: that loop never yielded and the
    # event loop hung (here it gives up after 1,000 turns instead)
    clock = FakeClock(START)
    refreshed = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        async def listen() -> None:
            for _ in range(1000):
                if (await receive())["type"] == "http.disconnect":
                    return
            raise RuntimeError("receive() spun without a disconnect")

        listener = asyncio.ensure_future(listen())
        headers = [(b"cache-control", b"max-age=10, stale-while-revalidate=100")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        await send({"type": "http.response.body", "body": b"b"})
        await listener
        refreshed.append(True)

    cached = CacheMiddleware(app, HttpCache(clock=clock))

    async def main() -> None:
        async def receive() -> dict[str, Any]:
            await asyncio.sleep(0)
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            return None

        await cached(_scope("/s"), receive, send)
        clock.advance(20)
        await cached(_scope("/s"), receive, send)  # stale: served, refreshed behind
        await asyncio.wait_for(asyncio.gather(*cached._tasks), 5)

    asyncio.run(main())
    assert len(refreshed) == 2
    assert cached.cache.stats().errors == 0
    assert cached.cache.stats().stores == 2


def _pathsend_scope(path: str) -> dict[str, Any]:
    scope = _scope(path)
    scope["extensions"] = {"http.response.pathsend": {}}
    return scope


def test_static_files_behind_the_cache_on_a_server_with_pathsend(tmp_path: Any) -> None:
    # the server offers http.response.pathsend; StaticFiles sends a big file by
    # its path; the cache held the response and got no body: an empty body under
    # Content-Length 400000 went to the client
    from scalekit.web.static import StaticFiles, build

    source, output = tmp_path / "src", tmp_path / "out"
    source.mkdir()
    (source / "big.bin").write_bytes(b"z" * 400_000)
    build(source, output)
    files = StaticFiles(output, memory_limit=0)
    cached = CacheMiddleware(files, HttpCache(clock=FakeClock(START)))
    url = files.url_for("big.bin")
    for status in (b"scalekit; fwd=uri-miss; stored", b"scalekit; hit; ttl=31536000"):
        sent = asyncio.run(_run(cached, _pathsend_scope(url)))
        assert _status(sent) == status
        assert b"".join(message.get("body", b"") for message in sent[1:]) == b"z" * 400_000


def test_a_pathsend_the_app_sends_anyway_passes_through(tmp_path: Any) -> None:
    file = tmp_path / "f.txt"
    file.write_bytes(b"abc")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        headers = [*MAX60, (b"content-length", b"3")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.pathsend", "path": str(file)})

    cached = _cached(app)
    sent = asyncio.run(_run(cached, _pathsend_scope("/f")))
    assert _status(sent) == b"scalekit; fwd=uri-miss"
    assert sent[1] == {"type": "http.response.pathsend", "path": str(file)}
    assert cached.cache.stats().stores == 0
