"""scalekit.web.static against starlette.staticfiles.StaticFiles (ASGI) and
whitenoise (WSGI), serving the same files, in the same run.

Each app is called directly (no server, no sockets), so what is timed is the
app's own work per request: path lookup, stat/open/read, headers. ASGI calls run
in batches of 50 inside one event loop (``asyncio.run`` per call would dominate).
Ours and the rival alternate in rounds (:func:`benchmarks.timing.record`), so
both see the same machine; ``extra_info`` holds ``ours_us``, ``rival_us`` and
``ratio`` (ours / rival: below 1 is faster).

Files: a 25 KB CSS file (a typical stylesheet) and a 1 MB file (over the
in-memory size, streamed in 64 KiB chunks). scalekit keeps files up to 256 KiB
in memory by default (they are immutable); ``memory_limit=0`` cases read the
file from disk each time, as starlette and whitenoise do. Requests carry no
``Accept-Encoding`` unless the case says so, so both send the same bytes.

Run: ``python -m pytest benchmarks/bench_static.py --benchmark-only``, or
``PYTHONPATH=src python -m benchmarks.bench_static`` for a table.
"""

from __future__ import annotations

import asyncio
import io
import random
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.timing import interleaved_ratio, record
from scalekit.web.static import StaticFiles, WSGIStaticFiles, build

BATCH = 50
CSS = "".join(
    f".c{i} {{ color: #{random.Random(i).randrange(16**6):06x}; margin: {i % 9}px }}\n"
    for i in range(600)
).encode()[: 25 * 1024]
BIG = random.Random(1).randbytes(1024 * 1024)


def make_build(root: Path) -> Path:
    source = root / "src"
    (source / "css").mkdir(parents=True)
    (source / "css" / "app.css").write_bytes(CSS)
    (source / "video.mp4").write_bytes(BIG)
    build(source, root / "out")
    return root / "out"


def _receiver() -> Callable[[], Any]:
    """A server's ``receive``: the (empty) request, then nothing until the end (a
    rival that listens for ``http.disconnect`` waits here, as under a server)."""
    calls = [0]

    async def receive() -> dict[str, Any]:
        calls[0] += 1
        if calls[0] == 1:
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    return receive


def asgi_batch(
    loop: asyncio.AbstractEventLoop, app: Any, path: str, headers: list[tuple[bytes, bytes]]
) -> Callable[[], int]:
    """A callable that makes BATCH requests on ``loop`` and returns the responses
    started (BATCH when every request was answered)."""
    received = [0]

    async def send(message: dict[str, Any]) -> None:
        received[0] += message["type"] == "http.response.start"

    async def many() -> None:
        for _ in range(BATCH):
            scope = {
                "type": "http",
                "http_version": "1.1",
                "method": "GET",
                "scheme": "http",
                "path": path,
                "raw_path": path.encode(),
                "root_path": "",
                "query_string": b"",
                "headers": headers,
                "server": ("127.0.0.1", 8000),
                "client": ("127.0.0.1", 50000),
            }
            await app(scope, _receiver(), send)

    def run() -> int:
        received[0] = 0
        loop.run_until_complete(many())
        return received[0]

    return run


def wsgi_batch(app: Any, path: str, headers: dict[str, str]) -> Callable[[], int]:
    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        return None

    def run() -> int:
        total = 0  # bytes received
        for _ in range(BATCH):
            environ = {
                "REQUEST_METHOD": "GET",
                "PATH_INFO": path,
                "QUERY_STRING": "",
                "SERVER_NAME": "127.0.0.1",
                "SERVER_PORT": "8000",
                "SERVER_PROTOCOL": "HTTP/1.1",
                "wsgi.url_scheme": "http",
                "wsgi.input": io.BytesIO(),
                **headers,
            }
            result = app(environ, start_response)
            try:
                for chunk in result:
                    total += len(chunk)
            finally:
                if hasattr(result, "close"):
                    result.close()
        return total

    return run


class Setup:
    """The build, and each app over it."""

    def __init__(self, root: Path) -> None:
        from starlette.staticfiles import StaticFiles as StarletteStatic

        self.loop = asyncio.new_event_loop()
        self.out = make_build(root)
        self.ours = StaticFiles(self.out)
        self.ours_disk = StaticFiles(self.out, memory_limit=0)
        self.starlette = StarletteStatic(directory=self.out)
        self.css = self.ours.url_for("css/app.css")
        self.big = self.ours.url_for("video.mp4")


def starlette_path(url: str) -> str:
    return url[len("/static") :]


def cases(setup: Setup) -> Iterator[tuple[str, Callable[[], int], Callable[[], int]]]:
    """(name, ours, rival) for the ASGI comparison."""
    css, big = setup.css, setup.big
    yield (
        "25 KB CSS, 200",
        asgi_batch(setup.loop, setup.ours, css, []),
        asgi_batch(setup.loop, setup.starlette, starlette_path(css), []),
    )
    yield (
        "25 KB CSS, 200, memory_limit=0",
        asgi_batch(setup.loop, setup.ours_disk, css, []),
        asgi_batch(setup.loop, setup.starlette, starlette_path(css), []),
    )
    rival_etag = _starlette_etag(setup.starlette, starlette_path(css))
    ours_etag = f'"{setup.ours.manifest["css/app.css"].etag}"'.encode()
    yield (
        "25 KB CSS, 304 (If-None-Match)",
        asgi_batch(setup.loop, setup.ours, css, [(b"if-none-match", ours_etag)]),
        asgi_batch(
            setup.loop, setup.starlette, starlette_path(css), [(b"if-none-match", rival_etag)]
        ),
    )
    yield (
        "25 KB CSS, 206 (Range: bytes=0-1023)",
        asgi_batch(setup.loop, setup.ours, css, [(b"range", b"bytes=0-1023")]),
        asgi_batch(setup.loop, setup.starlette, starlette_path(css), [(b"range", b"bytes=0-1023")]),
    )
    yield (
        "1 MB file, 200, streamed",
        asgi_batch(setup.loop, setup.ours, big, []),
        asgi_batch(setup.loop, setup.starlette, starlette_path(big), []),
    )


def _starlette_etag(app: Any, path: str) -> bytes:
    found: list[bytes] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            found.extend(v for k, v in message["headers"] if k == b"etag")

    scope = {"type": "http", "method": "GET", "path": path, "root_path": "", "headers": []}
    setup_loop = asyncio.new_event_loop()
    try:
        setup_loop.run_until_complete(app(scope, _receiver(), send))
    finally:
        setup_loop.close()
    return found[0]


def wsgi_cases(setup: Setup) -> Iterator[tuple[str, Callable[[], int], Callable[[], int]]]:
    from whitenoise import WhiteNoise

    def not_found(environ: Any, start_response: Any) -> list[bytes]:
        start_response("404 Not Found", [])
        return [b""]

    ours = WSGIStaticFiles(setup.out)
    ours_disk = WSGIStaticFiles(setup.out, memory_limit=0)
    rival = WhiteNoise(not_found, root=str(setup.out), prefix="static/", autorefresh=False)
    yield "WSGI 25 KB CSS, 200", wsgi_batch(ours, setup.css, {}), wsgi_batch(rival, setup.css, {})
    yield (
        "WSGI 25 KB CSS, 200, memory_limit=0",
        wsgi_batch(ours_disk, setup.css, {}),
        wsgi_batch(rival, setup.css, {}),
    )
    gzip = {"HTTP_ACCEPT_ENCODING": "gzip, deflate, br"}
    yield (
        "WSGI 25 KB CSS, 200, Accept-Encoding gzip (ours: br)",
        wsgi_batch(ours, setup.css, gzip),
        wsgi_batch(rival, setup.css, gzip),
    )
    yield (
        "WSGI 1 MB file, 200",
        wsgi_batch(ours, setup.big, {}),
        wsgi_batch(rival, setup.big, {}),
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    pytest.importorskip("starlette")
    setup = Setup(tmp_path_factory.mktemp("static"))
    yield setup
    setup.loop.close()


ASGI_NAMES = [
    "25 KB CSS, 200",
    "25 KB CSS, 200, memory_limit=0",
    "25 KB CSS, 304 (If-None-Match)",
    "25 KB CSS, 206 (Range: bytes=0-1023)",
    "1 MB file, 200, streamed",
]
WSGI_NAMES = [
    "WSGI 25 KB CSS, 200",
    "WSGI 25 KB CSS, 200, memory_limit=0",
    "WSGI 25 KB CSS, 200, Accept-Encoding gzip (ours: br)",
    "WSGI 1 MB file, 200",
]


def rounds(benchmark: Any) -> dict[str, int]:
    """15 alternating rounds of 3 batches; one of one under ``--benchmark-disable``."""
    return {"rounds": 1, "batch": 1} if benchmark.disabled else {"rounds": 15, "batch": 3}


@pytest.mark.parametrize("name", ASGI_NAMES)
def test_asgi_against_starlette(benchmark: Any, setup: Setup, name: str) -> None:
    benchmark.group = f"static ASGI, {BATCH} requests: {name} (scalekit / starlette)"
    found = {n: (ours, rival) for n, ours, rival in cases(setup)}
    ours, rival = found[name]
    assert ours() == rival() == BATCH
    assert record(benchmark, ours, rival, **rounds(benchmark)) > 0


@pytest.mark.parametrize("name", WSGI_NAMES)
def test_wsgi_against_whitenoise(benchmark: Any, setup: Setup, name: str) -> None:
    pytest.importorskip("whitenoise")
    benchmark.group = f"static WSGI, {BATCH} requests: {name} (scalekit / whitenoise)"
    found = {n: (ours, rival) for n, ours, rival in wsgi_cases(setup)}
    ours, rival = found[name]
    assert ours() > 0
    assert rival() > 0
    assert record(benchmark, ours, rival, **rounds(benchmark)) > 0


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        setup = Setup(Path(folder))
        print(f"{'case':55} {'scalekit':>10} {'rival':>10} {'ratio':>6}")
        for name, ours, rival in [*cases(setup), *wsgi_cases(setup)]:
            ours_s, rival_s, ratio = interleaved_ratio(ours, rival, rounds=15, batch=3)
            print(
                f"{name:55} {ours_s / BATCH * 1e6:8.1f}us {rival_s / BATCH * 1e6:8.1f}us "
                f"{ratio:6.3f}"
            )
        setup.loop.close()


if __name__ == "__main__":
    main()
