"""RFC 9111 conformance, part 3: what ISSUE15 and WEB_API add to the RFC.

stale-while-revalidate and stale-if-error (RFC 5861), Cache-Status (RFC 9211) tokens,
request coalescing, the cache key (query normalisation, allowed hosts), Surrogate-Key
purge and Surrogate-Control, size limit, incomplete responses. Every test runs on the
ASGI and the WSGI middleware, unless it is about one protocol.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine
from typing import Any

import pytest

from tests.web import _http_apps as h
from tests.web._http_apps import Reply, Request, reply

make = h.make_fixture
d = h.d_fixture


def run(d: h.Driver, coroutine: Coroutine[Any, Any, Any]) -> Any:
    if isinstance(d, h.AsgiDriver):
        return d.loop.run_until_complete(coroutine)
    return asyncio.run(coroutine)


# -- RFC 5861: stale-while-revalidate --------------------------------------------------------------


def test_stale_while_revalidate_serves_stale_and_refreshes_once(d: h.Driver) -> None:
    d.app.set(
        [
            reply("max-age=10, stale-while-revalidate=30", b"old"),
            reply("max-age=10, stale-while-revalidate=30", b"new"),
        ]
    )
    d.get("/a")
    stores = d.cache.stats().stores
    d.clock.advance(15)
    d.app.hold()
    for _ in range(5):
        got = d.get("/a")
        assert (got.status, got.body) == (200, b"old")
        assert got.cs == {"hit": True, "ttl": -5, "detail": "stale"}
        assert got.age == 15
    d.wait_for(lambda: d.app.calls == 2)
    d.app.release()
    d.wait_for(lambda: d.cache.stats().stores > stores)
    fresh = d.get("/a")
    assert (fresh.body, fresh.cs.get("hit")) == (b"new", True)
    assert d.app.calls == 2, "one background refresh, not one per stale request"


def test_stale_while_revalidate_concurrent_requests_refresh_once(d: h.Driver) -> None:
    d.app.set(
        [
            reply("max-age=10, stale-while-revalidate=30", b"old"),
            reply("max-age=10, stale-while-revalidate=30", b"new"),
        ]
    )
    d.get("/a")
    stores = d.cache.stats().stores
    d.clock.advance(15)
    responses = d.many([{"path": "/a"}] * 20)
    assert {r.body for r in responses} <= {b"old", b"new"}
    assert any(r.cs.get("detail") == "stale" for r in responses)
    d.wait_for(lambda: d.cache.stats().stores > stores)
    assert d.get("/a").body == b"new"
    assert d.app.calls == 2


def test_stale_while_revalidate_window_ends(d: h.Driver) -> None:
    d.app.set(
        [
            reply("max-age=10, stale-while-revalidate=30", b"old", headers={"ETag": '"x"'}),
            reply("max-age=10", b"new"),
        ]
    )
    d.get("/a")
    d.clock.advance(41)
    got = d.get("/a")
    assert got.body == b"new"
    assert got.cs == {"fwd": "stale", "fwd-status": 200, "stored": True}


# -- RFC 5861: stale-if-error ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "failure",
    [Reply(500, {}, b"e"), Reply(502, {}, b"e"), Reply(503, {}, b"e"), Reply(504, {}, b"e"),
     Reply(raises=RuntimeError("down"))],
    ids=["500", "502", "503", "504", "raises"],
)  # fmt: skip
def test_stale_if_error_serves_stale_on_error(d: h.Driver, failure: Reply) -> None:
    d.app.set([reply("max-age=10, stale-if-error=60", b"old"), failure])
    d.get("/a")
    d.clock.advance(20)
    got = d.get("/a")
    assert (got.status, got.body) == (200, b"old")
    assert got.cs == {"hit": True, "ttl": -10, "detail": "stale"}
    assert got.age == 20
    assert d.app.calls == 2


def test_stale_if_error_window_ends(d: h.Driver) -> None:
    d.app.set([reply("max-age=10, stale-if-error=60", b"old"), Reply(503, {}, b"e")])
    d.get("/a")
    d.clock.advance(71)
    got = d.get("/a")
    assert (got.status, got.body) == (503, b"e")


@pytest.mark.parametrize("status", [404, 410, 400])
def test_stale_if_error_is_not_for_non_errors(d: h.Driver, status: int) -> None:
    d.app.set([reply("max-age=10, stale-if-error=60", b"old"), Reply(status, {}, b"gone")])
    d.get("/a")
    d.clock.advance(20)
    assert d.get("/a").status == status


# -- RFC 9211: Cache-Status ------------------------------------------------------------------------


def test_cache_status_tokens_through_a_life(d: h.Driver) -> None:
    d.app.set(lambda r: reply("max-age=60", headers={"Vary": "Accept-Language", "ETag": '"x"'}))
    assert d.get("/a").cs == {"fwd": "uri-miss", "stored": True}
    assert d.get("/a").cs == {"hit": True, "ttl": 60}
    d.clock.advance(10)
    assert d.get("/a").cs == {"hit": True, "ttl": 50}
    assert d.get("/a", {"Accept-Language": "fr"}).cs == {"fwd": "vary-miss", "stored": True}
    d.clock.advance(60)
    assert d.get("/a").cs == {"fwd": "stale", "fwd-status": 200, "stored": True}


@pytest.mark.parametrize(
    "script",
    [reply("no-store"), reply(None), reply("max-age=60", status=500, headers={"X": "1"}),
     reply("max-age=60", headers={"Set-Cookie": "a=1"})],
    ids=["no-store", "no-freshness", "500", "set-cookie"],
)  # fmt: skip
def test_cache_status_on_a_miss_not_stored(d: h.Driver, script: Reply) -> None:
    d.app.set(script)
    got = d.get("/a")
    if script.status == 500:
        assert got.cs.get("fwd") == "uri-miss"
    else:
        assert got.cs == {"fwd": "uri-miss"}


@pytest.mark.parametrize(
    ("method", "headers"),
    [
        ("POST", {}),
        ("DELETE", {}),
        ("GET", {"Cookie": "sid=1"}),
        ("GET", {"Authorization": "Bearer x"}),
        ("GET", {"Cache-Control": "no-store"}),
        ("GET", {"Cache-Control": "no-cache"}),
    ],
)
def test_cache_status_bypass(d: h.Driver, method: str, headers: dict[str, str]) -> None:
    """WEB_API: fwd=bypass; only a no-cache request's response may also be "stored"."""
    d.app.set(reply("max-age=60"))
    d.get("/a")
    got = d.request(method, "/a", headers).cs
    if headers.get("Cache-Control") == "no-cache":
        got.pop("stored", None)
    assert got == {"fwd": "bypass"}


def test_cache_status_bypass_for_a_host_not_allowed(make: h.Make) -> None:
    d = make(allow_hosts=["example.com"])
    d.app.set(reply("max-age=60"))
    assert d.get("/a", host="evil.example").cs == {"fwd": "bypass"}
    assert d.get("/a", host="evil.example").cs == {"fwd": "bypass"}
    assert d.app.calls == 2
    assert d.get("/a").cs == {"fwd": "uri-miss", "stored": True}
    assert d.get("/a").cs.get("hit") is True


def test_stats_count_what_happened(d: h.Driver) -> None:
    d.app.set(reply("max-age=60"))
    d.get("/a")
    d.get("/a")
    d.request("POST", "/b")
    stats = d.cache.stats()
    assert (stats.hits, stats.misses, stats.stores, stats.bypasses) == (1, 1, 1, 1)


# -- coalescing ------------------------------------------------------------------------------------


def release_after_first_call(d: h.Driver, requests: int) -> threading.Thread:
    """Hold the app; once it was called and all ``requests`` reached the cache (counted as
    misses), release it, so that the others are waiting on the first one's flight."""
    d.app.hold()

    def release() -> None:
        deadline = time.monotonic() + h.TIMEOUT
        while time.monotonic() < deadline and not (
            d.app.calls >= 1 and d.cache.stats().misses >= requests
        ):
            time.sleep(0.001)
        time.sleep(0.005)
        d.app.release()

    thread = threading.Thread(target=release, daemon=True)
    thread.start()
    return thread


def test_concurrent_cold_misses_call_the_app_once(d: h.Driver) -> None:
    d.app.set(reply("max-age=60", b"page"))
    thread = release_after_first_call(d, 20)
    responses = d.many([{"path": "/a"}] * 20)
    thread.join()
    assert d.app.calls == 1
    assert [r.body for r in responses] == [b"page"] * 20
    statuses = sorted(str(r.cs) for r in responses)
    assert statuses.count(str({"hit": True, "detail": "coalesced"})) == 19
    assert statuses.count(str({"fwd": "uri-miss", "stored": True})) == 1
    assert all(r.age == 0 for r in responses if r.cs.get("hit")), "Age on every reuse"
    assert d.cache.stats().coalesced == 19


@pytest.mark.parametrize(
    "extra",
    [{"Set-Cookie": "sid={id}"}, {"Cache-Control": "private, max-age=60"},
     {"Cache-Control": "no-store"}],
    ids=["set-cookie", "private", "no-store"],
)  # fmt: skip
def test_joiners_call_the_app_when_the_leaders_response_is_not_storable(
    d: h.Driver, extra: dict[str, str]
) -> None:
    """WEB_API: a joiner never receives the leader's Set-Cookie or per-user response; when the
    leader's response is not storable the joiners call the app themselves."""

    def origin(request: Request) -> Reply:
        me = request.header("x-request-id") or "?"
        headers = {"Cache-Control": "public, max-age=60", "X-User": me}
        headers.update({k: v.format(id=me) for k, v in extra.items()})
        return Reply(200, headers, me.encode())

    d.app.set(origin)
    thread = release_after_first_call(d, 20)
    responses = d.many([{"path": "/a", "headers": {"X-Request-Id": str(i)}} for i in range(20)])
    thread.join()
    for i, got in enumerate(responses):
        assert got.body == str(i).encode()
        assert got.header("x-user") == str(i)
        assert got.all("set-cookie") in ([], [f"sid={i}"])
    assert d.app.calls == 20


def test_joiners_with_another_variant_never_get_the_leaders(make: h.Make) -> None:
    """4.1 under coalescing: the flight is joined before the response's Vary is known; a
    joiner whose selecting headers differ must not receive the leader's variant."""
    d = make(public=("/pub/",))

    def origin(request: Request) -> Reply:
        who = f"{request.header('accept-language')}/{request.header('cookie')}"
        return reply("max-age=60", who.encode(), headers={"Vary": "Accept-Language, Cookie"})

    d.app.set(origin)
    thread = release_after_first_call(d, 18)
    asks = [
        {"Accept-Language": language, "Cookie": f"sid={user}"}
        for language in ("en", "fr")
        for user in ("alice", "bob", "carol")
    ]
    responses = d.many([{"path": "/pub/a", "headers": ask} for ask in asks * 3])
    thread.join()
    for ask, got in zip(asks * 3, responses, strict=True):
        assert got.body == f"{ask['Accept-Language']}/{ask['Cookie']}".encode()


def test_a_head_joining_a_get_gets_no_body(d: h.Driver) -> None:
    d.app.set(reply("max-age=60", b"full"))
    thread = release_after_first_call(d, 6)
    responses = d.many([{"path": "/a"}] + [{"path": "/a", "method": "HEAD"}] * 5)
    thread.join()
    assert responses[0].body == b"full"
    assert all((r.status, r.body) == (200, b"") for r in responses[1:] if r.cs.get("hit"))


def test_joiners_survive_a_leader_that_raises(d: h.Driver) -> None:
    """WEB_API: when the leader's response is not storable (here: none at all), the joiners
    call the app themselves."""
    d.app.set([Reply(raises=RuntimeError("boom")), reply("max-age=60", b"ok")])
    thread = release_after_first_call(d, 10)
    responses = d.many([{"path": "/a"}] * 10)
    thread.join()
    failed = [r for r in responses if r.status != 200]
    assert len(failed) == 1
    assert all(r.body == b"ok" for r in responses if r.status == 200)


# -- the cache key ---------------------------------------------------------------------------------


def echo_query(request: Request) -> Reply:
    return reply("max-age=60", request.query.encode())


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("/a?b=2&a=1", "/a?a=1&b=2"),
        ("/a?x=1", "/a?x=1&utm_source=news&utm_medium=mail"),
        ("/a?x=1", "/a?utm_campaign=z&x=1&fbclid=abc&gclid=def"),
        ("/a", "/a?utm_source=news"),
    ],
)
def test_equivalent_queries_share_an_entry(d: h.Driver, first: str, second: str) -> None:
    d.app.set(echo_query)
    d.get(first)
    assert d.get(second).cs.get("hit") is True
    assert d.app.calls == 1


@pytest.mark.parametrize(
    ("first", "second"),
    [("/a?x=1", "/a?x=2"), ("/a?x=1", "/a?y=1"), ("/a?x=1", "/a"), ("/a?x=1", "/a?x=1&x=2"),
     ("/a?utm=1", "/a?utm=2")],
)  # fmt: skip
def test_different_queries_differ(d: h.Driver, first: str, second: str) -> None:
    d.app.set(echo_query)
    d.get(first)
    got = d.get(second)
    assert not got.cs.get("hit")
    assert d.app.calls == 2


def test_ignore_params_is_configurable(make: h.Make) -> None:
    d = make(ignore_params=("ref", "session_*"))
    d.app.set(echo_query)
    d.get("/a?x=1")
    assert d.get("/a?x=1&ref=home&session_id=9").cs.get("hit") is True
    assert not d.get("/a?x=1&utm_source=news").cs.get("hit")
    assert d.app.calls == 2


def test_allow_hosts_caches_only_those_hosts(make: h.Make) -> None:
    d = make(allow_hosts=["example.com", "www.example.com"])
    d.app.set(lambda r: reply("max-age=60", (r.header("host") or "").encode()))
    for host in ("example.com", "www.example.com"):
        d.get("/a", host=host)
        assert d.get("/a", host=host).body == host.encode()
    assert d.app.calls == 2
    assert d.get("/a", host="attacker.example").body == b"attacker.example"
    assert d.get("/a", host="attacker.example").body == b"attacker.example"
    assert d.app.calls == 4


def test_the_host_is_part_of_the_key(d: h.Driver) -> None:
    d.app.set(lambda r: reply("max-age=60", (r.header("host") or "").encode()))
    d.get("/a", host="one.example")
    assert d.get("/a", host="two.example").body == b"two.example"
    assert d.get("/a", host="one.example").body == b"one.example"
    assert d.app.calls == 2


def test_path_and_query_never_run_into_each_other(d: h.Driver) -> None:
    """A decoded path may hold "?" (from %3F): /a?b=1 as a path is not /a with query b=1."""
    d.app.set(lambda r: reply("max-age=60", f"{r.path}|{r.query}".encode()))
    assert d.get("/a?b=1", query="").body == b"/a?b=1|"
    assert d.get("/a", query="b=1").body == b"/a|b=1"
    assert d.get("/a?b=1", query="").body == b"/a?b=1|"
    assert d.app.calls == 2


def test_an_encoded_ampersand_is_not_a_separator(d: h.Driver) -> None:
    d.app.set(echo_query)
    assert d.get("/a?x=a%26b%3Dc").body == b"x=a%26b%3Dc"
    assert d.get("/a?x=a&b=c").body == b"x=a&b=c"
    assert d.app.calls == 2


def test_a_port_makes_another_origin(d: h.Driver) -> None:
    d.app.set(lambda r: reply("max-age=60", (r.header("host") or "").encode()))
    assert d.get("/a", host="example.com").body == b"example.com"
    assert d.get("/a", host="example.com:8080").body == b"example.com:8080"
    assert d.get("/a", host="EXAMPLE.com:80").body == b"example.com"
    assert d.app.calls == 2


# -- Surrogate-Key and Surrogate-Control -----------------------------------------------------------


TAGS = {"/a": "t1 t2", "/b": "t2", "/c": "t3"}


def tagged(request: Request) -> Reply:
    return reply(
        "max-age=600", request.path.encode(), headers={"Surrogate-Key": TAGS[request.path]}
    )


def hits(d: h.Driver) -> dict[str, bool]:
    return {path: bool(d.get(path).cs.get("hit")) for path in TAGS}


def test_purge_drops_every_response_with_the_tag(d: h.Driver) -> None:
    d.app.set(tagged)
    for path in TAGS:
        d.get(path)
    d.cache.purge("t2")
    assert hits(d) == {"/a": False, "/b": False, "/c": True}
    d.cache.purge("t1")
    assert hits(d) == {"/a": False, "/b": True, "/c": True}
    d.cache.purge("unknown")
    assert hits(d) == {"/a": True, "/b": True, "/c": True}


def test_purge_async_on_a_sync_store(d: h.Driver) -> None:
    d.app.set(tagged)
    for path in TAGS:
        d.get(path)
    run(d, d.cache.purge_async("t3"))
    assert hits(d) == {"/a": True, "/b": True, "/c": False}


def test_surrogate_headers_are_stripped(d: h.Driver) -> None:
    d.app.set(
        reply("max-age=60", headers={"Surrogate-Key": "t1", "Surrogate-Control": "max-age=600"})
    )
    for got in (d.get("/a"), d.get("/a"), d.request("HEAD", "/a")):
        assert got.header("surrogate-key") is None
        assert got.header("surrogate-control") is None
        assert got.header("cache-control") == "max-age=60"


def test_surrogate_control_no_store_beats_cache_control(d: h.Driver) -> None:
    d.app.set(reply("public, max-age=600", headers={"Surrogate-Control": "no-store"}))
    twice = [d.get("/a"), d.get("/a")]
    assert d.app.calls == 2
    assert twice[1].header("cache-control") == "public, max-age=600"
    assert twice[1].header("surrogate-control") is None


def test_surrogate_control_lets_this_cache_store_what_browsers_must_not(d: h.Driver) -> None:
    d.app.set(reply("no-store", headers={"Surrogate-Control": "max-age=600"}))
    d.get("/a")
    got = d.get("/a")
    assert d.app.calls == 1
    assert got.header("cache-control") == "no-store"


# -- size limit and incomplete responses -----------------------------------------------------------


@pytest.mark.parametrize(("size", "calls"), [(50, 1), (100, 1), (101, 2), (1000, 2)])
def test_max_body(make: h.Make, size: int, calls: int) -> None:
    d = make(max_body=100)
    d.app.set(reply("max-age=60", b"x" * size))
    got = [d.get("/a"), d.get("/a")]
    assert [len(r.body) for r in got] == [size, size]
    assert d.app.calls == calls


def test_chunked_bodies_are_stored_whole(d: h.Driver) -> None:
    d.app.set(reply("max-age=60", [b"ab", b"", b"cd", b"e"]))
    d.get("/a")
    assert d.get("/a").body == b"abcde"
    assert d.app.calls == 1


def test_a_response_that_failed_mid_body_is_not_stored(d: h.Driver) -> None:
    """3.3: an incomplete response is never reused as a complete one."""
    d.app.set(
        [reply("max-age=60", [b"a" * 10, b"b" * 10], fail_after=1), reply("max-age=60", b"whole")]
    )
    first = d.get("/a")
    assert first.error is not None or not first.complete
    assert d.get("/a").body == b"whole"
    assert d.app.calls == 2


def test_a_body_shorter_than_content_length_is_not_stored(d: h.Driver) -> None:
    """3.3 / 3.4: a response is complete only when all the octets of its framing arrived."""
    d.app.set(
        [
            reply("max-age=60", b"short", headers={"Content-Length": "100"}),
            reply("max-age=60", b"whole"),
        ]
    )
    d.get("/a")
    assert d.get("/a").body == b"whole"


# -- protocol specifics ----------------------------------------------------------------------------


@pytest.mark.parametrize("scope_type", ["lifespan", "websocket"])
def test_asgi_non_http_scopes_pass_through_untouched(scope_type: str) -> None:
    from scalekit.web import CacheMiddleware, HttpCache

    seen: list[dict[str, Any]] = []
    sent: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope)
        await send(await receive())

    async def receive() -> dict[str, Any]:
        return {"type": f"{scope_type}.marker"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": scope_type, "path": "/ws", "headers": []}
    asyncio.run(CacheMiddleware(app, HttpCache())(scope, receive, send))
    assert seen == [scope]
    assert seen[0] is scope
    assert sent == [{"type": f"{scope_type}.marker"}]


def test_wsgi_apps_that_use_the_write_callable() -> None:
    """PEP 3333: data an app passes to start_response's write() comes before its iterable,
    and the whole body is what is stored."""
    from scalekit.testing import FakeClock
    from scalekit.web import HttpCache, WSGICacheMiddleware

    calls = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        calls.append(environ["PATH_INFO"])
        write = start_response("200 OK", [("Cache-Control", "max-age=60")])
        write(b"head-")
        return [b"tail"]

    clock = FakeClock(start=h.START)
    driver = h.WsgiDriver(HttpCache(clock=clock), clock, h.ScriptedApp(clock), None)
    driver.middleware = WSGICacheMiddleware(app, driver.cache)
    try:
        assert driver.get("/a").body == b"head-tail"
        assert driver.get("/a").body == b"head-tail"
        assert calls == ["/a"]
    finally:
        driver.close()
