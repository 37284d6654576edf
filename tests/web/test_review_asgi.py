"""Review: the ASGI shell stores only responses the app finished by the
protocol, passes trailers through, and refuses a second response start."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from scalekit.testing import FakeClock
from scalekit.web import CacheMiddleware, HttpCache
from tests.web.test_review_flights import MAX60, START, _run, _status


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
