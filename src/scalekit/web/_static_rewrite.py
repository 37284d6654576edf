"""Point the references inside CSS and JavaScript files at the hashed copies, as
Django's ``ManifestStaticFilesStorage`` does: ``url(...)`` and ``@import`` in CSS,
``sourceMappingURL`` comments in CSS and JavaScript.

A reference is rewritten when it resolves to a file of the build: a relative path
(``../img/logo.png``, with any ``?query`` or ``#fragment`` kept), or a path under
the build's URL prefix (``/static/img/logo.png``). Everything else is left as it
is: ``data:`` URIs, other hosts, files that are not in the build, paths that climb
out of the source folder. Files are handled as bytes, so any encoding works.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Iterator, Mapping
from urllib.parse import quote, unquote, urlsplit

__all__ = ["REWRITTEN", "references", "rewrite"]

REWRITTEN = (".css", ".js", ".mjs")
"""The extensions whose references are rewritten."""

_CSS = re.compile(
    rb"""url\(\s*(["']?)\s*(?P<ref>[^"')\s]+)\s*\1\s*\)"""
    rb"""|@import\s+(["'])(?P<imported>[^"']+)\3"""
    rb"""|(?m:^/[/*]# sourceMappingURL=(?P<map>[^\s*]+))"""
)
_JS = re.compile(rb"(?m:^//# sourceMappingURL=(?P<map>\S+))")


def _pattern(logical: str) -> re.Pattern[bytes]:
    return _CSS if logical.lower().endswith(".css") else _JS


def _targets(
    logical: str, data: bytes, prefix: str, known: Callable[[str], bool]
) -> Iterator[tuple[int, int, str, str]]:
    """``(start, end, target, tail)`` of each reference in ``data`` that names a
    file of the build: the span to replace, the target's logical path, and the
    ``?query#fragment`` to keep."""
    folder = posixpath.dirname(logical)
    path_prefix = prefix if prefix.startswith("/") else urlsplit(prefix).path
    for match in _pattern(logical).finditer(data):
        group = next(g for g, v in match.groupdict().items() if v is not None)
        try:
            reference = match.group(group).decode()
        except UnicodeDecodeError:
            continue
        cut = min((i for i in (reference.find("?"), reference.find("#")) if i >= 0), default=-1)
        path, tail = (reference, "") if cut < 0 else (reference[:cut], reference[cut:])
        path = unquote(path)
        if not path:
            continue
        if path.startswith(path_prefix) and path_prefix.startswith("/"):
            target = path[len(path_prefix) :]
        elif path.startswith("/") or ":" in path.split("/", 1)[0]:
            continue
        else:
            target = posixpath.normpath(posixpath.join(folder, path))
        if target.startswith("../") or target in ("..", ".") or not known(target):
            continue
        yield match.start(group), match.end(group), target, tail


def references(logical: str, data: bytes, prefix: str, known: Callable[[str], bool]) -> list[str]:
    """The logical paths of the build's files that ``data`` (the file ``logical``)
    refers to.

    Runtime complexity: O(len(data)).
    """
    return [target for _, _, target, _ in _targets(logical, data, prefix, known)]


def rewrite(logical: str, data: bytes, prefix: str, hashed: Mapping[str, str]) -> bytes:
    """``data`` with each reference to a file in ``hashed`` (logical path -> hashed
    path) replaced by the hashed path: relative references stay relative, prefixed
    ones stay prefixed.

    Runtime complexity: O(len(data)).

    >>> rewrite("css/a.css", b"a{background:url('../img/b.png?v=1')}", "/static/",
    ...         {"img/b.png": "img/b.0123456789ab.png"})
    b"a{background:url('../img/b.0123456789ab.png?v=1')}"
    """
    parts, position = [], 0
    folder = posixpath.dirname(logical) or "."
    path_prefix = prefix if prefix.startswith("/") else urlsplit(prefix).path
    for start, end, target, tail in _targets(logical, data, prefix, hashed.__contains__):
        if data.startswith(b"/", start):
            new = path_prefix + quote(hashed[target]) + tail
        else:
            new = quote(posixpath.relpath(hashed[target], folder)) + tail
        parts += [data[position:start], new.encode()]
        position = end
    parts.append(data[position:])
    return b"".join(parts)
