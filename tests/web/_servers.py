"""App servers for the real-server tests of scalekit.web: the apps, and starting them.

Each app-server process builds one ``HttpCache`` over the store that app servers
share: ``TieredCache(LRUCache, RedisCache, invalidation=RedisInvalidation)`` on
``SCALEKIT_TEST_WEB_REDIS`` under the key prefix ``SCALEKIT_TEST_WEB_PREFIX``, its
invalidation channel connected before the server listens. Routes:

- ``GET /async/<name>`` (ASGI only, an ``async def`` endpoint), ``GET /sync/<name>``
  (ASGI: a ``def`` endpoint in Starlette's thread pool; WSGI: the plain app), query
  ``tag`` (the ``Surrogate-Key``, default ``pages``) and ``hold`` (seconds the
  render takes, default 0): counts the call in Redis (``INCR <prefix>calls:<name>``)
  and answers ``{"name", "server", "call"}`` with ``Cache-Control: public,
  max-age=600``; ``server`` is ``SCALEKIT_TEST_WEB_NAME``, so a body tells which
  process rendered it, and ``call`` which render it is.
- ``POST /admin/purge?tag=<tag>``: ``cache.purge(tag)`` (``purge_async`` in ASGI),
  answers ``purged``.

``asgi_app`` is a uvicorn ``--factory``; ``wsgi_app`` a waitress ``--call`` factory.
``app_servers`` starts such processes on free loopback ports and stops them.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

ROOT = Path(__file__).resolve().parents[2]
HEADERS = {"cache-control": "public, max-age=600", "content-type": "application/json"}


def _setup() -> tuple[Any, Any, str, str]:
    """The cache every app of this process uses, a Redis client, the key prefix
    and the server's name."""
    import redis

    from scalekit.cache import LRUCache, RedisCache, RedisInvalidation, TieredCache
    from scalekit.web import HttpCache

    url = os.environ["SCALEKIT_TEST_WEB_REDIS"]
    prefix = os.environ["SCALEKIT_TEST_WEB_PREFIX"]
    client, listener = redis.Redis.from_url(url), redis.Redis.from_url(url)
    invalidation = RedisInvalidation(listener, prefix=prefix)
    store = TieredCache(
        LRUCache(1000), RedisCache(client, prefix=prefix), invalidation=invalidation
    )
    if not invalidation.wait_ready(10):
        raise ConnectionError("the invalidation channel did not connect")
    return HttpCache(store), client, prefix, os.environ["SCALEKIT_TEST_WEB_NAME"]


def _page(client: Any, prefix: str, server: str, name: str) -> bytes:
    call = int(client.incr(f"{prefix}calls:{name}"))
    return json.dumps({"name": name, "server": server, "call": call}).encode()


def _query(raw: str) -> tuple[str, float]:
    query = parse_qs(raw)
    return query.get("tag", ["pages"])[0], float(query.get("hold", ["0"])[0])


def asgi_app() -> Any:
    """Starlette, behind ``CacheMiddleware``."""
    import asyncio

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from scalekit.web import CacheMiddleware

    cache, client, prefix, server = _setup()

    async def page_async(request: Request) -> Response:
        tag, hold = _query(request.url.query)
        body = await asyncio.to_thread(_page, client, prefix, server, request.path_params["name"])
        await asyncio.sleep(hold)
        return Response(body, headers={**HEADERS, "surrogate-key": tag})

    def page_sync(request: Request) -> Response:
        tag, hold = _query(request.url.query)
        body = _page(client, prefix, server, request.path_params["name"])
        time.sleep(hold)
        return Response(body, headers={**HEADERS, "surrogate-key": tag})

    async def purge(request: Request) -> Response:
        await cache.purge_async(request.query_params["tag"])
        return Response(b"purged", headers={"cache-control": "no-store"})

    app = Starlette(
        routes=[
            Route("/async/{name}", page_async),
            Route("/sync/{name}", page_sync),
            Route("/admin/purge", purge, methods=["POST"]),
        ]
    )
    return CacheMiddleware(app, cache)


def wsgi_app() -> Any:
    """A plain PEP 3333 app, behind ``WSGICacheMiddleware``."""
    from scalekit.web import WSGICacheMiddleware

    cache, client, prefix, server = _setup()

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        path = environ["PATH_INFO"]
        tag, hold = _query(environ.get("QUERY_STRING", ""))
        if path == "/admin/purge" and environ["REQUEST_METHOD"] == "POST":
            cache.purge(tag)
            start_response("200 OK", [("Cache-Control", "no-store")])
            return [b"purged"]
        if path.startswith("/sync/"):
            body = _page(client, prefix, server, path.removeprefix("/sync/"))
            time.sleep(hold)
            headers = [*HEADERS.items(), ("surrogate-key", tag)]
            start_response("200 OK", [*headers, ("content-length", str(len(body)))])
            return [body]
        start_response("404 Not Found", [("Content-Length", "0")])
        return []

    return WSGICacheMiddleware(app, cache)


# -- starting them ----------------------------------------------------------------------


def _free_ports(count: int) -> list[int]:
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [int(probe.getsockname()[1]) for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def _command(kind: str, port: int) -> list[str]:
    if kind == "uvicorn":
        return [
            *(sys.executable, "-m", "uvicorn", "tests.web._servers:asgi_app", "--factory"),
            *("--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"),
            "--no-access-log",
        ]
    if kind == "waitress":
        return [
            *(sys.executable, "-m", "waitress", "--call", "--threads", "32"),
            *("--host", "127.0.0.1", "--port", str(port), "tests.web._servers:wsgi_app"),
        ]
    raise ValueError(f"kind must be 'uvicorn' or 'waitress', got {kind!r}")


@contextmanager
def app_servers(kinds: list[str], redis_url: str, prefix: str) -> Iterator[list[tuple[str, int]]]:
    """One process per entry of ``kinds`` (``"uvicorn"`` or ``"waitress"``), named
    ``"<kind>-<i>"``, on free loopback ports, all started at once and sharing the
    store under ``prefix``; yields ``(name, port)`` each once every one accepts
    connections (so its invalidation channel is up); stops them on exit."""
    ports = _free_ports(len(kinds))
    path = os.pathsep.join([str(ROOT), str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])
    started: list[tuple[str, int, subprocess.Popen[bytes]]] = []
    try:
        for index, (kind, port) in enumerate(zip(kinds, ports, strict=True)):
            name = f"{kind}-{index}"
            env = {
                **os.environ,
                "PYTHONPATH": path,
                "SCALEKIT_TEST_WEB_REDIS": redis_url,
                "SCALEKIT_TEST_WEB_PREFIX": prefix,
                "SCALEKIT_TEST_WEB_NAME": name,
            }
            process = subprocess.Popen(_command(kind, port), env=env, cwd=ROOT)
            started.append((name, port, process))
        deadline = time.monotonic() + 20
        for name, port, process in started:
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise ConnectionError(f"{name} on port {port} did not start") from None
                    time.sleep(0.01)
        yield [(name, port) for name, port, _ in started]
    finally:
        for _, _, process in started:
            process.terminate()
        for _, _, process in started:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
