"""Review: one scripted run (variants, revalidation, conditionals, an unsafe
method, a purge) gives the same answers over the default store, RedisCache and
TieredCache, through both shells."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from scalekit.cache import LRUCache, RedisCache, TieredCache
from scalekit.testing import FakeClock
from scalekit.web import CacheMiddleware, HttpCache, WSGICacheMiddleware
from tests.web._http_apps import Origin, Result, asgi_get, wsgi_get

START = 1_700_000_000.0


def _script(store: Callable[[FakeClock], Any], shell: str) -> list[tuple[int, str, bytes]]:
    clock = FakeClock(START)
    origin = Origin()

    def page(request: dict[str, str]) -> tuple[int, list[tuple[str, str]], bytes]:
        headers = [("Cache-Control", "max-age=60"), ("Vary", "Accept"), ("ETag", '"e"')]
        headers.append(("Surrogate-Key", "pages"))
        if request.get("if-none-match") == '"e"':
            return 304, headers, b""
        return 200, headers, b"page for " + request.get("accept", "-").encode()

    origin.routes["/a"] = page
    origin.route("/a%2Fb", headers=[("Cache-Control", "max-age=60")], body=b"other")
    cache = HttpCache(store(clock), clock=clock)
    if shell == "asgi":
        app: Any = CacheMiddleware(origin.asgi, cache)
        run: Callable[..., Result] = asgi_get
    else:
        app = WSGICacheMiddleware(origin.wsgi, cache)
        run = wsgi_get
    answers = []

    def get(url: str, headers: list[tuple[str, str]], method: str = "GET") -> None:
        result = run(app, url, headers, method, "example.com")
        answers.append((result.status, result.cache_status, result.body))

    get("/a", [("Accept", "x")])
    get("/a", [("Accept", "x")])
    get("/a", [("Accept", "y")])
    clock.advance(61)
    get("/a", [("Accept", "x")])  # revalidated: 304 from the app
    get("/a", [("Accept", "x"), ("If-None-Match", 'W/"e"')])
    get("/a", [("Accept", "x")], "POST")
    get("/a", [("Accept", "x")])
    cache.purge("pages")
    get("/a", [("Accept", "x")])
    get("/a", [("Accept", "x"), ("Cookie", "id=1")])
    answers.append((origin.calls, "", b""))
    return answers


def _default(clock: FakeClock) -> None:
    return None


@pytest.mark.redis
@pytest.mark.parametrize("shell", ["asgi", "wsgi"])
def test_every_store_answers_alike(shell: str, redis_client: Any) -> None:
    def redis_store(clock: FakeClock) -> Any:
        redis_client.flushdb()
        return RedisCache(redis_client, prefix="review:")

    def tiered_store(clock: FakeClock) -> Any:
        redis_client.flushdb()
        return TieredCache(
            LRUCache(1000, timer=clock), RedisCache(redis_client, prefix="review:"), timer=clock
        )

    expected = _script(_default, shell)
    assert expected[1][1] == "scalekit; hit; ttl=60"
    assert expected[3][1] == "scalekit; fwd=stale; fwd-status=304; stored"
    assert expected[4][:2] == (304, "scalekit; hit; ttl=60")
    assert _script(redis_store, shell) == expected
    assert _script(tiered_store, shell) == expected
