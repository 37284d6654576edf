"""RFC 9111 conformance, part 1: what a shared cache may store (3), freshness (4.2),
age (4.2.3), Vary (4.1) and the reuse rules (4, 5.2), plus the safety defaults of
WEB_API (stricter than the RFC). Every test runs on the ASGI and the WSGI middleware.

Each test names the rule it checks. Time moves only by the FakeClock.
"""

from __future__ import annotations

import pytest

from tests.web import _http_apps as h
from tests.web._http_apps import START, Reply, Request, http_date, reply

make = h.make_fixture
d = h.d_fixture


def twice(d: h.Driver, path: str = "/a", headers: h.Headers | None = None) -> h.Response:
    d.get(path, headers)
    return d.get(path, headers)


# -- 3: storing responses ----------------------------------------------------------------


def test_get_with_max_age_is_stored_and_reused(d: h.Driver) -> None:
    """3: a GET 200 with explicit freshness is stored and reused while fresh."""
    d.app.set(reply("max-age=60"))
    first = d.get("/a")
    second = d.get("/a")
    assert (first.status, first.body) == (200, b"v1")
    assert (second.status, second.body) == (200, b"v1")
    assert d.app.calls == 1
    assert second.cs.get("hit") is True


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_unsafe_methods_are_never_served_from_cache(d: h.Driver, method: str) -> None:
    """3: the request method must be understood as cacheable; unsafe methods bypass."""
    d.app.set(reply("public, max-age=60"))
    d.request(method, "/a")
    again = d.request(method, "/a")
    assert d.app.calls == 2
    assert again.cs == {"fwd": "bypass"}


def test_post_response_is_not_served_to_a_get(d: h.Driver) -> None:
    """3 / 4: a response to POST is not reused for a GET of the same URI."""
    d.app.set([reply("public, max-age=60", b"post"), reply("max-age=60", b"get")])
    d.request("POST", "/a")
    got = d.get("/a")
    assert got.body == b"get"
    assert d.app.calls == 2


def test_options_is_not_served_from_cache(d: h.Driver) -> None:
    """3: OPTIONS responses are not cacheable (RFC 9110 9.3.7)."""
    d.app.set(reply("max-age=60"))
    d.request("OPTIONS", "/a")
    d.request("OPTIONS", "/a")
    assert d.app.calls == 2


def test_partial_content_is_not_stored_as_the_full_response(d: h.Driver) -> None:
    """3.3 / 3.4: a 206 is not stored (unless the cache understands ranges, and even then
    never reused as the complete representation)."""
    d.app.set(
        [
            reply("max-age=60", b"bo", 206, {"Content-Range": "bytes 0-1/4"}),
            reply("max-age=60", b"body"),
        ]
    )
    d.get("/a")
    got = d.get("/a")
    assert (got.status, got.body) == (200, b"body")
    assert d.app.calls == 2


def test_must_understand_with_unknown_status_is_not_stored(d: h.Driver) -> None:
    """3 / 5.2.2.3: with must-understand, a status the cache does not understand is not stored."""
    d.app.set(reply("max-age=60, must-understand", status=299))
    twice(d)
    assert d.app.calls == 2


@pytest.mark.parametrize("cc", ["no-store", "no-store, max-age=60", "public, max-age=60, no-store"])
def test_response_no_store_is_not_stored(d: h.Driver, cc: str) -> None:
    """5.2.2.5: a cache MUST NOT store a response with no-store."""
    d.app.set(reply(cc))
    second = twice(d)
    assert d.app.calls == 2
    assert "stored" not in second.cs


def test_request_no_store_bypasses_and_stores_nothing(d: h.Driver) -> None:
    """5.2.1.5: no-store in the request: nothing of the response is stored (WEB_API: bypass)."""
    d.app.set(reply("max-age=60"))
    first = d.get("/a", {"Cache-Control": "no-store"})
    assert first.cs == {"fwd": "bypass"}
    d.get("/a")
    assert d.app.calls == 2
    assert d.get("/a").cs.get("hit") is True
    assert d.app.calls == 2


@pytest.mark.parametrize("cc", ["private, max-age=60", "max-age=60, private"])
def test_private_is_not_stored_by_a_shared_cache(d: h.Driver, cc: str) -> None:
    """3 / 5.2.2.7: a shared cache MUST NOT store a response with unqualified private."""
    d.app.set(reply(cc))
    twice(d)
    assert d.app.calls == 2


def test_private_is_stored_by_a_private_cache(make: h.Make) -> None:
    """5.2.2.7: private only forbids shared caches."""
    d = make(shared=False)
    d.app.set(reply("private, max-age=60"))
    assert twice(d).body == b"v1"
    assert d.app.calls == 1


def test_private_qualified_field_is_never_served_to_another_request(d: h.Driver) -> None:
    """5.2.2.7: private="X-User": a shared cache may store the response only without X-User."""
    d.app.set(
        [
            reply('max-age=60, private="X-User"', headers={"X-User": "alice"}),
            reply('max-age=60, private="X-User"', headers={"X-User": "bob"}),
        ]
    )
    d.get("/a")
    second = d.get("/a")
    assert second.header("x-user") != "alice"


def test_no_cache_qualified_field_is_not_reused_without_validation(d: h.Driver) -> None:
    """5.2.2.4: no-cache="X-Secret": the field is not sent on reuse without revalidation."""
    d.app.set(
        [
            reply('max-age=60, no-cache="X-Secret"', headers={"X-Secret": "s1"}),
            reply('max-age=60, no-cache="X-Secret"', headers={"X-Secret": "s2"}),
        ]
    )
    d.get("/a")
    second = d.get("/a")
    assert not (d.app.calls == 1 and second.header("x-secret") == "s1")


def test_all_other_response_headers_are_stored(d: h.Driver) -> None:
    """3.1: caches MUST include all received header fields, unrecognised ones too."""
    d.app.set(reply("max-age=60", headers={"X-Custom": "kept", "Content-Type": "text/x"}))
    second = twice(d)
    assert d.app.calls == 1
    assert second.header("x-custom") == "kept"
    assert second.header("content-type") == "text/x"


# -- 3.5: Authorization -------------------------------------------------------------------


def test_authorization_on_a_private_path_bypasses(d: h.Driver) -> None:
    """WEB_API safety: a request with Authorization outside public prefixes bypasses."""
    d.app.set(lambda r: reply("public, max-age=60", (r.header("authorization") or "anon").encode()))
    d.get("/a")
    got = d.get("/a", {"Authorization": "Bearer alice"})
    assert got.body == b"Bearer alice"
    assert got.cs == {"fwd": "bypass"}
    assert d.get("/a").body == b"anon"
    assert d.app.calls == 2


@pytest.mark.parametrize("cc", ["max-age=60", "max-age=60, proxy-revalidate"])
def test_authorization_response_is_not_stored_without_permission(make: h.Make, cc: str) -> None:
    """3.5: a shared cache MUST NOT store a response to a request with Authorization unless
    public, s-maxage or must-revalidate allow it (even on a path declared public)."""
    d = make(public=("/pub",))
    d.app.set(lambda r: reply(cc, (r.header("authorization") or "anon").encode()))
    d.get("/pub/a", {"Authorization": "Bearer alice"})
    got = d.get("/pub/a")
    assert got.body == b"anon"
    assert d.app.calls == 2


@pytest.mark.parametrize("cc", ["public, max-age=60", "s-maxage=60", "max-age=60, must-revalidate"])
def test_authorization_response_is_stored_with_explicit_permission(make: h.Make, cc: str) -> None:
    """3.5: public, s-maxage or must-revalidate let a shared cache store it."""
    d = make(public=("/pub",))
    d.app.set(reply(cc, b"shared"))
    d.get("/pub/a", {"Authorization": "Bearer alice"})
    got = d.get("/pub/a", {"Authorization": "Bearer bob"})
    assert got.body == b"shared"
    assert d.app.calls == 1


# -- WEB_API safety defaults -------------------------------------------------------------


@pytest.mark.parametrize("path", ["/a", "/pub/a"])
def test_set_cookie_is_never_stored(make: h.Make, path: str) -> None:
    """WEB_API safety: a response carrying Set-Cookie is never stored (so never replayed)."""
    d = make(public=("/pub",))
    d.app.set(
        [
            reply("public, max-age=60", headers={"Set-Cookie": "sid=1"}),
            reply("public, max-age=60", headers={"Set-Cookie": "sid=2"}),
            reply("public, max-age=60", headers={"Set-Cookie": "sid=3"}),
        ]
    )
    cookies = [d.get(path).all("set-cookie") for _ in range(3)]
    assert cookies == [["sid=1"], ["sid=2"], ["sid=3"]]
    assert d.app.calls == 3


def test_cookie_request_on_a_private_path_bypasses_and_is_not_stored(d: h.Driver) -> None:
    """WEB_API safety: Cookie outside public prefixes: not served from cache, and what the app
    answers it is not stored for others, even if the app says public."""
    d.app.set(lambda r: reply("public, max-age=60", (r.header("cookie") or "anon").encode()))
    mine = d.get("/a", {"Cookie": "sid=alice"})
    assert mine.cs == {"fwd": "bypass"}
    assert mine.body == b"sid=alice"
    assert d.get("/a").body == b"anon"
    assert d.get("/a", {"Cookie": "sid=bob"}).body == b"sid=bob"
    assert d.app.calls == 3


def test_cookie_request_on_a_public_prefix_is_cached(make: h.Make) -> None:
    """WEB_API: under a declared public prefix, Cookie does not prevent caching."""
    d = make(public=("/pub",))
    d.app.set(reply("max-age=60", b"page"))
    d.get("/pub/a", {"Cookie": "sid=alice"})
    got = d.get("/pub/a", {"Cookie": "sid=bob"})
    assert got.body == b"page"
    assert got.cs.get("hit") is True
    assert d.app.calls == 1


@pytest.mark.parametrize(
    "headers",
    [{}, {"ETag": '"v1"'}, {"Last-Modified": http_date(START - 3600)}],
    ids=["bare", "etag", "last-modified"],
)
def test_no_explicit_freshness_is_not_stored_by_default(d: h.Driver, headers: dict) -> None:
    """WEB_API safety: without explicit freshness nothing is stored unless opted in."""
    d.app.set(reply(None, headers=headers))
    twice(d)
    assert d.app.calls == 2


def test_default_ttl_applies_to_responses_without_explicit_freshness(
    make: h.Make,
) -> None:
    d = make(default_ttl=30)
    d.app.set([reply(None, b"v1"), reply(None, b"v2")])
    d.get("/a")
    d.clock.advance(29)
    assert d.get("/a").body == b"v1"
    d.clock.advance(2)
    assert d.get("/a").body == b"v2"
    assert d.app.calls == 2


@pytest.mark.parametrize(
    ("cc", "calls"), [("max-age=100", 1), ("max-age=0", 2), ("no-store", 2), ("private", 2)]
)
def test_default_ttl_never_overrides_explicit_directives(make: h.Make, cc: str, calls: int) -> None:
    d = make(default_ttl=30)
    d.app.set(reply(cc))
    d.get("/a")
    d.clock.advance(50 if calls == 1 else 1)
    d.get("/a")
    assert d.app.calls == calls


def test_heuristic_is_off_by_default(d: h.Driver) -> None:
    d.app.set(reply(None, headers={"Last-Modified": http_date(START - 10_000)}))
    twice(d)
    assert d.app.calls == 2


def test_heuristic_is_ten_percent_of_the_last_modified_age(
    make: h.Make,
) -> None:
    """4.2.2: heuristic freshness: 10% of (Date - Last-Modified), only when opted in."""
    d = make(heuristic=True)
    d.app.set(
        [
            reply(
                None,
                b"v1",
                headers={"Date": http_date(START), "Last-Modified": http_date(START - 1000)},
            ),
            reply(None, b"v2"),
        ]
    )
    d.get("/a")
    d.clock.advance(99)
    assert d.get("/a").body == b"v1"
    d.clock.advance(2)
    assert d.get("/a").body == b"v2"


def test_heuristic_is_capped_by_max_heuristic(make: h.Make) -> None:
    d = make(heuristic=True, max_heuristic=50)
    d.app.set(
        [
            reply(
                None,
                b"v1",
                headers={"Date": http_date(START), "Last-Modified": http_date(START - 10**7)},
            ),
            reply(None, b"v2"),
        ]
    )
    d.get("/a")
    d.clock.advance(49)
    assert d.get("/a").body == b"v1"
    d.clock.advance(2)
    assert d.get("/a").body == b"v2"


@pytest.mark.parametrize("status", [201, 302, 303, 307, 403, 500])
def test_heuristic_only_for_heuristically_cacheable_status(make: h.Make, status: int) -> None:
    """4.2.2: heuristic freshness only for status codes defined as heuristically cacheable."""
    d = make(heuristic=True)
    d.app.set(
        reply(
            None,
            status=status,
            headers={"Last-Modified": http_date(START - 10_000), "Location": "/b"},
        )
    )
    twice(d)
    assert d.app.calls == 2


@pytest.mark.parametrize("status", [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501])
def test_heuristic_for_heuristically_cacheable_status(make: h.Make, status: int) -> None:
    d = make(heuristic=True)
    body = b"" if status == 204 else b"v1"
    d.app.set(
        reply(None, body, status, {"Last-Modified": http_date(START - 10_000), "Location": "/b"})
    )
    got = twice(d)
    assert got.status == status
    assert d.app.calls == 1


def test_heuristic_needs_last_modified(make: h.Make) -> None:
    d = make(heuristic=True)
    d.app.set(reply(None, headers={"Date": http_date(START)}))
    twice(d)
    assert d.app.calls == 2


def test_heuristic_is_not_used_when_explicit_freshness_exists(
    make: h.Make,
) -> None:
    """4.2.2: heuristics only when no explicit expiration time is present."""
    d = make(heuristic=True)
    d.app.set(reply("max-age=5", headers={"Last-Modified": http_date(START - 10**6)}))
    d.get("/a")
    d.clock.advance(10)
    d.get("/a")
    assert d.app.calls == 2


# -- 4.2.1: freshness lifetime ------------------------------------------------------------


def expect_lifetime(d: h.Driver, first: Reply, fresh_until: float, path: str = "/a") -> None:
    """Store ``first``; it must be reused just before ``fresh_until`` s and not just after."""
    d.app.set([first, reply("max-age=0", b"next")])
    assert d.get(path).body == first.body
    d.clock.set(START + fresh_until - 1)
    assert d.get(path).body == first.body, "reused while fresh"
    assert d.app.calls == 1
    d.clock.set(START + fresh_until + 1)
    assert d.get(path).body == b"next", "not reused once stale"


def test_s_maxage_beats_max_age_in_a_shared_cache(d: h.Driver) -> None:
    expect_lifetime(d, reply("max-age=10, s-maxage=100"), 100)


def test_shorter_s_maxage_beats_max_age_in_a_shared_cache(d: h.Driver) -> None:
    expect_lifetime(d, reply("max-age=100, s-maxage=10"), 10)


def test_s_maxage_is_ignored_by_a_private_cache(make: h.Make) -> None:
    expect_lifetime(make(shared=False), reply("max-age=10, s-maxage=100"), 10)


@pytest.mark.parametrize(("max_age", "expires"), [(100, 10), (10, 100)])
def test_max_age_beats_expires(d: h.Driver, max_age: int, expires: int) -> None:
    headers = {"Date": http_date(START), "Expires": http_date(START + expires)}
    expect_lifetime(d, reply(f"max-age={max_age}", headers=headers), max_age)


def test_expires_minus_date(d: h.Driver) -> None:
    headers = {"Date": http_date(START), "Expires": http_date(START + 100)}
    expect_lifetime(d, reply(None, headers=headers), 100)


def test_expires_minus_an_earlier_date(d: h.Driver) -> None:
    """4.2.1 + 4.2.3: lifetime Expires - Date = 100, the response is already 50 s old."""
    headers = {"Date": http_date(START - 50), "Expires": http_date(START + 50)}
    expect_lifetime(d, reply("public", headers=headers), 50)


def test_expires_without_date_uses_the_time_received(d: h.Driver) -> None:
    expect_lifetime(d, reply(None, headers={"Expires": http_date(START + 100)}), 100)


@pytest.mark.parametrize("expires", ["0", "-1", "garbage", "Thu, 99 Foo 2023 00:00:00 GMT", ""])
def test_invalid_expires_means_already_expired(d: h.Driver, expires: str) -> None:
    """5.3: a cache recipient MUST interpret invalid dates, especially "0", as in the past."""
    d.app.set(reply(None, headers={"Date": http_date(START), "Expires": expires}))
    twice(d)
    assert d.app.calls == 2


def test_cache_control_is_parsed_case_insensitively_across_field_lines(d: h.Driver) -> None:
    """5.2: directive names are case-insensitive; several field lines form one list."""
    d.app.set(Reply(200, [("Cache-Control", "PUBLIC"), ("cache-control", "Max-Age=60")], b"v1"))
    twice(d)
    assert d.app.calls == 1


def test_huge_max_age_is_capped_not_an_error(d: h.Driver) -> None:
    """1.2.2: a delta-seconds too big to represent is taken as 2147483648."""
    d.app.set(reply("max-age=99999999999999999999999"))
    d.get("/a")
    d.clock.advance(10**6)
    got = d.get("/a")
    assert got.status == 200
    assert d.app.calls == 1


def test_surrogate_control_max_age_beats_cache_control(d: h.Driver) -> None:
    """WEB_API: Surrogate-Control max-age takes precedence over Cache-Control here."""
    first = reply("max-age=10, s-maxage=10", headers={"Surrogate-Control": "max-age=100"})
    expect_lifetime(d, first, 100)


# -- 4.2.3: age -----------------------------------------------------------------------------


def test_age_is_sent_on_every_reuse(d: h.Driver) -> None:
    """5.1: a cache MUST send Age on every response it serves from storage."""
    d.app.set(reply("max-age=60"))
    d.get("/a")
    for elapsed in (0, 7, 30):
        d.clock.set(START + elapsed)
        got = d.get("/a")
        assert got.age == elapsed
        assert got.cs == {"hit": True, "ttl": 60 - elapsed}


def test_upstream_age_is_added(d: h.Driver) -> None:
    """4.2.3: the Age received counts (corrected_age_value)."""
    d.app.set([reply("max-age=100", headers={"Age": "30"}), reply("max-age=100", b"next")])
    d.get("/a")
    d.clock.advance(10)
    got = d.get("/a")
    assert got.age == 40
    assert got.cs.get("ttl") == 60
    d.clock.advance(65)
    assert d.get("/a").body == b"next"


def test_date_in_the_past_counts_as_age(d: h.Driver) -> None:
    """4.2.3: apparent_age = max(0, response_time - date_value)."""
    d.app.set(
        [reply("max-age=100", headers={"Date": http_date(START - 30)}), reply("max-age=0", b"next")]
    )
    d.get("/a")
    assert d.get("/a").age == 30
    d.clock.advance(75)
    assert d.get("/a").body == b"next"


def test_date_in_the_future_never_makes_age_negative(d: h.Driver) -> None:
    d.app.set(reply("max-age=100", headers={"Date": http_date(START + 1000)}))
    d.get("/a")
    d.clock.advance(50)
    got = d.get("/a")
    assert got.age == 50
    assert d.app.calls == 1


def test_response_delay_is_added_to_the_age_received(d: h.Driver) -> None:
    """4.2.3: corrected_age_value = age_value + (response_time - request_time)."""
    d.app.set(reply("max-age=100", headers={"Age": "10", "Date": http_date(START + 5)}, takes=5))
    d.get("/a")
    assert d.clock() == START + 5
    assert d.get("/a").age == 15


# -- 4.1: Vary --------------------------------------------------------------------------------


def by_language(request: Request) -> Reply:
    language = request.header("accept-language") or "none"
    return reply("max-age=60", language.encode(), headers={"Vary": "Accept-Language"})


def test_vary_keeps_one_variant_per_selecting_header(d: h.Driver) -> None:
    d.app.set(by_language)
    assert d.get("/a", {"Accept-Language": "en"}).body == b"en"
    fr = d.get("/a", {"Accept-Language": "fr"})
    assert fr.body == b"fr"
    assert fr.cs.get("fwd") == "vary-miss"
    assert d.get("/a", {"Accept-Language": "en"}).body == b"en"
    assert d.get("/a", {"Accept-Language": "fr"}).body == b"fr"
    assert d.get("/a").body == b"none"
    assert d.app.calls == 3


def test_vary_star_never_matches(d: h.Driver) -> None:
    """4.1: a stored response with Vary: * always fails to match."""
    d.app.set(reply("max-age=60", headers={"Vary": "*"}))
    twice(d)
    assert d.app.calls == 2


def test_vary_absent_header_differs_from_present(d: h.Driver) -> None:
    d.app.set(
        lambda r: reply(
            "max-age=60", (r.header("x-flag") or "-").encode(), headers={"Vary": "X-Flag"}
        )
    )
    assert d.get("/a").body == b"-"
    assert d.get("/a", {"X-Flag": "1"}).body == b"1"
    assert d.get("/a").body == b"-"
    assert d.app.calls == 2


def test_vary_field_names_are_case_insensitive(d: h.Driver) -> None:
    d.app.set(
        lambda r: reply(
            "max-age=60",
            (r.header("accept-language") or "-").encode(),
            headers={"Vary": "ACCEPT-language"},
        )
    )
    assert d.get("/a", {"Accept-Language": "en"}).body == b"en"
    assert d.get("/a", {"accept-language": "fr"}).body == b"fr"
    assert d.get("/a", {"ACCEPT-LANGUAGE": "en"}).body == b"en"
    assert d.app.calls == 2


def test_vary_values_are_normalised(d: h.Driver) -> None:
    """4.1: selecting fields match after removing optional whitespace and combining lines."""
    d.app.set(by_language)
    d.get("/a", {"Accept-Language": "en, fr"})
    assert d.get("/a", {"Accept-Language": "en,fr"}).body == b"en, fr"
    assert d.get("/a", [("Accept-Language", "en"), ("Accept-Language", "fr")]).body == b"en, fr"
    assert d.app.calls == 1


def test_vary_over_several_fields_never_confuses_values(d: h.Driver) -> None:
    """Key design (ISSUE15): Vary values are length-prefixed, so no two distinct sets of
    selecting values collide however they are punctuated."""
    combos = [
        {"X-A": "a", "X-B": "b"},
        {"X-A": "a|x-b=b"},
        {"X-A": "a\x1fb"},
        {"X-A": "a:b"},
        {"X-A": "a", "X-B": "b;"},
        {"X-B": "a|b"},
        {"X-A": "a, b"},
        {"X-A": "a", "X-B": ""},
    ]

    def echo(request: Request) -> Reply:
        body = repr((request.header("x-a"), request.header("x-b"))).encode()
        return reply("max-age=60", body, headers={"Vary": "X-A, X-B"})

    d.app.set(echo)
    for _ in range(2):
        for combo in combos:
            expected = repr((combo.get("X-A"), combo.get("X-B"))).encode()
            assert d.get("/a", combo).body == expected, combo
    assert d.app.calls == len(combos)


# -- 4: reuse --------------------------------------------------------------------------------


def test_reuse_needs_the_same_method_and_uri(d: h.Driver) -> None:
    """4: the presented target URI and the stored one match (scheme, host, path, query)."""
    d.app.set(lambda r: reply("max-age=60", f"{r.header('host')}{r.path}?{r.query}".encode()))
    d.get("/a")
    others = [
        d.get("/b"),
        d.get("/a?x=1"),
        d.get("/a", host="other.example"),
        d.get("/a", scheme="https"),
    ]
    assert d.app.calls == 5
    assert all(not r.cs.get("hit") for r in others)
    assert d.get("/a").cs.get("hit") is True


def test_head_is_answered_from_a_stored_get(d: h.Driver) -> None:
    """4 / RFC 9110 9.3.2: a stored GET response can answer HEAD (no body)."""
    d.app.set(reply("max-age=60", b"full", headers={"Content-Type": "text/plain"}))
    d.get("/a")
    head = d.request("HEAD", "/a")
    assert head.status == 200
    assert head.body == b""
    assert head.header("content-type") == "text/plain"
    assert d.app.calls == 1


def test_head_never_stores_an_empty_body_for_get(d: h.Driver) -> None:
    d.app.set(lambda r: reply("max-age=60", b"" if r.method == "HEAD" else b"full"))
    assert d.request("HEAD", "/a").body == b""
    assert d.get("/a").body == b"full"
    assert d.get("/a").body == b"full"


@pytest.mark.parametrize("cc", ["no-cache", "max-age=0", "no-cache, max-age=60"])
def test_request_directives_force_a_trip_upstream(d: h.Driver, cc: str) -> None:
    """5.2.1.4 / 5.2.1.1: no-cache or max-age=0 in the request: no reuse without validation."""
    d.app.set([reply("max-age=60", b"v1"), reply("max-age=60", b"v2")])
    d.get("/a")
    d.clock.advance(1)
    got = d.get("/a", {"Cache-Control": cc})
    assert d.app.calls == 2
    assert got.body == b"v2"


def test_request_no_cache_is_a_bypass(d: h.Driver) -> None:
    """WEB_API: fwd=bypass; the fresh response may be stored (RFC 9211 "stored")."""
    d.app.set([reply("max-age=60", b"v1"), reply("max-age=60", b"v2")])
    d.get("/a")
    got = d.get("/a", {"Cache-Control": "no-cache"})
    assert got.cs.get("fwd") == "bypass"
    assert got.body == b"v2"
    assert d.get("/a").body == (b"v2" if got.cs.get("stored") else b"v1")


def test_response_no_cache_is_validated_on_every_reuse(d: h.Driver) -> None:
    """5.2.2.4: a response with no-cache MUST NOT be reused without successful validation."""

    def origin(request: Request) -> Reply:
        if request.header("if-none-match") == '"v1"':
            return Reply(304, {"ETag": '"v1"', "Cache-Control": "no-cache, max-age=60"}, b"")
        return reply("no-cache, max-age=60", b"v1", headers={"ETag": '"v1"'})

    d.app.set(origin)
    d.get("/a")
    for calls in (2, 3):
        got = d.get("/a")
        assert (got.status, got.body) == (200, b"v1")
        assert d.app.calls == calls


@pytest.mark.parametrize("cc", ["max-age=10", "max-age=10, must-revalidate"])
def test_stale_is_not_served_on_error_without_permission(d: h.Driver, cc: str) -> None:
    """4.2.4: a cache MUST NOT send stale responses unless explicitly permitted."""
    d.app.set([reply(cc, b"old"), reply(None, b"oops", 500)])
    d.get("/a")
    d.clock.advance(20)
    got = d.get("/a")
    assert (got.status, got.body) == (500, b"oops")


@pytest.mark.parametrize(
    "cc",
    [
        "max-age=10, must-revalidate",
        "max-age=10, proxy-revalidate",
        "s-maxage=10",
    ],
)
@pytest.mark.parametrize("extension", ["stale-if-error=600", "stale-while-revalidate=600"])
def test_must_revalidate_forbids_serving_stale(d: h.Driver, cc: str, extension: str) -> None:
    """5.2.2.2 / 5.2.2.8 / 5.2.2.10: once stale, MUST NOT be reused without successful
    validation, whatever stale-* extensions say (s-maxage implies proxy-revalidate)."""
    d.app.set([reply(f"{cc}, {extension}", b"old"), reply(None, b"oops", 503)])
    d.get("/a")
    d.clock.advance(20)
    got = d.get("/a")
    assert got.body != b"old"
    assert got.status == 503
    assert d.app.calls == 2


@pytest.mark.parametrize("cc", ["max-age=10, must-revalidate", "s-maxage=10"])
def test_must_revalidate_forbids_serving_stale_when_the_app_raises(d: h.Driver, cc: str) -> None:
    """5.2.2.2: if the origin cannot be reached, a 504 (or the error), never the stale copy."""
    d.app.set([reply(f"{cc}, stale-if-error=600", b"old"), Reply(raises=RuntimeError("down"))])
    d.get("/a")
    d.clock.advance(20)
    got = d.get("/a")
    assert got.body != b"old"
    assert got.status >= 500


def test_stale_response_is_refetched(d: h.Driver) -> None:
    """WEB_API: a stale stored response (kept: it has a validator) fetched again: fwd=stale."""
    etag = {"ETag": '"x"'}
    d.app.set([reply("max-age=10", b"old", headers=etag), reply("max-age=10", b"new")])
    d.get("/a")
    d.clock.advance(20)
    got = d.get("/a")
    assert got.body == b"new"
    assert got.cs == {"fwd": "stale", "fwd-status": 200, "stored": True}


def test_request_max_age_limits_the_age_accepted(d: h.Driver) -> None:
    """5.2.1.1: max-age in the request: the client wants a response no older than that."""
    d.app.set([reply("max-age=60", b"v1"), reply("max-age=60", b"v2")])
    d.get("/a")
    d.clock.advance(10)
    assert d.get("/a", {"Cache-Control": "max-age=20"}).body == b"v1"
    assert d.get("/a", {"Cache-Control": "max-age=5"}).body == b"v2"
    assert d.app.calls == 2


def test_request_max_stale_accepts_a_stale_response(d: h.Driver) -> None:
    """5.2.1.2: max-stale lets the client accept a response stale by up to that many seconds."""
    d.app.set([reply("max-age=10", b"old", headers={"ETag": '"x"'}), reply("max-age=10", b"new")])
    d.get("/a")
    d.clock.advance(20)
    got = d.get("/a", {"Cache-Control": "max-stale=30"})
    assert got.body == b"old"
    assert got.age == 20
    assert got.cs.get("ttl") == -10
    assert d.app.calls == 1
    assert d.get("/a", {"Cache-Control": "max-stale=5"}).body == b"new"


@pytest.mark.parametrize(
    "cc", ["max-age=10, must-revalidate", "max-age=10, proxy-revalidate", "s-maxage=10"]
)
def test_max_stale_never_overrides_must_revalidate(d: h.Driver, cc: str) -> None:
    """5.2.2.2: must-revalidate (and, shared, proxy-revalidate, s-maxage) forbids serving it
    stale even when the request's max-stale would accept it."""
    d.app.set([reply(cc, b"old", headers={"ETag": '"x"'}), reply("max-age=10", b"new")])
    d.get("/a")
    d.clock.advance(20)
    assert d.get("/a", {"Cache-Control": "max-stale"}).body == b"new"
    assert d.app.calls == 2


def test_only_if_cached(d: h.Driver) -> None:
    """5.2.1.7: only-if-cached: a stored response, or 504 without contacting the origin."""
    d.app.set(reply("max-age=60"))
    assert d.get("/a", {"Cache-Control": "only-if-cached"}).status == 504
    assert d.app.calls == 0
    d.get("/a")
    got = d.get("/a", {"Cache-Control": "only-if-cached"})
    assert (got.status, got.body) == (200, b"v1")
    assert d.app.calls == 1


@pytest.mark.parametrize("cc", ["max-age=abc", "max-age=-5", "max-age=", "max-age=1e3"])
def test_invalid_max_age_is_not_fresh(d: h.Driver, cc: str) -> None:
    """4.2.1: caches are encouraged to consider invalid freshness information stale."""
    d.app.set(reply(cc))
    d.get("/a")
    d.clock.advance(1)
    d.get("/a")
    assert d.app.calls == 2


def test_invalid_age_received_does_not_break_reuse(d: h.Driver) -> None:
    d.app.set(reply("max-age=60", headers={"Age": "garbage"}))
    d.get("/a")
    d.clock.advance(5)
    got = d.get("/a")
    assert got.status == 200
    assert got.age is not None
    assert got.age >= 5
