"""The apps ``bench_web.py`` serves, and the load client that drives them.

The app (Starlette) renders about 25 KB of JSON after a 1 ms wait: ``/async`` by
``await asyncio.sleep(0.001)``, ``/sync`` by ``time.sleep(0.001)`` (run in
Starlette's thread pool). Both say ``Cache-Control: public, max-age=3600`` so that
any shared cache may keep them; ``/calls`` (``no-store``) tells how many times the
app rendered, so a benchmark can prove its hits were hits.

``make_app`` is a uvicorn ``--factory``; ``SCALEKIT_BENCH_WEB_MODE`` picks what
stands in front of the app:

- ``plain``: nothing;
- ``scalekit``: ``scalekit.web.CacheMiddleware`` over ``HttpCache()`` (its in-process
  LRU store);
- ``hishel``: ``hishel.asgi.ASGICacheMiddleware`` (hishel 2.x) with its default
  storage, ``AsyncSqliteStorage``, on a file under ``SCALEKIT_BENCH_WEB_DIR``;
- ``bare``: no app at all, but an ASGI callable sending the page's bytes (status,
  headers, body built once): what uvicorn alone can do, the ceiling of any cache
  inside the app process.

``python -m benchmarks._web_apps load`` is the load client: one process, raw
keep-alive connections driven by asyncio protocols (uvloop if installed), the
request bytes built once, responses framed by ``Content-Length`` and never
parsed further; it reads the CPU time of itself and of each server from
``/proc``, so a run shows whether the server (and not the client) was saturated.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

MODES = ("plain", "scalekit", "hishel", "bare")
CACHE_CONTROL = "public, max-age=3600"

PAYLOAD: dict[str, Any] = {
    "page": 1,
    "per_page": 100,
    "products": [
        {
            "id": 10_000 + i,
            "sku": f"SKU-{i:06d}",
            "name": f"Product number {i}",
            "price": round(4.99 + 1.25 * i, 2),
            "in_stock": i % 3 != 0,
            "tags": ["garden", "tools", f"t{i % 7}"],
            "rating": {"average": round(3 + (i % 20) / 10, 1), "count": 17 * i},
            "summary": f"A sturdy tool, number {i:03d}, for every garden: steel, ash and brass.",
        }
        for i in range(100)
    ],
}


def render() -> bytes:
    """The page: the payload as JSON (about 25 KB)."""
    return json.dumps(PAYLOAD).encode()


assert 25_000 <= len(render()) <= 26_000, len(render())


def base_app() -> Any:
    """The Starlette app, counting its renders."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    calls = 0
    headers = {"Cache-Control": CACHE_CONTROL, "Surrogate-Key": "products"}

    async def page_async(request: Request) -> Response:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.001)
        return Response(render(), media_type="application/json", headers=headers)

    def page_sync(request: Request) -> Response:
        nonlocal calls
        calls += 1
        time.sleep(0.001)
        return Response(render(), media_type="application/json", headers=headers)

    async def count(request: Request) -> Response:
        return Response(str(calls), headers={"Cache-Control": "no-store"})

    routes = [Route("/async", page_async), Route("/sync", page_sync), Route("/calls", count)]
    return Starlette(routes=routes)


def bare_app() -> Any:
    """An ASGI app that sends the page's bytes, built once, to any request."""
    body = render()
    start = {
        "type": "http.response.start",
        "status": 200,
        "headers": [
            (b"content-length", str(len(body)).encode()),
            (b"content-type", b"application/json"),
            (b"cache-control", CACHE_CONTROL.encode()),
        ],
    }
    end = {"type": "http.response.body", "body": body, "more_body": False}
    zero = {"type": "http.response.body", "body": b"0", "more_body": False}
    zero_start = {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-length", b"1")],
    }

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/calls":
            await send(zero_start)
            await send(zero)
            return
        await send(start)
        await send(end)

    return app


def wrap(app: Any, mode: str, folder: str = ".") -> Any:
    """``app`` behind the cache that ``mode`` names."""
    if mode == "bare":
        return bare_app()
    if mode == "plain":
        return app
    if mode == "scalekit":
        from scalekit.web import CacheMiddleware, HttpCache

        return CacheMiddleware(app, HttpCache())
    if mode == "hishel":
        from hishel import AsyncSqliteStorage
        from hishel.asgi import ASGICacheMiddleware

        storage = AsyncSqliteStorage(database_path=os.path.join(folder, "hishel.db"))
        return ASGICacheMiddleware(app, storage)
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def make_app() -> Any:
    """The uvicorn factory (see the module docstring)."""
    mode = os.environ.get("SCALEKIT_BENCH_WEB_MODE", "plain")
    return wrap(base_app(), mode, os.environ.get("SCALEKIT_BENCH_WEB_DIR", "."))


# -- the load client ---------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (0.0 without ``/proc``)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as file:
            fields = file.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Connection(asyncio.Protocol):
    """One keep-alive connection sending ``request`` again as each response ends."""

    def __init__(self, request: bytes, done: asyncio.Future[None]) -> None:
        self.request = request
        self.done = done
        self.head = b""
        self.remaining = -1  # body bytes still due; -1 while reading the head
        self.count = 0
        self.errors = 0
        self.running = True
        self.first_head = b""
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:  # uvloop's is no asyncio.Transport
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        while data:
            if self.remaining < 0:
                self.head += data
                end = self.head.find(b"\r\n\r\n")
                if end < 0:
                    return
                head, data = self.head[:end], self.head[end + 4 :]
                self.head = b""
                if not head.startswith(b"HTTP/1.1 200"):
                    self.errors += 1
                if not self.first_head:
                    self.first_head = head
                lower = head.lower()
                at = lower.find(b"\r\ncontent-length:")
                if at < 0:
                    self.errors += 1
                    self.remaining = 0
                else:
                    stop = lower.find(b"\r\n", at + 2)
                    self.remaining = int(lower[at + 17 : stop if stop >= 0 else None])
            take = min(self.remaining, len(data))
            self.remaining -= take
            data = data[take:]
            if self.remaining == 0:
                self.remaining = -1
                self.count += 1
                if self.running:
                    self.transport.write(self.request)
                elif not self.done.done():
                    self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def _measure(
    port: int, path: str, connections: int, seconds: float, warmup: float, server_pid: int
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    protocols: list[_Connection] = []
    for _ in range(connections):
        done: asyncio.Future[None] = loop.create_future()
        _, protocol = await loop.create_connection(
            lambda done=done: _Connection(request, done),  # type: ignore[misc]
            "127.0.0.1",
            port,
        )
        protocols.append(protocol)
    await asyncio.sleep(warmup)
    count0 = sum(p.count for p in protocols)
    server0, client0, start = cpu_seconds(server_pid), time.process_time(), time.perf_counter()
    await asyncio.sleep(seconds)
    count1 = sum(p.count for p in protocols)
    elapsed = time.perf_counter() - start
    server_cpu = cpu_seconds(server_pid) - server0
    client_cpu = time.process_time() - client0
    for protocol in protocols:
        protocol.running = False
    await asyncio.wait([p.done for p in protocols], timeout=5)
    for protocol in protocols:
        if protocol.transport is not None:
            protocol.transport.close()
    first = protocols[0].first_head.decode("latin-1")
    cache_status = [
        line.split(":", 1)[1].strip()
        for line in first.split("\r\n")
        if line.lower().startswith("cache-status:")
    ]
    return {
        "rps": (count1 - count0) / elapsed,
        "requests": count1 - count0,
        "errors": sum(p.errors for p in protocols),
        "server_cpu": server_cpu / elapsed,
        "client_cpu": client_cpu / elapsed,
        "cache_status": cache_status[0] if cache_status else None,
    }


def _event_loop_policy() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def main(argv: list[str] | None = None) -> None:
    """``load --target NAME:PORT:PID ... --path P --rounds R ...``: for each round,
    each target in turn; prints one JSON list of ``{"round", "target", "rps", ...}``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks._web_apps")
    sub = parser.add_subparsers(dest="command", required=True)
    load = sub.add_parser("load")
    load.add_argument("--target", action="append", required=True)
    load.add_argument("--path", default="/async")
    load.add_argument("--connections", type=int, default=32)
    load.add_argument("--seconds", type=float, default=2.0)
    load.add_argument("--warmup", type=float, default=0.3)
    load.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    _event_loop_policy()
    results = []
    for round_ in range(args.rounds):
        for target in args.target:
            name, port, pid = target.rsplit(":", 2)
            figures = asyncio.run(
                _measure(
                    int(port), args.path, args.connections, args.seconds, args.warmup, int(pid)
                )
            )
            results.append({"round": round_, "target": name, **figures})
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
