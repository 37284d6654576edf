"""The I/O-free core of static serving: from a method, a path and the request's
headers to the status, headers and byte range of the response.

The rules (RFC 9110):

- Representation: ``Accept-Encoding`` q-values pick identity, ``gzip`` or ``br``
  among the copies the build kept; the highest q wins, ties go to ``br``, then
  ``gzip``, then identity; identity is acceptable unless refused
  (``identity;q=0``, or ``*;q=0`` without identity), and then, with no coding left,
  the answer is 406. No ``Accept-Encoding`` at all gets identity. Each
  representation has its own strong ETag (``"<hash>"``, ``"<hash>-gzip"``,
  ``"<hash>-br"``), since their bytes differ and a range of one is not a range of
  another.
- Preconditions, in the order of section 13.2.2: ``If-Match`` (strong comparison,
  412), else ``If-Unmodified-Since`` (412); then ``If-None-Match`` (weak
  comparison, 304 for GET and HEAD), else ``If-Modified-Since`` (304); then
  ``Range`` on GET only, subject to ``If-Range`` (a strong ETag, or the exact
  ``Last-Modified`` date). 304 carries ``ETag``, ``Cache-Control``,
  ``Last-Modified`` and ``Vary``.
- Ranges: one range (``bytes=a-b``, ``a-``, ``-n``) gets 206 with
  ``Content-Range``; an unsatisfiable one gets 416 with ``Content-Range: bytes
  */<length>``; several ranges get the whole representation with 200 (allowed by
  section 14.2; no multipart/byteranges); a malformed ``Range`` is ignored.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import formatdate, parsedate_to_datetime
from typing import Literal
from urllib.parse import urlsplit

from scalekit._validate import check_count, type_name
from scalekit.errors import ArgumentTypeError, ConfigurationError
from scalekit.web._static_manifest import (
    ENCODINGS,
    MANIFEST_NAME,
    Manifest,
    ManifestEntry,
    check_prefix,
    fs_path,
)

__all__ = [
    "IMMUTABLE",
    "RangeResult",
    "StaticAssets",
    "StaticResponse",
    "parse_range",
    "plain_response",
    "select_encoding",
]

IMMUTABLE = "public, max-age=31536000, immutable"
"""The ``Cache-Control`` of a content-hashed URL: a year, never revalidated."""

RangeResult = tuple[int, int] | None | Literal[False]
_DIGITS = 18  # longer numbers are past any file, and int() of 5,000 digits raises
_HUGE = 10**_DIGITS
_SPEC = re.compile(r"(\d+)-(\d*)\Z|-(\d+)\Z")
_ETAG = re.compile(r'\s*(W/)?"([^"]*)"\s*(?:,|\Z)')
_REASONS = {
    200: "OK",
    206: "Partial Content",
    304: "Not Modified",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    412: "Precondition Failed",
    416: "Range Not Satisfiable",
}
_PREFERENCE = {"br": 3, "gzip": 2, "identity": 1}


def _number(digits: str) -> int:
    return _HUGE if len(digits) > _DIGITS else int(digits)


def parse_range(header: str, length: int) -> RangeResult:
    """Read a ``Range`` header against a representation of ``length`` bytes.

    Returns ``(start, stop)`` (half-open, as a slice) for one satisfiable range,
    ``False`` when the range is unsatisfiable (answer 416), and ``None`` when the
    header is to be ignored (malformed, another unit, several ranges, a suffix
    range of an empty file): answer with the whole representation.

    Runtime complexity: O(len(header)).

    >>> parse_range("bytes=0-99", 1000), parse_range("bytes=-100", 1000)
    ((0, 100), (900, 1000))
    >>> parse_range("bytes=1000-", 1000), parse_range("bytes=0-1,5-6", 1000)
    (False, None)
    """
    unit, sep, ranges = header.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    specs = [spec.strip() for spec in ranges.split(",") if spec.strip()]
    if len(specs) != 1:
        return None
    match = _SPEC.match(specs[0])
    if match is None:
        return None
    first, last, suffix = match.groups()
    if suffix is not None:
        count = _number(suffix)
        if count == 0:
            return False
        if length == 0:
            return None
        return max(0, length - count), length
    start = _number(first)
    if last:
        end = _number(last)
        if end < start:
            return None
        if start >= length:
            return False
        return start, min(end + 1, length)
    if start >= length:
        return False
    return start, length


def _qvalue(parameters: list[str]) -> float | None:
    q = 1.0
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "q":
            try:
                q = float(value.strip())
            except ValueError:
                return None
            if not 0.0 <= q <= 1.0:
                return None
    return q


def _accepted(header: str) -> dict[str, float]:
    weights: dict[str, float] = {}
    for item in header.split(","):
        coding, *parameters = item.split(";")
        coding = coding.strip().lower()
        if not coding:
            continue
        q = _qvalue(parameters)
        if q is None:
            continue
        weights["gzip" if coding == "x-gzip" else coding] = q
    return weights


_ACCEPTED: dict[str, dict[str, float]] = {}


def select_encoding(header: str | None, available: tuple[str, ...]) -> str | None:
    """The content coding to send: ``"br"``, ``"gzip"``, ``"identity"``, or
    ``None`` when nothing available is acceptable (answer 406). ``available``
    lists the precompressed codings of the file (identity is always there).

    Runtime complexity: O(len(header)); parsed headers are memoized (256 of them).

    >>> select_encoding("gzip, deflate, br", ("br", "gzip"))
    'br'
    >>> select_encoding("gzip;q=1, br;q=0.5", ("br", "gzip"))
    'gzip'
    >>> select_encoding("br;q=0, identity;q=0", ("br",)) is None
    True
    """
    if header is None:
        return "identity"
    weights = _ACCEPTED.get(header)
    if weights is None:
        weights = _accepted(header)
        if len(_ACCEPTED) >= 256:
            _ACCEPTED.clear()
        _ACCEPTED[header] = weights
    star = weights.get("*")
    best, best_rank = None, (0.0, 0)
    for coding in (*available, "identity"):
        q = weights.get(coding)
        if q is None:
            q = star if star is not None else (0.001 if coding == "identity" else 0.0)
        rank = (q, _PREFERENCE[coding])
        if q > 0 and rank > best_rank:
            best, best_rank = coding, rank
    return best


def _http_date(value: str) -> int | None:
    try:
        return int(parsedate_to_datetime(value).timestamp())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _etags(header: str) -> list[tuple[bool, str]] | None:
    """``(weak, opaque)`` of each entity tag in a list, or ``None`` if malformed."""
    found, position = [], 0
    header = header.strip()
    while position < len(header):
        match = _ETAG.match(header, position)
        if match is None:
            return None
        found.append((match.group(1) is not None, match.group(2)))
        position = match.end()
    return found


@dataclass(frozen=True)
class StaticResponse:
    """What to answer: ``status``, ``headers`` (``(name, value)`` pairs), and either
    ``length`` bytes of ``file`` from ``offset`` on, or ``body`` when ``file`` is
    ``None`` (``file_size`` is the whole file's). A HEAD request's response has every
    header and ``length == 0``."""

    status: int
    headers: list[tuple[str, str]]
    file: str | None = None
    offset: int = 0
    length: int = 0
    body: bytes = b""
    file_size: int = 0

    @property
    def status_line(self) -> str:
        """``"200 OK"``: the status as WSGI's ``start_response`` takes it."""
        return f"{self.status} {_REASONS.get(self.status, '')}"


@dataclass(frozen=True)
class _Representation:
    file: str
    size: int
    etag: str  # quoted
    headers: tuple[tuple[str, str], ...]  # of a whole 200 response, without Content-Length


@dataclass(frozen=True)
class _Route:
    entry: ManifestEntry
    last_modified: int
    representations: Mapping[str, _Representation]  # coding -> representation
    codings: tuple[str, ...]  # precompressed codings available
    vary: tuple[tuple[str, str], ...]
    cache_control: str


def plain_response(status: int, extra: tuple[tuple[str, str], ...] = ()) -> StaticResponse:
    """A short ``text/plain`` answer with ``status``'s reason as its body."""
    body = _REASONS[status].encode()
    headers = [
        ("content-type", "text/plain; charset=utf-8"),
        ("content-length", str(len(body))),
        *extra,
    ]
    return StaticResponse(status, headers, body=body)


def _bad_path(relative: str) -> bool:
    return (
        "\0" in relative
        or "\\" in relative
        or any(segment in (".", "..") for segment in relative.split("/"))
    )


class StaticAssets:
    """The files of one build (``directory`` holding the hashed copies and
    ``manifest.json``) and the decisions of serving them: :meth:`respond` maps a
    request to a :class:`StaticResponse`, with no I/O.

    ``prefix`` is the URL path the files are served under (default: the
    manifest's; a CDN URL's path part is used). Hashed paths are answered with
    :data:`IMMUTABLE`; the logical (unhashed) paths with ``public,
    max-age=<unhashed_max_age>`` (60 s by default, so ``/static/robots.txt`` still
    works and picks up a deploy within a minute), or 404 when ``unhashed_max_age``
    is ``None``. Only files listed in the manifest are ever opened.

    Construction stats every file once and raises
    :class:`~scalekit.errors.ConfigurationError` if one is missing or its size is
    not the manifest's (a half-copied deploy fails at start, not per request).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        manifest: Manifest | str | os.PathLike[str] | None = None,
        prefix: str | None = None,
        unhashed_max_age: int | None = 60,
    ) -> None:
        root = os.path.realpath(fs_path(directory, "directory"))
        source = manifest
        if source is not None and not isinstance(source, Manifest):
            source = fs_path(source, "manifest")
        if prefix is not None:
            prefix = check_prefix(prefix)
        if unhashed_max_age is not None:
            unhashed_max_age = check_count(unhashed_max_age, "unhashed_max_age", maximum=31536000)
        if not os.path.isdir(root):
            raise ConfigurationError(f"directory must be a folder, got {directory!r}")
        if isinstance(source, Manifest):
            manifest = source
        else:
            where = source or os.path.join(root, MANIFEST_NAME)
            try:
                manifest = Manifest.load(where)
            except OSError as exc:
                raise ConfigurationError(
                    f"cannot read the manifest {where!r} (run scalekit static build): {exc}"
                ) from exc
        url_prefix = manifest.prefix if prefix is None else prefix
        self.directory = root
        self.manifest = manifest
        self.url_prefix = url_prefix
        self.prefix = urlsplit(url_prefix).path if not url_prefix.startswith("/") else url_prefix
        self.routes: dict[str, _Route] = {}
        for logical, entry in manifest.items():
            route = self._route(entry, IMMUTABLE)
            self.routes[entry.path] = route
            if unhashed_max_age is not None:
                self.routes.setdefault(
                    logical, self._route(entry, f"public, max-age={unhashed_max_age}", route)
                )

    def _route(
        self, entry: ManifestEntry, cache_control: str, like: _Route | None = None
    ) -> _Route:
        if like is not None:
            last_modified = like.last_modified
        else:
            last_modified = self._check_file(entry.path, entry.size, stat_time=True)
            for encoded in entry.encodings.values():
                self._check_file(encoded.path, encoded.size)
        vary = (("vary", "Accept-Encoding"),) if entry.compressible or entry.encodings else ()
        common = (
            ("content-type", entry.content_type),
            ("accept-ranges", "bytes"),
            ("cache-control", cache_control),
            ("last-modified", formatdate(last_modified, usegmt=True)),
            ("x-content-type-options", "nosniff"),
            *vary,
        )
        representations = {
            "identity": _Representation(
                self._file(entry.path),
                entry.size,
                f'"{entry.etag}"',
                (*common, ("etag", f'"{entry.etag}"')),
            )
        }
        for coding, encoded in entry.encodings.items():
            etag = f'"{entry.etag}-{coding}"'
            representations[coding] = _Representation(
                self._file(encoded.path),
                encoded.size,
                etag,
                (*common, ("etag", etag), ("content-encoding", coding)),
            )
        codings = tuple(c for c in ENCODINGS if c in entry.encodings)
        return _Route(entry, last_modified, representations, codings, vary, cache_control)

    def _file(self, relative: str) -> str:
        return os.path.join(self.directory, *relative.split("/"))

    def _check_file(self, relative: str, size: int, *, stat_time: bool = False) -> int:
        path = self._file(relative)
        try:
            stat = os.stat(path)
        except OSError as exc:
            raise ConfigurationError(f"static file {relative!r} of the manifest: {exc}") from exc
        if stat.st_size != size:
            raise ConfigurationError(
                f"static file {relative!r} has {stat.st_size} bytes, the manifest says {size}"
            )
        return int(stat.st_mtime) if stat_time else 0

    def url_for(self, logical_path: str) -> str:
        """The URL of ``logical_path``'s hashed copy (see :meth:`Manifest.url`).

        Runtime complexity: O(len(path)).
        """
        return self.manifest.url(logical_path, prefix=self.url_prefix)

    def respond(self, method: str, path: str, headers: Mapping[str, str]) -> StaticResponse | None:
        """The response to ``method`` on ``path`` (already percent-decoded), given
        the request's ``headers`` (lower-case names, repeated fields joined with
        ``", "``); ``None`` when ``path`` is not under the prefix.

        Runtime complexity: O(length of the headers).
        """
        if type(path) is not str or type(method) is not str:
            name, value = ("path", path) if type(path) is not str else ("method", method)
            raise ArgumentTypeError(f"{name} must be a str, got {type_name(value)}")
        if type(headers) is not dict and not isinstance(headers, Mapping):
            raise ArgumentTypeError(f"headers must be a mapping, got {type_name(headers)}")
        if not path.startswith(self.prefix):
            return None
        relative = path[len(self.prefix) :]
        route = self.routes.get(relative)
        if route is None:
            return plain_response(400 if _bad_path(relative) else 404)
        if method not in ("GET", "HEAD"):
            return plain_response(405, (("allow", "GET, HEAD"),))
        coding = select_encoding(headers.get("accept-encoding"), route.codings)
        if coding is None:
            return plain_response(406, route.vary)
        chosen = route.representations[coding]
        status = self._preconditions(route, chosen, headers)
        if status == 304:
            kept = [
                (name, value)
                for name, value in chosen.headers
                if name in ("etag", "cache-control", "last-modified", "vary")
            ]
            return StaticResponse(304, kept)
        if status == 412:
            return plain_response(412, (("etag", chosen.etag),))
        size = chosen.size
        start, stop, status = 0, size, 200
        range_header = headers.get("range")
        if range_header is not None and method == "GET" and self._if_range(route, chosen, headers):
            found = parse_range(range_header, size)
            if found is False:
                return plain_response(416, (("content-range", f"bytes */{size}"), *route.vary))
            if found is not None:
                start, stop, status = found[0], found[1], 206
        response_headers = [*chosen.headers, ("content-length", str(stop - start))]
        if status == 206:
            response_headers.append(("content-range", f"bytes {start}-{stop - 1}/{size}"))
        length = stop - start if method == "GET" else 0
        return StaticResponse(status, response_headers, chosen.file, start, length, file_size=size)

    @staticmethod
    def _preconditions(route: _Route, chosen: _Representation, headers: Mapping[str, str]) -> int:
        """412, 304, or 0 to go on (RFC 9110 13.2.2, steps 1 to 4)."""
        opaque = chosen.etag[1:-1]
        if_match = headers.get("if-match")
        if if_match is not None:
            if if_match.strip() != "*":
                tags = _etags(if_match) or []
                if not any(not weak and tag == opaque for weak, tag in tags):
                    return 412
        elif (since := headers.get("if-unmodified-since")) is not None:
            date = _http_date(since)
            if date is not None and route.last_modified > date:
                return 412
        if_none_match = headers.get("if-none-match")
        if if_none_match is not None:
            if if_none_match.strip() == "*":
                return 304
            tags = _etags(if_none_match) or []
            return 304 if any(tag == opaque for _, tag in tags) else 0
        modified_since = headers.get("if-modified-since")
        if modified_since is not None:
            date = _http_date(modified_since)
            if date is not None and route.last_modified <= date:
                return 304
        return 0

    @staticmethod
    def _if_range(route: _Route, chosen: _Representation, headers: Mapping[str, str]) -> bool:
        """Whether a ``Range`` applies: no ``If-Range``, or one that matches (a
        strong ETag equal to the chosen one, or exactly the Last-Modified date)."""
        value = headers.get("if-range")
        if value is None:
            return True
        value = value.strip()
        if value.startswith(('"', "W/")):
            return value == chosen.etag
        return _http_date(value) == route.last_modified
