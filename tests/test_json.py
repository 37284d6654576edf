"""scalekit._json: the same text and values with orjson as with the standard library."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scalekit import _json

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=["Cs"])),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=12,
)


@pytest.fixture(params=["orjson", "json"])
def codec(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "json":
        monkeypatch.setattr(_json, "orjson", None)
    elif _json.orjson is None:
        pytest.skip("orjson is not installed")
    return str(request.param)


def _std(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


@given(value=JSON_VALUES)
def test_dumps_and_loads_agree_with_the_standard_library(value: Any) -> None:
    for orjson in (_json.orjson, None):
        saved = _json.orjson
        _json.orjson = orjson
        try:
            text = _json.dumps(value)
            assert _json.loads(text) == json.loads(_std(value))
            assert json.loads(text) == json.loads(_std(value))
        finally:
            _json.orjson = saved


@pytest.mark.parametrize(
    "value", [math.nan, [math.inf], {"x": -math.inf}, "\ud800", {"k": ["\udfff"]}, object(), {1j}]
)
def test_what_is_not_json_is_refused(codec: str, value: Any) -> None:
    with pytest.raises((TypeError, ValueError)):
        _json.dumps(value)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (b"123456789012345678901234567890", 123456789012345678901234567890),
        (b'{"a":null}', {"a": None}),
    ],
)
def test_wide_integers_and_nulls_read_exactly(codec: str, text: bytes, value: Any) -> None:
    got = _json.loads(text)
    assert got == value
    assert type(got) is type(value)


@pytest.mark.parametrize("text", [b"NaN", b"[Infinity]", b"\xff", b"{", b""])
def test_what_is_not_json_text_is_refused(codec: str, text: bytes) -> None:
    with pytest.raises(ValueError):
        _json.loads(text)


def test_int_keys_become_strings_as_in_the_standard_library(codec: str) -> None:
    assert _json.dumps({1: "a"}) == b'{"1":"a"}'
