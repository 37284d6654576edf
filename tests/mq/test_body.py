"""One body check for every backend, the same with orjson and without (issue 13,
item 13, and the fast codec of the performance item)."""

from __future__ import annotations

import collections
import datetime
import math
from typing import Any

import pytest

from scalekit.errors import ArgumentTypeError, ConfigurationError
from scalekit.mq import _body

VALUES: list[Any] = [
    {"user": 42, "ok": True, "none": None, "pi": 3.14159, "e": 1e-7, "neg": -0.0},
    [1, "two", [3.5, {"four": 4}]],
    {"big": 2**70, "small": -(2**70), "edge": 2**63, "u64": 2**64 - 1},
    {"text": "caf\u00e9 \U0001f600 \x00"},
    collections.OrderedDict(a=1),  # a dict subclass: the standard library writes it
    {1: "int key"},  # json makes the key a str, as without orjson
    (1, 2),
    7,
    None,
]
REFUSED: list[tuple[Any, type[Exception]]] = [
    (math.nan, ArgumentTypeError),
    ({"x": [math.inf]}, ArgumentTypeError),
    ({"k": "\ud800"}, ConfigurationError),
    (["\udcff"], ConfigurationError),
    ({"\ud800": 1}, ConfigurationError),
    ({"when": datetime.datetime(2026, 1, 1)}, ArgumentTypeError),
    ({1, 2}, ArgumentTypeError),
]


@pytest.fixture(params=["orjson", "json"])
def codec(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "json":
        monkeypatch.setattr(_body, "_orjson", None)
    elif _body._orjson is None:
        pytest.skip("orjson is not installed")
    return str(request.param)


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_a_json_body_comes_back_the_same_with_either_codec(codec: str, value: Any) -> None:
    expected = _body._std_loads(_body._std_dumps(value))
    stored = _body.encode(value)
    assert _body.decode(stored) == expected
    kind, data = _body.to_stored(stored)
    assert kind == "j"
    assert _body.decode(_body.from_stored(kind, data)) == expected  # as a durable backend reads it


@pytest.mark.parametrize(("value", "error"), REFUSED, ids=repr)
def test_a_body_is_refused_alike_with_either_codec(
    codec: str, value: Any, error: type[Exception]
) -> None:
    with pytest.raises(error, match="body"):
        _body.encode(value)


def test_damaged_stored_bodies_raise_undecodable() -> None:
    for kind, data in [("s", b"\xff"), ("j", b"{"), ("j", b"\xc3("), ("x", b"")]:
        with pytest.raises(_body.UndecodableBody):
            _body.from_stored(kind, data)
    for text in ("{", "[1]", '{"a": 1}'):
        with pytest.raises(_body.UndecodableBody):
            _body.loads_headers(text)
    assert _body.loads_headers('{"a": "b"}') == {"a": "b"}
