"""Review: coalescing survives a leader that fails or is cancelled, and the ASGI
shell never stores a response the app did not finish (or one with trailers)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from scalekit.testing import FakeClock
from scalekit.web import CacheMiddleware, HttpCache, WSGICacheMiddleware

START = 1_700_000_000.0
MAX60 = [(b"cache-control", b"max-age=60")]


def _scope(path: str = "/a") -> dict[str, Any]:
    return {
        "type": "http",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"host", b"example.com")],
    }


async def _run(app: Any, scope: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope or _scope(), receive, send)
    return sent


def _status(sent: list[dict[str, Any]]) -> bytes:
    return bytes(dict(sent[0]["headers"])[b"cache-status"])


def test_a_failing_leader_does_not_set_off_a_stampede() -> None:
    # 1,000 cold misses, the first app call raises: 2 app calls, not 1,000
    async def main() -> tuple[int, list[Any]]:
        calls = 0
        gate = asyncio.Event()

        async def app(scope: Any, receive: Any, send: Any) -> None:
            nonlocal calls
            calls += 1
            number = calls
            await gate.wait()
            if number == 1:
                raise RuntimeError("boom")
            await send({"type": "http.response.start", "status": 200, "headers": MAX60})
            await send({"type": "http.response.body", "body": b"x"})

        cached = CacheMiddleware(app, HttpCache(clock=FakeClock(START)))
        tasks = [asyncio.create_task(_run(cached)) for _ in range(1000)]
        while calls == 0:
            await asyncio.sleep(0)
        for _ in range(5):
            await asyncio.sleep(0)
        gate.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        return calls, results

    calls, results = asyncio.run(main())
    failed = [result for result in results if isinstance(result, BaseException)]
    assert len(failed) == 1
    assert calls == 2
    statuses = sorted(_status(result) for result in results if isinstance(result, list))
    assert statuses.count(b"scalekit; hit; detail=coalesced") == 998


def test_a_cancelled_leader_lets_one_joiner_lead() -> None:
    async def main() -> tuple[int, list[bytes]]:
        calls = 0
        never = asyncio.Event()

        async def app(scope: Any, receive: Any, send: Any) -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                await never.wait()
            await send({"type": "http.response.start", "status": 200, "headers": MAX60})
            await send({"type": "http.response.body", "body": b"x"})

        cached = CacheMiddleware(app, HttpCache(clock=FakeClock(START)))
        leader = asyncio.create_task(_run(cached))
        while calls == 0:
            await asyncio.sleep(0)
        joiners = [asyncio.create_task(_run(cached)) for _ in range(20)]
        for _ in range(5):
            await asyncio.sleep(0)
        leader.cancel()  # the client went away
        done = await asyncio.wait_for(asyncio.gather(*joiners), timeout=5)
        statuses = [_status(sent) for sent in done]
        return calls, statuses

    calls, statuses = asyncio.run(main())
    assert calls == 2
    assert statuses.count(b"scalekit; hit; detail=coalesced") == 19


def test_wsgi_threads_after_a_failing_leader_make_one_more_call() -> None:
    calls = 0
    lock = threading.Lock()
    gate = threading.Event()
    waiting = threading.Event()

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        nonlocal calls
        with lock:
            calls += 1
            number = calls
        if number == 1:
            waiting.set()
            gate.wait(10)
            raise RuntimeError("boom")
        start_response("200 OK", [("Cache-Control", "max-age=60")])
        return [b"x"]

    cache = HttpCache(clock=FakeClock(START))
    cached = WSGICacheMiddleware(app, cache)
    results: list[Any] = []

    def get() -> None:
        environ = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": "/a",
            "HTTP_HOST": "example.com",
            "wsgi.url_scheme": "http",
            "QUERY_STRING": "",
        }
        try:
            started: list[Any] = []
            b"".join(cached(environ, lambda status, headers: started.append(headers)))
            results.append(dict(started[0])["Cache-Status"])
        except RuntimeError as exc:
            results.append(exc)

    first = threading.Thread(target=get)
    first.start()
    assert waiting.wait(10)
    others = [threading.Thread(target=get) for _ in range(30)]
    for thread in others:
        thread.start()
    while cache.stats().misses < 31:  # every thread has joined the leader's flight
        threading.Event().wait(0.001)
    gate.set()
    for thread in [first, *others]:
        thread.join(10)
    assert calls == 2
    assert sum(isinstance(result, RuntimeError) for result in results) == 1
    assert results.count("scalekit; hit; detail=coalesced") == 29


def test_joiners_of_a_failing_revalidation_serve_stale_if_error_at_once() -> None:
    # the app is down; a stale response allows stale-if-error: the leader's error
    # is enough, its joiners do not each call the failing app again
    async def main() -> tuple[int, list[bytes]]:
        clock = FakeClock(START)
        calls = 0
        gate = asyncio.Event()
        down = False

        async def app(scope: Any, receive: Any, send: Any) -> None:
            nonlocal calls
            calls += 1
            if down:
                await gate.wait()
                raise RuntimeError("down")
            headers = [(b"cache-control", b"max-age=10, stale-if-error=600")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b"x"})

        cached = CacheMiddleware(app, HttpCache(clock=clock))
        await _run(cached)
        clock.advance(20)
        down = True
        tasks = [asyncio.create_task(_run(cached)) for _ in range(50)]
        while calls < 2:
            await asyncio.sleep(0)
        for _ in range(5):
            await asyncio.sleep(0)
        gate.set()
        results = await asyncio.gather(*tasks)
        statuses = [_status(sent) for sent in results]
        return calls, statuses

    calls, statuses = asyncio.run(main())
    assert calls == 2
    assert set(statuses) == {b"scalekit; hit; ttl=-10; detail=stale"}


class _SlowStore:
    """An async store whose every call yields to the event loop (as a network
    store does), over a dict; shared by two caches as by two processes."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    async def get(self, key: str, default: Any = None) -> Any:
        await asyncio.sleep(0)
        return self.data.get(key, default)

    async def get_many(self, keys: Any) -> dict[str, Any]:
        await asyncio.sleep(0)
        return {key: self.data[key] for key in keys if key in self.data}

    async def set(self, key: str, value: Any, *, ttl: float | None = None) -> None:
        await asyncio.sleep(0)
        self.data[key] = value

    async def add(self, key: str, value: Any, *, ttl: float | None = None) -> bool:
        await asyncio.sleep(0)
        if key in self.data:
            return False
        self.data[key] = value
        return True

    async def delete(self, key: str) -> bool:
        await asyncio.sleep(0)
        return self.data.pop(key, None) is not None


def test_joiners_of_a_new_leader_that_found_the_response_get_it() -> None:
    # the leader fails; meanwhile another process stores the page; the joiner
    # that leads the second round finds it in the store, and the requests that
    # joined that second round must get it too, not call the app each
    async def main() -> tuple[int, list[bytes]]:
        clock = FakeClock(START)
        store = _SlowStore()
        calls = 0
        gate = asyncio.Event()

        async def app(scope: Any, receive: Any, send: Any) -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                await gate.wait()
                raise RuntimeError("boom")
            await send({"type": "http.response.start", "status": 200, "headers": MAX60})
            await send({"type": "http.response.body", "body": b"x"})

        here = CacheMiddleware(app, HttpCache(store, clock=clock, lease=0.001))
        elsewhere = CacheMiddleware(app, HttpCache(store, clock=clock, lease=0.001))
        tasks = [asyncio.create_task(_run(here)) for _ in range(30)]
        while calls == 0:
            await asyncio.sleep(0)
        for _ in range(20):
            await asyncio.sleep(0)
        store.data.pop(next(key for key in store.data if key.endswith("#lease")))
        await _run(elsewhere)  # another process stores the page
        gate.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        statuses = [_status(sent) for sent in results if isinstance(sent, list)]
        return calls, statuses

    calls, statuses = asyncio.run(main())
    assert calls == 2
    assert statuses.count(b"scalekit; hit; detail=coalesced") == 29


def test_a_leader_cancelled_while_awaiting_the_store_releases_its_joiners() -> None:
    # cancelled during the lease's add on an async store: the cancellation left
    # the flow suspended, its flight open, and every later request for the key
    # waited on it forever
    class Blocking(_SlowStore):
        def __init__(self) -> None:
            super().__init__()
            self.block = asyncio.Event()
            self.blocking = True

        async def add(self, key: str, value: Any, *, ttl: float | None = None) -> bool:
            if self.blocking:
                await self.block.wait()
            return await super().add(key, value, ttl=ttl)

    async def main() -> tuple[int, list[bytes]]:
        store = Blocking()
        calls = 0

        async def app(scope: Any, receive: Any, send: Any) -> None:
            nonlocal calls
            calls += 1
            await send({"type": "http.response.start", "status": 200, "headers": MAX60})
            await send({"type": "http.response.body", "body": b"x"})

        cached = CacheMiddleware(app, HttpCache(store, clock=FakeClock(START)))
        leader = asyncio.create_task(_run(cached))
        for _ in range(10):
            await asyncio.sleep(0)
        joiners = [asyncio.create_task(_run(cached)) for _ in range(3)]
        for _ in range(10):
            await asyncio.sleep(0)
        store.blocking = False
        leader.cancel()
        done = await asyncio.wait_for(asyncio.gather(*joiners), 5)
        statuses = [_status(sent) for sent in done]
        return calls, statuses

    calls, statuses = asyncio.run(main())
    assert calls == 1
    assert statuses.count(b"scalekit; hit; detail=coalesced") == 2
