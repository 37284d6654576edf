"""CacheMiddleware (ASGI) and WSGICacheMiddleware driven by hand: every rule runs
through both shells, which share one core."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from scalekit.errors import BackendError
from scalekit.testing import FakeClock
from scalekit.web import CacheMiddleware, HttpCache, WSGICacheMiddleware
from scalekit.web._headers import format_http_date
from tests.web._http_apps import Origin, Result, asgi_get, wsgi_get

START = 1_700_000_000.0


class Setup:
    def __init__(self, shell: str, **options: Any) -> None:
        self.clock = FakeClock(start=START)
        options.setdefault("clock", self.clock)
        self.cache = HttpCache(**options)
        self.origin = Origin()
        self.shell = shell
        if shell == "asgi":
            self.app: Any = CacheMiddleware(self.origin.asgi, self.cache)
        else:
            self.app = WSGICacheMiddleware(self.origin.wsgi, self.cache)

    def get(
        self,
        url: str,
        headers: list[tuple[str, str]] | None = None,
        method: str = "GET",
        host: str = "example.com",
    ) -> Result:
        run: Callable[..., Result] = asgi_get if self.shell == "asgi" else wsgi_get
        return run(self.app, url, headers or [], method, host)


@pytest.fixture(params=["asgi", "wsgi"])
def make(request: pytest.FixtureRequest) -> Callable[..., Setup]:
    return lambda **options: Setup(request.param, **options)


MAX60 = [("Cache-Control", "max-age=60")]


def test_a_miss_is_stored_and_the_next_request_is_a_hit_with_age(
    make: Callable[..., Setup],
) -> None:
    s = make()
    s.origin.route("/a", headers=MAX60, body=b"A")
    first = s.get("/a")
    assert (first.status, first.body, first.cache_status) == (
        200,
        b"A",
        "scalekit; fwd=uri-miss; stored",
    )
    assert "age" not in first.headers
    s.clock.advance(10)
    second = s.get("/a")
    assert (second.body, second.cache_status, second.headers["age"]) == (
        b"A",
        "scalekit; hit; ttl=50",
        "10",
    )
    assert s.origin.calls == 1
    stats = s.cache.stats()
    assert (stats.hits, stats.misses, stats.stores) == (1, 1, 1)


def test_set_cookie_is_never_stored(make: Callable[..., Setup]) -> None:
    s = make()
    s.origin.route("/a", headers=[*MAX60, ("Set-Cookie", "id=1")])
    assert s.get("/a").headers["set-cookie"] == "id=1"
    again = s.get("/a")
    assert again.cache_status == "scalekit; fwd=uri-miss"
    assert s.origin.calls == 2


def test_cookie_and_authorization_bypass_unless_the_path_is_public(
    make: Callable[..., Setup],
) -> None:
    s = make(public=["/pub/"])
    for path in ("/a", "/pub/a"):
        s.origin.route(path, headers=[("Cache-Control", "public, max-age=60")])
    for header in ("Cookie", "Authorization"):
        result = s.get("/a", [(header, "x")])
        assert result.cache_status == "scalekit; fwd=bypass"
    s.get("/pub/a", [("Cookie", "x")])
    assert s.get("/pub/a", [("Authorization", "y")]).cache_status.startswith("scalekit; hit")
    assert s.cache.stats().bypasses == 2


@pytest.mark.parametrize("declared", ["/news", "/news/"])
def test_a_public_path_covers_whole_segments_only(
    make: Callable[..., Setup], declared: str
) -> None:
    s = make(public=[declared])
    expected = {"/news": "hit", "/news/today": "hit", "/newsletter": "bypass", "/new": "bypass"}
    for path in expected:
        s.origin.route(path, headers=[("Cache-Control", "public, max-age=60")])
        s.get(path, [("Cookie", "session=1")])
    for path, outcome in expected.items():
        status = s.get(path, [("Cookie", "session=1")]).cache_status
        assert status.startswith("scalekit; hit" if outcome == "hit" else "scalekit; fwd=bypass")


def test_authorization_on_a_public_path_needs_public_s_maxage_or_must_revalidate(
    make: Callable[..., Setup],
) -> None:
    s = make(public=["/"])
    s.origin.route("/plain", headers=MAX60)
    s.origin.route("/smax", headers=[("Cache-Control", "s-maxage=60")])
    s.get("/plain", [("Authorization", "x")])
    assert s.get("/plain", [("Authorization", "x")]).cache_status == "scalekit; fwd=uri-miss"
    s.get("/smax", [("Authorization", "x")])
    assert s.get("/smax", [("Authorization", "x")]).cache_status.startswith("scalekit; hit")


def test_no_explicit_freshness_is_stored_only_when_opted_in(make: Callable[..., Setup]) -> None:
    s = make()
    s.origin.route("/a")
    s.get("/a")
    assert s.get("/a").cache_status == "scalekit; fwd=uri-miss"
    t = make(default_ttl=30)
    t.origin.route("/a")
    t.get("/a")
    assert t.get("/a").cache_status == "scalekit; hit; ttl=30"


def test_heuristic_freshness_is_a_tenth_of_the_last_modified_age_capped(
    make: Callable[..., Setup],
) -> None:
    s = make(heuristic=True, max_heuristic=50)
    s.origin.route(
        "/a",
        headers=[
            ("Last-Modified", format_http_date(START - 100)),
            ("Date", format_http_date(START)),
        ],
    )
    s.origin.route(
        "/b",
        headers=[
            ("Last-Modified", format_http_date(START - 10_000)),
            ("Date", format_http_date(START)),
        ],
    )
    s.get("/a")
    s.get("/b")
    assert s.get("/a").cache_status == "scalekit; hit; ttl=10"
    assert s.get("/b").cache_status == "scalekit; hit; ttl=50"


@pytest.mark.parametrize("control", ["private, max-age=60", "no-store, max-age=60"])
def test_private_and_no_store_are_not_stored(make: Callable[..., Setup], control: str) -> None:
    s = make()
    s.origin.route("/a", headers=[("Cache-Control", control)])
    s.get("/a")
    assert s.get("/a").cache_status == "scalekit; fwd=uri-miss"
    assert s.origin.calls == 2


def test_private_is_stored_by_a_private_cache(make: Callable[..., Setup]) -> None:
    s = make(shared=False)
    s.origin.route("/a", headers=[("Cache-Control", "private, max-age=60")])
    s.get("/a")
    assert s.get("/a").cache_status.startswith("scalekit; hit")


def test_freshness_order(make: Callable[..., Setup]) -> None:
    s = make()
    date = ("Date", format_http_date(START))
    s.origin.route(
        "/sc",
        headers=[("Surrogate-Control", "max-age=5"), ("Cache-Control", "s-maxage=7, max-age=9")],
    )
    s.origin.route("/s", headers=[("Cache-Control", "s-maxage=7, max-age=9")])
    s.origin.route(
        "/m",
        headers=[("Cache-Control", "max-age=9"), ("Expires", format_http_date(START + 11)), date],
    )
    s.origin.route("/e", headers=[("Expires", format_http_date(START + 11)), date])
    s.origin.route("/bad", headers=[("Expires", "0"), date, ("ETag", '"v"')])
    for path, ttl in (("/sc", 5), ("/s", 7), ("/m", 9), ("/e", 11)):
        s.get(path)
        assert s.get(path).cache_status == f"scalekit; hit; ttl={ttl}", path
    s.get("/bad")
    assert s.get("/bad").cache_status.startswith("scalekit; fwd=stale")


def test_surrogate_fields_are_honoured_and_stripped(make: Callable[..., Setup]) -> None:
    s = make()
    s.origin.route(
        "/a",
        headers=[
            ("Surrogate-Control", "max-age=60"),
            ("Surrogate-Key", "a b"),
            ("Cache-Control", "no-cache, max-age=0"),
        ],
    )
    s.origin.route("/n", headers=[("Surrogate-Control", "no-store"), *MAX60])
    for result in (s.get("/a"), s.get("/a")):
        assert "surrogate-control" not in result.headers
        assert "surrogate-key" not in result.headers
        assert result.headers["cache-control"] == "no-cache, max-age=0"
    assert s.origin.calls == 1
    s.get("/n")
    assert s.get("/n").cache_status == "scalekit; fwd=uri-miss"


def test_a_stale_response_is_revalidated_and_a_304_updates_its_headers(
    make: Callable[..., Setup],
) -> None:
    s = make()
    s.origin.route("/a", headers=[*MAX60, ("ETag", '"v1"'), ("X-Version", "1")], body=b"full")
    s.get("/a")
    s.clock.advance(61)
    s.origin.route(
        "/a",
        status=304,
        headers=[("Cache-Control", "max-age=100"), ("ETag", '"v1"'), ("X-Version", "2")],
        body=b"",
    )
    result = s.get("/a")
    assert s.origin.seen[-1]["if-none-match"] == '"v1"'
    assert (result.status, result.body) == (200, b"full")
    assert result.headers["x-version"] == "2"
    assert result.cache_status == "scalekit; fwd=stale; fwd-status=304; stored"
    later = s.get("/a")
    assert (later.cache_status, later.headers["x-version"]) == ("scalekit; hit; ttl=100", "2")
    assert s.cache.stats().revalidations == 1


def test_a_stale_response_replaced_by_a_new_one(make: Callable[..., Setup]) -> None:
    s = make()
    s.origin.route("/a", headers=[*MAX60, ("ETag", '"1"')], body=b"old")
    s.get("/a")
    s.clock.advance(60)
    s.origin.route("/a", headers=MAX60, body=b"new")
    assert s.get("/a").cache_status == "scalekit; fwd=stale; fwd-status=200; stored"
    assert s.get("/a").body == b"new"


def test_vary_variants(make: Callable[..., Setup]) -> None:
    s = make()
    s.origin.routes["/a"] = lambda req: (
        200,
        [*MAX60, ("Vary", "Accept-Language")],
        req.get("accept-language", "none").encode(),
    )
    assert s.get("/a", [("Accept-Language", "fr")]).body == b"fr"
    en = s.get("/a", [("Accept-Language", "en")])
    assert (en.body, en.cache_status) == (b"en", "scalekit; fwd=vary-miss; stored")
    assert s.get("/a", [("Accept-Language", "fr")]).body == b"fr"
    assert s.get("/a", [("Accept-Language", "en")]).cache_status.startswith("scalekit; hit")
    assert s.get("/a").body == b"none"
    assert s.origin.calls == 3


def test_vary_star_is_not_stored(make: Callable[..., Setup]) -> None:
    s = make()
    s.origin.route("/a", headers=[*MAX60, ("Vary", "*")])
    s.get("/a")
    assert s.get("/a").cache_status == "scalekit; fwd=uri-miss"


@pytest.mark.parametrize(
    ("condition", "status"),
    [
        ([("If-None-Match", '"v1"')], 304),
        ([("If-None-Match", 'W/"v1"')], 304),
        ([("If-None-Match", '"x", "v1"')], 304),
        ([("If-None-Match", "*")], 304),
        ([("If-None-Match", '"x"')], 200),
        ([("If-None-Match", '"x"'), ("If-Modified-Since", format_http_date(START + 10))], 200),
        ([("If-Modified-Since", format_http_date(START - 100))], 304),
        ([("If-Modified-Since", format_http_date(START - 200))], 200),
    ],
)
def test_conditional_requests_answered_from_the_store(
    make: Callable[..., Setup], condition: list[tuple[str, str]], status: int
) -> None:
    s = make()
    s.origin.route(
        "/a", headers=[*MAX60, ("ETag", '"v1"'), ("Last-Modified", format_http_date(START - 100))]
    )
    s.get("/a")
    result = s.get("/a", condition)
    assert result.status == status
    assert result.cache_status.startswith("scalekit; hit")
    if status == 304:
        assert result.body == b""
        assert result.headers["etag"] == '"v1"'
        assert result.headers["cache-control"] == "max-age=60"
        assert "age" in result.headers
    assert s.origin.calls == 1


def test_a_conditional_miss_asks_the_app_unconditionally(make: Callable[..., Setup]) -> None:
    s = make()
    s.origin.route("/a", headers=[*MAX60, ("ETag", '"v1"')])
    result = s.get("/a", [("If-None-Match", '"v1"')])
    assert "if-none-match" not in s.origin.seen[0]
    assert result.status == 304
    assert s.get("/a").status == 200


def test_head_is_answered_from_a_stored_get(make: Callable[..., Setup]) -> None:
    s = make()
    s.origin.route("/a", headers=[*MAX60, ("Content-Length", "4")])
    s.get("/a")
    head = s.get("/a", method="HEAD")
    assert (head.status, head.body, head.headers["content-length"]) == (200, b"", "4")
    assert s.origin.calls == 1


def test_unsafe_methods_invalidate_the_uri_and_same_origin_locations(
    make: Callable[..., Setup],
) -> None:
    s = make()
    for path in ("/a", "/b", "/c", "/d"):
        s.origin.route(path, headers=MAX60)
        s.get(path)
    s.origin.route(
        "/a", status=303, headers=[("Location", "/b"), ("Content-Location", "http://other.com/c")]
    )
    post = s.get("/a", method="POST")
    assert post.cache_status == "scalekit; fwd=bypass"
    assert s.get("/a", method="GET").cache_status == "scalekit; fwd=uri-miss"
    s.origin.route("/a", headers=MAX60)
    assert s.get("/b").cache_status == "scalekit; fwd=uri-miss; stored"
    assert s.get("/c").cache_status.startswith("scalekit; hit")
    s.origin.route("/d", status=500)
    s.get("/d", method="DELETE")
    assert s.get("/d").cache_status.startswith("scalekit; hit")  # an error invalidates nothing


def test_stale_while_revalidate_serves_stale_and_refreshes_once_wsgi() -> None:
    """(The ASGI twin, on one event loop, is in test_coalescing.)"""
    import threading

    s = Setup("wsgi")

    refreshed = threading.Event()
    release = threading.Event()
    s.origin.route(
        "/a", headers=[("Cache-Control", "max-age=10, stale-while-revalidate=30")], body=b"v1"
    )
    s.get("/a")
    s.clock.advance(15)

    def slow(req: dict[str, str]) -> tuple[int, list[tuple[str, str]], bytes]:
        release.wait(5)
        refreshed.set()
        return 200, [("Cache-Control", "max-age=10")], b"v2"

    s.origin.routes["/a"] = slow
    first = s.get("/a")
    second = s.get("/a")
    for result in (first, second):
        assert (result.body, result.cache_status) == (b"v1", "scalekit; hit; ttl=-5; detail=stale")
    refreshers = [t for t in threading.enumerate() if t.name == "scalekit-web-refresh"]
    assert len(refreshers) == 1
    release.set()
    refreshers[0].join(5)
    assert refreshed.is_set()
    assert s.get("/a").body == b"v2"
    assert s.origin.calls == 2
    assert s.cache.stats().refreshes == 1


def test_stale_if_error_serves_stale_within_the_window(make: Callable[..., Setup]) -> None:
    s = make()
    s.origin.route("/a", headers=[("Cache-Control", "max-age=10, stale-if-error=30")], body=b"ok")
    s.origin.route("/b", headers=[("Cache-Control", "max-age=10, stale-if-error=30")], body=b"ok")
    s.get("/a")
    s.get("/b")
    s.clock.advance(20)
    s.origin.raise_on.add("/a")
    s.origin.route("/b", status=503, body=b"down")
    for path in ("/a", "/b"):
        result = s.get(path)
        assert (result.status, result.body) == (200, b"ok")
        assert result.cache_status == "scalekit; hit; ttl=-10; detail=stale"
    s.clock.advance(30)
    assert s.get("/b").status == 503
    with pytest.raises(RuntimeError, match="the app failed"):
        s.get("/a")


def test_must_revalidate_is_never_served_stale(make: Callable[..., Setup]) -> None:
    s = make()
    s.origin.route(
        "/a",
        headers=[
            (
                "Cache-Control",
                "max-age=10, must-revalidate, stale-while-revalidate=60, stale-if-error=60",
            )
        ],
    )
    s.get("/a")
    s.clock.advance(11)
    s.origin.route("/a", status=500)
    assert s.get("/a").status == 500


def test_purge_drops_every_response_of_a_tag(make: Callable[..., Setup]) -> None:
    s = make()
    s.origin.route("/a", headers=[*MAX60, ("Surrogate-Key", "news sport")])
    s.origin.route("/b", headers=[*MAX60, ("Surrogate-Key", "sport")])
    s.origin.route("/c", headers=[*MAX60, ("Surrogate-Key", "weather")])
    for path in "abc":
        s.get("/" + path)
    s.cache.purge("sport")
    assert [s.get("/" + p).cache_status for p in "abc"] == [
        "scalekit; fwd=uri-miss; stored",
        "scalekit; fwd=uri-miss; stored",
        "scalekit; hit; ttl=60",
    ]
    assert s.get("/a").cache_status == "scalekit; hit; ttl=60"
    assert s.cache.stats().purges == 1


def test_the_query_is_normalised(make: Callable[..., Setup]) -> None:
    s = make()
    s.origin.route("/a", headers=MAX60)
    s.get("/a?b=2&a=1&utm_source=x")
    assert s.get("/a?a=1&fbclid=z&b=2").cache_status.startswith("scalekit; hit")
    assert s.get("/a?a=1&b=3").cache_status == "scalekit; fwd=uri-miss; stored"


def test_hosts(make: Callable[..., Setup]) -> None:
    s = make(allow_hosts=["example.com"])
    s.origin.route("/a", headers=MAX60)
    s.get("/a", host="EXAMPLE.com:80")
    assert s.get("/a").cache_status.startswith("scalekit; hit")
    assert s.get("/a", host="evil.com").cache_status == "scalekit; fwd=bypass"
    t = make()
    t.origin.route("/a", headers=MAX60, body=b"x")
    t.get("/a", host="one.com")
    assert t.get("/a", host="two.com").cache_status == "scalekit; fwd=uri-miss; stored"


def test_request_directives(make: Callable[..., Setup]) -> None:
    s = make()
    s.origin.route("/a", headers=[*MAX60, ("ETag", '"e"')])
    s.get("/a")
    assert s.get("/a", [("Cache-Control", "no-store")]).cache_status == "scalekit; fwd=bypass"
    assert (
        s.get("/a", [("Cache-Control", "no-cache")]).cache_status == "scalekit; fwd=bypass; stored"
    )
    assert s.get("/a", [("Pragma", "no-cache")]).cache_status == "scalekit; fwd=bypass; stored"
    s.clock.advance(20)
    assert s.get("/a", [("Cache-Control", "max-age=10")]).cache_status.startswith(
        "scalekit; fwd=request"
    )
    s.clock.advance(20)
    assert s.get("/a", [("Cache-Control", "min-fresh=50")]).cache_status.startswith(
        "scalekit; fwd=request"
    )
    s.clock.advance(70)
    assert s.get("/a", [("Cache-Control", "max-stale=20")]).cache_status.startswith("scalekit; hit")
    assert s.get("/a", [("Cache-Control", "max-stale")]).cache_status.startswith("scalekit; hit")
    assert s.get("/x", [("Cache-Control", "only-if-cached")]).status == 504


def test_a_store_that_fails_costs_speed_not_the_request(make: Callable[..., Setup]) -> None:
    class Broken:
        def __getattr__(self, name: str) -> Any:
            def fail(*args: Any, **kwargs: Any) -> Any:
                raise BackendError("down", backend="test")

            return fail

        def get(self, *args: Any, **kwargs: Any) -> Any:
            raise BackendError("down", backend="test")

        set = add = delete = get_many = get

    s = make(store=Broken())
    s.origin.route("/a", headers=[*MAX60, ("Surrogate-Key", "t")], body=b"A")
    assert s.get("/a").body == b"A"
    assert s.get("/a").body == b"A"
    assert s.cache.stats().errors >= 2
    with pytest.raises(BackendError):
        s.cache.purge("t")


def test_a_body_over_max_body_streams_through_unstored(make: Callable[..., Setup]) -> None:
    s = make(max_body=10)
    s.origin.route("/big", headers=MAX60, body=b"x" * 11)
    s.origin.route("/small", headers=MAX60, body=b"x" * 10)
    big = s.get("/big")
    assert (big.body, big.cache_status) == (b"x" * 11, "scalekit; fwd=uri-miss")
    assert s.get("/big").cache_status == "scalekit; fwd=uri-miss"
    s.get("/small")
    assert s.get("/small").cache_status.startswith("scalekit; hit")


def test_server_errors_are_not_stored(make: Callable[..., Setup]) -> None:
    s = make()
    s.origin.route("/a", status=500, headers=MAX60)
    s.origin.route("/nf", status=404, headers=MAX60)
    s.get("/a")
    s.get("/nf")
    assert s.get("/a").cache_status == "scalekit; fwd=uri-miss"
    assert s.get("/nf").cache_status.startswith("scalekit; hit")


def test_non_http_scopes_pass_through() -> None:
    import asyncio

    seen = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    asyncio.run(CacheMiddleware(app, HttpCache())({"type": "lifespan"}, None, None))  # type: ignore[arg-type]
    assert seen == ["lifespan"]


def test_surrogate_control_still_rules_after_a_304(make: Callable[..., Setup]) -> None:
    s = make()
    s.origin.route(
        "/a",
        headers=[
            ("Surrogate-Control", "max-age=30"),
            ("Cache-Control", "max-age=5"),
            ("ETag", '"1"'),
        ],
    )
    s.get("/a")
    s.clock.advance(31)
    s.origin.route("/a", status=304, headers=[("ETag", '"1"')], body=b"")
    assert s.get("/a").cache_status == "scalekit; fwd=stale; fwd-status=304; stored"
    assert s.get("/a").cache_status == "scalekit; hit; ttl=30"


def test_the_apps_own_cache_status_is_replaced(make: Callable[..., Setup]) -> None:
    s = make()
    s.origin.route("/a", headers=[*MAX60, ("Cache-Status", "upstream; hit")])
    assert [v for n, v in s.get("/a").header_list if n.lower() == "cache-status"] == [
        "scalekit; fwd=uri-miss; stored"
    ]
    assert [v for n, v in s.get("/a").header_list if n.lower() == "cache-status"] == [
        "scalekit; hit; ttl=60"
    ]


def test_a_response_that_cannot_be_stored_streams_at_once_asgi() -> None:
    import asyncio

    more = asyncio.Event()
    received: list[Any] = []

    async def events(scope: Any, receive: Any, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        await more.wait()
        await send({"type": "http.response.body", "body": b"data: 2\n\n"})

    app = CacheMiddleware(events, HttpCache(clock=FakeClock(START)))

    async def run() -> None:
        async def receive() -> Any:
            return {"type": "http.request", "body": b""}

        async def send(message: Any) -> None:
            received.append(message)
            if message.get("body") == b"data: 1\n\n":
                more.set()  # the first event reached the client before the app went on

        scope = {
            "type": "http",
            "method": "GET",
            "scheme": "http",
            "path": "/events",
            "query_string": b"",
            "headers": [(b"host", b"example.com")],
        }
        await asyncio.wait_for(app(scope, receive, send), 5)

    asyncio.run(run())
    assert [m.get("body") for m in received[1:]] == [b"data: 1\n\n", b"data: 2\n\n"]
    assert (b"cache-status", b"scalekit; fwd=uri-miss") in received[0]["headers"]


def test_a_response_that_cannot_be_stored_streams_at_once_wsgi() -> None:
    produced: list[bytes] = []

    def events(environ: Any, start_response: Any) -> Any:
        start_response("200 OK", [("Content-Type", "text/event-stream")])
        for n in range(3):
            produced.append(b"%d" % n)
            yield b"data: %d\n\n" % n

    app = WSGICacheMiddleware(events, HttpCache(clock=FakeClock(START)))
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/events",
        "QUERY_STRING": "",
        "HTTP_HOST": "example.com",
        "wsgi.url_scheme": "http",
    }
    started: list[Any] = []
    body = iter(app(environ, lambda status, headers, exc_info=None: started.append(headers)))
    assert produced == [b"0"]  # only what was read to see how the response starts
    assert ("Cache-Status", "scalekit; fwd=uri-miss") in started[0]
    assert list(body) == [b"data: 0\n\n", b"data: 1\n\n", b"data: 2\n\n"]


def test_a_truncated_body_is_not_stored(make: Callable[..., Setup]) -> None:
    s = make()
    s.origin.route("/a", headers=[*MAX60, ("Content-Length", "10")], body=b"short")
    s.get("/a")
    assert s.get("/a").cache_status == "scalekit; fwd=uri-miss"


def test_a_304_without_date_renews_freshness_from_when_it_came(make: Callable[..., Setup]) -> None:
    s = make()
    s.origin.route("/a", headers=[("Cache-Control", "max-age=10"), ("ETag", '"1"')])
    first = s.get("/a")
    assert first.headers["date"] == format_http_date(START)  # appended: the app sent none
    s.clock.advance(30)
    s.origin.route("/a", status=304, headers=[("ETag", '"1"')], body=b"")
    s.get("/a")
    assert s.get("/a").cache_status == "scalekit; hit; ttl=10"


def test_a_relative_location_with_dot_segments_is_resolved(make: Callable[..., Setup]) -> None:
    s = make()
    s.origin.route("/items/1", headers=MAX60)
    s.get("/items/1")
    s.origin.route("/items/new", status=201, headers=[("Location", "../items/1")])
    s.get("/items/new", method="POST")
    assert s.get("/items/1").cache_status == "scalekit; fwd=uri-miss; stored"


def test_a_304_for_another_representation_updates_nothing(make: Callable[..., Setup]) -> None:
    s = make()
    s.origin.route("/a", headers=[("Cache-Control", "max-age=10"), ("ETag", '"1"')], body=b"one")
    s.get("/a")
    s.clock.advance(20)
    answers = iter([(304, [("ETag", '"2"')], b""), (200, [*MAX60, ("ETag", '"2"')], b"two")])
    s.origin.routes["/a"] = lambda req: next(answers)
    result = s.get("/a")
    assert (result.status, result.body) == (200, b"two")
    assert "if-none-match" not in s.origin.seen[-1]
    assert s.get("/a").body == b"two"


def test_a_request_may_allow_stale_if_error(make: Callable[..., Setup]) -> None:
    s = make()
    s.origin.route("/a", headers=[("Cache-Control", "max-age=10"), ("ETag", '"1"')], body=b"ok")
    s.get("/a")
    s.clock.advance(20)
    s.origin.route("/a", status=503)
    assert s.get("/a").status == 503
    result = s.get("/a", [("Cache-Control", "stale-if-error=60")])
    assert (result.status, result.body) == (200, b"ok")


def test_a_head_response_never_stands_for_the_get(make: Callable[..., Setup]) -> None:
    s = make()
    s.origin.routes["/a"] = lambda req: (
        200,
        MAX60,
        b"" if req[":method"] == "HEAD" else b"full",
    )
    s.get("/a", [("Cache-Control", "no-cache")], method="HEAD")
    assert s.get("/a").body == b"full"
    s.origin.route(
        "/b", headers=[("Cache-Control", "max-age=10, stale-while-revalidate=60")], body=b"B"
    )
    s.get("/b")
    s.clock.advance(20)
    assert s.get("/b", method="HEAD").cache_status.endswith("detail=stale")
    assert s.cache.stats().refreshes == 0
    assert s.get("/b").body == b"B"


def test_a_stored_response_gets_its_content_length(make: Callable[..., Setup]) -> None:
    s = make()
    s.origin.route("/a", headers=MAX60, body=b"12345")
    s.get("/a")
    assert s.get("/a").headers["content-length"] == "5"
    assert s.get("/a", method="HEAD").headers["content-length"] == "5"
