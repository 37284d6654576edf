"""Request coalescing: concurrent cold misses of one key make one app call per
process (asyncio tasks and threads), and one across processes sharing a store."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from scalekit.testing import FakeClock
from scalekit.web import CacheMiddleware, HttpCache, WSGICacheMiddleware
from tests.web._http_apps import Origin, asgi_request, wsgi_get

START = 1_700_000_000.0
MAX60 = [("Cache-Control", "max-age=60")]


class JSONStore:
    """A Store shared like a remote one: values kept as JSON text, so an entry
    that is not JSON fails here as it would in Redis."""

    def __init__(self, clock: FakeClock) -> None:
        self.data: dict[str, tuple[str, float | None]] = {}
        self.clock = clock
        self.lock = threading.Lock()

    def _live(self, key: str) -> tuple[str, float | None] | None:
        item = self.data.get(key)
        if item is not None and item[1] is not None and item[1] <= self.clock():
            del self.data[key]
            return None
        return item

    def get(self, key: str, default: Any = None) -> Any:
        with self.lock:
            item = self._live(key)
        return default if item is None else json.loads(item[0])

    def set(self, key: str, value: Any, *, ttl: float | None = None) -> None:
        with self.lock:
            deadline = None if ttl is None else self.clock() + ttl
            self.data[key] = (json.dumps(value), deadline)

    def add(self, key: str, value: Any, *, ttl: float | None = None) -> bool:
        with self.lock:
            if self._live(key) is not None:
                return False
            deadline = None if ttl is None else self.clock() + ttl
            self.data[key] = (json.dumps(value), deadline)
            return True

    def delete(self, key: str) -> bool:
        with self.lock:
            return self.data.pop(key, None) is not None

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        found = {}
        for key in keys:
            value = self.get(key)
            if value is not None:
                found[key] = value
        return found

    def set_many(self, items: Mapping[str, Any], *, ttl: float | None = None) -> None:
        for key, value in items.items():
            self.set(key, value, ttl=ttl)

    def ttl_of(self, key: str) -> float | None:
        raise NotImplementedError


async def _gather_cold(
    app: CacheMiddleware, origin: Origin, count: int, headers: list[tuple[str, str]] | None = None
) -> list[Any]:
    origin.gate = asyncio.Event()
    tasks = [asyncio.ensure_future(asyncio_request(app, "/a", headers)) for _ in range(count)]
    for _ in range(5):
        await asyncio.sleep(0)
    origin.gate.set()
    return await asyncio.gather(*tasks)


def asyncio_request(app: CacheMiddleware, url: str, headers: list[tuple[str, str]] | None) -> Any:
    return asgi_request(app, url, headers or [])


def test_100_concurrent_asgi_misses_make_one_app_call() -> None:
    origin = Origin()
    origin.route("/a", headers=MAX60, body=b"A")
    cache = HttpCache(clock=FakeClock(START))
    app = CacheMiddleware(origin.asgi, cache)
    results = asyncio.run(_gather_cold(app, origin, 100))
    assert origin.calls == 1
    assert all(result.body == b"A" for result in results)
    statuses = sorted(result.cache_status for result in results)
    assert statuses.count("scalekit; hit; detail=coalesced") == 99
    assert statuses.count("scalekit; fwd=uri-miss; stored") == 1
    assert (cache.stats().coalesced, cache.stats().misses) == (99, 100)
    assert cache.stats().hit_ratio == 0.99


def test_joiners_never_get_the_leaders_set_cookie() -> None:
    origin = Origin()
    counter = iter(range(1000))
    origin.routes["/a"] = lambda req: (200, [*MAX60, ("Set-Cookie", f"user={next(counter)}")], b"A")
    app = CacheMiddleware(origin.asgi, HttpCache(clock=FakeClock(START)))
    results = asyncio.run(_gather_cold(app, origin, 20))
    cookies = [result.headers.get("set-cookie") for result in results]
    assert origin.calls == 20  # the leader's response was not storable: each called the app
    assert len(set(cookies)) == 20


def test_joiners_with_another_variant_call_the_app_themselves() -> None:
    origin = Origin()
    origin.routes["/a"] = lambda req: (
        200,
        [*MAX60, ("Vary", "X-User")],
        req.get("x-user", "").encode(),
    )
    app = CacheMiddleware(origin.asgi, HttpCache(clock=FakeClock(START)))

    async def run() -> list[Any]:
        origin.gate = asyncio.Event()
        tasks = [
            asyncio.ensure_future(asgi_request(app, "/a", [("X-User", f"u{i % 2}")]))
            for i in range(10)
        ]
        for _ in range(5):
            await asyncio.sleep(0)
        origin.gate.set()
        return await asyncio.gather(*tasks)

    results = asyncio.run(run())
    for i, result in enumerate(results):
        assert result.body == f"u{i % 2}".encode()
    assert origin.calls == 6  # the leader (u0), and the five u1 joiners


def test_100_threads_of_a_wsgi_app_make_one_app_call() -> None:
    origin = Origin()
    gate = threading.Event()

    def slow(req: dict[str, str]) -> tuple[int, list[tuple[str, str]], bytes]:
        gate.wait(5)
        return 200, MAX60, b"W"

    origin.routes["/a"] = slow
    cache = HttpCache(clock=FakeClock(START))
    app = WSGICacheMiddleware(origin.wsgi, cache)
    results: list[Any] = []
    lock = threading.Lock()

    def client() -> None:
        result = wsgi_get(app, "/a")
        with lock:
            results.append(result)

    threads = [threading.Thread(target=client) for _ in range(100)]
    for thread in threads:
        thread.start()
    while len(cache._flights) == 0:
        threading.Event().wait(0.001)
    gate.set()
    for thread in threads:
        thread.join(10)
    assert len(results) == 100
    assert all(result.body == b"W" for result in results)
    # threads that started after the leader stored got a plain hit
    assert origin.calls == 1
    assert cache.stats().coalesced + cache.stats().hits == 99


def test_a_shared_store_coalesces_across_processes_by_a_lease() -> None:
    clock = FakeClock(START)
    store = JSONStore(clock)
    origin = Origin()
    origin.route("/a", headers=MAX60, body=b"A")
    apps = [CacheMiddleware(origin.asgi, HttpCache(store, clock=clock)) for _ in range(2)]

    async def run() -> list[Any]:
        origin.gate = asyncio.Event()
        tasks = [asyncio.ensure_future(asgi_request(apps[i % 2], "/a")) for i in range(20)]
        for _ in range(5):
            await asyncio.sleep(0)
        origin.gate.set()
        return await asyncio.gather(*tasks)

    results = asyncio.run(run())
    assert origin.calls == 1
    assert all(result.body == b"A" for result in results)
    assert "web:http://example.com/2:/a?#lease" not in store.data  # dropped once stored
    # the entry went through JSON and reads back on the other "process"
    again = asyncio.run(asgi_request(apps[1], "/a"))
    assert again.cache_status == "scalekit; hit; ttl=60"


def test_a_cancelled_leader_lets_its_joiners_call_the_app() -> None:
    origin = Origin()
    origin.route("/a", headers=MAX60, body=b"A")
    cache = HttpCache(clock=FakeClock(START))
    app = CacheMiddleware(origin.asgi, cache)

    async def run() -> Any:
        origin.gate = asyncio.Event()
        leader = asyncio.ensure_future(asgi_request(app, "/a"))
        await asyncio.sleep(0)
        joiner = asyncio.ensure_future(asgi_request(app, "/a"))
        await asyncio.sleep(0)
        leader.cancel()
        await asyncio.sleep(0)
        origin.gate.set()
        return await joiner

    result = asyncio.run(run())
    assert result.body == b"A"
    assert not cache._flights


def test_stale_while_revalidate_refreshes_once_in_the_background_asgi() -> None:
    origin = Origin()
    clock = FakeClock(START)
    origin.route(
        "/a", headers=[("Cache-Control", "max-age=10, stale-while-revalidate=30")], body=b"v1"
    )
    cache = HttpCache(clock=clock)
    app = CacheMiddleware(origin.asgi, cache)

    async def run() -> None:
        await asgi_request(app, "/a")
        clock.advance(15)
        origin.route("/a", headers=[("Cache-Control", "max-age=10")], body=b"v2")
        origin.gate = asyncio.Event()
        stale = await asyncio.gather(*(asgi_request(app, "/a") for _ in range(10)))
        assert {r.cache_status for r in stale} == {"scalekit; hit; ttl=-5; detail=stale"}
        assert {r.body for r in stale} == {b"v1"}
        assert len(app._tasks) == 1
        origin.gate.set()
        await asyncio.gather(*app._tasks)
        fresh = await asgi_request(app, "/a")
        assert (fresh.body, fresh.cache_status) == (b"v2", "scalekit; hit; ttl=10")

    asyncio.run(run())
    assert origin.calls == 2
    assert cache.stats().refreshes == 1


def test_a_response_fetched_while_its_uri_changed_or_its_tag_was_purged_is_not_stored() -> None:
    gate = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["method"] == "GET":
            await gate.wait()
        headers = [(b"cache-control", b"max-age=60")]
        if scope["path"] == "/a":
            headers.append((b"surrogate-key", b"t"))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"old"})

    cache = HttpCache(clock=FakeClock(START))
    cached = CacheMiddleware(app, cache)

    async def run() -> list[str]:
        reads = [asyncio.ensure_future(asgi_request(cached, path)) for path in ("/a", "/b")]
        await asyncio.sleep(0)
        cache.purge("t")
        post = await asgi_request(cached, "/b", method="POST")
        gate.set()
        results = await asyncio.gather(*reads)
        return [r.cache_status for r in (*results, post)]

    assert asyncio.run(run()) == [
        "scalekit; fwd=uri-miss",
        "scalekit; fwd=uri-miss",
        "scalekit; fwd=bypass",
    ]
    assert cache.stats().stores == 0


def test_joiners_of_a_stream_do_not_wait_for_its_end() -> None:
    finish = asyncio.Event()
    calls = 0

    async def events(scope: Any, receive: Any, send: Any) -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)  # the second request joins meanwhile
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        await finish.wait()
        await send({"type": "http.response.body", "body": b""})

    app = CacheMiddleware(events, HttpCache(JSONStore(FakeClock(START)), clock=FakeClock(START)))

    async def client(first_event: asyncio.Event) -> None:
        async def receive() -> Any:
            return {"type": "http.request", "body": b""}

        async def send(message: Any) -> None:
            if message.get("body"):
                first_event.set()

        scope = {
            "type": "http",
            "method": "GET",
            "scheme": "http",
            "path": "/events",
            "query_string": b"",
            "headers": [(b"host", b"example.com")],
        }
        await app(scope, receive, send)

    async def run() -> None:
        seen = [asyncio.Event(), asyncio.Event()]
        tasks = [asyncio.ensure_future(client(event)) for event in seen]
        await asyncio.wait_for(asyncio.gather(*(event.wait() for event in seen)), 5)
        finish.set()
        await asyncio.gather(*tasks)

    asyncio.run(run())
    assert calls == 2


def test_joiners_of_a_wsgi_stream_do_not_wait_for_its_end() -> None:
    finish = threading.Event()
    first_chunks = [threading.Event(), threading.Event()]
    calls: list[int] = []

    def events(environ: Any, start_response: Any) -> Any:
        calls.append(1)
        start_response("200 OK", [("Content-Type", "text/event-stream")])
        yield b"data: 1\n\n"
        finish.wait(5)
        yield b""

    app = WSGICacheMiddleware(events, HttpCache(clock=FakeClock(START)))

    def client(seen: threading.Event) -> None:
        environ = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": "/events",
            "QUERY_STRING": "",
            "HTTP_HOST": "example.com",
            "wsgi.url_scheme": "http",
        }
        body = app(environ, lambda status, headers, exc_info=None: None)
        for chunk in body:
            if chunk:
                seen.set()
        getattr(body, "close", lambda: None)()

    threads = [threading.Thread(target=client, args=(seen,)) for seen in first_chunks]
    for thread in threads:
        thread.start()
    try:
        assert all(seen.wait(5) for seen in first_chunks)
    finally:
        finish.set()
        for thread in threads:
            thread.join(5)
    assert len(calls) == 2
