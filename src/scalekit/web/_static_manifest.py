"""The manifest of a static build: each logical path, its content-hashed copy and
what a server needs to answer for it without reading it (size, ETag, type, the
precompressed variants).

``manifest.json`` is the only file :func:`~scalekit.web.static.build` overwrites;
it is JSON with sorted keys, so the same source gives the same bytes::

    {"files": {"css/app.css": {"compressible": true,
                               "content_type": "text/css; charset=utf-8",
                               "encodings": {"br": {"path": "css/app.3f2a9c1b0d4e.css.br",
                                                    "size": 311},
                                             "gzip": {...}},
                               "etag": "3f2a9c1b0d4e",
                               "path": "css/app.3f2a9c1b0d4e.css",
                               "sha256": "3f2a9c1b0d4e...", "size": 1406}},
     "prefix": "/static/", "version": 1}

A manifest is read back with :meth:`Manifest.load`, which checks every path in it
(relative, normalised, no ``..``, no backslash, no NUL), so an edited or hostile
manifest cannot make a server open a file outside its folder.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import quote, urlsplit

from scalekit._validate import (
    check_bool,
    check_choice,
    check_count,
    check_name,
    check_str,
    type_name,
)
from scalekit.errors import ArgumentTypeError, ConfigurationError

__all__ = [
    "MANIFEST_NAME",
    "Encoded",
    "Manifest",
    "ManifestEntry",
    "check_prefix",
    "check_relative_path",
    "fs_path",
]

MANIFEST_NAME = "manifest.json"
"""The manifest's file name inside a build's output folder."""

_VERSION = 1
_HEX = re.compile(r"[0-9a-f]{8,64}\Z")
ENCODINGS = ("br", "gzip")
"""The content codings a build may precompress, best first."""


def check_relative_path(value: object, name: str) -> str:
    """Return ``value`` if it is a normalised relative POSIX path that stays inside
    its root: no empty, ``.`` or ``..`` segment, no leading ``/``, no backslash, no
    NUL or control character, valid UTF-8.

    Runtime complexity: O(len(value)).

    >>> check_relative_path("css/app.css", "path")
    'css/app.css'
    >>> check_relative_path("css/../../etc/passwd", "path")
    Traceback (most recent call last):
    ...
    scalekit.errors.ConfigurationError: path must be a relative path inside the root, got ...
    """
    text = check_name(value, name)
    segments = text.split("/")
    if (
        "\\" in text
        or any(ord(c) < 32 or ord(c) == 127 for c in text)
        or any(s in ("", ".", "..") for s in segments)
    ):
        raise ConfigurationError(f"{name} must be a relative path inside the root, got {text!r}")
    return text


def check_prefix(value: object, name: str = "prefix") -> str:
    """Return ``value`` as a URL prefix ending in ``/``: a path (``"/static/"``) or an
    absolute http(s) URL (``"https://cdn.example.com/static/"``, for a CDN).

    Runtime complexity: O(len(value)).

    >>> check_prefix("/assets")
    '/assets/'
    """
    text = check_name(value, name)
    if any(ord(c) <= 32 or ord(c) == 127 or c in "?#\\" for c in text):
        raise ConfigurationError(f"{name} must be a URL path or http(s) URL, got {text!r}")
    if not text.startswith("/") or text.startswith("//"):
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigurationError(f"{name} must start with / or be an http(s) URL, got {text!r}")
    if not text.endswith("/"):
        text += "/"
    return text


def fs_path(value: object, name: str) -> str:
    """Return ``value`` (a ``str`` or ``os.PathLike`` of one) as a ``str`` path.

    Runtime complexity: O(len(value)).
    """
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise ArgumentTypeError(f"{name} must be a str or os.PathLike path, got {type_name(value)}")
    text = check_name(value, name)
    if "\0" in text:
        raise ConfigurationError(f"{name} must not contain NUL, got {text!r}")
    return text


@dataclass(frozen=True)
class Encoded:
    """A precompressed copy of an asset: its path (relative to the build folder)
    and its size in bytes."""

    path: str
    size: int

    def __post_init__(self) -> None:
        check_relative_path(self.path, "path")
        check_count(self.size, "size")


@dataclass(frozen=True)
class ManifestEntry:
    """One asset of a build: ``path`` is its content-hashed copy, relative to the
    output folder; ``etag`` the hash in its name (hex) and its strong ETag;
    ``sha256`` the full digest; ``encodings`` maps ``"br"``/``"gzip"`` to the
    precompressed copies kept (those smaller than 95% of the original);
    ``compressible`` says whether responses vary by ``Accept-Encoding``."""

    path: str
    etag: str
    sha256: str
    size: int
    content_type: str
    compressible: bool
    encodings: Mapping[str, Encoded] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_relative_path(self.path, "path")
        for name in ("etag", "sha256"):
            if not isinstance(getattr(self, name), str):
                raise ArgumentTypeError(
                    f"{name} must be a str, got {type_name(getattr(self, name))}"
                )
        if (
            not _HEX.match(self.etag)
            or not _HEX.match(self.sha256)
            or len(self.sha256) != 64
            or not self.sha256.startswith(self.etag)
        ):
            raise ConfigurationError(
                "etag and sha256 must be lower-case hex, sha256 of 64 digits starting with etag"
            )
        check_count(self.size, "size")
        content_type = check_str(self.content_type, "content_type")
        if not (content_type.isascii() and content_type.isprintable()):
            raise ConfigurationError(f"content_type must be printable ASCII, got {content_type!r}")
        check_bool(self.compressible, "compressible")
        if not isinstance(self.encodings, Mapping):
            raise ArgumentTypeError(f"encodings must be a mapping, got {type_name(self.encodings)}")
        for coding, encoded in self.encodings.items():
            check_choice(coding, "encodings", ENCODINGS)
            if not isinstance(encoded, Encoded):
                raise ArgumentTypeError(
                    f"encodings values must be Encoded, got {type_name(encoded)}"
                )

    @property
    def integrity(self) -> str:
        """The Subresource Integrity value (``sha256-<base64>``) for a ``<script>``
        or ``<link>`` tag."""
        return "sha256-" + base64.b64encode(bytes.fromhex(self.sha256)).decode()

    def to_json(self) -> dict[str, Any]:
        """This entry as the manifest's JSON object."""
        return {
            "path": self.path,
            "etag": self.etag,
            "sha256": self.sha256,
            "size": self.size,
            "content_type": self.content_type,
            "compressible": self.compressible,
            "encodings": {
                coding: {"path": e.path, "size": e.size} for coding, e in self.encodings.items()
            },
        }


def _field(obj: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    value = obj.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigurationError(f"manifest: {where}.{key} must be a {kind.__name__}")
    return value


def _entry(logical: str, raw: object) -> ManifestEntry:
    if not isinstance(raw, dict):
        raise ConfigurationError(f"manifest: files[{logical!r}] must be an object")
    where = f"files[{logical!r}]"
    try:
        encodings: dict[str, Encoded] = {}
        for coding, variant in _field(raw, "encodings", dict, where).items():
            if coding not in ENCODINGS or not isinstance(variant, dict):
                raise ConfigurationError(f"unknown encoding {coding!r}")
            encodings[coding] = Encoded(
                _field(variant, "path", str, where), _field(variant, "size", int, where)
            )
        return ManifestEntry(
            path=_field(raw, "path", str, where),
            etag=_field(raw, "etag", str, where),
            sha256=_field(raw, "sha256", str, where),
            size=_field(raw, "size", int, where),
            content_type=_field(raw, "content_type", str, where),
            compressible=_field(raw, "compressible", bool, where),
            encodings=MappingProxyType(encodings),
        )
    except (ConfigurationError, ArgumentTypeError) as exc:
        raise ConfigurationError(f"manifest: {where}: {exc}") from None


class Manifest(Mapping[str, ManifestEntry]):
    """A read-only mapping of logical path (``"css/app.css"``) to its
    :class:`ManifestEntry`, with the URL prefix it was built for.

    >>> manifest = Manifest({}, prefix="/assets/")
    >>> len(manifest), manifest.prefix
    (0, '/assets/')
    """

    __slots__ = ("_entries", "prefix")

    def __init__(self, entries: Mapping[str, ManifestEntry], *, prefix: str = "/static/") -> None:
        if not isinstance(entries, Mapping):
            raise ArgumentTypeError(f"entries must be a mapping, got {type_name(entries)}")
        for logical, entry in entries.items():
            check_relative_path(logical, "entries key")
            if not isinstance(entry, ManifestEntry):
                raise ArgumentTypeError(
                    f"entries values must be ManifestEntry, got {type_name(entry)}"
                )
        self._entries = dict(entries)
        self.prefix = check_prefix(prefix)

    def __getitem__(self, logical: str) -> ManifestEntry:
        return self._entries[logical]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Manifest({len(self._entries)} files, prefix={self.prefix!r})"

    def _lookup(self, logical: object) -> ManifestEntry:
        key = check_name(logical, "logical_path").lstrip("/")
        try:
            return self._entries[key]
        except KeyError:
            raise KeyError(f"{key!r} is not in the static manifest") from None

    def url(self, logical_path: str, *, prefix: str | None = None) -> str:
        """The URL of ``logical_path``'s hashed copy: ``prefix`` (default: the
        manifest's) followed by the percent-encoded hashed path. A path that is not
        in the manifest raises ``KeyError``, so a typo in a template fails loudly.

        Runtime complexity: O(len(path)).

        >>> entry = ManifestEntry("app.3f2a9c1b0d4e.css", "3f2a9c1b0d4e", "3f2a9c1b0d4e" + "0" * 52,
        ...                       10, "text/css", True)
        >>> Manifest({"app.css": entry}).url("app.css")
        '/static/app.3f2a9c1b0d4e.css'
        """
        entry = self._lookup(logical_path)
        base = self.prefix if prefix is None else check_prefix(prefix)
        return base + quote(entry.path)

    def integrity(self, logical_path: str) -> str:
        """The Subresource Integrity value of ``logical_path`` (``sha256-...``).

        Runtime complexity: O(1).
        """
        return self._lookup(logical_path).integrity

    def to_json(self) -> str:
        """The manifest as the JSON text :meth:`load` reads (sorted keys, one
        trailing newline): the same manifest always gives the same bytes."""
        document = {
            "version": _VERSION,
            "prefix": self.prefix,
            "files": {logical: e.to_json() for logical, e in self._entries.items()},
        }
        return json.dumps(document, sort_keys=True, indent=1, ensure_ascii=True) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        """Parse and check a manifest's JSON text (see the module docstring).

        Runtime complexity: O(size of the text).
        """
        if not isinstance(text, (str, bytes)):
            raise ArgumentTypeError(f"text must be str or bytes, got {type_name(text)}")
        try:
            document = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise ConfigurationError(f"manifest is not JSON: {exc}") from exc
        if not isinstance(document, dict) or document.get("version") != _VERSION:
            raise ConfigurationError(f"manifest is not a version {_VERSION} scalekit manifest")
        files = document.get("files")
        if not isinstance(files, dict):
            raise ConfigurationError("manifest: files must be an object")
        entries = {
            check_relative_path(logical, "manifest logical path"): _entry(logical, raw)
            for logical, raw in files.items()
        }
        prefix = document.get("prefix", "/static/")
        return cls(entries, prefix=prefix)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Manifest:
        """Read the manifest file at ``path`` (a build's ``manifest.json``).

        Runtime complexity: O(size of the file).
        """
        with open(fs_path(path, "path"), "rb") as file:
            return cls.from_json(file.read())
