"""Static assets with far-future, fingerprinted URLs, for ASGI and WSGI apps.

Build once per deploy, then serve the build::

    $ scalekit static build assets/ build/static --prefix /static/

    from scalekit.web.static import StaticFiles, WSGIStaticFiles

    app = StaticFiles("build/static", app=my_asgi_app)        # ASGI: any app in front of it
    Mount("/static", app=StaticFiles("build/static"))         # or mounted, in Starlette
    app = WSGIStaticFiles("build/static", app=my_wsgi_app)    # WSGI: Flask, Django, ...
    app.url_for("css/app.css")     # '/static/css/app.3f2a9c1b0d4e.css', for templates

In a few lines:

>>> import pathlib, tempfile
>>> from scalekit.web.static import build, StaticAssets
>>> source, out = pathlib.Path(tempfile.mkdtemp()), pathlib.Path(tempfile.mkdtemp())
>>> _ = (source / "app.css").write_text("body { color: #333 }\\n" * 50)
>>> manifest = build(source, out, brotli=False)
>>> url = manifest.url("app.css"); url
'/static/app.fc082fa0f335.css'
>>> response = StaticAssets(out).respond("GET", url, {"accept-encoding": "gzip"})
>>> response.status, dict(response.headers)["cache-control"]
(200, 'public, max-age=31536000, immutable')
>>> dict(response.headers)["content-encoding"], dict(response.headers)["etag"]
('gzip', '"fc082fa0f335-gzip"')

:func:`build` copies each file to a name carrying the first 12 hex digits of its
SHA-256 (``app.css`` -> ``app.fc082fa0f335.css``), writes ``.gz`` (and ``.br``
with the ``brotli`` extra: ``pip install 'scalekit[brotli]'``) copies where they
save at least 5%, and the :class:`Manifest` (``manifest.json``). References
inside CSS (``url()``, ``@import``) and ``sourceMappingURL`` comments are pointed
at the hashed copies first, so a stylesheet's URL changes when an image it uses
does. The servers,
:class:`StaticFiles` (ASGI) and :class:`WSGIStaticFiles` (WSGI), are thin shells
over one I/O-free core, :class:`StaticAssets`, which answers:

- hashed URLs with ``Cache-Control: public, max-age=31536000, immutable``, a strong
  ``ETag`` (the hash; ``"<hash>-gzip"`` / ``"<hash>-br"`` for the compressed
  copies), ``Last-Modified``, ``Vary: Accept-Encoding`` on compressible types;
- the logical URLs (``/static/app.css``) with ``public, max-age=60``, or 404 with
  ``unhashed_max_age=None``;
- conditional requests (304, 412), single ``Range`` requests (206, 416) with
  ``If-Range``; several ranges get the whole file with 200 (allowed by RFC 9110);
- HEAD; 405 with ``Allow: GET, HEAD`` for other methods; 404 for anything not in
  the manifest, 400 for paths with ``..``, ``.``, backslashes or NUL. Nothing
  outside the manifest is ever opened, so no path can escape the folder.

Bodies: files up to 256 KiB are read once and kept in memory (up to
``memory_limit`` bytes in all; the files are immutable, so this is always
correct); larger ones are streamed in 64 KiB chunks (ASGI: read in a worker
thread, or handed to the server with the ``http.response.pathsend`` extension;
WSGI: ``wsgi.file_wrapper`` when the server has one, for whole files).

The set of files is read at construction: after a deploy, start new workers (the
previous build's hashed files may stay in the folder for pages still open).
"""

from __future__ import annotations

import asyncio
import io
import os
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from scalekit._asgi import Receive, Scope, Send
from scalekit._validate import check_callable, check_count
from scalekit.web._static_build import build
from scalekit.web._static_http import (
    IMMUTABLE,
    StaticAssets,
    StaticResponse,
    plain_response,
)
from scalekit.web._static_manifest import MANIFEST_NAME, Encoded, Manifest, ManifestEntry

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = [
    "IMMUTABLE",
    "MANIFEST_NAME",
    "Encoded",
    "Manifest",
    "ManifestEntry",
    "StaticAssets",
    "StaticFiles",
    "StaticResponse",
    "WSGIStaticFiles",
    "build",
]

_CHUNK = 64 * 1024
_SMALL_FILE = 256 * 1024
_WANTED = frozenset(
    (
        "accept-encoding",
        "if-match",
        "if-none-match",
        "if-modified-since",
        "if-unmodified-since",
        "range",
        "if-range",
    )
)
_WSGI_WANTED = {"HTTP_" + name.upper().replace("-", "_"): name for name in _WANTED}


class _Server:
    """What both shells share: the core, the app behind, the small-file memory."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        manifest: Manifest | str | os.PathLike[str] | None = None,
        prefix: str | None = None,
        app: Any = None,
        unhashed_max_age: int | None = 60,
        memory_limit: int = 32 * 1024 * 1024,
    ) -> None:
        self.app = check_callable(app, "app", allow_none=True)
        self._memory_left = check_count(memory_limit, "memory_limit")
        self.assets = StaticAssets(
            directory, manifest=manifest, prefix=prefix, unhashed_max_age=unhashed_max_age
        )
        self._bodies: dict[str, bytes] = {}

    @property
    def manifest(self) -> Manifest:
        """The build's :class:`Manifest`."""
        return self.assets.manifest

    def url_for(self, logical_path: str) -> str:
        """The URL of ``logical_path``'s hashed copy, for templates
        (``KeyError`` if it is not in the build).

        Runtime complexity: O(len(path)).
        """
        return self.assets.url_for(logical_path)

    def _keeps(self, response: StaticResponse) -> bool:
        """Whether ``response.file`` is small enough to hold, and room is left."""
        return response.file_size <= _SMALL_FILE and response.file_size <= self._memory_left

    def _remember(self, file: str, data: bytes) -> bytes:
        if file not in self._bodies and len(data) <= self._memory_left:
            self._memory_left -= len(data)
            self._bodies[file] = data
        return data


def _read(file: str) -> bytes:
    with open(file, "rb") as handle:
        return handle.read()


def _read_part(file: str, start: int, length: int) -> bytes:
    with open(file, "rb") as handle:
        handle.seek(start)
        return handle.read(length)


def _open_at(file: str, start: int) -> io.BufferedReader:
    handle = open(file, "rb")  # noqa: SIM115 - the caller closes it
    handle.seek(start)
    return handle


class StaticFiles(_Server):
    """An ASGI 3 app serving a :func:`build` output folder (see the module
    docstring). Requests outside ``prefix`` go to ``app`` (404 without one), as do
    lifespan and websocket scopes.

    ``directory``: the build's output folder; ``manifest``: a :class:`Manifest` or
    the path of one (default: ``directory/manifest.json``); ``prefix``: the URL
    path served (default: the manifest's); ``unhashed_max_age``: seconds the
    logical names are cached for, ``None`` to answer 404 for them;
    ``memory_limit``: bytes of small files kept in memory (0: none).
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        response = None
        if kind == "http":
            headers: dict[str, str] = {}
            for raw_name, raw_value in scope["headers"]:
                name = raw_name.decode("latin-1").lower()
                if name in _WANTED:
                    value = raw_value.decode("latin-1")
                    headers[name] = f"{headers[name]}, {value}" if name in headers else value
            response = self.assets.respond(scope["method"], scope["path"], headers)
        if response is None:
            if self.app is not None:
                await self.app(scope, receive, send)
            elif kind == "http":
                await self._send(scope, plain_response(404), send)
            elif kind == "lifespan":
                await _lifespan(receive, send)
            elif kind == "websocket":
                await send({"type": "websocket.close", "code": 1000})
            return
        await self._send(scope, response, send)

    async def _send(self, scope: Scope, response: StaticResponse, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": [(n.encode(), v.encode("latin-1")) for n, v in response.headers],
            }
        )
        file, start, length = response.file, response.offset, response.length
        if file is None or length == 0:
            await send({"type": "http.response.body", "body": response.body})
            return
        data = self._bodies.get(file)
        if data is None and self._keeps(response):
            data = self._remember(file, await asyncio.to_thread(_read, file))
        if data is not None:
            await send({"type": "http.response.body", "body": data[start : start + length]})
            return
        extensions = scope.get("extensions") or {}
        if "http.response.pathsend" in extensions and length == response.file_size:
            await send({"type": "http.response.pathsend", "path": file})
            return
        if length <= _SMALL_FILE:  # one trip to a worker thread
            body = await asyncio.to_thread(_read_part, file, start, length)
            await send({"type": "http.response.body", "body": body})
            return
        handle = await asyncio.to_thread(_open_at, file, start)
        try:
            while length > 0:
                chunk = await asyncio.to_thread(handle.read, min(_CHUNK, length))
                if not chunk:  # the file shrank under us: end the body short
                    break
                length -= len(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": length > 0})
            if length > 0:
                await send({"type": "http.response.body", "body": b""})
        finally:
            handle.close()


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


class _FileRange:
    """``length`` bytes of a file from ``offset``, in chunks; closed by the server."""

    def __init__(self, file: str, offset: int, length: int) -> None:
        self._handle = open(file, "rb")  # noqa: SIM115 - closed by close(), as PEP 3333 says
        self._handle.seek(offset)
        self._left = length

    def __iter__(self) -> Iterator[bytes]:
        while self._left > 0:
            chunk = self._handle.read(min(_CHUNK, self._left))
            if not chunk:
                return
            self._left -= len(chunk)
            yield chunk

    def close(self) -> None:
        self._handle.close()


class WSGIStaticFiles(_Server):
    """The WSGI (PEP 3333) twin of :class:`StaticFiles`, with the same arguments
    and answers; ``app`` is a WSGI app."""

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path_info = environ.get("PATH_INFO", "")
        headers = {name: environ[key] for key, name in _WSGI_WANTED.items() if key in environ}
        try:
            path = path_info.encode("latin-1").decode("utf-8")
        except UnicodeError:
            path = None
        if path is None:
            response: StaticResponse | None = (
                plain_response(400) if path_info.startswith(self.assets.prefix) else None
            )
        else:
            response = self.assets.respond(environ.get("REQUEST_METHOD", "GET"), path, headers)
        if response is None:
            if self.app is not None:
                wsgi_app: WSGIApplication = self.app
                return wsgi_app(environ, start_response)
            response = plain_response(404)
        start_response(response.status_line, response.headers)
        file, start, length = response.file, response.offset, response.length
        if file is None or length == 0:
            return [response.body]
        data = self._bodies.get(file)
        if data is None and self._keeps(response):
            data = self._remember(file, _read(file))
        if data is not None:
            return [data[start : start + length]]
        wrapper = environ.get("wsgi.file_wrapper")
        if wrapper is not None and start == 0 and length == response.file_size:
            return wrapper(open(file, "rb"), _CHUNK)  # type: ignore[no-any-return]
        return _FileRange(file, start, length)
