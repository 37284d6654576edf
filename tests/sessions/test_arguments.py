"""Hostile arguments on every public parameter of the sessions block: an error of
scalekit.errors naming the parameter, and a refused call changes nothing."""

from __future__ import annotations

import math
from typing import Any

import pytest

from scalekit.errors import ArgumentTypeError, ConfigurationError, ScalekitError
from scalekit.sessions import MemorySessionStore

HOSTILE_SECONDS = [math.nan, math.inf, -math.inf, -1, 0, 10**400, 1e308, True, "60", [], None]


@pytest.mark.parametrize("name", ["idle_timeout", "absolute_timeout"])
@pytest.mark.parametrize("bad", HOSTILE_SECONDS)
def test_timeouts(name: str, bad: Any) -> None:
    if bad is None:
        MemorySessionStore(**{name: None})  # None: no such limit
        return
    with pytest.raises((ArgumentTypeError, ConfigurationError), match=name):
        MemorySessionStore(**{name: bad})


@pytest.mark.parametrize("bad", [0, 1, -1, 1.5, True, 10**400, math.nan, "1024", []])
def test_max_bytes(bad: Any) -> None:
    with pytest.raises((ArgumentTypeError, ConfigurationError), match="max_bytes"):
        MemorySessionStore(max_bytes=bad)


@pytest.mark.parametrize(
    ("settings", "name"),
    [
        ({"clock": None}, "clock"),
        ({"clock": 5}, "clock"),
        ({"serializer": object()}, "serializer"),
        ({"policies": {"k": "min"}}, "policies"),
        ({"policies": {"k": None}}, "policies"),
        ({"policies": ["k"]}, "policies"),
        ({"policies": {1: "max"}}, "session key"),
        ({"policies": {"\ud800": "max"}}, "session key"),
    ],
)
def test_other_settings(settings: dict[str, Any], name: str) -> None:
    with pytest.raises(ScalekitError, match=name):
        MemorySessionStore(**settings)


def test_store_calls_refuse_what_is_not_a_session_and_change_nothing() -> None:
    store = MemorySessionStore()
    session = store.create({"a": 1})
    for bad in (1, None, "id", {"a": 2}, session.id):
        with pytest.raises(ArgumentTypeError, match="session must be a Session"):
            store.rotate(bad)  # the first release: AttributeError
        with pytest.raises(ArgumentTypeError, match="session must be a Session"):
            store.save(bad)
    for data in ("x", [("a", 1)], {1: 2}, {"\ud800": 1}, {"a": "\udfff"}, {"a": math.inf}):
        with pytest.raises(ScalekitError):
            store.create(data)  # type: ignore[arg-type]
    assert len(store) == 1
    loaded = store.load(session.id)
    assert loaded is not None
    assert (loaded.to_dict(), loaded.version) == ({"a": 1}, 1)
    store._check()


@pytest.mark.parametrize("key", [1, None, b"k", ("t",), "\ud800", "a\udfffb"])
def test_session_keys(key: Any) -> None:
    session = MemorySessionStore().create({"a": 1})
    with pytest.raises((ArgumentTypeError, ConfigurationError), match="session key"):
        session[key] = 1
    with pytest.raises((ArgumentTypeError, ConfigurationError), match="session key"):
        session.increment(key)
    assert session.to_dict() == {"a": 1}
    assert not session.modified
    session[""] = 0  # the empty key is a JSON key like any other
    session._check()


@pytest.mark.parametrize(
    "value", ["\ud800", ["\udfff"], {"k": "\ud800"}, math.nan, math.inf, object(), {1, 2}]
)
def test_session_values(value: Any) -> None:
    """The first release accepted a lone surrogate here and failed at save time."""
    store = MemorySessionStore()
    session = store.create({"a": 1})
    with pytest.raises(ArgumentTypeError, match="JSON"):
        session["a"] = value
    assert session["a"] == 1
    assert not session.modified


@pytest.mark.parametrize("by", [True, math.nan, math.inf, -math.inf, 10**400, "1", None, [1]])
def test_increment_by(by: Any) -> None:
    session = MemorySessionStore().create({"n": 1})
    with pytest.raises((ArgumentTypeError, ConfigurationError), match="by"):
        session.increment("n", by)
    assert session["n"] == 1
    assert not session.modified
    session._check()
