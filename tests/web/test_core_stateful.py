"""A model-based test of the cache: random GETs, unsafe requests, purges and time
against a plain model of what each path may answer."""

from __future__ import annotations

from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from scalekit.testing import FakeClock
from scalekit.web import HttpCache, WSGICacheMiddleware
from tests.web._http_apps import wsgi_get

PATHS = ["/a", "/b", "/c"]
TAGS = {"/a": "x", "/b": "x y", "/c": "y"}
MAX_AGE = 30


class CacheMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock(1_700_000_000.0)
        self.version = dict.fromkeys(PATHS, 0)
        self.calls = 0
        self.cache = HttpCache(clock=self.clock)
        self.app = WSGICacheMiddleware(self.origin, self.cache)
        # what the model allows a GET to answer: the version each path last rendered
        # and when, or None once an unsafe request or a purge made it unusable
        self.cached: dict[str, tuple[int, float] | None] = dict.fromkeys(PATHS)

    def origin(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        path = environ["PATH_INFO"]
        self.calls += 1
        if environ["REQUEST_METHOD"] == "POST":
            self.version[path] += 1
            start_response("204 No Content", [])
            return []
        body = f"{path} v{self.version[path]}".encode()
        start_response(
            "200 OK", [("Cache-Control", f"max-age={MAX_AGE}"), ("Surrogate-Key", TAGS[path])]
        )
        return [body]

    @rule(path=st.sampled_from(PATHS))
    def get(self, path: str) -> None:
        calls = self.calls
        result = wsgi_get(self.app, path)
        now = self.clock()
        held = self.cached[path]
        if held is not None and now - held[1] < MAX_AGE:
            assert self.calls == calls, "a fresh stored response was not reused"
            assert result.body == f"{path} v{held[0]}".encode()
            assert int(result.headers["age"]) == int(now - held[1])
        else:
            assert self.calls == calls + 1
            assert result.body == f"{path} v{self.version[path]}".encode()
            self.cached[path] = (self.version[path], now)

    @rule(path=st.sampled_from(PATHS))
    def post(self, path: str) -> None:
        assert wsgi_get(self.app, path, method="POST").status == 204
        self.cached[path] = None

    @rule(tag=st.sampled_from(["x", "y"]))
    def purge(self, tag: str) -> None:
        self.cache.purge(tag)
        for path, tags in TAGS.items():
            if tag in tags.split():
                self.cached[path] = None

    @rule(seconds=st.integers(min_value=0, max_value=40))
    def wait(self, seconds: int) -> None:
        self.clock.advance(seconds)

    @invariant()
    def nothing_in_flight(self) -> None:
        assert not self.cache._flights
        self.cache._check()


TestCacheMachine = CacheMachine.TestCase
TestCacheMachine.settings = settings(max_examples=50, stateful_step_count=30, deadline=None)
