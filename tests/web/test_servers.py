"""scalekit.web under real servers: two uvicorn processes (ASGI ``CacheMiddleware``
over Starlette, ``async def`` and ``def`` endpoints) and two waitress processes
(WSGI ``WSGICacheMiddleware`` over a plain app), all on 127.0.0.1, driven over
HTTP, every process's ``HttpCache`` on one shared store: a ``TieredCache`` (a
near LRU in each process over Redis, invalidated over Redis).

Proved for each of the three endpoint kinds, with server A and server B of the
same kind, every request with one Host (as a balancer in front would send them): a
response stored through A is a hit on B (and never rendered by B);
``cache.purge(tag)`` run on A is seen on B at once: B's next request is a miss
that reaches the app, while a page of another tag stays a hit; and cold requests
sent together, half to A and half to B, make one app call in all.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.web._servers import app_servers

pytest.importorskip("scalekit.web")
pytest.importorskip("uvicorn")
pytest.importorskip("waitress")
pytest.importorskip("starlette")

pytestmark = [pytest.mark.redis, pytest.mark.slow]

KINDS = ["uvicorn", "uvicorn", "waitress", "waitress"]
ENDPOINTS = [("uvicorn", "/async"), ("uvicorn", "/sync"), ("waitress", "/sync")]
IDS = ["uvicorn-async-def", "uvicorn-def", "waitress-wsgi"]
HOST = {"Host": "shop.example"}  # the host is in the key: as behind a balancer, one for all


class Reply:
    """One response: status, headers (lower-cased names) and the JSON body."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        json_body = headers.get("content-type") == "application/json"
        self.page: dict[str, Any] = json.loads(body) if json_body else {}

    @property
    def cache_status(self) -> str:
        return self.headers.get("cache-status", "")

    @property
    def hit(self) -> bool:
        return self.cache_status.startswith("scalekit; hit")

    @property
    def stored_miss(self) -> bool:
        parts = [part.strip() for part in self.cache_status.split(";")]
        return parts[:2] == ["scalekit", "fwd=uri-miss"] and "stored" in parts


def request(port: int, path: str, method: str = "GET") -> Reply:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        connection.request(method, path, headers=HOST)
        response = connection.getresponse()
        headers = {name.lower(): value for name, value in response.getheaders()}
        return Reply(response.status, headers, response.read())
    finally:
        connection.close()


@pytest.fixture(scope="module")
def servers(redis_url: str) -> Iterator[tuple[dict[str, tuple[int, int]], str]]:
    """The four servers: ``{kind: (port of A, port of B)}``, and the key prefix."""
    prefix = f"web-servers:{uuid.uuid4().hex[:8]}:"
    with app_servers(KINDS, redis_url, prefix) as started:
        ports = [port for _, port in started]
        yield {"uvicorn": (ports[0], ports[1]), "waitress": (ports[2], ports[3])}, prefix


def calls(client: Any, prefix: str, name: str) -> int:
    """How many times the app rendered page ``name``, in all processes."""
    return int(client.get(f"{prefix}calls:{name}") or 0)


@pytest.mark.parametrize(("kind", "route"), ENDPOINTS, ids=IDS)
def test_a_response_stored_through_a_is_a_hit_on_b(
    servers: Any, redis_client: Any, kind: str, route: str
) -> None:
    ports, prefix = servers
    a, b = ports[kind]
    name = uuid.uuid4().hex
    first = request(a, f"{route}/{name}")
    assert first.status == 200
    assert first.stored_miss, first.cache_status
    assert first.page["server"].startswith(kind)
    again_on_b = request(b, f"{route}/{name}")
    assert again_on_b.hit, again_on_b.cache_status
    assert again_on_b.body == first.body  # rendered by A, served by B
    assert "age" in again_on_b.headers
    assert "surrogate-key" not in again_on_b.headers
    assert calls(redis_client, prefix, name) == 1
    assert request(a, f"{route}/{name}").hit


@pytest.mark.parametrize(("kind", "route"), ENDPOINTS, ids=IDS)
def test_a_purge_on_a_is_seen_on_b(servers: Any, redis_client: Any, kind: str, route: str) -> None:
    ports, prefix = servers
    a, b = ports[kind]
    name, other, tag = uuid.uuid4().hex, uuid.uuid4().hex, f"t{uuid.uuid4().hex[:8]}"
    page, kept = f"{route}/{name}?tag={tag}", f"{route}/{other}?tag=other-{tag}"
    assert request(a, kept).stored_miss
    assert request(b, kept).hit
    renders = 0
    for turn, (purger, other_server) in enumerate([(a, b), (b, a), (a, b)]):
        first = request(purger, page)  # turn 0: stored now; then: stored by the last miss
        if turn == 0:
            assert first.stored_miss, first.cache_status
            renders += 1
        else:
            assert first.hit, (turn, first.cache_status)
        for server in (other_server, purger, other_server):  # in both near caches now
            assert request(server, page).hit
        purged = request(purger, f"/admin/purge?tag={tag}", "POST")
        assert purged.status == 200
        assert purged.body == b"purged"
        after = request(other_server, page)  # the very next request on the other one
        assert after.stored_miss, (turn, after.cache_status)
        renders += 1
        assert after.page["call"] == renders  # the app rendered it anew
        assert calls(redis_client, prefix, name) == renders
    still = request(b, kept)  # another tag: untouched by the purges
    assert still.hit, still.cache_status
    assert calls(redis_client, prefix, other) == 1


@pytest.mark.parametrize(("kind", "route"), ENDPOINTS, ids=IDS)
def test_cold_requests_split_across_two_processes_make_one_app_call(
    servers: Any, redis_client: Any, kind: str, route: str
) -> None:
    ports, prefix = servers
    hold, count = 1.0, 12
    name = uuid.uuid4().hex
    path = f"{route}/{name}?hold={hold}"
    connections = [
        http.client.HTTPConnection("127.0.0.1", ports[kind][i % 2], timeout=15)
        for i in range(count)
    ]
    for connection in connections:
        connection.connect()
    barrier = threading.Barrier(count)
    sent: list[float] = [0.0] * count
    replies: list[Reply | None] = [None] * count

    def client(index: int) -> None:
        connection = connections[index]
        barrier.wait(10)
        connection.request("GET", path, headers=HOST)
        sent[index] = time.monotonic()
        response = connection.getresponse()
        headers = {k.lower(): v for k, v in response.getheaders()}
        replies[index] = Reply(response.status, headers, response.read())
        connection.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(count)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    done = [reply for reply in replies if reply is not None]
    assert len(done) == count
    offsets = [round(at - start, 3) for at in sent]
    # The app ran once, for all of them, in both processes...
    assert calls(redis_client, prefix, name) == 1
    assert {reply.body for reply in done} == {done[0].body}
    statuses = [reply.cache_status for reply in done]
    leaders = [reply for reply in done if reply.stored_miss]
    assert len(leaders) == 1, statuses
    # ...and every other one joined its flight (none came after it was stored).
    joined = "scalekit; hit; detail=coalesced"
    assert sorted(statuses)[1:] == [joined] * (count - 1), (statuses, offsets)
