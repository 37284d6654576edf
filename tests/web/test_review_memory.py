"""Review: the default store's memory bound counts what a stored response
holds, its key included (long URLs and long Vary values)."""

from __future__ import annotations

from typing import Any

from scalekit.testing import FakeClock
from scalekit.web import HttpCache, WSGICacheMiddleware

START = 1_700_000_000.0


def test_long_keys_count_against_the_memory_bound() -> None:
    # each response: a 1-byte body under a ~8 KB query and an ~8 KB Vary value;
    # the bound counted 513 bytes for it, so 64 MiB let ~4 GB in
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Cache-Control", "max-age=600"), ("Vary", "Accept-Language")])
        return [b"x"]

    cache = HttpCache(clock=FakeClock(START))
    cached = WSGICacheMiddleware(app, cache)
    long = "a" * 8000
    for number in range(100):
        environ = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": "/p",
            "HTTP_HOST": "example.com",
            "wsgi.url_scheme": "http",
            "QUERY_STRING": f"q={long}{number}",
            "HTTP_ACCEPT_LANGUAGE": f"{long}{number}",
        }
        b"".join(cached(environ, lambda status, headers: None))
    assert cache.stats().stores == 100
    # per response: a key with the query and the value, the value again, the marker's key
    assert cache.store.currsize >= 100 * 4 * 8000


def test_responses_decoded_from_a_json_store_are_kept_within_a_bound() -> None:
    # the memo of decoded responses kept 512 of them whatever their size: with
    # 1 MiB bodies (max_body), 512 MiB held out of the store's reach
    import tracemalloc

    from tests.web.test_review_keys import _DictStore

    body = b"x" * (1024 * 1024)

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Cache-Control", "max-age=600")])
        return [body]

    store = _DictStore()
    cache = HttpCache(store, clock=FakeClock(START), coalesce=False)
    cached = WSGICacheMiddleware(app, cache)

    def get(number: int) -> None:
        environ = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": f"/{number}",
            "HTTP_HOST": "example.com",
            "wsgi.url_scheme": "http",
            "QUERY_STRING": "",
        }
        b"".join(cached(environ, lambda status, headers: None))

    for number in range(60):
        get(number)  # stored as JSON
    tracemalloc.start()
    try:
        for number in range(60):
            get(number)  # hits: decoded from JSON
        assert cache.stats().hits == 60
        store.data.clear()  # what stays is what the cache itself holds
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert held < 24 * 1024 * 1024


def test_long_paths_queries_and_fields_are_not_remembered() -> None:
    # the parsers' memos kept 4,096 paths and queries and 1,024 Cache-Control
    # fields of any length: 8 KB ones from clients held ~110 MB
    import asyncio
    import tracemalloc

    from scalekit.web import CacheMiddleware

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"x"})

    cached = CacheMiddleware(app, HttpCache(clock=FakeClock(START)))

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        return None

    async def main() -> None:
        for number in range(600):
            scope = {
                "type": "http",
                "method": "GET",
                "scheme": "http",
                "path": "/p",
                "raw_path": b"/p" + b"b" * 8000 + b"%d" % number,
                "query_string": b"q=%d" % number + b"a" * 8000,
                "headers": [
                    (b"host", b"%d" % number + b"h" * 8000),
                    (b"cache-control", b"max-stale=%d," % number + b"x" * 8000),
                ],
            }
            await cached(scope, receive, send)

    tracemalloc.start()
    try:
        asyncio.run(main())
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert held < 2 * 1024 * 1024
