"""Review: the WSGI shell keeps PEP 3333's start_response rules."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from scalekit.testing import FakeClock
from scalekit.web import HttpCache, WSGICacheMiddleware

START = 1_700_000_000.0


def _get(app: Any) -> tuple[str, dict[str, str], bytes]:
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/a",
        "HTTP_HOST": "example.com",
        "wsgi.url_scheme": "http",
        "QUERY_STRING": "",
    }
    started: list[Any] = []
    body = b"".join(app(environ, lambda status, headers: started.append((status, headers))))
    return started[-1][0], dict(started[-1][1]), body


def test_an_error_page_replaces_headers_that_were_not_sent() -> None:
    # PEP 3333's own example: start_response again with exc_info, before any body
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        try:
            start_response("200 OK", [("Cache-Control", "max-age=60")])
            raise ValueError("the page failed")
        except ValueError:
            start_response("500 Oops", [("Content-Type", "text/plain")], sys.exc_info())
            return [b"error page"]

    cached = WSGICacheMiddleware(app, HttpCache(clock=FakeClock(START)))
    status, headers, body = _get(cached)
    assert (status, body) == ("500 Internal Server Error", b"error page")
    assert headers["Cache-Status"] == "scalekit; fwd=uri-miss"
    assert cached.cache.stats().stores == 0


def test_start_response_twice_without_exc_info_is_an_error() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("500 Oops", [("Cache-Control", "max-age=60")])
        start_response("200 OK", [("Cache-Control", "max-age=60")])
        return [b"x"]

    cached = WSGICacheMiddleware(app, HttpCache(clock=FakeClock(START)))
    with pytest.raises(RuntimeError, match="twice"):
        _get(cached)
    assert cached.cache.stats().stores == 0
