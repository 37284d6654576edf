"""Seams between app servers sharing one store: a purge made by another app
server while a tagged response is being fetched (that response may predate the
purge, so it is served but never stored), and stale-while-revalidate refreshing
once across servers.

Two ``HttpCache`` objects over one store stand for two app servers (each has
only its own in-process purge count); the app of the first is held until the
second has purged."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

from scalekit.testing import FakeClock
from scalekit.web import HttpCache, WSGICacheMiddleware


class SharedStore:
    """A plain ``Store`` two caches share (not an in-process scalekit cache, so
    each ``HttpCache`` treats it as shared by processes)."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.lock = threading.Lock()

    def get(self, key: str, default: Any = None, /) -> Any:
        return self.data.get(key, default)

    def set(self, key: str, value: Any, /, *, ttl: float | None = None) -> None:
        self.data[key] = value

    def add(self, key: str, value: Any, /, *, ttl: float | None = None) -> bool:
        with self.lock:
            if key in self.data:
                return False
            self.data[key] = value
            return True

    def ttl_of(self, key: str, /) -> float | None:
        if key not in self.data:
            raise KeyError(key)
        return None

    def delete(self, key: str, /) -> bool:
        return self.data.pop(key, None) is not None

    def get_many(self, keys: Iterable[str], /) -> dict[str, Any]:
        return {key: self.data[key] for key in keys if key in self.data}

    def set_many(self, items: Mapping[str, Any], /, *, ttl: float | None = None) -> None:
        self.data.update(items)


def environ(path: str) -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "example.com",
        "SERVER_PORT": "80",
        "HTTP_HOST": "example.com",
        "wsgi.url_scheme": "http",
    }


def call(app: Any, path: str) -> tuple[str, bytes]:
    found: dict[str, str] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        found.update(headers)

    body = b"".join(app(environ(path), start_response))
    return found["Cache-Status"], body


def test_a_purge_on_another_server_during_a_fetch_keeps_its_response_out() -> None:
    store = SharedStore()
    clock = FakeClock(1_700_000_000)
    server_a, server_b = HttpCache(store, clock=clock), HttpCache(store, clock=clock)
    version = ["old"]
    fetching, purged = threading.Event(), threading.Event()
    hold = [True]

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        body = f"price: {version[0]}".encode()  # read before the purge...
        if hold[0]:
            fetching.set()
            assert purged.wait(5)  # ...answered after it
        start_response("200 OK", [("Cache-Control", "max-age=600"), ("Surrogate-Key", "product-1")])
        return [body]

    site_a = WSGICacheMiddleware(app, server_a)
    answers: list[tuple[str, bytes]] = []
    first = threading.Thread(target=lambda: answers.append(call(site_a, "/product/1")))
    first.start()
    assert fetching.wait(5)
    version[0] = "new"  # the product changes, and server B purges its tag
    server_b.purge("product-1")
    purged.set()
    first.join(5)
    assert answers == [("scalekit; fwd=uri-miss", b"price: old")]  # served, not stored
    hold[0] = False
    assert call(site_a, "/product/1") == ("scalekit; fwd=uri-miss; stored", b"price: new")
    assert call(site_a, "/product/1")[1] == b"price: new"


def test_stale_while_revalidate_refreshes_once_across_app_servers() -> None:
    store = SharedStore()
    clock = FakeClock(1_700_000_000)
    servers = [HttpCache(store, clock=clock) for _ in range(3)]
    calls: list[int] = []
    release = threading.Event()

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        calls.append(1)
        if len(calls) > 1:
            assert release.wait(5)  # the refresh is still running when the others ask
        start_response("200 OK", [("Cache-Control", "max-age=10, stale-while-revalidate=60")])
        return [b"page"]

    sites = [WSGICacheMiddleware(app, server) for server in servers]
    assert call(sites[0], "/p")[0] == "scalekit; fwd=uri-miss; stored"
    clock.advance(20)  # stale, within the stale-while-revalidate window
    for site in sites:  # three app servers serve it stale; one of them refreshes it
        assert call(site, "/p") == ("scalekit; hit; ttl=-10; detail=stale", b"page")
    release.set()
    deadline = time.monotonic() + 5
    while (
        not call(sites[1], "/p")[0].startswith("scalekit; hit; ttl=")
        or "stale" in call(sites[1], "/p")[0]
    ):
        assert time.monotonic() < deadline, "the refresh never landed"
        time.sleep(0.01)
    assert len(calls) == 2  # the first fetch, and one refresh for all three servers
