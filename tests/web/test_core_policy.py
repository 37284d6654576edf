"""What may be stored, and how fresh it is (RFC 9111 3 and 4.2), as pure functions."""

from __future__ import annotations

import json

import pytest

from scalekit.web._headers import format_http_date
from scalekit.web._policy import Policy, Stored, current_age, decode, store_policy, update_from_304

NOW = 1_700_000_000.0
STRICT = Policy(shared=True, default_ttl=None, heuristic=False, max_heuristic=86400.0)


def policy_of(
    headers: list[tuple[str, str]],
    status: int = 200,
    policy: Policy = STRICT,
    authorized: bool = False,
    request_time: float = NOW,
) -> Stored | None:
    return store_policy(
        policy,
        status,
        headers,
        b"x",
        request_time=request_time,
        response_time=NOW,
        authorized=authorized,
    )


@pytest.mark.parametrize(
    "headers",
    [
        [("Cache-Control", "no-store, max-age=60")],
        [("Cache-Control", "private, max-age=60")],
        [("Cache-Control", "max-age=60"), ("Set-Cookie", "a=b")],
        [("Cache-Control", "max-age=60"), ("Vary", "Accept, *")],
        [("Surrogate-Control", "no-store"), ("Cache-Control", "max-age=60")],
        [],
        [("Last-Modified", format_http_date(NOW - 1000))],
    ],
)
def test_not_stored(headers: list[tuple[str, str]]) -> None:
    assert policy_of(headers) is None


@pytest.mark.parametrize("status", [206, 304, 500, 502, 503, 100])
def test_statuses_never_stored(status: int) -> None:
    assert policy_of([("Cache-Control", "max-age=60")], status) is None


def test_the_age_of_a_response_that_took_time_and_came_with_an_age() -> None:
    stored = policy_of(
        [("Cache-Control", "max-age=100"), ("Age", "10"), ("Date", format_http_date(NOW - 30))],
        request_time=NOW - 2,
    )
    assert stored is not None
    assert stored.initial_age == 30  # apparent age beats 10 + 2
    assert current_age(stored, NOW + 5) == 35
    assert stored.remaining(NOW + 5) == 65


def test_flags() -> None:
    stored = policy_of(
        [("Cache-Control", "no-cache, max-age=5, stale-while-revalidate=9, stale-if-error=7")]
    )
    assert stored is not None
    assert stored.revalidate
    assert not stored.no_stale
    assert (stored.stale_while, stored.stale_if_error) == (9, 7)
    for control in ("must-revalidate", "proxy-revalidate", "s-maxage=5"):
        flagged = policy_of([("Cache-Control", f"max-age=5, {control}")])
        assert flagged is not None
        assert flagged.no_stale
    private = Policy(shared=False, default_ttl=None, heuristic=False, max_heuristic=1.0)
    stored = policy_of([("Cache-Control", "s-maxage=5, max-age=9, private")], policy=private)
    assert stored is not None
    assert stored.lifetime == 9
    assert not stored.no_stale


def test_authorization_rules() -> None:
    assert policy_of([("Cache-Control", "max-age=5")], authorized=True) is None
    for control in ("public, max-age=5", "s-maxage=5", "must-revalidate, max-age=5"):
        assert policy_of([("Cache-Control", control)], authorized=True) is not None


def test_heuristic_only_where_allowed() -> None:
    heuristic = Policy(shared=True, default_ttl=None, heuristic=True, max_heuristic=86400.0)
    modified = [("Last-Modified", format_http_date(NOW - 1000))]
    stored = policy_of(modified, policy=heuristic)
    assert stored is not None
    assert stored.lifetime == 100
    assert policy_of(modified, status=302, policy=heuristic) is None  # not heuristically cacheable
    public = policy_of([*modified, ("Cache-Control", "public")], status=302, policy=heuristic)
    assert public is not None


def test_json_round_trip() -> None:
    stored = policy_of([("Cache-Control", "max-age=60"), ("ETag", '"e"'), ("Vary", "A")])
    assert stored is not None
    stored.vary_values = (None,)
    stored.tags = {"t": "1"}
    again = decode(json.loads(json.dumps(stored.to_json())))
    assert isinstance(again, Stored)
    assert again.to_json() == stored.to_json()
    assert again.etag == '"e"'
    for junk in (None, [], ["resp"], ["resp", *range(15)], {"a": 1}, "x"):
        assert decode(junk) is None


def test_a_304_replaces_every_field_but_content_length() -> None:
    stored = policy_of(
        [
            ("Cache-Control", "max-age=5"),
            ("Content-Type", "text/html"),
            ("Content-Length", "1"),
            ("X-A", "1"),
            ("X-A", "2"),
        ]
    )
    assert stored is not None
    merged = update_from_304(
        stored,
        [
            ("x-a", "3"),
            ("Content-Type", "text/plain"),
            ("Content-Length", "0"),
            ("Cache-Control", "max-age=9"),
        ],
    )
    assert ("Content-Length", "1") in merged
    assert [v for n, v in merged if n.lower() == "content-length"] == ["1"]
    assert [v for n, v in merged if n.lower() == "content-type"] == ["text/plain"]
    assert [v for n, v in merged if n.lower() == "x-a"] == ["3"]
    assert [v for n, v in merged if n.lower() == "cache-control"] == ["max-age=9"]


def test_must_understand() -> None:
    understood = policy_of([("Cache-Control", "must-understand, no-store, max-age=5")])
    assert understood is not None  # the no-store was for caches that do not understand
    assert policy_of([("Cache-Control", "must-understand, max-age=5")], status=299) is None
    assert policy_of([("Cache-Control", "max-age=5")], status=299) is not None


def test_surrogate_control_overrides_cache_control_no_store_but_not_private() -> None:
    assert policy_of([("Surrogate-Control", "max-age=5"), ("Cache-Control", "no-store")])
    assert policy_of([("Surrogate-Control", "max-age=5"), ("Cache-Control", "private")]) is None
