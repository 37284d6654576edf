"""The header parsers and key builders of the web cache, and their invariants."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from scalekit.web._headers import (
    MAX_DELTA,
    directives,
    format_http_date,
    http_date,
    names,
    seconds,
    weak_match,
)
from scalekit.web._keys import QueryNormaliser, normal_host, primary_key, variant_key


def test_cache_control_directives() -> None:
    assert directives('max-age=60, no-cache="Set-Cookie, X", Private') == {
        "max-age": "60",
        "no-cache": "Set-Cookie, X",
        "private": None,
    }
    assert directives("max-age=5, max-age=10") == {"max-age": "5"}  # the first wins
    assert directives('x="a\\"b", ,, =,y') == {"x": 'a"b', "y": None}
    assert directives("") == {}


@given(st.text())
def test_cache_control_never_raises_and_names_are_lower_case_tokens(field: str) -> None:
    found = directives(field)
    for name in found:
        assert name == name.lower()
        assert name


def test_delta_seconds() -> None:
    assert seconds("0") == 0
    assert seconds("1" * 12) == MAX_DELTA
    for bad in ("", "-1", "1.5", " 1", "١٢", None):
        assert seconds(bad) is None


def test_http_dates_in_every_format_and_garbage() -> None:
    for text in (
        "Sun, 06 Nov 1994 08:49:37 GMT",
        "Sunday, 06-Nov-94 08:49:37 GMT",
        "Sun Nov  6 08:49:37 1994",
    ):
        assert http_date(text) == 784111777.0
    for bad in ("0", "-1", "", "Sun, 06 Foo 1994 08:49:37 GMT", "Sun, 31 Feb 1994 08:49:37 GMT"):
        assert http_date(bad) is None


@given(st.integers(min_value=0, max_value=253402300799))
def test_dates_round_trip(when: int) -> None:
    assert http_date(format_http_date(when)) == when


@given(st.text())
def test_dates_never_raise(text: str) -> None:
    http_date(text)


def test_weak_comparison() -> None:
    assert weak_match('"a"', 'W/"a"')
    assert weak_match('W/"a"', '"a"')
    assert weak_match(' "b" , W/"a"', '"a"')
    assert not weak_match('"ab"', '"a"')
    assert weak_match("*", 'W/"x"')
    assert weak_match("*", None)  # RFC 9110 13.1.2: any stored response, ETag or not


def test_vary_names() -> None:
    assert names("Accept-Encoding, accept-encoding,,X-A") == ["accept-encoding", "x-a"]


def test_hosts() -> None:
    assert normal_host("EXAMPLE.com:80", "http") == "example.com"
    assert normal_host("example.com:8080", "http") == "example.com:8080"
    assert normal_host("[::1]:443", "https") == "[::1]"
    for bad in ("", "a b", "a/b", "a@b\x00", "é.com"):
        assert normal_host(bad, "http") is None


_param = st.text("abcxyz_%", min_size=1, max_size=6)


@given(st.lists(st.tuples(_param, st.text("0123", max_size=3)), unique_by=lambda p: p[0]))
def test_query_order_does_not_matter(pairs: list[tuple[str, str]]) -> None:
    normalise = QueryNormaliser(["utm_*"])
    query = "&".join(f"{name}={value}" for name, value in pairs)
    shuffled = pairs[:]
    random.Random(0).shuffle(shuffled)
    other = "&".join(f"{name}={value}" for name, value in shuffled)
    assert normalise(query) == normalise(other)


@given(st.lists(st.tuples(_param, st.text("0123", max_size=3))), st.text("abc", max_size=4))
def test_ignored_parameters_do_not_matter(pairs: list[tuple[str, str]], tracking: str) -> None:
    normalise = QueryNormaliser(["utm_*", "fbclid"])
    query = "&".join(f"{name}={value}" for name, value in pairs)
    assert normalise(query) == normalise(f"utm_source={tracking}&{query}&fbclid=1")


def test_repeated_parameters_keep_their_order() -> None:
    normalise = QueryNormaliser([])
    assert normalise("b=1&a=2&a=1") == "a=2&a=1&b=1"
    assert normalise("a=1&a=2") != normalise("a=2&a=1")


@given(st.text(), st.text(), st.text(), st.text())
def test_paths_and_queries_never_run_into_one_another(p1: str, q1: str, p2: str, q2: str) -> None:
    if (p1, q1) != (p2, q2):
        assert primary_key("w:", "http", "h", p1, q1) != primary_key("w:", "http", "h", p2, q2)


@given(
    st.lists(st.one_of(st.none(), st.text(max_size=5)), min_size=2, max_size=2),
    st.lists(st.one_of(st.none(), st.text(max_size=5)), min_size=2, max_size=2),
)
def test_variant_keys_are_length_prefixed(a: list[str | None], b: list[str | None]) -> None:
    from scalekit.web._keys import normal_value

    if [normal_value(v) for v in a] != [normal_value(v) for v in b]:
        assert variant_key("k", "g", a) != variant_key("k", "g", b)
