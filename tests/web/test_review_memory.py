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
