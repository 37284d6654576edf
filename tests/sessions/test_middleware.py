"""The session middleware, WSGI and ASGI, driven by hand-built requests.

The behaviour tests run on three harnesses: WSGI, ASGI with a sync store (called
on a worker thread), and ASGI with an async store (awaited). Tests of one
protocol's details follow them. A test with Starlette's TestClient runs when
Starlette is installed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl
from wsgiref.util import setup_testing_defaults

import pytest

from scalekit.errors import ClosedError, ConfigurationError, ScalekitError, SessionConflict
from scalekit.sessions import AsyncMemorySessionStore, MemorySessionStore, Record, Session
from scalekit.sessions._middleware import (
    SessionMiddleware,
    WsgiSessionMiddleware,
    logout,
    rotate_id,
)
from scalekit.sessions._session import new_id, valid_id
from scalekit.testing import FakeClock

START = 1_700_000_000.0
KINDS = ["wsgi", "asgi-sync-store", "asgi-async-store"]
EXPIRED = "Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT"


class Boom(Exception):
    """What the app raises on /raise."""


# -- the app, one for WSGI and ASGI ------------------------------------------------


def handle(session: Any, path: str, query: dict[str, str], request: Any) -> dict[str, Any]:
    """The app's logic; ``request`` is the environ or the scope."""
    if path == "/set":
        session.update(query)
    elif path == "/delete":
        del session[query["key"]]
    elif path == "/login":
        session["user"] = query.get("user", "ada")
        rotate_id(request)
    elif path == "/logout":
        logout(request)
    elif path == "/logout-flash":
        logout(request)
        session["flash"] = "bye"
    elif path == "/raise":
        session["lost"] = True
        raise Boom
    return dict(session)


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    data: dict[str, Any]

    @property
    def set_cookie(self) -> str | None:
        values = [value for name, value in self.headers if name.lower() == "set-cookie"]
        assert len(values) <= 1, values
        return values[0] if values else None

    @property
    def cookie(self) -> str:
        """The ``name=value`` pair of the Set-Cookie header, to send back."""
        assert self.set_cookie is not None
        return self.set_cookie.split(";")[0]

    @property
    def session_id(self) -> str:
        return self.cookie.partition("=")[2]


@dataclass
class Harness:
    """One kind of middleware over one store, with a request driver."""

    kind: str
    clock: FakeClock = field(default_factory=lambda: FakeClock(START))
    store: Any = None
    middleware: Any = None
    meanwhile: Callable[[], None] | None = None  # runs in the app, before it responds
    after_start: Callable[[Any], None] | None = None  # runs after the response started

    def build(self, store_settings: dict[str, Any] | None = None, **options: Any) -> Harness:
        settings = {"clock": self.clock, **(store_settings or {})}
        if self.kind == "asgi-async-store":
            self.store = AsyncMemorySessionStore(**settings)
        else:
            self.store = MemorySessionStore(**settings)
        if self.kind == "wsgi":
            self.middleware = WsgiSessionMiddleware(self.wsgi_app, self.store, **options)
        else:
            self.middleware = SessionMiddleware(self.asgi_app, self.store, **options)
        return self

    @property
    def view(self) -> MemorySessionStore:
        """The store's records through a sync store (the async one wraps one)."""
        view: MemorySessionStore = (
            self.store._sync if self.kind == "asgi-async-store" else self.store
        )
        return view

    def create(self, data: dict[str, Any]) -> Session:
        return self.view.create(data)

    def load(self, session_id: str) -> Session | None:
        return self.view.load(session_id)

    # the app

    def wsgi_app(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        query = dict(parse_qsl(environ["QUERY_STRING"]))
        data = handle(environ["scalekit.session"], environ["PATH_INFO"], query, environ)
        if self.meanwhile:
            self.meanwhile()
        start_response("200 OK", [("Content-Type", "application/json")])
        if self.after_start:
            self.after_start(environ)
        return [json.dumps(data).encode()]

    async def asgi_app(self, scope: Any, receive: Any, send: Any) -> None:
        query = dict(parse_qsl(scope["query_string"].decode()))
        data = handle(scope["session"], scope["path"], query, scope)
        if self.meanwhile:
            self.meanwhile()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        if self.after_start:
            self.after_start(scope)
        await send({"type": "http.response.body", "body": json.dumps(data).encode()})

    # the server

    def get(self, target: str, cookie: str | None = None) -> Response:
        path, _, query = target.partition("?")
        if self.kind == "wsgi":
            return self._wsgi(path, query, cookie)
        return self._asgi(path, query, cookie)

    def _wsgi(self, path: str, query: str, cookie: str | None) -> Response:
        environ: dict[str, Any] = {"PATH_INFO": path, "QUERY_STRING": query}
        if cookie is not None:
            environ["HTTP_COOKIE"] = cookie
        setup_testing_defaults(environ)
        started: list[tuple[str, list[tuple[str, str]]]] = []

        def start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Callable[[bytes], object]:
            started.append((status, headers))
            return write

        body = b"".join(self.middleware(environ, start_response))
        status, headers = started[-1]
        return Response(int(status.split()[0]), headers, json.loads(body))

    def _asgi(self, path: str, query: str, cookie: str | None) -> Response:
        headers = [] if cookie is None else [(b"cookie", cookie.encode())]
        messages = asgi_request(self.middleware, http_scope(path, query, headers))
        start, body = messages
        assert start["type"] == "http.response.start"
        return Response(
            start["status"],
            [(name.decode(), value.decode()) for name, value in start["headers"]],
            json.loads(body["body"]),
        )


def http_scope(path: str = "/", query: str = "", headers: Any = ()) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "https",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": list(headers),
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 443),
    }


def asgi_request(app: Any, scope: dict[str, Any]) -> list[dict[str, Any]]:
    """Run one ASGI request to completion; the messages the app sent."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


@pytest.fixture(params=KINDS)
def harness(request: pytest.FixtureRequest) -> Harness:
    return Harness(request.param).build()


def write(data: bytes) -> None:
    """The ``write`` callable a WSGI ``start_response`` returns (unused here)."""


def ignore_start(
    status: str, headers: list[tuple[str, str]], exc_info: Any = None
) -> Callable[[bytes], object]:
    """A WSGI ``start_response`` that throws the response away."""
    return write


def corrupt(store: MemorySessionStore, payload: bytes = b"\x80\x04K\x01.") -> str:
    """A session id whose stored record is not JSON (here a pickle)."""
    session_id = new_id()
    now = store.settings.clock()
    assert store._insert(session_id, Record(payload, 1, now, now), math.inf, b"op-00001")
    return session_id


# -- cookies -----------------------------------------------------------------------


def test_an_anonymous_visit_stores_nothing_and_sets_no_cookie(harness: Harness) -> None:
    response = harness.get("/")
    assert response.data == {}
    assert response.set_cookie is None
    assert len(harness.view) == 0


def test_the_first_save_sets_the_cookie_with_only_the_id(harness: Harness) -> None:
    response = harness.get("/set?cart=book")
    name, _, value = response.cookie.partition("=")
    assert name == "session"
    assert valid_id(value)  # the id, nothing else
    assert response.set_cookie == (
        f"session={value}; Max-Age=43200; Path=/; HttpOnly; Secure; SameSite=Lax"
    )
    stored = harness.load(value)
    assert stored is not None
    assert stored.to_dict() == {"cart": "book"}


@pytest.mark.parametrize(
    ("options", "attributes"),
    [
        ({"secure": False}, "Path=/; HttpOnly; SameSite=Lax"),
        ({"samesite": "strict"}, "Path=/; HttpOnly; Secure; SameSite=Strict"),
        ({"samesite": "None"}, "Path=/; HttpOnly; Secure; SameSite=None"),
        ({"samesite": None}, "Path=/; HttpOnly; Secure"),
        (
            {"path": "/app", "domain": "example.com"},
            "Path=/app; Domain=example.com; HttpOnly; Secure; SameSite=Lax",
        ),
    ],
)
def test_cookie_attributes(harness: Harness, options: dict[str, Any], attributes: str) -> None:
    harness.build(**options)
    response = harness.get("/set?a=1")
    assert response.set_cookie == f"{response.cookie}; Max-Age=43200; {attributes}"


def test_cookie_name(harness: Harness) -> None:
    harness.build(cookie_name="__Host-sid")
    response = harness.get("/set?a=1")
    assert response.cookie.startswith("__Host-sid=")
    again = harness.get("/", f"theme=dark; {response.cookie}; lang=fr")
    assert again.data == {"a": "1"}
    assert harness.get("/", f"session={response.session_id}").data == {}


# -- save only when changed, touch otherwise ---------------------------------------


def test_an_unchanged_session_is_touched_not_saved(harness: Harness) -> None:
    harness.build(store_settings={"idle_timeout": 600})
    session = harness.create({"user": "ada"})
    harness.clock.advance(500)
    response = harness.get("/", f"session={session.id}")
    assert response.data == {"user": "ada"}
    assert response.set_cookie is None  # same id: no cookie
    stored = harness.load(session.id)
    assert stored is not None
    assert stored.version == session.version  # not rewritten
    assert stored.accessed_at == START + 500  # but touched
    harness.clock.advance(500)  # 1000 s after creation, 500 after the touch
    assert harness.load(session.id) is not None


def test_a_changed_session_is_saved_under_the_same_id(harness: Harness) -> None:
    session = harness.create({"user": "ada"})
    harness.clock.advance(10)
    response = harness.get("/set?theme=dark", f"session={session.id}")
    assert response.set_cookie is None
    stored = harness.load(session.id)
    assert stored is not None
    assert stored.to_dict() == {"user": "ada", "theme": "dark"}
    assert stored.version == session.version + 1
    harness.get("/delete?key=theme", f"session={session.id}")
    stored = harness.load(session.id)
    assert stored is not None
    assert stored.to_dict() == {"user": "ada"}


@pytest.mark.parametrize(
    "value",
    [new_id(), "not-an-id", "", '"quoted"', new_id() + "x", "é" * 43],
    ids=["unknown-id", "not-an-id", "empty", "quoted", "id-plus-one", "non-ascii"],
)
def test_a_cookie_naming_no_session_gets_a_blank_one_and_is_expired(
    harness: Harness, value: str
) -> None:
    response = harness.get("/", f"session={value}")
    assert response.data == {}
    assert response.set_cookie == f"session=; {EXPIRED}; Path=/; HttpOnly; Secure; SameSite=Lax"
    response = harness.get("/set?a=1", f"session={value}")
    assert response.session_id != value  # a fresh id, never the one the client chose


def test_a_session_deleted_meanwhile_expires_the_cookie(harness: Harness) -> None:
    session = harness.create({"user": "ada"})
    harness.meanwhile = lambda: harness.view.delete(session.id)  # logged out in another tab
    response = harness.get("/", f"session={session.id}")
    assert response.set_cookie is not None
    assert EXPIRED in response.set_cookie


def test_an_expired_session_loads_blank(harness: Harness) -> None:
    harness.build(store_settings={"idle_timeout": 60})
    session = harness.create({"user": "ada"})
    harness.clock.advance(61)
    assert harness.get("/", f"session={session.id}").data == {}


# -- Max-Age ---------------------------------------------------------------------------


def test_max_age_lasts_until_the_absolute_expiry(harness: Harness) -> None:
    harness.build(store_settings={"idle_timeout": 600, "absolute_timeout": 3600})
    first = harness.get("/set?a=1")
    assert "Max-Age=3600;" in (first.set_cookie or "")
    for _ in range(4):  # active for 2000 s: the idle expiry slides, the cookie stays
        harness.clock.advance(500)
        assert harness.get("/", first.cookie).set_cookie is None
    login = harness.get("/login", first.cookie)
    assert "Max-Age=1600;" in (login.set_cookie or "")  # the same session, rotated
    assert harness.get("/", login.cookie).data == {"a": "1", "user": "ada"}


def test_with_an_idle_timeout_only_the_cookie_slides_with_it(harness: Harness) -> None:
    harness.build(store_settings={"idle_timeout": 600, "absolute_timeout": None})
    first = harness.get("/set?a=1")
    assert "Max-Age=600;" in (first.set_cookie or "")
    harness.clock.advance(500)
    again = harness.get("/", first.cookie)  # touched: the browser's expiry must move too
    assert again.set_cookie == first.set_cookie
    assert harness.get("/").set_cookie is None  # an anonymous visit still sets nothing


def test_with_no_timeouts_the_cookie_has_no_max_age(harness: Harness) -> None:
    harness.build(store_settings={"idle_timeout": None, "absolute_timeout": None})
    first = harness.get("/set?a=1")
    assert first.set_cookie == f"{first.cookie}; Path=/; HttpOnly; Secure; SameSite=Lax"
    assert harness.get("/", first.cookie).set_cookie is None


# -- signed cookies --------------------------------------------------------------------


def test_a_signed_cookie_carries_the_id_and_its_signature(harness: Harness) -> None:
    pytest.importorskip("itsdangerous")
    harness.build(secret_key="s3cret")
    response = harness.get("/set?a=1")
    value = response.session_id
    session_id, _, signature = value.partition(".")
    assert valid_id(session_id)
    assert signature
    assert harness.load(session_id) is not None
    assert harness.get("/", response.cookie).data == {"a": "1"}
    unsigned = harness.get("/", f"session={session_id}")  # the bare id: no session
    assert unsigned.data == {}
    assert EXPIRED in (unsigned.set_cookie or "")


def test_a_tampered_cookie_is_no_session(harness: Harness) -> None:
    pytest.importorskip("itsdangerous")
    harness.build(secret_key="s3cret")
    value = harness.get("/set?a=1").session_id
    session_id, _, signature = value.partition(".")
    other = harness.create({"user": "admin"})
    # (not the last character: its low bits are padding, which base64 decoding drops)
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    for forged in (f"{session_id}.{flipped}", f"{other.id}.{signature}", f"{other.id}."):
        assert harness.get("/", f"session={forged}").data == {}
    assert harness.load(session_id) is not None  # the real session is untouched


def test_a_cookie_signed_with_another_key_is_no_session(harness: Harness) -> None:
    pytest.importorskip("itsdangerous")
    harness.build(secret_key="one")
    cookie = harness.get("/set?a=1").cookie
    store = harness.store
    middleware = type(harness.middleware)
    app = harness.wsgi_app if harness.kind == "wsgi" else harness.asgi_app
    harness.middleware = middleware(app, store, secret_key="two")
    assert harness.get("/", cookie).data == {}
    harness.middleware = middleware(app, store, secret_key=["one", "two"])  # rotating keys
    assert harness.get("/", cookie).data == {"a": "1"}  # every key verifies
    fresh = harness.get("/set?b=2")
    harness.middleware = middleware(app, store, secret_key=b"two")
    assert harness.get("/", fresh.cookie).data == {"b": "2"}  # the last key signs


def test_signing_needs_itsdangerous(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "itsdangerous", None)  # import fails
    with pytest.raises(ConfigurationError, match="pip install itsdangerous"):
        WsgiSessionMiddleware(wsgi_hello, MemorySessionStore(), secret_key="k")


# -- logout and login ----------------------------------------------------------------


def test_logout_deletes_the_session_and_expires_the_cookie(harness: Harness) -> None:
    session = harness.create({"user": "ada"})
    response = harness.get("/logout", f"session={session.id}")
    assert response.data == {}  # cleared at once
    assert response.set_cookie == f"session=; {EXPIRED}; Path=/; HttpOnly; Secure; SameSite=Lax"
    assert harness.load(session.id) is None
    assert harness.get("/", f"session={session.id}").data == {}


def test_data_set_after_logout_goes_into_a_new_session(harness: Harness) -> None:
    session = harness.create({"user": "ada"})
    response = harness.get("/logout-flash", f"session={session.id}")
    assert harness.load(session.id) is None
    assert response.session_id != session.id
    fresh = harness.load(response.session_id)
    assert fresh is not None
    assert fresh.to_dict() == {"flash": "bye"}


def test_logout_without_a_session_sets_no_cookie(harness: Harness) -> None:
    response = harness.get("/logout")
    assert response.set_cookie is None
    assert len(harness.view) == 0


def test_login_rotates_the_id_and_the_old_one_no_longer_loads(harness: Harness) -> None:
    session = harness.create({"cart": ["book"]})  # made before login (or planted)
    response = harness.get("/login?user=ada", f"session={session.id}")
    assert response.session_id != session.id
    assert harness.load(session.id) is None
    assert harness.get("/", f"session={session.id}").data == {}
    rotated = harness.load(response.session_id)
    assert rotated is not None
    assert rotated.to_dict() == {"cart": ["book"], "user": "ada"}
    assert rotated.created_at == session.created_at  # the same session, a new id
    assert harness.get("/", response.cookie).data == {"cart": ["book"], "user": "ada"}


def test_login_with_no_session_stores_one_under_a_fresh_id(harness: Harness) -> None:
    response = harness.get("/login")
    stored = harness.load(response.session_id)
    assert stored is not None
    assert stored.to_dict() == {"user": "ada"}


def test_login_on_an_unknown_id_never_uses_that_id(harness: Harness) -> None:
    planted = new_id()
    response = harness.get("/login", f"session={planted}")
    assert response.session_id != planted
    assert harness.load(planted) is None


def test_rotate_or_logout_after_the_response_started_raises(harness: Harness) -> None:
    errors: list[Exception] = []

    def too_late(request: Any) -> None:
        for call in (rotate_id, logout):
            try:
                call(request)
            except ClosedError as exc:
                errors.append(exc)

    harness.after_start = too_late
    harness.get("/set?a=1")
    assert len(errors) == 2


def test_rotate_and_logout_need_the_middleware() -> None:
    for request in ({}, {"type": "http"}, object()):
        with pytest.raises(ConfigurationError, match="no session here"):
            logout(request)
        with pytest.raises(ConfigurationError, match="no session here"):
            rotate_id(request)


# -- errors ----------------------------------------------------------------------------


def test_a_corrupt_record_gets_a_fresh_session_and_is_logged(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    session_id = corrupt(harness.view)
    with caplog.at_level(logging.WARNING, logger="scalekit.sessions"):
        response = harness.get("/", f"session={session_id}")
    assert response.data == {}
    [record] = [r for r in caplog.records if r.name == "scalekit.sessions"]
    assert record.levelno == logging.WARNING
    assert session_id[:8] in record.getMessage()
    assert session_id not in record.getMessage()  # a whole id is a credential
    response = harness.get("/set?a=1", f"session={session_id}")
    assert response.session_id != session_id
    stored = harness.load(response.session_id)
    assert stored is not None
    assert stored.to_dict() == {"a": "1"}


def test_a_conflict_on_save_propagates_and_no_response_starts(harness: Harness) -> None:
    session = harness.create({"theme": "light"})

    def other_request() -> None:  # another tab changes the same key meanwhile
        other = harness.load(session.id)
        assert other is not None
        other["theme"] = "dark"
        harness.view.save(other)

    harness.meanwhile = other_request
    with pytest.raises(SessionConflict):
        harness.get("/set?theme=blue", f"session={session.id}")
    stored = harness.load(session.id)
    assert stored is not None
    assert stored["theme"] == "dark"


def test_other_keys_changed_meanwhile_are_merged(harness: Harness) -> None:
    session = harness.create({"theme": "light"})

    def other_request() -> None:
        other = harness.load(session.id)
        assert other is not None
        other["cart"] = ["book"]
        harness.view.save(other)

    harness.meanwhile = other_request
    harness.get("/set?theme=blue", f"session={session.id}")
    stored = harness.load(session.id)
    assert stored is not None
    assert stored.to_dict() == {"theme": "blue", "cart": ["book"]}


def test_a_request_that_fails_before_responding_saves_nothing(harness: Harness) -> None:
    with pytest.raises(Boom):
        harness.get("/raise")
    assert len(harness.view) == 0
    session = harness.create({"user": "ada"})
    with pytest.raises(Boom):
        harness.get("/raise", f"session={session.id}")
    stored = harness.load(session.id)
    assert stored is not None
    assert stored.to_dict() == {"user": "ada"}
    assert stored.version == session.version


def test_a_session_too_large_propagates(harness: Harness) -> None:
    from scalekit.errors import SessionTooLarge

    harness.build(store_settings={"max_bytes": 64})
    with pytest.raises(SessionTooLarge):
        harness.get("/set?big=" + "x" * 100)


# -- configuration -----------------------------------------------------------------------


def wsgi_hello(environ: Any, start_response: Any) -> Iterable[bytes]:
    start_response("200 OK", [])
    return [b"hello"]


async def asgi_hello(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"httponly": False}, "httponly is always True"),
        ({"samesite": "sometimes"}, "samesite is"),
        ({"samesite": "none", "secure": False}, "needs secure=True"),
        ({"secure": "yes"}, "secure must be a bool"),
        ({"cookie_name": "my session"}, "cookie token"),
        ({"cookie_name": ""}, "cookie_name must not be empty"),
        ({"cookie_name": "s\ud800"}, "cookie token"),
        ({"cookie_name": None}, "cookie_name must be a str"),
        ({"path": None}, "path must be a str"),
        ({"path": "/\ud800"}, "path must"),
        ({"domain": 1}, "domain must be a str"),
        ({"domain": "ex\udfffample.com"}, "domain must"),
        ({"samesite": 1}, "samesite must be a str"),
        ({"path": "app"}, "path must start with '/'"),
        ({"path": "/; Domain=evil.com"}, "path must"),
        ({"domain": "example.com; Secure"}, "domain must"),
        ({"domain": ""}, "domain must not be empty"),
        ({"cookie_name": "__Host-s", "domain": "example.com"}, "__Host-"),
        ({"cookie_name": "__Host-s", "path": "/app"}, "__Host-"),
        ({"cookie_name": "__Secure-s", "secure": False}, "__Secure-"),
        ({"secret_key": ""}, "secret_key is"),
        ({"secret_key": []}, "secret_key is"),
        ({"secret_key": ["k", 1]}, "secret_key is"),
    ],
)
def test_bad_options_are_refused(options: dict[str, Any], message: str) -> None:
    if "secret_key" in options:
        pytest.importorskip("itsdangerous")
    with pytest.raises(ScalekitError, match=message):
        WsgiSessionMiddleware(wsgi_hello, MemorySessionStore(), **options)
    with pytest.raises(ScalekitError, match=message):
        SessionMiddleware(asgi_hello, MemorySessionStore(), **options)


def test_each_middleware_refuses_the_other_kind_of_app() -> None:
    class AsgiApp:
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            pass

    class WsgiApp:
        def __call__(self, environ: Any, start_response: Any) -> Iterable[bytes]:
            return []

    store = MemorySessionStore()
    for app in (wsgi_hello, WsgiApp()):
        with pytest.raises(ConfigurationError, match="WsgiSessionMiddleware"):
            SessionMiddleware(app, store)  # type: ignore[arg-type]
    for asgi_app in (asgi_hello, AsgiApp()):
        with pytest.raises(ConfigurationError, match="wrap it in SessionMiddleware"):
            WsgiSessionMiddleware(asgi_app, store)  # type: ignore[arg-type]


def test_stores_are_checked() -> None:
    class NoBlank:
        def load(self, session_id: str) -> None:
            raise NotImplementedError

        def save(self, session: Session) -> None:
            raise NotImplementedError

        def touch(self, session_id: str) -> bool:
            raise NotImplementedError

        def delete(self, session_id: str) -> None:
            raise NotImplementedError

        def rotate(self, session: Session) -> Session:
            raise NotImplementedError

    class Mixed(NoBlank):
        def blank(self) -> Session:
            raise NotImplementedError

        async def load(self, session_id: str) -> None:  # type: ignore[override]
            raise NotImplementedError

    with pytest.raises(ConfigurationError, match="blank"):
        SessionMiddleware(asgi_hello, NoBlank())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="sync and async"):
        SessionMiddleware(asgi_hello, Mixed())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="a WSGI app needs a sync store"):
        WsgiSessionMiddleware(wsgi_hello, AsyncMemorySessionStore())  # type: ignore[arg-type]


# -- WSGI details ---------------------------------------------------------------------


def test_wsgi_an_error_page_after_start_response_keeps_the_cookie() -> None:
    store = MemorySessionStore()

    def app(environ: Any, start_response: Any) -> Iterable[bytes]:
        environ["scalekit.session"]["user"] = "ada"
        rotate_id(environ)
        start_response("200 OK", [("Content-Type", "text/html")])
        try:
            raise Boom
        except Boom:
            start_response("500 Error", [("Content-Type", "text/plain")], sys.exc_info())
        return [b"error"]

    calls: list[tuple[str, list[tuple[str, str]], Any]] = []
    environ: dict[str, Any] = {}
    setup_testing_defaults(environ)

    def start_response(
        status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], object]:
        calls.append((status, headers, exc_info))
        return write

    WsgiSessionMiddleware(app, store)(environ, start_response)
    (_, first, none), (status, second, exc_info) = calls
    assert none is None
    assert exc_info is not None
    assert status == "500 Error"
    assert [v for k, v in first if k == "Set-Cookie"] == [v for k, v in second if k == "Set-Cookie"]
    assert len([v for k, v in second if k == "Set-Cookie"]) == 1
    assert len(store) == 1  # saved once


def test_wsgi_passes_the_app_iterable_through() -> None:
    class Body:
        closed = False

        def __iter__(self) -> Any:
            return iter([b"a", b"b"])

        def close(self) -> None:
            self.closed = True

    body = Body()

    def app(environ: Any, start_response: Any) -> Body:
        start_response("200 OK", [])
        return body

    environ: dict[str, Any] = {}
    setup_testing_defaults(environ)
    result = WsgiSessionMiddleware(app, MemorySessionStore())(environ, ignore_start)
    assert result is body  # close() reaches the app through the server


def test_wsgi_requests_on_many_threads() -> None:
    store = MemorySessionStore()
    session = store.create({})

    def app(environ: Any, start_response: Any) -> Iterable[bytes]:
        name = threading.current_thread().name
        environ["scalekit.session"][name] = True
        start_response("200 OK", [])
        return [b""]

    middleware = WsgiSessionMiddleware(app, store)

    def worker() -> None:
        for _ in range(20):
            environ: dict[str, Any] = {"HTTP_COOKIE": f"session={session.id}"}
            setup_testing_defaults(environ)
            middleware(environ, ignore_start)

    threads = [threading.Thread(target=worker, name=f"t{i}") for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stored = store.load(session.id)
    assert stored is not None
    assert sorted(stored) == [f"t{i}" for i in range(8)]  # merged, none lost


# -- ASGI details ---------------------------------------------------------------------


class RecordingStore(MemorySessionStore):
    """Records its calls, with the thread each ran on."""

    def __init__(self, log: list[str], **settings: Any) -> None:
        super().__init__(**settings)
        self.log = log
        self.threads: set[int] = set()

    def _note(self, what: str) -> None:
        self.log.append(what)
        self.threads.add(threading.get_ident())

    def load(self, session_id: str) -> Session | None:
        self._note("load")
        return super().load(session_id)

    def save(self, session: Session) -> None:
        self._note("save")
        super().save(session)

    def touch(self, session_id: str) -> bool:
        self._note("touch")
        return super().touch(session_id)


def test_asgi_saves_before_the_response_starts_on_a_worker_thread() -> None:
    log: list[str] = []
    store = RecordingStore(log)
    session = store.create({})
    app_start: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        scope["session"]["user"] = "ada"
        rotate_id(scope)
        app_start.update(type="http.response.start", status=200, headers=[(b"x-app", b"1")])
        await send(app_start)
        log.append("app resumed")
        await send({"type": "http.response.body", "body": b"hi"})

    sent: list[Any] = []

    async def receive() -> Any:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        log.append(message["type"])
        sent.append(message)

    loop_thread = threading.get_ident()
    scope = http_scope(headers=[(b"cookie", f"session={session.id}".encode())])
    asyncio.run(SessionMiddleware(app, store)(scope, receive, send))
    assert log == ["load", "http.response.start", "app resumed", "http.response.body"]
    assert loop_thread not in store.threads  # the sync store ran off the event loop
    assert store.load(session.id) is None  # rotated before the response started
    start = sent[0]
    assert start["headers"][0] == (b"x-app", b"1")
    assert start["headers"][1][0] == b"set-cookie"
    assert app_start["headers"] == [(b"x-app", b"1")]  # the app's message is left alone
    assert "session" not in scope  # the scope was copied, not changed


def test_asgi_touches_an_unchanged_session() -> None:
    log: list[str] = []
    store = RecordingStore(log)
    session = store.create({"user": "ada"})
    scope = http_scope(headers=[(b"cookie", f"session={session.id}".encode())])
    asgi_request(SessionMiddleware(asgi_hello, store), scope)
    assert log == ["load", "touch"]


def test_asgi_several_cookie_headers_are_joined() -> None:
    store = MemorySessionStore()
    session = store.create({"user": "ada"})
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(dict(scope["session"]))
        await asgi_hello(scope, receive, send)

    headers = [(b"cookie", b"a=1"), (b"cookie", f"session={session.id}; b=2".encode())]
    asgi_request(SessionMiddleware(app, store), http_scope(headers=headers))
    assert seen == [{"user": "ada"}]


def test_asgi_lifespan_passes_through_untouched() -> None:
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.extend([scope, receive, send])

    async def receive() -> Any:
        return {"type": "lifespan.startup"}

    async def send(message: Any) -> None:
        pass

    scope = {"type": "lifespan", "asgi": {"version": "3.0"}}
    asyncio.run(SessionMiddleware(app, MemorySessionStore())(scope, receive, send))
    assert seen == [scope, receive, send]
    assert seen[0] is scope
    assert "session" not in scope


@pytest.mark.parametrize("asynchronous", [False, True])
def test_asgi_websockets_get_the_session_read_only(asynchronous: bool) -> None:
    clock = FakeClock(START)
    store: Any = (
        AsyncMemorySessionStore(clock=clock) if asynchronous else MemorySessionStore(clock=clock)
    )
    view = store._sync if asynchronous else store
    session = view.create({"user": "ada"})
    corrupt_id = corrupt(view)
    clock.advance(100)
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append((dict(scope["session"]), send))
        with pytest.raises(TypeError):
            scope["session"]["user"] = "mallory"
        with pytest.raises(ConfigurationError, match="read-only"):
            logout(scope)
        with pytest.raises(ConfigurationError, match="read-only"):
            rotate_id(scope)
        await send({"type": "websocket.close", "code": 1000})

    async def receive() -> Any:
        return {"type": "websocket.connect"}

    async def send(message: Any) -> None:
        pass

    middleware = SessionMiddleware(app, store)
    for session_id in (session.id, corrupt_id, None):
        headers = [] if session_id is None else [(b"cookie", f"session={session_id}".encode())]
        scope = {"type": "websocket", "path": "/ws", "headers": headers}
        asyncio.run(middleware(scope, receive, send))
    assert [data for data, _ in seen] == [{"user": "ada"}, {}, {}]
    assert all(wrapped is send for _, wrapped in seen)  # send is not wrapped
    stored = view.load(session.id)
    assert stored.version == session.version
    assert stored.accessed_at == START  # not even touched


def test_asgi_an_app_that_never_responds_saves_nothing() -> None:
    store = MemorySessionStore()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        scope["session"]["user"] = "ada"

    assert asgi_request(SessionMiddleware(app, store), http_scope()) == []
    assert len(store) == 0


def test_asgi_with_a_real_async_redis_store(redis_url: str) -> None:
    redis_asyncio = pytest.importorskip("redis.asyncio")
    from scalekit.sessions._redis import AsyncRedisSessionStore

    async def scenario() -> None:
        client = redis_asyncio.Redis.from_url(redis_url)
        prefix = f"scalekit-test:middleware:{new_id()[:8]}:"
        store = AsyncRedisSessionStore(client, prefix=prefix)
        try:
            harness = Harness("asgi-async-store")
            harness.store = store
            middleware = SessionMiddleware(harness.asgi_app, store)
            sent: list[Any] = []

            async def receive() -> Any:
                return {"type": "http.request", "body": b""}

            async def send(message: Any) -> None:
                sent.append(message)

            await middleware(http_scope("/set", "cart=book"), receive, send)
            cookie = dict(sent[0]["headers"])[b"set-cookie"].split(b";")[0]
            session_id = cookie.partition(b"=")[2].decode()
            sent.clear()
            headers = [(b"cookie", cookie)]
            await middleware(http_scope("/login", "", headers), receive, send)
            new_cookie = dict(sent[0]["headers"])[b"set-cookie"].split(b";")[0]
            assert await store.load(session_id) is None
            rotated = await store.load(new_cookie.partition(b"=")[2].decode())
            assert rotated is not None
            assert rotated.to_dict() == {"cart": "book", "user": "ada"}
            await store.delete(rotated.id)
        finally:
            await client.aclose()

    asyncio.run(scenario())


# -- Starlette -------------------------------------------------------------------------


# Starlette 1.x prefers httpx2 (Python 3.11+) for its TestClient; httpx works on 3.10 too.
@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient` is deprecated")
def test_starlette_app_end_to_end() -> None:
    pytest.importorskip("starlette")
    pytest.importorskip("httpx")
    pytest.importorskip("itsdangerous")
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route, WebSocketRoute
    from starlette.testclient import TestClient
    from starlette.websockets import WebSocket

    async def whoami(request: Request) -> JSONResponse:
        return JSONResponse({"user": request.session.get("user")})

    async def login(request: Request) -> JSONResponse:
        request.session["user"] = request.query_params["user"]
        rotate_id(request)
        return JSONResponse({"ok": True})

    async def do_logout(request: Request) -> JSONResponse:
        logout(request)
        return JSONResponse({"ok": True})

    async def socket(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_json({"user": websocket.session.get("user")})
        await websocket.close()

    store = AsyncMemorySessionStore()
    app = Starlette(
        routes=[
            Route("/", whoami),
            Route("/login", login, methods=["POST"]),
            Route("/logout", do_logout, methods=["POST"]),
            WebSocketRoute("/ws", socket),
        ]
    )
    app.add_middleware(SessionMiddleware, store=store, secret_key="k", cookie_name="sid")
    with TestClient(app, base_url="https://testserver") as client:
        assert client.get("/").json() == {"user": None}
        assert "sid" not in client.cookies
        response = client.post("/login?user=ada")
        set_cookie = response.headers["set-cookie"]
        assert "HttpOnly" in set_cookie
        assert "Secure" in set_cookie
        assert "SameSite=Lax" in set_cookie
        assert client.get("/").json() == {"user": "ada"}
        assert "set-cookie" not in client.get("/").headers
        with client.websocket_connect("wss://testserver/ws") as websocket:
            assert websocket.receive_json() == {"user": "ada"}
        client.post("/logout")
        assert "sid" not in client.cookies
        assert client.get("/").json() == {"user": None}
