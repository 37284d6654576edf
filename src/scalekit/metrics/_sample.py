"""One flat reading of a counter or gauge, and the Prometheus naming rules it keeps."""

from __future__ import annotations

import math
import re
from typing import Literal, NamedTuple

__all__ = ["Sample", "is_label_name", "is_metric_name", "label_value"]

Kind = Literal["counter", "gauge"]

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


class Sample(NamedTuple):
    """One value of one series: ``name{labels} value``, as Prometheus exposes it.

    ``labels`` are ``(label, value)`` pairs in a fixed order (a tuple, so a
    sample is hashable and immutable); ``dict(sample.labels)`` reads them as a
    mapping. ``kind`` is ``"counter"`` (only goes up; the name ends in
    ``_total``) or ``"gauge"``.

    >>> sample = Sample("scalekit_cache_hits_total", (("cache", "users"),), "counter", 3.0)
    >>> dict(sample.labels)["cache"], sample.value
    ('users', 3.0)
    """

    name: str
    labels: tuple[tuple[str, str], ...]
    kind: Kind
    value: float


def is_metric_name(name: str) -> bool:
    """Whether ``name`` is a valid Prometheus metric name. Runtime complexity: O(len(name))."""
    return _METRIC_NAME.fullmatch(name) is not None


def is_label_name(name: str) -> bool:
    """Whether ``name`` is a valid Prometheus label name (``__`` is reserved).

    Runtime complexity: O(len(name)).
    """
    return _LABEL_NAME.fullmatch(name) is not None and not name.startswith("__")


def label_value(value: object) -> str:
    """``str(value)`` as a label value: valid UTF-8 (a lone surrogate becomes its
    ``\\udxxx`` escape). Runtime complexity: O(len(str(value)))."""
    text = value if isinstance(value, str) else str(value)
    try:
        text.encode()
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode()
    return text


def number(value: object) -> float | None:
    """``value`` as a sample's float: bools as 0/1, other ints and floats as they are
    (NaN dropped: a series without a value says nothing); None for anything else."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, (int, float)):
        try:
            result = float(value)
        except OverflowError:
            return math.inf if value > 0 else -math.inf
        return None if math.isnan(result) else result
    return None
