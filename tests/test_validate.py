"""The shared argument checks: one hostile value, one answer everywhere."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest

from scalekit._validate import (
    MAX_SECONDS,
    check_bool,
    check_callable,
    check_choice,
    check_count,
    check_name,
    check_node,
    check_number,
    check_seconds,
    check_weight,
)
from scalekit.errors import ArgumentTypeError, ConfigurationError, ScalekitError

HOSTILE_NUMBERS = [math.nan, -math.inf, 10**400, 1e308, -1]


@pytest.mark.parametrize("value", HOSTILE_NUMBERS)
def test_seconds_refuses_what_a_clock_cannot_use(value: object) -> None:
    with pytest.raises(ConfigurationError, match="ttl"):
        check_seconds(value, "ttl")


@pytest.mark.parametrize("value", [True, None, "5", [1], object()])
def test_seconds_refuses_wrong_types_naming_the_argument(value: object) -> None:
    with pytest.raises(ArgumentTypeError, match="delay"):
        check_seconds(value, "delay")


def test_seconds_bounds_zero_and_infinity() -> None:
    assert check_seconds(2, "t") == 2.0
    assert check_seconds(timedelta(minutes=1), "t") == 60.0
    assert check_seconds(0, "t", allow_zero=True) == 0.0
    assert check_seconds(math.inf, "t", allow_inf=True) == math.inf
    assert check_seconds(MAX_SECONDS, "t") == MAX_SECONDS
    for refused in (0, math.inf, MAX_SECONDS * 2):
        with pytest.raises(ConfigurationError):
            check_seconds(refused, "t")


def test_counts() -> None:
    assert check_count(3, "n") == 3
    assert check_count(0, "n") == 0
    with pytest.raises(ArgumentTypeError, match="n must be an int, got bool"):
        check_count(False, "n")
    for bad_type in (1.0, "1", None, math.nan):
        with pytest.raises(ArgumentTypeError):
            check_count(bad_type, "n")
    for bad_value in (-1, 2**64, 10**400):
        with pytest.raises(ConfigurationError):
            check_count(bad_value, "n")
    with pytest.raises(ConfigurationError, match=r"in \[1, 5\]"):
        check_count(6, "n", minimum=1, maximum=5)


def test_numbers_and_weights() -> None:
    assert check_number(0.5, "c", minimum=0, min_inclusive=False) == 0.5
    with pytest.raises(ConfigurationError):
        check_number(0, "c", minimum=0, min_inclusive=False)
    for bad in (math.nan, math.inf, 10**400):
        with pytest.raises(ConfigurationError):
            check_number(bad, "c")
        with pytest.raises(ConfigurationError):
            check_weight(bad)
    assert check_weight(3) == 3
    for bad in (0, -1, 2.0**60):
        with pytest.raises(ConfigurationError):
            check_weight(bad)
    with pytest.raises(ArgumentTypeError):
        check_weight(True)


def test_nodes_names_and_choices() -> None:
    assert check_node("a") == "a"
    assert check_node(("h", 1)) == ("h", 1)
    with pytest.raises(ConfigurationError, match="equal itself"):
        check_node(math.nan)
    for bad in (None, ["a"], {"a": 1}):
        with pytest.raises(ArgumentTypeError):
            check_node(bad)
    assert check_name("emails", "name") == "emails"
    for bad in ("", "\ud800"):
        with pytest.raises(ConfigurationError):
            check_name(bad, "name")
    with pytest.raises(ArgumentTypeError):
        check_name(None, "name")
    assert check_choice("a", "mode", ("a", "b")) == "a"
    with pytest.raises(ConfigurationError, match="'a', 'b'"):
        check_choice("x", "mode", ("a", "b"))
    with pytest.raises(ConfigurationError):
        check_choice(["unhashable"], "mode", {"a", "b"})


def test_every_refusal_is_a_scalekit_error_and_the_builtin() -> None:
    with pytest.raises(ScalekitError):
        check_seconds(math.nan, "t")
    with pytest.raises(ValueError):
        check_seconds(math.nan, "t")
    with pytest.raises(TypeError):
        check_count(None, "n")


@pytest.mark.parametrize("value", [1, 0, None, "true", math.nan, [True]])
def test_bool_refuses_what_is_merely_truthy_naming_the_argument(value: object) -> None:
    with pytest.raises(ArgumentTypeError, match=r"^stats must be a bool, got "):
        check_bool(value, "stats")
    assert check_bool(True, "stats") is True
    assert check_bool(False, "stats") is False


def test_callable_allows_none_only_when_told() -> None:
    with pytest.raises(ArgumentTypeError, match=r"^hash must be callable, got NoneType$"):
        check_callable(None, "hash")
    assert check_callable(None, "hash", allow_none=True) is None
    assert check_callable(len, "hash", allow_none=True) is len
    with pytest.raises(ArgumentTypeError, match=r"^hash must be callable, got int$"):
        check_callable(3, "hash", allow_none=True)
