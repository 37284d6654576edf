"""Finding the real services tests run against, and deciding to skip or fail."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

REDIS_URL = os.environ.get("SCALEKIT_REDIS_URL", "redis://127.0.0.1:6379/15")
POSTGRES_DSN = os.environ.get("SCALEKIT_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")


def services_required() -> bool:
    """Whether a missing service must fail the run (CI) instead of skipping."""
    return os.environ.get("SCALEKIT_REQUIRE_SERVICES") == "1"


def require_service(name: str, address: str, probe: Callable[[str], None]) -> None:
    """Skip (or, when services are required, fail) unless ``probe(address)`` succeeds."""
    try:
        probe(address)
    except Exception as exc:
        reason = f"{name} is not reachable at {address}: {type(exc).__name__}: {exc}"
        if services_required():
            pytest.fail(f"{reason} (SCALEKIT_REQUIRE_SERVICES=1)", pytrace=False)
        pytest.skip(reason)


def probe_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
    finally:
        client.close()


def probe_postgres(dsn: str) -> None:
    import psycopg

    with psycopg.connect(dsn, connect_timeout=2) as connection:
        connection.execute("SELECT 1")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (now)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def redis_server(*options: str) -> Iterator[int]:
    """A redis-server of the test's own on a free loopback port, keeping nothing on
    disk, stopped (and its files removed) on exit; yields its port."""
    server = shutil.which("redis-server")
    if server is None:
        raise FileNotFoundError("redis-server is not installed")
    port = free_port()
    folder = tempfile.mkdtemp(prefix="scalekit-redis-")
    command = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", folder]
    process = subprocess.Popen(
        [*command, "--appendonly", "no", *options],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise ConnectionError(f"redis-server {options} did not start") from None
                time.sleep(0.02)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(folder, ignore_errors=True)


def server_binary(name: str) -> str:
    """The path of a server program a test starts itself; skips without it, or
    fails when services are required (``.ci/run`` installs it)."""
    path = shutil.which(name) or next(
        (
            f"{folder}/{name}"
            for folder in ("/usr/sbin", "/usr/bin")
            if os.access(f"{folder}/{name}", os.X_OK)
        ),
        None,
    )
    if path is None:
        reason = f"{name} is not installed"
        if services_required():
            pytest.fail(f"{reason} (SCALEKIT_REQUIRE_SERVICES=1)", pytrace=False)
        pytest.skip(reason)
    return path


@contextmanager
def memcached_server(*options: str) -> Iterator[int]:
    """A memcached of the test's own on a free loopback port (8 MB, one thread),
    stopped on exit; yields its port."""
    port = free_port()
    command = [server_binary("memcached"), "-l", "127.0.0.1", "-p", str(port), "-U", "0"]
    if os.geteuid() == 0:
        command += ["-u", "root"]  # memcached refuses to run as root unless told
    process = subprocess.Popen(
        [*command, "-m", "8", "-t", "1", *options],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise ConnectionError(f"memcached {options} did not start") from None
                time.sleep(0.02)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
