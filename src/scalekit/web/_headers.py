"""HTTP header fields the cache reads, parsed without I/O: ``Cache-Control``
directives, comma lists (``Vary``, ``Surrogate-Key``), HTTP dates and entity tags.

Every parser takes any text and never raises: a field it cannot read is read as
absent (a date), or as the directives it could make out (``Cache-Control``).

>>> directives("max-age=60, s-maxage=\\"30\\", no-cache=\\"Set-Cookie\\", public")
{'max-age': '60', 's-maxage': '30', 'no-cache': 'Set-Cookie', 'public': None}
>>> seconds(directives("max-age=60")["max-age"])
60
>>> http_date("Sun, 06 Nov 1994 08:49:37 GMT")
784111777.0
>>> weak_match('W/"a", "b"', '"a"')
True
"""

from __future__ import annotations

import calendar
import re
import time
from collections.abc import Iterable
from datetime import datetime, timezone

__all__ = [
    "MAX_DELTA",
    "MEMO_TEXT",
    "directives",
    "format_http_date",
    "http_date",
    "names",
    "seconds",
    "weak_match",
]

MAX_DELTA = 2**31  # RFC 9111 1.2.2: a delta-seconds too large to hold reads as 2**31

_DIRECTIVE = re.compile(
    r"""\s*([!#$%&'*+\-.^_`|~0-9A-Za-z]+)\s*(?:=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s"]*)))?\s*(?:,|$)"""
)
_memo: dict[str, dict[str, str | None]] = {}
_MEMO_SIZE = 1024
MEMO_TEXT = 256
"""The longest text (a field, a path, a query) that the parsers remember."""


def directives(field: str | None) -> dict[str, str | None]:
    """The directives of a ``Cache-Control`` (or ``Surrogate-Control``, ``Pragma``)
    field: lower-case names to their argument (unquoted) or ``None``.

    The first occurrence of a directive wins (RFC 9111 4.2.1); text that is not a
    directive is skipped up to the next comma. The result is shared between
    calls with the same text: do not change it.

    Runtime complexity: O(len(field)); O(1) for a field seen recently.

    >>> directives("No-Store, max-age=5, max-age=10, =junk, private")
    {'no-store': None, 'max-age': '5', 'private': None}
    >>> directives(None)
    {}
    """
    if not field:
        return _EMPTY
    found = _memo.get(field)
    if found is not None:
        return found
    found = {}
    position, end = 0, len(field)
    while position < end:
        match = _DIRECTIVE.match(field, position)
        if match is None or match.end() == position:
            comma = field.find(",", position)
            if comma < 0:
                break
            position = comma + 1
            continue
        position = match.end()
        name = match.group(1).lower()
        if name in found:
            continue
        quoted, token = match.group(2), match.group(3)
        if quoted is not None:
            found[name] = re.sub(r"\\(.)", r"\1", quoted)
        else:
            found[name] = token if token else None
    if len(field) <= MEMO_TEXT:  # a client's long fields would fill memory
        if len(_memo) >= _MEMO_SIZE:
            _memo.clear()
        _memo[field] = found
    return found


_EMPTY: dict[str, str | None] = {}


def seconds(argument: str | None) -> int | None:
    """A delta-seconds argument as an int (capped at :data:`MAX_DELTA`), or
    ``None`` when it is missing or not digits.

    >>> seconds("10"), seconds(" 10"), seconds("-1"), seconds(None), seconds("9" * 40)
    (10, None, None, None, 2147483648)
    """
    if argument is None or not argument.isdigit() or not argument.isascii():
        return None
    if len(argument) > 10:
        return MAX_DELTA
    return min(int(argument), MAX_DELTA)


def names(field: str | None) -> list[str]:
    """The members of a comma list (``Vary``, ``Connection``), stripped, lower-cased,
    without empties or repeats, in order.

    >>> names(" Accept-Encoding,, accept-encoding , Accept-Language")
    ['accept-encoding', 'accept-language']
    """
    if not field:
        return []
    seen: list[str] = []
    for part in field.split(","):
        name = part.strip().lower()
        if name and name not in seen:
            seen.append(name)
    return seen


_MONTHS = {
    name: number
    for number, name in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1
    )
}
_IMF = re.compile(
    r"\s*[A-Za-z]{3},\s+(\d{1,2})\s+([A-Za-z]{3})\s+(\d{4})\s+(\d\d):(\d\d):(\d\d)\s+GMT\s*\Z"
)
_RFC850 = re.compile(
    r"\s*[A-Za-z]+,\s+(\d\d)-([A-Za-z]{3})-(\d\d)\s+(\d\d):(\d\d):(\d\d)\s+GMT\s*\Z"
)
_ASCTIME = re.compile(
    r"\s*[A-Za-z]{3}\s+([A-Za-z]{3})\s+(\d{1,2})\s+(\d\d):(\d\d):(\d\d)\s+(\d{4})\s*\Z"
)


def http_date(field: str | None) -> float | None:
    """An HTTP date (IMF-fixdate, RFC 850 or asctime, RFC 9110 5.6.7) as POSIX
    seconds, or ``None`` when it is not one.

    Runtime complexity: O(len(field)).

    >>> http_date("Sunday, 06-Nov-94 08:49:37 GMT"), http_date("Sun Nov  6 08:49:37 1994")
    (784111777.0, 784111777.0)
    >>> http_date("0") is None
    True
    """
    if not field:
        return None
    match = _IMF.match(field)
    if match is not None:
        day, month, year, hour, minute, second = match.groups()
    else:
        match = _RFC850.match(field)
        if match is not None:
            day, month, year, hour, minute, second = match.groups()
            # RFC 9110: a two-digit year more than 50 years in the future is in the past
            year = str(2000 + int(year) if int(year) < 50 else 1900 + int(year))
        else:
            match = _ASCTIME.match(field)
            if match is None:
                return None
            month, day, hour, minute, second, year = match.groups()
    number = _MONTHS.get(month.lower())
    if number is None:
        return None
    try:
        moment = datetime(
            int(year), number, int(day), int(hour), int(minute), int(second), tzinfo=timezone.utc
        )
    except (ValueError, OverflowError):  # 31 February, hour 25, year 0
        return None
    return float(calendar.timegm(moment.utctimetuple()))


def format_http_date(when: float) -> str:
    """POSIX seconds as an IMF-fixdate.

    >>> format_http_date(784111777)
    'Sun, 06 Nov 1994 08:49:37 GMT'
    """
    return time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(when))


def _opaque_tags(field: str) -> Iterable[str]:
    """The opaque tags of a list of entity tags, the weak ones without ``W/``."""
    for part in re.findall(r'(?:W/)?"[^"]*"', field):
        yield part[2:] if part.startswith("W/") else part


def weak_match(condition: str, etag: str | None) -> bool:
    """Whether an ``If-None-Match`` field matches the stored ``ETag`` by weak
    comparison (RFC 9110 8.8.3.2): ``*`` matches any stored response, with an
    ``ETag`` or not (RFC 9110 13.1.2); a list matches when one of its tags has the
    same opaque tag, weak or not.

    >>> weak_match("*", '"x"'), weak_match('"x"', None), weak_match('"y", W/"x"', 'W/"x"')
    (True, False, True)
    >>> weak_match(" * ", None)
    True
    """
    if condition.strip() == "*":
        return True
    if etag is None:
        return False
    stored = next(iter(_opaque_tags(etag)), None)
    if stored is None:
        return False
    return any(tag == stored for tag in _opaque_tags(condition))
