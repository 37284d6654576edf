"""Read-your-writes across two app servers, over real PostgreSQL streaming replicas.

Two app-server processes (A and B) each serve tests/replication/rw_app.py's ASGI app
with uvicorn and its WSGI app with wsgiref; each process has its own routers, as app
servers behind a balancer do. Replay is paused on both replicas (``pg_wal_replay_pause()``),
so they lag for as long as a test needs. A note written through server A is then
read through server B:

- without the cookie A set, B reads a replica, which does not have the note (the lag
  is real);
- with it, B reads the note from the primary; and once a replica has replayed the
  write, from that replica.

This is the guarantee of issue 13, item 3, under sync endpoints (a thread pool with
a copied context), behind ``BaseHTTPMiddleware``, with async endpoints and sessions,
and under a WSGI server.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.replication.pg_cluster import ReplicaCluster, _connect, _free_ports

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")
pytest.importorskip("starlette")

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[2]
PRIMARY_PORT = 5432
START_TIMEOUT = 30.0


class Server:
    """One app-server process: uvicorn on ``ports[0]``, wsgiref on ``ports[1]``."""

    def __init__(self, ports: list[int], env: dict[str, str]) -> None:
        self.ports = ports
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.replication.rw_app", *map(str, ports)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def base(self, kind: str) -> str:
        return f"http://127.0.0.1:{self.ports[kind == 'wsgi']}"

    def wait_ready(self, deadline: float) -> None:
        for kind in ("asgi", "wsgi"):
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"app server died: {self.process.stderr.read()!r}")  # type: ignore[union-attr]
                if time.monotonic() > deadline:
                    raise TimeoutError(f"app server {self.ports} did not start")
                try:
                    if httpx.get(f"{self.base(kind)}/health", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stderr is not None:
            self.process.stderr.close()


@pytest.fixture(scope="module")
def servers(pg_cluster: ReplicaCluster) -> Iterator[tuple[Server, Server]]:
    with _connect(pg_cluster.primary_dsn) as connection:
        connection.execute("DROP TABLE IF EXISTS sk_rw_notes")
        connection.execute("CREATE TABLE sk_rw_notes (id serial PRIMARY KEY, body text)")
    pg_cluster.wait_caught_up()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
        "SK_PRIMARY_URL": pg_cluster.primary_url,
        "SK_REPLICA_URLS": " ".join(replica.url for replica in pg_cluster.replicas),
    }
    ports = _free_ports(4)
    started = [Server(ports[:2], env), Server(ports[2:], env)]
    try:
        began = time.monotonic()
        deadline = began + START_TIMEOUT
        for server in started:
            server.wait_ready(deadline)
        print(f"2 app servers ready in {time.monotonic() - began:.1f} s")
        yield (started[0], started[1])
    finally:
        for server in started:
            server.stop()
        pg_cluster.wait_caught_up()  # the next module finds the replicas as it expects


@pytest.fixture
def paused(pg_cluster: ReplicaCluster) -> Iterator[ReplicaCluster]:
    """Both replicas stop applying WAL (they still receive it) until the test ends."""
    for replica in pg_cluster.replicas:
        with _connect(replica.dsn) as connection:
            connection.execute("SELECT pg_wal_replay_pause()")
    try:
        yield pg_cluster
    finally:
        for replica in pg_cluster.replicas:
            with _connect(replica.dsn) as connection:
                connection.execute("SELECT pg_wal_replay_resume()")


def resume(replica: Any) -> None:
    with _connect(replica.dsn) as connection:
        connection.execute("SELECT pg_wal_replay_resume()")


MOUNTS = [("asgi", "/sync"), ("asgi", "/base"), ("asgi", "/async"), ("wsgi", "")]


@pytest.mark.parametrize(("kind", "mount"), MOUNTS, ids=["sync", "base-http", "async", "wsgi"])
def test_a_write_on_server_a_is_read_on_server_b_while_the_replicas_lag(
    servers: tuple[Server, Server], paused: ReplicaCluster, kind: str, mount: str
) -> None:
    a, b = servers
    body = f"note-{uuid.uuid4().hex}"
    wrote = httpx.post(f"{a.base(kind)}{mount}/notes", params={"body": body}, timeout=10)
    assert wrote.status_code == 200, wrote.text
    if mount == "/base":
        assert wrote.headers["x-passed"] == "base-http-middleware"
    cookie = wrote.headers["set-cookie"]
    assert cookie.startswith("scalekit_rw=")
    token = int(cookie.split(";")[0].partition("=")[2])
    note = f"{b.base(kind)}{mount}/notes/{wrote.json()['id']}"

    # the replicas lag: without the token, server B reads one and misses the note
    for _ in range(2):  # round robin: both replicas
        blind = httpx.get(note, timeout=10).json()
        assert blind["body"] is None
        assert blind["port"] != PRIMARY_PORT
    # with it, B reads its own write, from the primary
    cookies = {"cookie": cookie.split(";")[0]}
    for _ in range(2):
        seen = httpx.get(note, headers=cookies, timeout=10)
        assert seen.json() == {"body": body, "port": PRIMARY_PORT}
        assert "set-cookie" not in seen.headers  # a read does not send the token again

    # once the fast replica has replayed the write, B reads it there
    fast = paused.replicas[0]
    resume(fast)
    fast.wait_replayed(token, timeout=10)
    seen = httpx.get(note, headers=cookies, timeout=10).json()
    assert seen == {"body": body, "port": fast.port}


def test_server_b_carries_on_the_newest_token(
    servers: tuple[Server, Server], paused: ReplicaCluster
) -> None:
    """A write on B by a user who carries A's token answers with B's newer token, which
    A honours; an ASGI token also works on a WSGI server (same primary, same WAL)."""
    a, b = servers
    first = httpx.post(f"{a.base('asgi')}/sync/notes", params={"body": "one"}, timeout=10)
    cookie = first.headers["set-cookie"].split(";")[0]
    second = httpx.post(
        f"{b.base('asgi')}/async/notes",
        params={"body": "two"},
        headers={"cookie": cookie},
        timeout=10,
    )
    newer = second.headers["set-cookie"].split(";")[0]
    assert int(newer.partition("=")[2]) > int(cookie.partition("=")[2])
    for base, mount in ((a.base("asgi"), "/base"), (a.base("wsgi"), "")):
        seen = httpx.get(
            f"{base}{mount}/notes/{second.json()['id']}", headers={"cookie": newer}, timeout=10
        ).json()
        assert seen == {"body": "two", "port": PRIMARY_PORT}
