"""The argument checks every building block uses, so that one hostile value gets one
answer everywhere.

Each check returns the value in the form the caller stores (an ``int`` count, a
``float`` number of seconds) or raises an error of :mod:`scalekit.errors` that names
the argument: :class:`~scalekit.errors.ArgumentTypeError` (also ``TypeError``) for a
wrong type, :class:`~scalekit.errors.ConfigurationError` (also ``ValueError``) for a
wrong value. Callers check every argument before they change anything, so a refused
call changes nothing.

The rules:

- ``bool`` is never a number here (``True`` as a TTL or a count is a mistake).
- NaN is refused everywhere; infinity only where the caller says it means something
  (``timeout=math.inf``: wait forever).
- Finite numbers too large to use are refused: seconds above :data:`MAX_SECONDS`
  (a century; ``time.monotonic() + 1e308`` loses every digit of the clock, and
  ``10**400`` does not convert to a float at all), counts above :data:`MAX_COUNT`,
  weights above :data:`MAX_WEIGHT`.

>>> check_seconds(1, "ttl")
1.0
>>> check_seconds(float("nan"), "ttl")
Traceback (most recent call last):
...
scalekit.errors.ConfigurationError: ttl must be a finite number of seconds, got nan
>>> check_count(True, "maxsize")
Traceback (most recent call last):
...
scalekit.errors.ArgumentTypeError: maxsize must be an int, got bool
"""

from __future__ import annotations

import math
import operator
from collections.abc import Collection, Hashable
from datetime import timedelta
from typing import Any, TypeVar

from scalekit.errors import ArgumentTypeError, ConfigurationError

__all__ = [
    "MAX_COUNT",
    "MAX_SECONDS",
    "MAX_WEIGHT",
    "check_bool",
    "check_callable",
    "check_choice",
    "check_count",
    "check_hashable",
    "check_methods",
    "check_name",
    "check_node",
    "check_number",
    "check_seconds",
    "check_str",
    "check_weight",
    "type_name",
]

_T = TypeVar("_T")

MAX_SECONDS = 100 * 365.25 * 86400.0
"""The longest duration any TTL, delay, timeout or interval may have: a century.

Below :data:`threading.TIMEOUT_MAX` on every platform, so a timeout that passes
this check can always be handed to a lock or an event."""

MAX_COUNT = 2**63 - 1
"""The largest count (a capacity, a limit): what a C ``ssize_t`` and SQLite hold."""

MAX_WEIGHT = float(2**53)
"""The largest weight: beyond it a float no longer holds every integer exactly."""


def type_name(value: object) -> str:
    """The name of ``value``'s type, for messages (``'NoneType'``, ``'bool'``)."""
    return type(value).__name__


def _real(value: object, name: str, what: str) -> float:
    """``value`` as a float, or an ArgumentTypeError/ConfigurationError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ArgumentTypeError(f"{name} must be {what}, got {type_name(value)}")
    if isinstance(value, int):
        try:
            return float(value)
        except OverflowError:
            raise ConfigurationError(f"{name} is too large: {value}") from None
    return float(value)


def check_seconds(
    value: object,
    name: str,
    *,
    allow_zero: bool = False,
    allow_inf: bool = False,
    maximum: float = MAX_SECONDS,
) -> float:
    """Return ``value`` as a float number of seconds, or raise naming ``name``.

    ``int``, ``float`` and :class:`datetime.timedelta` are accepted. Negative values,
    NaN and values above ``maximum`` are refused; zero only with ``allow_zero``;
    ``math.inf`` only with ``allow_inf`` (returned as ``math.inf``, for the caller to
    read as "no limit").

    Runtime complexity: O(1).
    """
    if isinstance(value, timedelta):
        value = value.total_seconds()
    seconds = _real(value, name, "a number of seconds")
    if seconds == math.inf and allow_inf:
        return seconds
    if not math.isfinite(seconds):
        raise ConfigurationError(f"{name} must be a finite number of seconds, got {seconds!r}")
    if seconds < 0 or (seconds == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigurationError(f"{name} must be {bound} seconds, got {value!r}")
    if seconds > maximum:
        raise ConfigurationError(f"{name} must be at most {maximum:g} seconds, got {value!r}")
    return seconds


def check_count(value: object, name: str, *, minimum: int = 0, maximum: int = MAX_COUNT) -> int:
    """Return ``value`` as an ``int`` in ``[minimum, maximum]``, or raise naming ``name``.

    Any integer type (``operator.index``) is accepted except ``bool``.

    Runtime complexity: O(1).
    """
    if isinstance(value, bool):
        raise ArgumentTypeError(f"{name} must be an int, got bool")
    try:
        count = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ArgumentTypeError(f"{name} must be an int, got {type_name(value)}") from None
    if not minimum <= count <= maximum:
        if maximum == MAX_COUNT:
            raise ConfigurationError(f"{name} must be >= {minimum}, got {count}")
        raise ConfigurationError(f"{name} must be in [{minimum}, {maximum}], got {count}")
    return count


def check_number(
    value: object,
    name: str,
    *,
    minimum: float = -math.inf,
    maximum: float = math.inf,
    min_inclusive: bool = True,
    max_inclusive: bool = True,
) -> float:
    """Return ``value`` as a finite float within the bounds, or raise naming ``name``.

    Runtime complexity: O(1).
    """
    number = _real(value, name, "a number")
    if not math.isfinite(number):
        raise ConfigurationError(f"{name} must be a finite number, got {number!r}")
    low_ok = number >= minimum if min_inclusive else number > minimum
    high_ok = number <= maximum if max_inclusive else number < maximum
    if not (low_ok and high_ok):
        low = "[" if min_inclusive else "("
        high = "]" if max_inclusive else ")"
        raise ConfigurationError(
            f"{name} must be in {low}{minimum:g}, {maximum:g}{high}, got {value!r}"
        )
    return number


def check_weight(weight: object, name: str = "weight") -> float:
    """Return ``weight`` if it is a positive finite number up to :data:`MAX_WEIGHT`.

    Runtime complexity: O(1).
    """
    number = _real(weight, name, "a number")
    if not (number > 0 and math.isfinite(number)):
        raise ConfigurationError(f"{name} must be positive and finite, got {weight!r}")
    if number > MAX_WEIGHT:
        raise ConfigurationError(f"{name} must be at most 2**53, got {weight!r}")
    return weight  # type: ignore[return-value]


def check_str(value: object, name: str, *, allow_empty: bool = False) -> str:
    """Return ``value`` if it is a ``str`` (non-empty unless ``allow_empty``).

    Runtime complexity: O(1).
    """
    if not isinstance(value, str):
        raise ArgumentTypeError(f"{name} must be a str, got {type_name(value)}")
    if not value and not allow_empty:
        raise ConfigurationError(f"{name} must not be empty")
    return value


def check_name(value: object, name: str) -> str:
    """Return ``value`` if it is a non-empty ``str`` that encodes as UTF-8 (no lone
    surrogate): a name that every backend (a file, a Redis key, a SQL row) can keep.

    Runtime complexity: O(len(value)).
    """
    text = check_str(value, name)
    try:
        text.encode()
    except UnicodeEncodeError:
        raise ConfigurationError(f"{name} must be valid text, got {text!r}") from None
    return text


def check_node(node: _T, name: str = "node") -> _T:
    """Return ``node`` if it can name a node, backend or replica.

    It must be hashable, not ``None``, and equal to itself (NaN is not: a NaN node
    could be added and never found again).

    Runtime complexity: O(1) plus the node's ``__hash__``.
    """
    if node is None:
        raise ArgumentTypeError(f"{name} must not be None")
    check_hashable(node, name)
    if node != node:
        raise ConfigurationError(f"{name} must equal itself, got {node!r}")
    return node


def check_hashable(value: _T, name: str) -> _T:
    """Return ``value`` if it is hashable (what a dict key, a cache key must be).

    Runtime complexity: O(1) plus the value's ``__hash__``.
    """
    if not isinstance(value, Hashable):
        raise ArgumentTypeError(f"{name} must be hashable, got {type_name(value)}")
    try:
        hash(value)
    except TypeError:
        raise ArgumentTypeError(f"{name} must be hashable, got {value!r}") from None
    return value


def check_choice(value: _T, name: str, choices: Collection[Any]) -> _T:
    """Return ``value`` if it is one of ``choices``; otherwise name them all.

    Runtime complexity: O(len(choices)).
    """
    try:
        ok = value in choices
    except TypeError:
        ok = False
    if not ok:
        listed = ", ".join(repr(choice) for choice in choices)
        raise ConfigurationError(f"{name} must be one of {listed}; got {value!r}")
    return value


def check_bool(value: object, name: str) -> bool:
    """Return ``value`` if it is a ``bool`` (not merely truthy: ``1`` is refused).

    Runtime complexity: O(1).
    """
    if not isinstance(value, bool):
        raise ArgumentTypeError(f"{name} must be a bool, got {type_name(value)}")
    return value


def check_callable(value: _T, name: str, *, allow_none: bool = False) -> _T:
    """Return ``value`` if it is callable (or ``None``, with ``allow_none``).

    Runtime complexity: O(1).
    """
    if not callable(value) and not (allow_none and value is None):
        raise ArgumentTypeError(f"{name} must be callable, got {type_name(value)}")
    return value


def check_methods(value: _T, name: str, what: str, methods: tuple[str, ...]) -> _T:
    """Return ``value`` if it is an instance (not a class) with every one of
    ``methods`` callable: ``what`` it must be, as the message says.

    Runtime complexity: O(len(methods)).

    >>> check_methods(None, "client", "a client", ("get",))
    Traceback (most recent call last):
    ...
    scalekit.errors.ArgumentTypeError: client must be a client (with get()), got NoneType
    """
    missing = [m for m in methods if not callable(getattr(value, m, None))]
    if missing or isinstance(value, type):
        needs = ", ".join(f"{m}()" for m in (missing or methods))
        raise ArgumentTypeError(f"{name} must be {what} (with {needs}), got {type_name(value)}")
    return value
