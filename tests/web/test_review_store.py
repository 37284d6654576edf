"""Review: a value in the store that this version would not have written
(foreign, corrupt, from another version) reads as a miss: never a crash, never
served."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest

from scalekit.testing import FakeClock
from scalekit.web import HttpCache, WSGICacheMiddleware
from tests.web.test_review_keys import _DictStore

START = 1_700_000_000.0

CORRUPT = {
    "status bool": (1, True),
    "status out of range": (1, 99999),
    "status str": (1, "200"),
    "lifetime inf": (6, math.inf),
    "lifetime nan": (6, math.nan),
    "response time inf": (4, math.inf),
    "initial age -inf": (5, -math.inf),
    "header not latin-1": (2, [["X-Bad", "\u2603"]]),
    "header CR LF": (2, [["X-Bad", "a\r\nSet-Cookie: id=1"]]),
    "header name not a token": (2, [["X Bad:", "a"]]),
    "header never stored": (2, [["Set-Cookie", "id=1"], ["Cache-Control", "max-age=60"]]),
    "body not base64": (3, "!!!"),
    "body not its Content-Length": (3, "aGk="),
    "tags not a dict": (13, []),
    "vary a str": (11, "accept"),
    "vary values not its names": (12, ["x"]),
    "stale window inf": (7, math.inf),
    "flag not a bool": (9, "yes"),
}


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
    return started[0][0], dict(started[0][1]), body


def _origin(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Cache-Control", "max-age=60"), ("ETag", '"e"')])
    return [b"hello"]


@pytest.mark.parametrize("case", list(CORRUPT))
def test_a_corrupt_stored_response_is_a_miss(case: str) -> None:
    store = _DictStore()
    _get(WSGICacheMiddleware(_origin, HttpCache(store, clock=FakeClock(START))))
    (key,) = (key for key in store.data if key.startswith("web:http://"))
    index, value = CORRUPT[case]
    bad = copy.deepcopy(store.data[key])
    bad[index] = value
    bad[14] = "another id"  # as another process (or version) wrote it
    store.data[key] = bad
    status, headers, body = _get(
        WSGICacheMiddleware(_origin, HttpCache(store, clock=FakeClock(START)))
    )
    assert (status, headers["Cache-Status"], body) == (
        "200 OK",
        "scalekit; fwd=uri-miss; stored",
        b"hello",
    )
    assert "X-Bad" not in headers
    assert "Set-Cookie" not in headers


@pytest.mark.parametrize("names", ["accept", [], [1], None])
def test_a_corrupt_vary_marker_is_a_miss(names: Any) -> None:
    store = _DictStore()
    store.data["web:http://example.com/2:/a?"] = ["vary", names, "g"]
    status, headers, body = _get(
        WSGICacheMiddleware(_origin, HttpCache(store, clock=FakeClock(START)))
    )
    assert (status, headers["Cache-Status"]) == ("200 OK", "scalekit; fwd=uri-miss; stored")
    assert body == b"hello"


def test_a_stored_response_read_back_with_tuples_for_arrays_is_served() -> None:
    # a serializer (msgpack with use_list=False) may give tuples for JSON arrays
    store = _DictStore()
    _get(WSGICacheMiddleware(_origin, HttpCache(store, clock=FakeClock(START))))
    (key,) = (key for key in store.data if key.startswith("web:http://"))
    value = store.data[key]
    store.data[key] = [
        tuple(tuple(item) for item in part) if index == 2 else part
        for index, part in enumerate(value)
    ]
    status, headers, body = _get(
        WSGICacheMiddleware(_origin, HttpCache(store, clock=FakeClock(START)))
    )
    assert (status, headers["Cache-Status"], body) == ("200 OK", "scalekit; hit; ttl=60", b"hello")
