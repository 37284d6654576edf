"""Carrying the read-your-writes token between requests, in one process (fake replicas).

The cross-process proof over real PostgreSQL replicas is in test_pg_middleware.py.
"""

from __future__ import annotations

import contextvars
import logging
import warnings
from collections.abc import Iterator
from typing import Any
from wsgiref.util import setup_testing_defaults

import pytest

from scalekit.errors import ArgumentTypeError, ConfigurationError
from scalekit.replication import (
    ReplicaRouter,
    ReplicaRouterMiddleware,
    ReplicaRouterWSGIMiddleware,
)
from scalekit.testing import FakeClock
from tests.replication.test_router import World, token_router

starlette = pytest.importorskip("starlette")
pytest.importorskip("httpx")

from starlette.applications import Starlette  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402
from starlette.middleware.base import BaseHTTPMiddleware  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import PlainTextResponse, Response  # noqa: E402
from starlette.routing import Route  # noqa: E402

with warnings.catch_warnings():  # Starlette 1.x prefers httpx2; httpx works too
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.filterwarnings(
    "ignore:Using `httpx` with `starlette.testclient` is deprecated"
)


class Site:
    """A router over replicas ``a`` and ``b`` at position 5, and a Starlette app whose
    ``/write`` notes a write with token 10 and whose ``/read`` says where a read goes;
    ``sync`` and ``async`` endpoints both."""

    def __init__(self) -> None:
        self.clock, self.world = FakeClock(), World("a", "b")
        self.world.position.update(a=5, b=5)
        self.router = token_router(self.world, self.clock)
        self.next_token = 10

    def write(self) -> None:
        self.router.note_write(self.next_token)

    def routes(self) -> list[Route]:
        def sync_write(request: Request) -> Response:
            self.write()
            return PlainTextResponse("wrote")

        async def async_write(request: Request) -> Response:
            self.write()
            return PlainTextResponse("wrote")

        def sync_read(request: Request) -> Response:
            return PlainTextResponse(self.router.for_read())

        async def async_read(request: Request) -> Response:
            return PlainTextResponse(self.router.for_read())

        return [
            Route("/sync/write", sync_write, methods=["POST"]),
            Route("/async/write", async_write, methods=["POST"]),
            Route("/sync/read", sync_read),
            Route("/async/read", async_read),
        ]


class Passthrough(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        return response


def client(app: Any) -> TestClient:
    return TestClient(app, base_url="https://testserver")


# -- the documented hook, and why it lost the token ----------------------------------


class DocumentedHook:
    """The hook the guide documented before the middleware: a scope around the app,
    and ``router.token()`` read when the response starts."""

    def __init__(self, app: Any, router: ReplicaRouter[Any]) -> None:
        self.app, self.router = app, router
        self.tokens: list[Any] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with self.router.scope(token=None):

            async def capture(message: Any) -> None:
                if message["type"] == "http.response.start":
                    self.tokens.append(self.router.token())
                await send(message)

            await self.app(scope, receive, capture)


@pytest.mark.parametrize(
    ("path", "behind_base_http_middleware"),
    [("/sync/write", False), ("/sync/write", True), ("/async/write", True)],
)
def test_the_documented_hook_sees_writes_made_in_copied_contexts(
    path: str, behind_base_http_middleware: bool
) -> None:
    """A sync endpoint runs in a thread pool with a copy of the request's context, and
    BaseHTTPMiddleware runs the app in a task with a copy: ContextVar.set there was
    seen by nobody, so the hook read None (the regression). One mutable record per
    scope carries the write out."""
    site = Site()
    middleware = [Middleware(Passthrough)] if behind_base_http_middleware else []
    hook = DocumentedHook(Starlette(routes=site.routes(), middleware=middleware), site.router)
    with client(hook) as http:
        assert http.post(path).text == "wrote"
    assert hook.tokens == [10]


# -- the middleware ------------------------------------------------------------------


def asgi_site(**options: Any) -> tuple[Site, TestClient]:
    site = Site()
    behind = options.pop("behind_base_http_middleware", False)
    middleware = [Middleware(ReplicaRouterMiddleware, router=site.router, **options)]
    if behind:
        middleware.append(Middleware(Passthrough))
    app = Starlette(routes=site.routes(), middleware=middleware)
    return site, client(app)


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("behind", [False, True])
def test_a_write_carries_its_token_to_the_next_request(kind: str, behind: bool) -> None:
    _site, http = asgi_site(behind_base_http_middleware=behind)
    with http:
        assert http.get(f"/{kind}/read").text in ("a", "b")
        response = http.post(f"/{kind}/write")
        cookie = response.headers["set-cookie"]
        assert cookie.startswith("scalekit_rw=10; Max-Age=3600; Path=/; Secure; HttpOnly")
        # another app server: a client of its own that only has the cookie
        other_site, other = asgi_site(behind_base_http_middleware=behind)
        other_site.world.position.update(a=5, b=5)
        with other:
            headers = {"cookie": "scalekit_rw=10"}
            assert other.get(f"/{kind}/read", headers=headers).text == "p"
            other_site.world.position["b"] = 10
            other_site.clock.advance(1)
            assert {other.get(f"/{kind}/read", headers=headers).text for _ in range(4)} == {"b"}
            assert other.get(f"/{kind}/read").text in ("a", "b")  # without the cookie


def test_a_request_that_does_not_write_sets_no_cookie() -> None:
    site, http = asgi_site()
    with http:
        assert "set-cookie" not in http.get("/sync/read").headers
        # the same token again: not sent again
        site.next_token = 10
        response = http.post("/sync/write", headers={"cookie": "scalekit_rw=10"})
        assert "set-cookie" not in response.headers
        site.next_token = 12
        response = http.post("/sync/write", headers={"cookie": "scalekit_rw=10"})
        assert response.headers["set-cookie"].startswith("scalekit_rw=12;")


def test_the_token_in_a_header_for_api_clients() -> None:
    _site, http = asgi_site(cookie_name=None, header_name="X-Replica-Token")
    with http:
        response = http.post("/async/write")
        assert response.headers["x-replica-token"] == "10"
        assert "set-cookie" not in response.headers
        assert http.get("/async/read", headers={"x-replica-token": "10"}).text == "p"


def test_a_signed_token_and_a_forged_one() -> None:
    pytest.importorskip("itsdangerous")
    _site, http = asgi_site(secret_key="s3cret")
    with http:
        cookie = http.post("/sync/write").headers["set-cookie"].split(";")[0]
        name, _, value = cookie.partition("=")
        assert name == "scalekit_rw"
        assert value.startswith("10.")
        assert http.get("/sync/read", headers={"cookie": cookie}).text == "p"
        for forged in ("10", "99.AAAA", value.replace("10.", "11.", 1), "\x7f"):
            response = http.get("/sync/read", headers={"cookie": f"scalekit_rw={forged}"})
            assert response.text in ("a", "b"), forged  # ignored: no token
            assert response.headers.get("set-cookie", "").startswith("scalekit_rw=; Max-Age=0"), (
                forged,
                response.headers,
            )


def test_a_token_the_router_refuses_is_ignored(caplog: pytest.LogCaptureFixture) -> None:
    _site, http = asgi_site(decode_token=lambda text: text)  # strings, where positions are ints
    with http, caplog.at_level(logging.WARNING, "scalekit.replication"):
        response = http.get("/sync/read", headers={"cookie": "scalekit_rw=abc"})
    assert response.text in ("a", "b")
    assert "refuses" in caplog.text


@pytest.mark.parametrize("value", ["", "-1", "1e3", "9" * 21, "0x10", "1 2", "١٢"])
def test_a_malformed_token_is_ignored(value: str) -> None:
    _site, http = asgi_site()
    with http:
        cookie = f"scalekit_rw={value}".encode()
        response = http.get("/sync/read", headers={"cookie": cookie})
        assert response.text in ("a", "b")


def test_websockets_and_lifespan_pass_through() -> None:
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket

    site = Site()

    async def socket(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text(site.router.for_read())
        await websocket.close()

    app = Starlette(
        routes=[*site.routes(), WebSocketRoute("/ws", socket)],
        middleware=[Middleware(ReplicaRouterMiddleware, router=site.router)],
    )
    with client(app) as http:  # lifespan ran through the middleware
        assert http.get("/async/read").status_code == 200
        with http.websocket_connect("/ws", headers={"cookie": "scalekit_rw=10"}) as ws:
            assert ws.receive_text() in ("a", "b")  # no scope, no token: passed through


# -- WSGI ----------------------------------------------------------------------------


def wsgi_call(app: Any, path: str, cookie: str | None = None) -> tuple[dict[str, str], bytes]:
    environ: dict[str, Any] = {"PATH_INFO": path}
    if cookie:
        environ["HTTP_COOKIE"] = cookie
    setup_testing_defaults(environ)
    started: list[list[tuple[str, str]]] = []
    body = app(environ, lambda status, headers, exc_info=None: started.append(headers))
    data = b"".join(body)
    getattr(body, "close", lambda: None)()
    return {k.lower(): v for k, v in started[0]}, data


def wsgi_site(late_start: bool) -> tuple[Site, Any]:
    site = Site()

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        def body() -> Iterator[bytes]:
            if environ["PATH_INFO"] == "/write":
                site.write()
                answer = "wrote"
            else:
                answer = site.router.for_read()
            start_response("200 OK", [("Content-Type", "text/plain")])
            yield answer.encode()

        if late_start:
            return body()  # start_response at the first iteration
        return iter([b"".join(body())])

    return site, ReplicaRouterWSGIMiddleware(app, site.router)


@pytest.mark.parametrize("late_start", [False, True])
def test_wsgi_carries_the_token(late_start: bool) -> None:
    _site, app = wsgi_site(late_start)
    headers, body = wsgi_call(app, "/write")
    assert body == b"wrote"
    assert headers["set-cookie"].startswith("scalekit_rw=10;")
    other_site, other = wsgi_site(late_start)
    other_site.world.position.update(a=5, b=5)
    assert wsgi_call(other, "/read", "scalekit_rw=10")[1] == b"p"
    assert wsgi_call(other, "/read")[1] in (b"a", b"b")
    # the request's scope did not leak into the server's context
    assert other_site.router.token() is None


# -- arguments -------------------------------------------------------------------------


async def asgi_app(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover
    pass


def wsgi_app(environ: Any, start_response: Any) -> list[bytes]:  # pragma: no cover
    return []


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"cookie_name": None, "header_name": None}, ConfigurationError, "nothing carries"),
        ({"cookie_name": ""}, ConfigurationError, "cookie_name"),
        ({"cookie_name": "a b"}, ConfigurationError, "cookie_name"),
        ({"cookie_name": "\ud800"}, ConfigurationError, "cookie_name"),
        ({"cookie_name": 3}, ArgumentTypeError, "cookie_name"),
        ({"header_name": "x:y"}, ConfigurationError, "header_name"),
        ({"max_age": 0}, ConfigurationError, "max_age"),
        ({"max_age": True}, ArgumentTypeError, "max_age"),
        ({"max_age": 1.5}, ArgumentTypeError, "max_age"),
        ({"max_age": 10**400}, ConfigurationError, "max_age"),
        ({"secure": "yes"}, ArgumentTypeError, "secure"),
        ({"path": "/; Domain=evil"}, ConfigurationError, "path"),
        ({"path": "relative"}, ConfigurationError, "path"),
        ({"path": None}, ArgumentTypeError, "path"),
        ({"domain": "a.example; Secure"}, ConfigurationError, "domain"),
        ({"domain": ""}, ConfigurationError, "domain"),
        ({"samesite": "sometimes"}, ConfigurationError, "samesite"),
        ({"samesite": "none", "secure": False}, ConfigurationError, "secure"),
        ({"secret_key": ""}, ConfigurationError, "secret_key"),
        ({"secret_key": ["k", 3]}, ConfigurationError, "secret_key"),
        ({"secret_key": 42}, ArgumentTypeError, "secret_key"),
        ({"secret_key": "\ud800"}, ConfigurationError, "secret_key"),
        ({"encode_token": "str"}, ArgumentTypeError, "encode_token"),
        ({"decode_token": None, "encode_token": 1}, ArgumentTypeError, "encode_token"),
    ],
)
def test_bad_middleware_arguments_are_refused(
    options: dict[str, Any], error: type[Exception], match: str
) -> None:
    router = token_router(World("a"), FakeClock())
    with pytest.raises(error, match=match):
        ReplicaRouterMiddleware(asgi_app, router, **options)
    with pytest.raises(error, match=match):
        ReplicaRouterWSGIMiddleware(wsgi_app, router, **options)


def test_each_middleware_refuses_the_other_kind_of_app() -> None:
    router = token_router(World("a"), FakeClock())
    with pytest.raises(ArgumentTypeError, match="not an ASGI app"):
        ReplicaRouterMiddleware(wsgi_app, router)  # type: ignore[arg-type]
    with pytest.raises(ArgumentTypeError, match="an ASGI app"):
        ReplicaRouterWSGIMiddleware(asgi_app, router)  # type: ignore[arg-type]
    with pytest.raises(ArgumentTypeError, match="router"):
        ReplicaRouterMiddleware(asgi_app, "router")  # type: ignore[arg-type]
    with pytest.raises(ArgumentTypeError, match="app"):
        ReplicaRouterMiddleware(None, router)  # type: ignore[arg-type]


def test_a_token_the_default_encoding_cannot_carry_fails_the_response() -> None:
    site = Site()
    site.next_token = (1, 2)  # a tuple: needs encode_token
    site.world.position.update(a=(0, 0), b=(0, 0))
    site.router = token_router(site.world, site.clock)
    app = Starlette(
        routes=site.routes(), middleware=[Middleware(ReplicaRouterMiddleware, router=site.router)]
    )
    with client(app) as http, pytest.raises(ArgumentTypeError, match="encode_token"):
        http.post("/sync/write")


# -- the core, on any input -------------------------------------------------------------

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from scalekit.replication._middleware import _TokenCarrier  # noqa: E402


def carrier(**options: Any) -> _TokenCarrier:
    settings: dict[str, Any] = {
        "cookie_name": "scalekit_rw",
        "header_name": "x-replica-token",
        "secret_key": None,
        "max_age": 60,
        "path": "/",
        "domain": None,
        "secure": True,
        "samesite": "lax",
        "encode_token": None,
        "decode_token": None,
    }
    settings.update(options)
    world = World("a")
    world.position["a"] = 0
    return _TokenCarrier(token_router(world, FakeClock()), **settings)


@given(cookie=st.text(), header=st.text())
def test_any_request_headers_give_a_token_or_none(cookie: str, header: str) -> None:
    core = carrier()
    token, expire = core.read(cookie, header)
    assert token is None or (type(token) is int and 0 <= token < 10**20)
    assert isinstance(expire, bool)


@given(token=st.integers(0, 2**64 - 1), other=st.text(alphabet='; =abc\\"', max_size=20))
def test_a_token_round_trips_through_the_cookie(token: int, other: str) -> None:
    pytest.importorskip("itsdangerous")
    for core in (carrier(), carrier(secret_key=["old", "new"])):
        context = contextvars.copy_context()  # as the WSGI shell does: one per request
        holder = context.run(core.begin, None)
        context.run(core.router.note_write, token)
        (set_cookie, value), (header, same) = core.headers(None, False, holder)
        assert set_cookie == "Set-Cookie"
        assert header == "x-replica-token"
        cookie = value.split(";")[0]
        assert cookie.split("=", 1)[1] == same
        assert core.read(f"{other}; {cookie}", None) == (token, False)
        assert core.read(None, same) == (token, False)
