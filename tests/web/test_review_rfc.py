"""Review: RFC 9110 conditional requests answered from the store."""

from __future__ import annotations

from scalekit.testing import FakeClock
from scalekit.web import HttpCache, WSGICacheMiddleware
from tests.web._http_apps import Origin, wsgi_get

START = 1_700_000_000.0


def test_if_none_match_star_matches_a_stored_response_without_an_etag() -> None:
    # RFC 9110 13.1.2: "*" is false (304 for a GET) when a current representation exists
    origin = Origin()
    origin.route("/a", headers=[("Cache-Control", "max-age=60")], body=b"A")
    cached = WSGICacheMiddleware(origin.wsgi, HttpCache(clock=FakeClock(START)))
    assert wsgi_get(cached, "/a", [], "GET", "example.com").body == b"A"
    again = wsgi_get(cached, "/a", [("If-None-Match", "*")], "GET", "example.com")
    assert (again.status, again.body) == (304, b"")
