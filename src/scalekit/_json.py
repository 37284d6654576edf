"""Strict JSON for every block, through orjson when it is installed (the ``fast``
extra), with the standard library's answers either way.

:func:`dumps` gives what ``json`` gives with ``separators=(",", ":")``,
``ensure_ascii=False`` and ``allow_nan=False``, as UTF-8; :func:`loads` reads it
back. orjson is 5 to 10 times faster, but it differs from the standard library at
the edges, and there the standard library decides:

- orjson writes NaN and infinities as ``null`` where ``json`` refuses them: a
  text with ``null`` in it is made again by ``json`` (which raises for NaN);
- orjson refuses what ``json`` accepts or converts (an int key, an int beyond 64
  bits, a str subclass, a datetime): it raises ``TypeError``, and ``json`` decides;
- orjson reads an integer of 19 digits or more as a float: such a text is read by
  ``json``;
- ``json`` reads ``NaN`` and ``Infinity``, orjson does not: here neither does.

So a value encodes to the same JSON and decodes to the same value whether or not
orjson is installed.

>>> dumps({"n": 1, "s": "é"}) == '{"n":1,"s":"é"}'.encode()
True
>>> loads(b'{"big": 123456789012345678901234567890}')["big"]
123456789012345678901234567890
>>> dumps({"x": float("nan")})
Traceback (most recent call last):
...
ValueError: Out of range float values are not JSON compliant...
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

__all__ = [
    "CODEC",
    "ORJSON_OPTIONS",
    "dumps",
    "has_wide_number",
    "loads",
    "orjson",
    "std_dumps",
]

std_dumps: Callable[[Any], str] = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode
"""The standard library's encoder with the settings above (returns ``str``)."""


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # json reads NaN and Infinity; orjson does not


_std_loads = json.JSONDecoder(parse_constant=_refuse_constant).decode
# A run of 19 digits: a number orjson may not read exactly (>= 2**63). Found by
# mapping every digit to "0" and everything else to " ", then a substring search:
# 1.4 us for 1 KB of JSON, where re.search(rb"\d{19}") takes 13.7 us.
_DIGITS = bytes(48 if 48 <= byte <= 57 else 32 for byte in range(256))
_WIDE_RUN = b"0" * 19


def has_wide_number(data: bytes) -> bool:
    """Whether ``data`` holds 19 digits in a row (a number orjson may misread)."""
    return _WIDE_RUN in data.translate(_DIGITS)


orjson: Any = None
ORJSON_OPTIONS = 0
try:  # pragma: no cover - depends on the environment
    import orjson
except ImportError:  # pragma: no cover - depends on the environment
    pass
else:
    # subclasses, datetimes and dataclasses are not for orjson: it raises TypeError
    # (no ``default``), and the standard library decides, as without orjson
    ORJSON_OPTIONS = (
        orjson.OPT_PASSTHROUGH_SUBCLASS
        | orjson.OPT_PASSTHROUGH_DATETIME
        | orjson.OPT_PASSTHROUGH_DATACLASS
    )

CODEC = "orjson" if orjson is not None else "json"
"""The JSON codec in use: ``"orjson"`` when installed, else ``"json"``."""


def dumps(value: Any) -> bytes:
    """``value`` as UTF-8 JSON text. ``TypeError`` for what is not JSON,
    ``ValueError`` for NaN, infinities and lone surrogates.

    Runtime complexity: O(size of the value)."""
    if orjson is not None:
        try:
            data: bytes = orjson.dumps(value, option=ORJSON_OPTIONS)
        except TypeError:
            pass
        else:
            if data.find(b"null") < 0:
                return data
    return std_dumps(value).encode()


def loads(data: bytes) -> Any:
    """The value of UTF-8 JSON text; ``ValueError`` (``UnicodeDecodeError`` or
    ``json.JSONDecodeError``) if it is not.

    Runtime complexity: O(len(data))."""
    if orjson is not None and not has_wide_number(data):
        return orjson.loads(data)
    return _std_loads(data.decode())
