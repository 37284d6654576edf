"""scalekit.web: requests per second of one app uncached, behind scalekit's
``CacheMiddleware``, and behind hishel's ASGI cache, in the same run.

The app (``benchmarks/_web_apps.py``) renders about 25 KB of JSON after a 1 ms
wait (``/async``: ``asyncio.sleep``; ``/sync``: ``time.sleep`` in Starlette's
thread pool) and says ``Cache-Control: public, max-age=3600``. Four uvicorn
servers (httptools and uvloop when installed, as ``uvicorn[standard]``) run side
by side on loopback, one worker each: ``plain`` (the app, no cache),
``scalekit`` (``CacheMiddleware`` over ``HttpCache()``, its in-process LRU),
``hishel`` (hishel 2's ``hishel.asgi.ASGICacheMiddleware``, its default SQLite
storage) and ``bare`` (no app: an ASGI callable sending the page's bytes, the
ceiling of any cache inside the app process). One load-client process
(``python -m benchmarks._web_apps load``: raw keep-alive sockets, 32
connections, responses framed by ``Content-Length``) drives each in turn, round
after round, so all share the machine's moods; a round's figures are its
requests per second and the CPU share that the server and the client used (the
client well below 100 %: it was not the bottleneck). After the run each server
tells how often its app rendered: the caches' hits were hits. The issue's
targets: scalekit >= 2.5 x plain and >= 5 x hishel (medians of the per-round
ratios).

``test_overhead_per_hit`` times one cached hit in-process: an ASGI app behind
``CacheMiddleware`` called directly against a bare ASGI app that sends the same
stored status, headers and body; the difference is the middleware's cost per
hit. ``test_hit_in_process_against_hishel`` times the same hit against hishel's.
Both take their app (a bare ASGI callable with a 23.7 KB JSON page), requests
and timers from :mod:`scalekit._bench_web`, the pieces of ``scalekit bench``'s
web rows, so the two measure the same thing.

Full run, by hand (prints a table)::

    PYTHONPATH=src python -m benchmarks.bench_web --seconds 3 --rounds 5

or ``pytest benchmarks/bench_web.py --benchmark-only -s``. With
``--benchmark-disable`` everything runs once, briefly, so nothing rots.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from benchmarks import _web_apps
from benchmarks.timing import interleaved_ratio
from scalekit import _bench_web as web

ROOT = Path(__file__).resolve().parent.parent
PATHS = ("/async", "/sync")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def servers(modes: tuple[str, ...] = _web_apps.MODES) -> Iterator[dict[str, tuple[int, int]]]:
    """One uvicorn process (one worker) per mode on a free loopback port, started
    together and stopped on exit; yields ``{mode: (port, pid)}``."""
    folder = tempfile.mkdtemp(prefix="scalekit-bench-web-")
    path = os.pathsep.join([str(ROOT), str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])
    processes: dict[str, tuple[int, subprocess.Popen[bytes]]] = {}
    try:
        for mode in modes:
            port = _free_port()
            env = {
                **os.environ,
                "PYTHONPATH": path,
                "SCALEKIT_BENCH_WEB_MODE": mode,
                "SCALEKIT_BENCH_WEB_DIR": folder,
            }
            command = [sys.executable, "-m", "uvicorn", "benchmarks._web_apps:make_app"]
            command += ["--factory", "--host", "127.0.0.1", "--port", str(port)]
            command += ["--log-level", "warning", "--no-access-log"]
            processes[mode] = (port, subprocess.Popen(command, env=env, cwd=ROOT))
        deadline = time.monotonic() + 30
        for mode, (port, process) in processes.items():
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise ConnectionError(f"uvicorn ({mode}) did not start") from None
                    time.sleep(0.02)
        yield {mode: (port, process.pid) for mode, (port, process) in processes.items()}
    finally:
        for _, process in processes.values():
            process.terminate()
        for _, process in processes.values():
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for name in os.listdir(folder):
            os.remove(os.path.join(folder, name))
        os.rmdir(folder)


def get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    """One GET on a new connection: status, headers (lower-cased names), body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        connection.close()


def load(
    targets: dict[str, tuple[int, int]],
    path: str,
    *,
    rounds: int,
    seconds: float,
    connections: int = 32,
    warmup: float = 0.3,
) -> list[dict[str, Any]]:
    """Run the load client (a process of its own) over ``targets`` in turn, for
    ``rounds`` rounds; one dict of figures per round and target."""
    command = [sys.executable, "-m", "benchmarks._web_apps", "load", "--path", path]
    for name, (port, pid) in targets.items():
        command += ["--target", f"{name}:{port}:{pid}"]
    command += ["--rounds", str(rounds), "--seconds", str(seconds)]
    command += ["--connections", str(connections), "--warmup", str(warmup)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src")])}
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, check=True)
    result: list[dict[str, Any]] = json.loads(done.stdout)
    return result


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Median requests per second (and CPU shares) per target, and the median of
    the per-round ratios scalekit / plain and scalekit / hishel."""
    by_target: dict[str, list[dict[str, Any]]] = {}
    by_round: dict[int, dict[str, float]] = {}
    for row in results:
        by_target.setdefault(row["target"], []).append(row)
        by_round.setdefault(row["round"], {})[row["target"]] = row["rps"]
    summary: dict[str, Any] = {
        name: {
            "rps": statistics.median(r["rps"] for r in rows),
            "server_cpu": statistics.median(r["server_cpu"] for r in rows),
            "client_cpu": statistics.median(r["client_cpu"] for r in rows),
            "errors": sum(r["errors"] for r in rows),
            "cache_status": rows[-1]["cache_status"],
        }
        for name, rows in by_target.items()
    }
    for rival in ("plain", "hishel"):
        ratios = [r["scalekit"] / r[rival] for r in by_round.values() if r.get(rival)]
        if ratios:
            summary[f"scalekit/{rival}"] = statistics.median(ratios)
    return summary


def server_kind() -> str:
    """uvicorn's version and the HTTP parser and event loop it picks here."""
    import importlib.util

    import uvicorn

    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    return f"uvicorn {uvicorn.__version__} ({http}, {loop}), 1 worker"


def table(path: str, summary: dict[str, Any]) -> str:
    """The figures of one path as a small text table."""
    lines = [
        f"GET {path}: 25 KB JSON after a 1 ms wait; {server_kind()}; keep-alive client",
        f"  {'':<10}{'req/s':>10}{'server CPU':>12}{'client CPU':>12}  Cache-Status",
    ]
    for name in _web_apps.MODES:
        if name in summary:
            row = summary[name]
            lines.append(
                f"  {name:<10}{row['rps']:>10,.0f}{row['server_cpu']:>12.0%}"
                f"{row['client_cpu']:>12.0%}  {row['cache_status'] or '-'}"
            )
    for key, target in (("scalekit/plain", 2.5), ("scalekit/hishel", 5.0)):
        if key in summary:
            lines.append(f"  {key:<16} {summary[key]:6.2f} x  (target >= {target})")
    load = ", ".join(f"{figure:.1f}" for figure in os.getloadavg())
    lines.append(f"  machine: {os.cpu_count()} CPUs, load average {load} after the run")
    return "\n".join(lines)


def measure(
    targets: dict[str, tuple[int, int]],
    path: str,
    *,
    rounds: int,
    seconds: float,
    connections: int = 32,
    warmup: float = 0.3,
) -> dict[str, Any]:
    """Warm the caches of ``path``, load each server in turn; return the summary,
    with the app calls each server made meanwhile (``calls``) and the requests
    the client counted (``requests``)."""
    before = {name: int(get(port, "/calls")[2]) for name, (port, _) in targets.items()}
    for port, _ in targets.values():
        status, _, body = get(port, path)
        assert status == 200, status
        assert len(body) == len(_web_apps.render()), len(body)
    results = load(
        targets, path, rounds=rounds, seconds=seconds, connections=connections, warmup=warmup
    )
    summary = summarise(results)
    for name, (port, _) in targets.items():
        summary[name]["calls"] = int(get(port, "/calls")[2]) - before[name]
    summary["requests"] = {
        name: sum(r["requests"] for r in results if r["target"] == name) for name in targets
    }
    return summary


@pytest.fixture(scope="module")
def web_servers() -> Iterator[dict[str, tuple[int, int]]]:
    with servers() as targets:
        yield targets


@pytest.mark.parametrize("path", PATHS)
def test_requests_per_second(
    benchmark: Any, web_servers: dict[str, tuple[int, int]], path: str
) -> None:
    benchmark.group = f"web: req/s over loopback, GET {path} (25 KB JSON, 1 ms render)"
    kw: dict[str, Any] = (
        {"rounds": 1, "seconds": 0.1, "connections": 8, "warmup": 0.05}
        if benchmark.disabled
        else {"rounds": 5, "seconds": 2.0, "connections": 32}
    )
    summary = benchmark.pedantic(
        measure, args=(web_servers, path), kwargs=kw, rounds=1, iterations=1
    )
    print("\n" + table(path, summary))
    benchmark.extra_info.update(
        {name: round(summary[name]["rps"]) for name in _web_apps.MODES},
        **{key: round(summary[key], 2) for key in ("scalekit/plain", "scalekit/hishel")},
    )
    requests = summary["requests"]
    for name in _web_apps.MODES:
        assert summary[name]["errors"] == 0, (name, summary[name])
        assert requests[name] > 0, name
    # Every request of the plain server reached the app (some in the warm-up)...
    assert summary["plain"]["calls"] > requests["plain"]
    # ...and the caches' hits were hits: the app ran only for the first wave.
    assert summary["hishel"]["calls"] <= kw["connections"] + 1, summary["hishel"]
    assert summary["scalekit"]["calls"] == 1, summary["scalekit"]  # coalesced, then hits
    assert (summary["scalekit"]["cache_status"] or "").startswith("scalekit; hit")


# -- in-process: the middleware's cost per hit ------------------------------------------


def hit_timers(
    loop: asyncio.AbstractEventLoop, batch: int = 100
) -> tuple[Any, Any, dict[str, str]]:
    """Two callables running ``batch`` requests each in ``loop``: a cached hit
    through ``CacheMiddleware``, and a bare app sending the bytes of that hit; and
    that hit's headers (``scalekit bench``'s pieces: :mod:`scalekit._bench_web`)."""
    from scalekit.web import CacheMiddleware, HttpCache

    cached = CacheMiddleware(web.page_app(), HttpCache())
    headers, bare = web.capture_hit(cached, loop)
    return web.runner(cached, loop, batch), web.runner(bare, loop, batch), headers


def test_overhead_per_hit(benchmark: Any, request: Any) -> None:
    benchmark.group = "web: one cached hit in-process, CacheMiddleware / bare app with its bytes"
    batch = 100
    loop = asyncio.new_event_loop()
    request.addfinalizer(loop.close)
    ours, bare, headers = hit_timers(loop, batch)
    assert headers["cache-status"].startswith("scalekit; hit"), headers
    kw = {"rounds": 2, "batch": 1} if benchmark.disabled else {"rounds": 30, "batch": 1}
    ours_s, bare_s, ratio = benchmark.pedantic(
        interleaved_ratio, args=(ours, bare), kwargs=kw, rounds=1, iterations=1
    )
    overhead_us = (ours_s - bare_s) / batch * 1e6
    benchmark.extra_info.update(
        hit_us=round(ours_s / batch * 1e6, 2),
        bare_us=round(bare_s / batch * 1e6, 2),
        overhead_us=round(overhead_us, 2),
        ratio=round(ratio, 2),
    )
    print(
        f"\nin-process hit: {ours_s / batch * 1e6:.1f} us through CacheMiddleware, "
        f"{bare_s / batch * 1e6:.1f} us bare: overhead {overhead_us:.1f} us per hit"
    )
    assert ratio > 0


def test_hit_in_process_against_hishel(benchmark: Any, tmp_path: Path, request: Any) -> None:
    """One hit in-process: CacheMiddleware over HttpCache() against hishel's
    ASGICacheMiddleware over its default SQLite storage, same app, same loop."""
    benchmark.group = "web: one cached hit in-process, scalekit / hishel"
    batch = 20
    loop = asyncio.new_event_loop()
    request.addfinalizer(loop.close)
    ours, _, _ = hit_timers(loop, batch)
    hishel_app = web.hishel_app(str(tmp_path))
    web.capture_hit(hishel_app, loop)  # warmed; raises unless it sent the page
    theirs = web.runner(hishel_app, loop, batch)
    kw = {"rounds": 2, "batch": 1} if benchmark.disabled else {"rounds": 20, "batch": 1}
    ours_s, theirs_s, ratio = benchmark.pedantic(
        interleaved_ratio, args=(ours, theirs), kwargs=kw, rounds=1, iterations=1
    )
    benchmark.extra_info.update(
        scalekit_us=round(ours_s / batch * 1e6, 2),
        hishel_us=round(theirs_s / batch * 1e6, 2),
        ratio=round(ratio, 3),
    )
    print(
        f"\nin-process hit: scalekit {ours_s / batch * 1e6:.1f} us, "
        f"hishel {theirs_s / batch * 1e6:.1f} us ({1 / ratio:.1f} x)"
    )
    loop.run_until_complete(hishel_app.aclose())
    assert ratio > 0


def main(argv: list[str] | None = None) -> None:
    """The full measurement by hand, printing the tables."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_web")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--path", action="append", choices=PATHS)
    args = parser.parse_args(argv)
    print(f"{os.cpu_count()} CPUs; Python {sys.version.split()[0]}")
    with servers() as targets:
        for path in args.path or PATHS:
            summary = measure(
                targets,
                path,
                rounds=args.rounds,
                seconds=args.seconds,
                connections=args.connections,
            )
            print(table(path, summary))
            calls = {name: summary[name]["calls"] for name in _web_apps.MODES}
            print("  app calls during the run:", calls)
    loop = asyncio.new_event_loop()
    ours, bare, _ = hit_timers(loop)
    ours_s, bare_s, ratio = interleaved_ratio(ours, bare, rounds=30, batch=1)
    loop.close()
    print(
        f"in-process hit: {ours_s * 1e4:.1f} us through CacheMiddleware, "
        f"{bare_s * 1e4:.1f} us bare ({ratio:.2f} x): "
        f"overhead {(ours_s - bare_s) * 1e4:.1f} us per hit"
    )


if __name__ == "__main__":
    main()
