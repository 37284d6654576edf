"""``build``: copy a source folder to content-hashed names, precompress what is
worth it, and write the manifest.

Determinism: files are visited in sorted order; names, hashes, gzip bytes (level 9,
``mtime=0``, no file name), brotli bytes (quality 11) and the manifest (sorted keys)
depend only on the files' paths and contents, so two builds of one tree give the
same bytes. Content types come from a fixed table first (the system's
``mimetypes`` only for other extensions), so they do not change with the machine.

Symlinks: a symbolic link, to a file or a folder, is followed when its real target
lies inside ``source_dir`` (its logical path is the link's own path); a link that
leads outside the source, or a folder link that loops back to an ancestor, makes
``build`` refuse with :class:`~scalekit.errors.ConfigurationError` before
anything is written.

The output folder is only added to: hashed copies of earlier builds stay, so pages
rendered by the previous deploy keep finding their assets; ``manifest.json`` is
written last, atomically (a temporary file renamed over it).
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import importlib
import mimetypes
import os
import posixpath
from collections.abc import Iterable
from types import MappingProxyType
from typing import Any

from scalekit._validate import check_bool, check_count, check_name, type_name
from scalekit.errors import ArgumentTypeError, ConfigurationError
from scalekit.web._static_manifest import (
    MANIFEST_NAME,
    Encoded,
    Manifest,
    ManifestEntry,
    check_prefix,
    check_relative_path,
    fs_path,
)
from scalekit.web._static_rewrite import REWRITTEN, references, rewrite

__all__ = ["build", "content_type_for", "hashed_name", "is_compressible", "load_brotli"]

_TYPES = {
    ".css": "text/css",
    ".csv": "text/csv",
    ".htm": "text/html",
    ".html": "text/html",
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".json": "application/json",
    ".map": "application/json",
    ".md": "text/markdown",
    ".txt": "text/plain",
    ".xml": "application/xml",
    ".svg": "image/svg+xml",
    ".webmanifest": "application/manifest+json",
    ".wasm": "application/wasm",
    ".ico": "image/vnd.microsoft.icon",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".avif": "image/avif",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".ttf": "font/ttf",
    ".otf": "font/otf",
    ".eot": "application/vnd.ms-fontobject",
    ".pdf": "application/pdf",
    ".mp4": "video/mp4",
    ".webm": "video/webm",
    ".mp3": "audio/mpeg",
    ".ogg": "audio/ogg",
    ".zip": "application/zip",
    ".gz": "application/gzip",
    ".br": "application/octet-stream",
}
_TEXT = ("text/", "application/json", "application/manifest+json", "application/xml")
_ALREADY_COMPRESSED = frozenset(
    [
        "jpg",
        "jpeg",
        "png",
        "gif",
        "webp",
        "avif",
        "zip",
        "gz",
        "tgz",
        "bz2",
        "tbz",
        "xz",
        "br",
        "zst",
        "7z",
        "rar",
        "swf",
        "flv",
        "woff",
        "woff2",
        "3gp",
        "3gpp",
        "asf",
        "avi",
        "m4v",
        "mov",
        "mp4",
        "mpeg",
        "mpg",
        "webm",
        "wmv",
        "mp3",
        "ogg",
        "m4a",
        "aac",
        "flac",
        "opus",
        "pdf",
    ]
)
_MIN_GAIN = 0.95  # keep a compressed copy only below 95% of the original, as whitenoise


def content_type_for(logical: str) -> str:
    """The ``Content-Type`` of a file by its extension (``; charset=utf-8`` on text).

    Runtime complexity: O(1).

    >>> content_type_for("js/app.mjs")
    'text/javascript; charset=utf-8'
    """
    extension = posixpath.splitext(logical)[1].lower()
    kind = _TYPES.get(extension) or mimetypes.guess_type(logical)[0] or "application/octet-stream"
    if kind.startswith(_TEXT) or kind == "image/svg+xml":
        kind += "; charset=utf-8"
    return kind


def is_compressible(logical: str) -> bool:
    """Whether a file is worth precompressing: any extension but those of formats
    already compressed (images, fonts in woff/woff2, archives, audio, video, PDF).

    Runtime complexity: O(1).
    """
    return posixpath.splitext(logical)[1].lower()[1:] not in _ALREADY_COMPRESSED


def hashed_name(logical: str, digest: str) -> str:
    """``logical`` with ``digest`` put before its last extension:
    ``css/app.css`` -> ``css/app.<digest>.css``, ``LICENSE`` -> ``LICENSE.<digest>``.

    Runtime complexity: O(len(logical)).

    >>> hashed_name("js/jquery.min.js", "3f2a9c1b0d4e")
    'js/jquery.min.3f2a9c1b0d4e.js'
    """
    folder, name = posixpath.split(logical)
    stem, extension = posixpath.splitext(name)
    return posixpath.join(folder, f"{stem}.{digest}{extension}")


def load_brotli(required: bool | None) -> Any:
    """The ``brotli`` module, or ``None``: ``required=None`` uses it when importable,
    ``True`` raises :class:`~scalekit.errors.ConfigurationError` without it,
    ``False`` never uses it."""
    if required is False:
        return None
    try:
        return importlib.import_module("brotli")
    except ImportError:
        if required:
            raise ConfigurationError(
                "brotli=True needs the brotli package: pip install 'scalekit[brotli]'"
            ) from None
        return None


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _walk(
    root: str, ignore: tuple[str, ...]
) -> list[tuple[str, str]]:  # (logical path, real file path), sorted
    found: list[tuple[str, str]] = []

    def visit(folder: str, logical: str, ancestors: tuple[str, ...]) -> None:
        with os.scandir(folder) as scan:
            entries = sorted(scan, key=lambda e: e.name)
        for entry in entries:
            if any(fnmatch.fnmatchcase(entry.name, pattern) for pattern in ignore):
                continue
            name = f"{logical}/{entry.name}" if logical else entry.name
            try:
                check_relative_path(name, "file name")
            except ConfigurationError:
                raise ConfigurationError(
                    f"cannot serve {entry.path!r}: its name is not a clean URL path"
                ) from None
            real = os.path.realpath(entry.path)
            if entry.is_symlink() and not _inside(real, root):
                raise ConfigurationError(
                    f"{entry.path!r} is a symlink leading outside the source folder ({real!r})"
                )
            if os.path.isdir(real):
                if real in ancestors:
                    raise ConfigurationError(f"{entry.path!r} is a symlink loop")
                visit(real, name, (*ancestors, real))
            elif os.path.isfile(real):
                found.append((name, real))

    visit(root, "", (root,))
    return found


def _read(path: str) -> bytes:
    with open(path, "rb") as file:
        return file.read()


def _write_if_absent(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` unless a file of that size is already there (a
    hashed name already holds this content), through a temporary file and a rename."""
    try:
        if os.path.getsize(path) == len(data):
            return
    except OSError:
        pass
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = f"{path}.tmp{os.getpid()}"
    with open(temporary, "wb") as file:
        file.write(data)
    os.replace(temporary, path)


def build(
    source_dir: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    prefix: str = "/static/",
    brotli: bool | None = None,
    gzip_files: bool = True,
    hash_length: int = 12,
    ignore: Iterable[str] = (".*", "*~"),
    rewrite_references: bool = True,
) -> Manifest:
    """Copy every file under ``source_dir`` to ``output_dir`` under a content-hashed
    name (``css/app.css`` -> ``css/app.3f2a9c1b0d4e.css``: the first
    ``hash_length`` hex digits of its SHA-256), precompress it (``.gz``, and ``.br``
    when ``brotli`` allows and the package is installed) when that saves at least
    5%, and write ``output_dir/manifest.json``. Returns the :class:`Manifest`.

    ``prefix`` is the URL the files will be served under (a path, or a CDN's URL),
    recorded in the manifest for :meth:`Manifest.url` and the server. ``ignore``
    holds glob patterns matched against each file and folder name (hidden files
    and editor backups by default). With ``rewrite_references``, the references in
    CSS (``url()``, ``@import``) and the ``sourceMappingURL`` of CSS and JavaScript
    that name files of the build are pointed at their hashed copies, and hashed
    after that (so a stylesheet's name changes when an image it uses changes). See
    the module docstring for symlinks and determinism.

    Runtime complexity: O(total bytes) (hashing and compression).
    """
    source = fs_path(source_dir, "source_dir")
    output = fs_path(output_dir, "output_dir")
    prefix = check_prefix(prefix)
    if brotli is not None:
        check_bool(brotli, "brotli")
    check_bool(gzip_files, "gzip_files")
    check_bool(rewrite_references, "rewrite_references")
    hash_length = check_count(hash_length, "hash_length", minimum=8, maximum=64)
    if isinstance(ignore, (str, bytes)) or not isinstance(ignore, Iterable):
        raise ArgumentTypeError(f"ignore must be an iterable of str, got {type_name(ignore)}")
    patterns = tuple(check_name(pattern, "ignore pattern") for pattern in ignore)
    compressor = load_brotli(brotli)
    root = os.path.realpath(source)
    if not os.path.isdir(root):
        raise ConfigurationError(f"source_dir must be a folder, got {source!r}")
    target = os.path.realpath(output)
    if _inside(target, root) or _inside(root, target):
        raise ConfigurationError(
            f"output_dir {output!r} and source_dir {source!r} must not contain each other"
        )
    if os.path.exists(target) and not os.path.isdir(target):
        raise ConfigurationError(f"output_dir must be a folder, got {output!r}")

    files = _walk(root, patterns)
    real_of = dict(files)
    entries: dict[str, ManifestEntry] = {}
    written: set[str] = {MANIFEST_NAME}

    def emit(logical: str, data: bytes) -> None:
        sha = hashlib.sha256(data).hexdigest()
        path = hashed_name(logical, sha[:hash_length])
        encodings: dict[str, Encoded] = {}
        outputs = {path: data}
        if is_compressible(logical) and data:
            candidates = {}
            if compressor is not None:
                candidates["br"] = compressor.compress(data, quality=11)
            if gzip_files:
                candidates["gzip"] = gzip.compress(data, compresslevel=9, mtime=0)
            for coding, packed in candidates.items():
                if len(packed) < len(data) * _MIN_GAIN:
                    variant = path + (".br" if coding == "br" else ".gz")
                    encodings[coding] = Encoded(variant, len(packed))
                    outputs[variant] = packed
        if written & outputs.keys():
            raise ConfigurationError(f"{logical!r} would overwrite another file of the build")
        written.update(outputs)
        for relative, content in outputs.items():
            _write_if_absent(os.path.join(target, *relative.split("/")), content)
        entries[logical] = ManifestEntry(
            path=path,
            etag=sha[:hash_length],
            sha256=sha,
            size=len(data),
            content_type=content_type_for(logical),
            compressible=is_compressible(logical),
            encodings=MappingProxyType(encodings),
        )
        try:
            stat = os.stat(real_of[logical])
            copy = os.path.join(target, *path.split("/"))
            os.utime(copy, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        except OSError:  # pragma: no cover - a read-only output copy keeps its own time
            pass

    def rewritten(logical: str) -> bool:
        return rewrite_references and logical.lower().endswith(REWRITTEN)

    for logical, real in files:
        if not rewritten(logical):
            emit(logical, _read(real))
    visiting: set[str] = set()
    hashed = {logical: entry.path for logical, entry in entries.items()}

    def visit(logical: str) -> None:
        # Referenced files get their hashed names first; a reference that closes a
        # cycle (a.css imports b.css imports a.css) keeps its logical name.
        visiting.add(logical)
        data = _read(real_of[logical])
        for needed in references(logical, data, prefix, real_of.__contains__):
            if needed not in hashed and needed not in visiting and rewritten(needed):
                visit(needed)
        emit(logical, rewrite(logical, data, prefix, hashed))
        hashed[logical] = entries[logical].path

    for logical, _ in files:
        if rewritten(logical) and logical not in hashed:
            visit(logical)
    manifest = Manifest(dict(sorted(entries.items())), prefix=prefix)
    os.makedirs(target, exist_ok=True)
    final = os.path.join(target, MANIFEST_NAME)
    temporary = f"{final}.tmp{os.getpid()}"
    with open(temporary, "w", encoding="ascii", newline="\n") as file:
        file.write(manifest.to_json())
    os.replace(temporary, final)
    return manifest
