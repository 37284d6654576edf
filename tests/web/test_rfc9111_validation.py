"""RFC 9111 conformance, part 2: conditional requests answered from the cache (4.3.2,
RFC 9110 13), revalidation upstream with the stored validators (4.3.1), the update of a
stored response by a 304 (4.3.4, 3.2) and invalidation after unsafe methods (4.4).
Every test runs on the ASGI and the WSGI middleware.
"""

from __future__ import annotations

import pytest

from tests.web import _http_apps as h
from tests.web._http_apps import START, Reply, Request, http_date, reply

make = h.make_fixture
d = h.d_fixture

LAST_MODIFIED = START - 100


def stored(etag: str = '"v1"') -> Reply:
    return reply(
        "max-age=60",
        b"v1",
        headers={
            "ETag": etag,
            "Last-Modified": http_date(LAST_MODIFIED),
            "Date": http_date(START),
            "Vary": "Accept-Encoding",
            "Content-Location": "/a.json",
            "Content-Type": "application/json",
        },
    )


# -- conditional requests answered from the cache ----------------------------------------


@pytest.mark.parametrize(
    "condition",
    ['"v1"', 'W/"v1"', '"x", "v1"', '"x",W/"v1"', "*", ' "x" , "v1" '],
)
def test_if_none_match_that_matches_gets_304_from_cache(d: h.Driver, condition: str) -> None:
    """4.3.2 / RFC 9110 13.1.2: weak comparison, lists and *; the 304 carries the fields a 200
    would have: Cache-Control, Content-Location, Date, ETag, Expires, Vary (RFC 9110 15.4.5)."""
    d.app.set(stored())
    d.get("/a")
    d.clock.advance(5)
    got = d.get("/a", {"If-None-Match": condition})
    assert got.status == 304
    assert got.body == b""
    assert d.app.calls == 1
    assert got.header("etag") == '"v1"'
    assert got.header("cache-control") == "max-age=60"
    assert got.header("vary") == "Accept-Encoding"
    assert got.header("content-location") == "/a.json"
    assert got.header("date") == http_date(START)
    assert got.age == 5
    assert got.cs.get("hit") is True


def test_if_none_match_matches_a_weak_stored_etag(d: h.Driver) -> None:
    d.app.set(stored('W/"v1"'))
    d.get("/a")
    got = d.get("/a", {"If-None-Match": '"v1"'})
    assert got.status == 304
    assert got.header("etag") == 'W/"v1"'
    assert d.app.calls == 1


@pytest.mark.parametrize("condition", ['"x"', '"x", "y"', 'W/"v2"', '"V1"', '"v1 "'])
def test_if_none_match_that_does_not_match_gets_the_full_response(
    d: h.Driver, condition: str
) -> None:
    d.app.set(stored())
    d.get("/a")
    got = d.get("/a", {"If-None-Match": condition})
    assert (got.status, got.body) == (200, b"v1")
    assert d.app.calls == 1


@pytest.mark.parametrize("since", [LAST_MODIFIED, LAST_MODIFIED + 50])
def test_if_modified_since_not_modified_gets_304(d: h.Driver, since: int) -> None:
    """RFC 9110 13.1.3: 304 when the selected representation's Last-Modified <= the date."""
    d.app.set(stored())
    d.get("/a")
    got = d.get("/a", {"If-Modified-Since": http_date(since)})
    assert (got.status, got.body) == (304, b"")
    assert got.header("etag") == '"v1"'
    assert d.app.calls == 1


@pytest.mark.parametrize("since", [http_date(LAST_MODIFIED - 1), "garbage", "0"])
def test_if_modified_since_modified_or_invalid_gets_200(d: h.Driver, since: str) -> None:
    """RFC 9110 13.1.3: an invalid date is ignored (the request is unconditional)."""
    d.app.set(stored())
    d.get("/a")
    got = d.get("/a", {"If-Modified-Since": since})
    assert (got.status, got.body) == (200, b"v1")
    assert d.app.calls == 1


def test_if_none_match_wins_over_if_modified_since(d: h.Driver) -> None:
    """RFC 9110 13.1.3: a recipient MUST ignore If-Modified-Since when If-None-Match is present."""
    d.app.set(stored())
    d.get("/a")
    got = d.get(
        "/a", {"If-None-Match": '"other"', "If-Modified-Since": http_date(LAST_MODIFIED + 50)}
    )
    assert (got.status, got.body) == (200, b"v1")


def test_head_with_a_matching_condition_gets_304(d: h.Driver) -> None:
    d.app.set(stored())
    d.get("/a")
    got = d.request("HEAD", "/a", {"If-None-Match": '"v1"'})
    assert (got.status, got.body) == (304, b"")
    assert d.app.calls == 1


def test_conditional_miss_is_forwarded_and_its_304_not_stored(d: h.Driver) -> None:
    """A 304 answering the client's own condition is passed through; it is not a stored
    representation for unconditional requests."""

    def origin(request: Request) -> Reply:
        if request.header("if-none-match") == '"v1"':
            return Reply(304, {"ETag": '"v1"', "Cache-Control": "max-age=60"}, b"")
        return stored()

    d.app.set(origin)
    got = d.get("/a", {"If-None-Match": '"v1"'})
    assert got.status == 304
    full = d.get("/a")
    assert (full.status, full.body) == (200, b"v1")


# -- 4.3.1: revalidation upstream with the stored validators ------------------------------


def revalidating_origin(not_modified: Reply) -> h.Callable[[Request], Reply]:
    def origin(request: Request) -> Reply:
        if request.header("if-none-match") == '"v1"':
            return not_modified
        return stored()

    return origin


def test_revalidation_sends_the_stored_validators(d: h.Driver) -> None:
    """4.3.1: the cache sends If-None-Match with the stored ETag and If-Modified-Since with
    the stored Last-Modified; a 304 lets it serve the stored body."""
    d.app.set(revalidating_origin(Reply(304, {"ETag": '"v1"', "Cache-Control": "max-age=60"}, b"")))
    d.get("/a")
    d.clock.advance(70)
    got = d.get("/a")
    assert d.app.calls == 2
    assert d.app.last.header("if-none-match") == '"v1"'
    assert d.app.last.header("if-modified-since") == http_date(LAST_MODIFIED)
    assert (got.status, got.body) == (200, b"v1")
    assert got.cs.get("fwd") == "stale"
    assert got.cs.get("fwd-status") == 304


def test_revalidation_of_a_client_request_never_returns_the_caches_304(d: h.Driver) -> None:
    d.app.set(revalidating_origin(Reply(304, {"ETag": '"v1"', "Cache-Control": "max-age=60"}, b"")))
    d.get("/a")
    d.clock.advance(70)
    assert d.get("/a").status == 200
    assert d.get("/a").status == 200


def test_304_refreshes_freshness(d: h.Driver) -> None:
    """4.3.4: the stored response is updated with the 304's Cache-Control and Date."""
    not_modified = Reply(
        304,
        {"ETag": '"v1"', "Cache-Control": "max-age=100", "Date": http_date(START + 70)},
        b"",
    )
    d.app.set(revalidating_origin(not_modified))
    d.get("/a")
    d.clock.advance(70)
    d.get("/a")
    d.clock.advance(90)
    got = d.get("/a")
    assert d.app.calls == 2
    assert got.body == b"v1"
    assert got.cs.get("hit") is True
    assert got.age == 90


def test_304_without_date_refreshes_freshness(d: h.Driver) -> None:
    d.app.set(
        revalidating_origin(Reply(304, {"ETag": '"v1"', "Cache-Control": "max-age=100"}, b""))
    )
    d.get("/a")
    d.clock.advance(70)
    d.get("/a")
    d.clock.advance(90)
    got = d.get("/a")
    assert d.app.calls == 2
    assert got.body == b"v1"
    assert got.cs.get("hit") is True


def test_304_updates_the_stored_headers(d: h.Driver) -> None:
    """4.3.4 / 3.2: each field of the 304 replaces the stored one, Content-Length excepted."""
    not_modified = Reply(
        304,
        {
            "ETag": '"v1"',
            "Cache-Control": "max-age=100",
            "X-Version": "2",
            "Content-Length": "0",
        },
        b"",
    )
    d.app.set(revalidating_origin(not_modified))
    d.get("/a")
    d.clock.advance(70)
    revalidated = d.get("/a")
    reused = d.get("/a")
    for got in (revalidated, reused):
        assert (got.status, got.body) == (200, b"v1")
        assert got.header("x-version") == "2"
        assert got.header("content-length") in (None, "2")
        assert got.header("content-type") == "application/json"
    assert d.app.calls == 2


def test_304_updates_content_type(d: h.Driver) -> None:
    not_modified = Reply(
        304, {"ETag": '"v1"', "Cache-Control": "max-age=60", "Content-Type": "text/x; v=2"}, b""
    )
    d.app.set(revalidating_origin(not_modified))
    d.get("/a")
    d.clock.advance(70)
    assert d.get("/a").header("content-type") == "text/x; v=2"
    assert d.get("/a").header("content-type") == "text/x; v=2"


def test_a_200_on_revalidation_replaces_the_stored_response(d: h.Driver) -> None:
    d.app.set([stored(), reply("max-age=60", b"v2", headers={"ETag": '"v2"'})])
    d.get("/a")
    d.clock.advance(70)
    got = d.get("/a")
    assert got.body == b"v2"
    assert got.cs == {"fwd": "stale", "fwd-status": 200, "stored": True}
    again = d.get("/a")
    assert (again.body, again.header("etag")) == (b"v2", '"v2"')
    assert d.app.calls == 2


# -- 4.4: invalidation ----------------------------------------------------------------------


def counting_origin(request: Request) -> Reply:
    if request.method in ("GET", "HEAD"):
        return reply("max-age=600", f"{request.path}?{request.query}".encode())
    return Reply(int(request.header("x-status") or 200), {}, b"")


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
@pytest.mark.parametrize("status", [200, 201, 204, 303])
def test_unsafe_method_with_non_error_status_invalidates_the_uri(
    d: h.Driver, method: str, status: int
) -> None:
    """4.4: a cache MUST invalidate the target URI after a non-error response to an unsafe
    method."""
    d.app.set(counting_origin)
    d.get("/a")
    d.request(method, "/a", {"X-Status": str(status)})
    d.get("/a")
    assert d.app.calls == 3
    assert d.get("/a").cs.get("hit") is True


@pytest.mark.parametrize("status", [400, 404, 409, 500, 503])
def test_error_responses_do_not_invalidate(d: h.Driver, status: int) -> None:
    """4.4 invalidates on non-error statuses only (ISSUE15: a 5xx does not invalidate)."""
    d.app.set(counting_origin)
    d.get("/a")
    d.request("POST", "/a", {"X-Status": str(status)})
    assert d.get("/a").cs.get("hit") is True
    assert d.app.calls == 2


@pytest.mark.parametrize("field", ["Location", "Content-Location"])
@pytest.mark.parametrize(
    "uri",
    ["/items/1", "http://example.com/items/1", "1", "../items/1"],
)
def test_same_origin_location_is_invalidated(d: h.Driver, field: str, uri: str) -> None:
    """4.4: Location and Content-Location of the same origin are invalidated."""

    def origin(request: Request) -> Reply:
        if request.method == "POST":
            return Reply(201, {field: uri}, b"")
        return reply("max-age=600", b"item")

    d.app.set(origin)
    d.get("/items/1")
    d.request("POST", "/items/new")
    d.get("/items/1")
    assert d.app.calls == 3


@pytest.mark.parametrize("field", ["Location", "Content-Location"])
@pytest.mark.parametrize(
    "uri",
    ["http://other.example/items/1", "https://example.com/items/1", "//other.example/items/1"],
)
def test_cross_origin_location_is_not_invalidated(d: h.Driver, field: str, uri: str) -> None:
    """4.4: a cache MUST NOT invalidate a URI whose origin differs from the target's."""
    host = uri.split("/")[2]
    scheme = "https" if uri.startswith("https") else "http"

    def origin(request: Request) -> Reply:
        if request.method == "POST":
            return Reply(201, {field: uri}, b"")
        return reply("max-age=600", b"item")

    d.app.set(origin)
    d.get("/items/1", host=host, scheme=scheme)
    d.request("POST", "/items/new")
    assert d.get("/items/1", host=host, scheme=scheme).cs.get("hit") is True
    assert d.app.calls == 2


def test_invalidation_drops_every_variant(d: h.Driver) -> None:
    def origin(request: Request) -> Reply:
        if request.method == "POST":
            return Reply(204, {}, b"")
        language = request.header("accept-language") or "-"
        return reply("max-age=600", language.encode(), headers={"Vary": "Accept-Language"})

    d.app.set(origin)
    for language in ("en", "fr"):
        d.get("/a", {"Accept-Language": language})
    d.request("POST", "/a")
    for language in ("en", "fr"):
        assert not d.get("/a", {"Accept-Language": language}).cs.get("hit")
    assert d.app.calls == 5


def test_invalidation_uses_the_normalised_query(d: h.Driver) -> None:
    d.app.set(counting_origin)
    d.get("/a?x=1&y=2")
    d.request("POST", "/a?y=2&x=1")
    d.get("/a?x=1&y=2")
    assert d.app.calls == 3


def test_unsafe_request_with_cookie_still_invalidates(d: h.Driver) -> None:
    """A logged-in user's POST bypasses the cache but still invalidates the URI."""
    d.app.set(counting_origin)
    d.get("/a")
    d.request("POST", "/a", {"Cookie": "sid=alice", "Authorization": "Bearer alice"})
    d.get("/a")
    assert d.app.calls == 3


def test_invalidation_also_covers_head(d: h.Driver) -> None:
    d.app.set(counting_origin)
    d.get("/a")
    d.request("DELETE", "/a")
    d.request("HEAD", "/a")
    assert d.app.calls == 3
