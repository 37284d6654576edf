"""Session middleware for ASGI and WSGI apps: the cookie carries an id, the store the rest.

:class:`SessionMiddleware` (ASGI: Starlette, FastAPI, any ASGI 3 app) and
:class:`WsgiSessionMiddleware` (Flask, any WSGI app) give each request a
:class:`~scalekit.sessions.Session` from a shared store, so that any server behind
the balancer can serve any request. Per HTTP request:

1. The ``Cookie`` header names a session id, and the cookie holds nothing else. With
   ``secret_key`` the id is signed (HMAC-SHA256, by itsdangerous). The session is
   loaded from the store. With no cookie, or an id that is unknown, expired,
   malformed or badly signed, the request gets ``store.blank()`` instead: a new,
   empty session that costs the store nothing unless the app puts data in it.
2. The app reads and writes the session as ``scope["session"]``, where Starlette's
   ``request.session`` finds it, or as ``environ["scalekit.session"]``.
3. When the app starts its response, and before the headers go out, the session is
   saved if the app changed it, and only touched otherwise (its idle expiry moves
   forward; its data is not rewritten).
4. A ``Set-Cookie`` header is added only when the id is new or changed: the first
   save, :func:`rotate_id`, :func:`logout`, or a cookie that names no live session
   (that cookie is expired).

The cookie is always ``HttpOnly``. It is ``Secure`` and ``SameSite=Lax`` unless
configured otherwise. Its ``Max-Age`` follows the store's timeouts, so the cookie
never expires before the session does:

- A store with an ``absolute_timeout`` (the default: 12 hours): the cookie lives
  until the session's absolute expiry. The store enforces the sliding idle expiry.
  The browser cannot slide the cookie by itself, so an idle-timeout ``Max-Age``
  sent only at login would drop an active user's cookie ``idle_timeout`` seconds
  after login.
- A store with an ``idle_timeout`` only: ``Max-Age`` is the idle timeout, and the
  cookie is re-sent with each response that extended the session.
- A store with neither, or one without ``settings``: no ``Max-Age``, so the cookie
  lasts until the browser closes.

Errors. :class:`~scalekit.errors.SessionCorrupted` from loading (a stored record
that is not ours) is logged on the ``scalekit.sessions`` logger, and the request
gets a fresh session. Errors from saving propagate out of the app's call that
starts the response (``send`` or ``start_response``), so the server answers 500
and no response claims a save that did not happen. Those errors are
:class:`~scalekit.errors.SessionConflict` (another request changed the same key at
once, or deleted the session), :class:`~scalekit.errors.SessionTooLarge`,
``TypeError`` for data that is not JSON, and
:class:`~scalekit.errors.BackendError`. A store that fails to load
(``BackendError``) fails the request too: an outage is not "no session". A
request that fails before it starts its response saves nothing.

Logs and messages show only the first 8 characters of an id, because a whole id
is a credential.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import math
import re
import time
import types
from collections.abc import (
    Callable,
    Generator,
    Iterable,
    Mapping,
    Sequence,
)
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from scalekit._asgi import ASGIApp, Message, Receive, Scope, Send
from scalekit._validate import check_bool, check_str
from scalekit.errors import ClosedError, ConfigurationError, SessionCorrupted
from scalekit.sessions._core import run, run_async
from scalekit.sessions._session import Session, valid_id

if TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from scalekit.sessions._store import AsyncSessionStore, SessionStore

__all__ = ["SessionMiddleware", "WsgiSessionMiddleware", "logout", "rotate_id"]

logger = logging.getLogger("scalekit.sessions")


_ENVIRON_KEY = "scalekit.session"  # where the session goes in a WSGI environ
_STATE = "scalekit.session.state"  # the request's _State, in the scope or environ
_SALT = "scalekit.sessions.cookie"
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")  # a cookie name (RFC 6265, RFC 9110)
_UNSAFE = re.compile(r"[\x00-\x20;,\x7f]")  # nothing that could end or split an attribute
_SAMESITE = {"lax": "Lax", "strict": "Strict", "none": "None"}
_EPOCH = "Thu, 01 Jan 1970 00:00:00 GMT"
_STORE_METHODS = ("load", "save", "touch", "delete", "rotate")

_R = TypeVar("_R")
_Op = tuple[str, object]  # a store call the core asks its shell to make: (method, argument)
_Flow = Generator[_Op, Any, _R]


# -- the cookie ----------------------------------------------------------------


class _Cookie:
    """The cookie's name, attributes and (optional) signature; no I/O."""

    __slots__ = ("_attributes", "_signer", "expired", "name")

    def __init__(
        self,
        name: str,
        *,
        secure: bool,
        httponly: bool,
        samesite: str | None,
        path: str,
        domain: str | None,
        secret_key: str | bytes | Sequence[str | bytes] | None,
    ) -> None:
        check_str(name, "cookie_name")
        check_str(path, "path")
        if domain is not None:
            check_str(domain, "domain")
        if not _TOKEN.match(name):
            raise ConfigurationError(f"cookie_name must be a cookie token, got {name!r}")
        if httponly is not True:
            raise ConfigurationError(
                "httponly is always True: the cookie holds a session id, which scripts "
                "never need and an XSS attack would steal"
            )
        check_bool(secure, "secure")
        if samesite is not None:
            check_str(samesite, "samesite")
        same = _SAMESITE.get(samesite.lower()) if isinstance(samesite, str) else None
        if samesite is not None and same is None:
            raise ConfigurationError(
                f"samesite is 'lax', 'strict', 'none' or None, got {samesite!r}"
            )
        if same == "None" and not secure:
            raise ConfigurationError("samesite='none' needs secure=True (browsers refuse it)")
        if not path.startswith("/") or not path.isascii() or _UNSAFE.search(path):
            raise ConfigurationError(f"path must start with '/' and hold no ';', got {path!r}")
        if domain is not None and (not domain.isascii() or _UNSAFE.search(domain)):
            raise ConfigurationError(f"domain must be a host name or None, got {domain!r}")
        if name.startswith("__Host-") and (not secure or path != "/" or domain is not None):
            raise ConfigurationError("a __Host- cookie needs secure=True, path='/' and domain=None")
        if name.startswith("__Secure-") and not secure:
            raise ConfigurationError("a __Secure- cookie needs secure=True")
        self.name = name
        self._signer = None if secret_key is None else _signer(secret_key)
        attributes = f"; Path={path}"
        if domain is not None:
            attributes += f"; Domain={domain}"
        attributes += "; HttpOnly"
        if secure:
            attributes += "; Secure"
        if same is not None:
            attributes += f"; SameSite={same}"
        self._attributes = attributes
        self.expired = f"{name}=; Max-Age=0; Expires={_EPOCH}{attributes}"

    def read(self, header: str) -> tuple[str | None, bool]:
        """``(the session id the Cookie header names, or None; whether the cookie was
        there at all)``. The first value that is well formed (and well signed) wins."""
        present = False
        for part in header.split(";"):
            key, sep, value = part.partition("=")
            if not sep or key.strip() != self.name:
                continue
            present = True
            value = value.strip()
            if len(value) > 1 and value[0] == value[-1] == '"':
                value = value[1:-1]
            session_id = self._unsign(value)
            if session_id is not None and valid_id(session_id):
                return session_id, True
        return None, present

    def _unsign(self, value: str) -> str | None:
        if self._signer is None:
            return value
        try:
            raw: bytes = self._signer.unsign(value)
            return raw.decode("ascii")
        except Exception:  # BadSignature, or not ASCII: no session either way
            return None

    def set(self, session_id: str, max_age: int | None) -> str:
        """The ``Set-Cookie`` value that gives the browser ``session_id``."""
        value = session_id if self._signer is None else self._signer.sign(session_id).decode()
        lifetime = "" if max_age is None else f"; Max-Age={max_age}"
        return f"{self.name}={value}{lifetime}{self._attributes}"


def _signer(secret_key: str | bytes | Sequence[str | bytes]) -> Any:
    """An itsdangerous ``Signer``: HMAC-SHA256, the last key signs, every key verifies."""
    try:
        import itsdangerous  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        raise ConfigurationError(
            "signed session cookies (secret_key=...) need itsdangerous: pip install itsdangerous"
        ) from None
    keys = [secret_key] if isinstance(secret_key, (str, bytes)) else list(secret_key)
    encoded = [key.encode() if isinstance(key, str) else key for key in keys]
    if not encoded or not all(isinstance(key, bytes) and key for key in encoded):
        raise ConfigurationError(
            "secret_key is a non-empty str or bytes, or a list of them (the last one signs)"
        )
    return itsdangerous.Signer(
        encoded, salt=_SALT, key_derivation="hmac", digest_method=hashlib.sha256
    )


# -- one request's session, and the logic sync and async shells share -------------


class _State:
    """One request's session and what the app asked of it."""

    __slots__ = ("cookie_id", "finished", "had_cookie", "logout", "read_only", "rotate", "session")

    def __init__(self, session: Session, cookie_id: str | None, had_cookie: bool) -> None:
        self.session = session
        self.cookie_id = cookie_id  # the id the request's cookie named, if well formed
        self.had_cookie = had_cookie  # whether there was a cookie of ours at all
        self.logout = False
        self.rotate = False
        self.finished = False
        self.read_only = False


class _Core:
    """What both middlewares do, free of I/O.

    :meth:`begin` and :meth:`finish` are generators. Each yields the store calls it
    needs as ``(method, argument)`` and receives the results, so one copy of the
    logic serves three shells: direct calls (WSGI), awaited calls (ASGI with an
    async store), and calls on a worker thread (ASGI with a sync store).
    """

    __slots__ = ("_absolute", "_blank", "_clock", "_idle", "asynchronous", "cookie", "rolling")

    def __init__(self, store: object, cookie: _Cookie) -> None:
        blank = getattr(store, "blank", None)
        if not callable(blank):
            raise ConfigurationError(
                f"the store needs blank() (a SessionStoreBase has it), got {type(store).__name__}"
            )
        kinds = {inspect.iscoroutinefunction(getattr(store, name, None)) for name in _STORE_METHODS}
        missing = [name for name in _STORE_METHODS if not callable(getattr(store, name, None))]
        if missing or len(kinds) != 1:
            raise ConfigurationError(
                f"the store must be a SessionStore or an AsyncSessionStore, got "
                f"{type(store).__name__}"
                + (f" (no {', '.join(missing)})" if missing else " (sync and async methods)")
            )
        self.asynchronous = kinds == {True}
        self._blank: Callable[[], Session] = blank
        self.cookie = cookie
        settings = getattr(store, "settings", None)
        self._idle: float | None = getattr(settings, "idle_timeout", None)
        self._absolute: float | None = getattr(settings, "absolute_timeout", None)
        self._clock: Callable[[], float] = getattr(settings, "clock", time.time)
        # A sliding idle expiry with no absolute one: the cookie must slide too.
        self.rolling = self._absolute is None and self._idle is not None

    def begin(self, cookie_header: str) -> _Flow[_State]:
        """The request's session: the one its cookie names, or a blank one."""
        session_id, had_cookie = self.cookie.read(cookie_header)
        session: Session | None = None
        if session_id is not None:
            try:
                session = yield ("load", session_id)
            except SessionCorrupted as exc:
                logger.warning(
                    "session %s...: the stored record is corrupt (%s); "
                    "the request gets a fresh session",
                    session_id[:8],
                    exc,
                )
        if session is None:
            session = self._blank()
        return _State(session, session_id, had_cookie)

    def finish(self, state: _State) -> _Flow[str | None]:
        """Store what the request did to its session; the ``Set-Cookie`` value to
        send, if any."""
        if state.finished:
            raise ClosedError("the session of this request was already saved")
        state.finished = True
        session = state.session
        if state.logout:
            if not session.is_new:
                yield ("delete", session.id)
            # Whatever the app put in the session after logout() (a flash message)
            # goes into a new session; nothing of the old one survives.
            data = session.to_dict()
            session = state.session = self._blank()
            session.update(data)
        extended = True
        if state.rotate and not session.is_new:
            yield ("rotate", session)  # a new session's id is fresh already: just save
        elif session.is_new or session.modified:
            yield ("save", session)  # stores a blank session only if it has data
        else:
            extended = bool((yield ("touch", session.id)))
        if session.is_new or not extended:  # nothing stored, or deleted meanwhile
            return self.cookie.expired if state.had_cookie else None
        if session.id != state.cookie_id or self.rolling:
            return self.cookie.set(session.id, self._max_age(session))
        return None

    def _max_age(self, session: Session) -> int | None:
        if self._absolute is not None:
            left = session.created_at + self._absolute - self._clock()
            return max(0, math.ceil(left))
        if self._idle is not None:
            return math.ceil(self._idle)
        return None


def _options(
    store: object,
    *,
    cookie_name: str,
    secure: bool,
    httponly: bool,
    samesite: str | None,
    path: str,
    domain: str | None,
    secret_key: str | bytes | Sequence[str | bytes] | None,
) -> _Core:
    cookie = _Cookie(
        cookie_name,
        secure=secure,
        httponly=httponly,
        samesite=samesite,
        path=path,
        domain=domain,
        secret_key=secret_key,
    )
    return _Core(store, cookie)


def _positional_parameters(app: object) -> int | None:
    """How many positional arguments ``app`` takes, or None if that is not known."""
    try:
        signature = inspect.signature(app)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    count = 0
    for parameter in signature.parameters.values():
        if parameter.kind is parameter.VAR_POSITIONAL:
            return None
        if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD):
            count += 1
    return count


def _is_async_callable(app: Any) -> bool:
    return inspect.iscoroutinefunction(app) or (
        callable(app) and inspect.iscoroutinefunction(app.__call__)
    )


# -- ASGI ----------------------------------------------------------------------


class SessionMiddleware:
    """ASGI middleware that gives each HTTP request a session from ``store``:
    ``scope["session"]``, which Starlette's ``request.session`` reads.

    ``store`` is a :class:`~scalekit.sessions.SessionStore`, called on a worker
    thread (``asyncio.to_thread``) so the event loop never blocks on it, or an
    :class:`~scalekit.sessions.AsyncSessionStore`, awaited. It needs ``blank()``,
    which every store of this library has.

    Cookie options:

    - ``cookie_name``: the cookie's name. Name it ``"__Host-session"`` to stop a
      sibling subdomain from planting a cookie.
    - ``secure``: ``Secure``, sent over HTTPS only. Set it to False for plain-HTTP
      development only.
    - ``httponly``: always True.
    - ``samesite``: ``"lax"``, ``"strict"``, ``"none"`` (needs ``secure``) or None
      (no attribute).
    - ``path`` and ``domain``: the cookie's scope.
    - ``secret_key``: sign the cookie with itsdangerous (an optional dependency).
      An unsigned or tampered cookie then counts as no session, without a store
      lookup. A list of keys rotates them: the last one signs, and every one
      verifies.

    :func:`rotate_id` (on login) and :func:`logout` take the request, or its scope.
    Errors and the cookie's ``Max-Age`` are described in
    :mod:`scalekit.sessions._middleware`.

    ASGI details:

    - ``send`` is wrapped. The first ``http.response.start`` first saves or touches
      the session, then goes out with the ``Set-Cookie`` header added (into a copy
      of the message; the app's message is left alone). So the session is stored
      before the client can see the response. A save error is raised from the
      app's ``await send(...)``, and the response does not start.
    - Changes made after the response started are not saved: those made while
      streaming the body, or in background tasks that run after the response.
      :func:`rotate_id` and :func:`logout` raise
      :class:`~scalekit.errors.ClosedError` then.
    - The scope is copied before ``"session"`` is set (as the ASGI spec asks), so
      outer middleware never sees it.
    - ``lifespan`` (and any other scope type) passes through untouched: there is no
      cookie and no session.
    - A ``websocket`` scope gets the session read-only: ``scope["session"]`` is a
      read-only mapping of its data, loaded at the handshake. Nothing is written,
      not even a touch. The handshake's response has no place for a cookie once
      the app has accepted, and a save after hours of a connection would conflict
      with the HTTP requests made meanwhile. A socket is authenticated by the
      session its page logged in with, and logout and login go through HTTP.
    - Every HTTP request loads its session before the app runs, even one that never
      reads it. A request with no cookie costs the store nothing. Mount static
      files outside this middleware, so their requests cost no load and no touch.

    A full round trip, with a hand-rolled ASGI server:

    >>> import asyncio
    >>> from scalekit.sessions import MemorySessionStore, SessionMiddleware
    >>> async def app(scope, receive, send):
    ...     session = scope["session"]
    ...     session["visits"] = session.get("visits", 0) + 1
    ...     body = f"visit {session['visits']}".encode()
    ...     await send({"type": "http.response.start", "status": 200, "headers": []})
    ...     await send({"type": "http.response.body", "body": body})
    >>> store = MemorySessionStore()
    >>> wrapped = SessionMiddleware(app, store, secure=False)
    >>> def get(cookie=None):
    ...     sent = []
    ...     async def receive():
    ...         return {"type": "http.request", "body": b""}
    ...     async def send(message):
    ...         sent.append(message)
    ...     headers = [] if cookie is None else [(b"cookie", cookie)]
    ...     scope = {"type": "http", "method": "GET", "path": "/", "headers": headers}
    ...     asyncio.run(wrapped(scope, receive, send))
    ...     return dict(sent[0]["headers"]), sent[1]["body"]
    >>> headers, body = get()
    >>> body, headers[b"set-cookie"]
    (b'visit 1', b'session=...; Max-Age=43200; Path=/; HttpOnly; SameSite=Lax')
    >>> cookie = headers[b"set-cookie"].split(b";")[0]
    >>> get(cookie)  # saved again, same id: no Set-Cookie
    ({}, b'visit 2')

    With Starlette (the middleware reads the scope only)::

        app = Starlette(routes=routes)
        app.add_middleware(SessionMiddleware, store=store, secret_key=keys)

        async def login(request):
            request.session["user"] = user_id   # after checking the password
            rotate_id(request)                  # a new id when the response starts
    """

    def __init__(
        self,
        app: ASGIApp,
        store: SessionStore | AsyncSessionStore,
        *,
        cookie_name: str = "session",
        secure: bool = True,
        httponly: Literal[True] = True,
        samesite: Literal["lax", "strict", "none"] | None = "lax",
        path: str = "/",
        domain: str | None = None,
        secret_key: str | bytes | Sequence[str | bytes] | None = None,
    ) -> None:
        if not _is_async_callable(app) and _positional_parameters(app) == 2:
            raise ConfigurationError(
                "this looks like a WSGI app (it takes environ, start_response): "
                "wrap it in WsgiSessionMiddleware"
            )
        self.app = app
        self.store = store
        self._core = _options(
            store,
            cookie_name=cookie_name,
            secure=secure,
            httponly=httponly,
            samesite=samesite,
            path=path,
            domain=domain,
            secret_key=secret_key,
        )
        self._on_thread = not self._core.asynchronous

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket":
            await self._websocket(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _begin(self, scope: Scope) -> _State:
        cookies = [value for key, value in scope.get("headers", ()) if key == b"cookie"]
        header = "; ".join(value.decode("latin-1") for value in cookies)
        return await run_async(self._core.begin(header), self.store, on_thread=self._on_thread)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = await self._begin(scope)
        scope = dict(scope)
        scope["session"] = state.session
        scope[_STATE] = state
        core, store, on_thread = self._core, self.store, self._on_thread

        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start" and not state.finished:
                cookie = await run_async(core.finish(state), store, on_thread=on_thread)
                if cookie is not None:
                    message = dict(message)
                    message["headers"] = [
                        *message.get("headers", ()),
                        (b"set-cookie", cookie.encode("latin-1")),
                    ]
            await send(message)

        await self.app(scope, receive, send_with_cookie)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = await self._begin(scope)
        state.read_only = True
        scope = dict(scope)
        scope["session"] = types.MappingProxyType(state.session.to_dict())
        scope[_STATE] = state
        await self.app(scope, receive, send)


# -- WSGI ----------------------------------------------------------------------


class WsgiSessionMiddleware:
    """WSGI middleware that gives each request a session from ``store`` (a sync
    :class:`~scalekit.sessions.SessionStore`): ``environ["scalekit.session"]``.

    The options, errors and cookie rules are :class:`SessionMiddleware`'s. WSGI
    details:

    - ``start_response`` is wrapped. Its first call saves or touches the session,
      then passes the headers on with ``Set-Cookie`` added. A save error is raised
      from the app's ``start_response(...)`` call. A later call with ``exc_info``
      (an error page replacing the response) carries the same cookie again, so a
      rotated id is never lost.
    - The response body is passed through untouched. Changes made while it streams
      are not saved.
    - It is thread-safe: every request's state lives in its environ.

    Why two classes and not one: a server decides how to call an app by looking at
    it. uvicorn and hypercorn check whether ``__call__`` is a coroutine function,
    and a WSGI server calls it and expects an iterable. So one object cannot be
    both, and ``SessionMiddleware(flask_app, store)`` could only return an object
    of another class, which type checkers and ``isinstance`` would get wrong.
    Each class instead refuses the other kind of app when it is built.

    With Flask (views reach the session through ``request.environ``)::

        app = Flask(__name__)
        app.wsgi_app = WsgiSessionMiddleware(app.wsgi_app, store, secret_key=keys)

        @app.post("/login")
        def login():
            request.environ["scalekit.session"]["user"] = user_id
            rotate_id(request)
            return "welcome"

    A full round trip, with a hand-built environ:

    >>> from wsgiref.util import setup_testing_defaults
    >>> from scalekit.sessions import MemorySessionStore, WsgiSessionMiddleware, rotate_id
    >>> def app(environ, start_response):
    ...     session = environ["scalekit.session"]
    ...     if environ["PATH_INFO"] == "/login":
    ...         session["user"] = "ada"
    ...         rotate_id(environ)  # a new id, and the old one dies, at login
    ...     start_response("200 OK", [("Content-Type", "text/plain")])
    ...     return [f"user={session.get('user')}".encode()]
    >>> store = MemorySessionStore()
    >>> wrapped = WsgiSessionMiddleware(app, store, secure=False)
    >>> def get(path, cookie=None):
    ...     environ = {"PATH_INFO": path}
    ...     if cookie:
    ...         environ["HTTP_COOKIE"] = cookie
    ...     setup_testing_defaults(environ)
    ...     started = []
    ...     body = wrapped(environ, lambda status, headers: started.append(headers))
    ...     return dict(started[0]).get("Set-Cookie"), b"".join(body)
    >>> get("/")  # an anonymous visit stores nothing and sets no cookie
    (None, b'user=None')
    >>> cookie, body = get("/login")
    >>> cookie
    'session=...; Max-Age=43200; Path=/; HttpOnly; SameSite=Lax'
    >>> get("/", cookie.split(";")[0])
    (None, b'user=ada')
    """

    def __init__(
        self,
        app: WSGIApplication,
        store: SessionStore,
        *,
        cookie_name: str = "session",
        secure: bool = True,
        httponly: Literal[True] = True,
        samesite: Literal["lax", "strict", "none"] | None = "lax",
        path: str = "/",
        domain: str | None = None,
        secret_key: str | bytes | Sequence[str | bytes] | None = None,
    ) -> None:
        if _is_async_callable(app):
            raise ConfigurationError(
                "this is an ASGI app (its __call__ is async): wrap it in SessionMiddleware"
            )
        self.app = app
        self.store = store
        self._core = _options(
            store,
            cookie_name=cookie_name,
            secure=secure,
            httponly=httponly,
            samesite=samesite,
            path=path,
            domain=domain,
            secret_key=secret_key,
        )
        if self._core.asynchronous:
            raise ConfigurationError(
                "a WSGI app needs a sync store (RedisSessionStore, not AsyncRedisSessionStore)"
            )

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        core, store = self._core, self.store
        state = run(core.begin(environ.get("HTTP_COOKIE", "")), store)
        environ[_ENVIRON_KEY] = state.session
        environ[_STATE] = state
        extra: list[tuple[str, str]] = []

        def start_with_cookie(
            status: str, headers: list[tuple[str, str]], exc_info: OptExcInfo | None = None
        ) -> Callable[[bytes], object]:
            if not state.finished:
                cookie = run(core.finish(state), store)
                if cookie is not None:
                    extra.append(("Set-Cookie", cookie))
            headers = [*headers, *extra]
            if exc_info is None:
                return start_response(status, headers)
            return start_response(status, headers, exc_info)

        return self.app(environ, start_with_cookie)


# -- what apps call --------------------------------------------------------------


def _state_of(request: object) -> _State:
    """The session state of ``request``: a Starlette request or websocket (its
    ``.scope``), a Werkzeug/Flask request (its ``.environ``), a scope or an environ."""
    where: object = request
    for name in ("scope", "environ"):
        inner = getattr(request, name, None)
        if isinstance(inner, Mapping):
            where = inner
            break
    state = where.get(_STATE) if isinstance(where, Mapping) else None
    if not isinstance(state, _State):
        raise ConfigurationError(
            "no session here: wrap the app in SessionMiddleware or WsgiSessionMiddleware, "
            "and pass the request, its ASGI scope or its WSGI environ"
        )
    if state.read_only:
        raise ConfigurationError(
            "the session of a websocket is read-only: log in and out over HTTP"
        )
    if state.finished:
        raise ClosedError("the response has started: the session of this request was already saved")
    return state


def rotate_id(request: object) -> None:
    """Give the session of ``request`` a new id when its response starts, with the
    old id deleted from the store in the same atomic step (``store.rotate``), and
    send the new cookie. Call it at login, and on any change of privilege: an id
    that an attacker planted in the browser before login (session fixation) is then
    dead.

    ``request`` is a Starlette ``Request``, a Flask/Werkzeug request, an ASGI scope
    or a WSGI environ. The session keeps its data and this request's changes. A
    session not stored yet gets its id when it is first saved, and that id is
    fresh already. Raises :class:`~scalekit.errors.SessionConflict` (when the
    response starts) if another request changed the session meanwhile;
    :class:`~scalekit.errors.ClosedError` if the response has started.

    >>> from wsgiref.util import setup_testing_defaults
    >>> from scalekit.sessions import MemorySessionStore, WsgiSessionMiddleware, rotate_id
    >>> store = MemorySessionStore()
    >>> planted = store.create({"cart": ["book"]})   # an id the attacker knows
    >>> def login(environ, start_response):
    ...     environ["scalekit.session"]["user"] = "ada"
    ...     rotate_id(environ)
    ...     start_response("200 OK", [])
    ...     return [b"welcome"]
    >>> environ = {"HTTP_COOKIE": f"session={planted.id}"}
    >>> setup_testing_defaults(environ)
    >>> body = WsgiSessionMiddleware(login, store)(environ, lambda status, headers: None)
    >>> store.load(planted.id) is None                # the planted id is dead
    True
    >>> store.load(environ["scalekit.session"].id).to_dict()
    {'cart': ['book'], 'user': 'ada'}
    """
    _state_of(request).rotate = True


def logout(request: object) -> None:
    """End the session of ``request``: its data is cleared now; when the response
    starts, it is deleted from the store and the browser's cookie is expired.

    ``request`` is a Starlette ``Request``, a Flask/Werkzeug request, an ASGI scope
    or a WSGI environ. Data the app puts in the session after calling this (a
    "goodbye" flash message) goes into a new session with a new id, so nothing of
    the old one survives. Raises :class:`~scalekit.errors.ClosedError` if the
    response has started.

    >>> from wsgiref.util import setup_testing_defaults
    >>> from scalekit.sessions import MemorySessionStore, WsgiSessionMiddleware, logout
    >>> store = MemorySessionStore()
    >>> session = store.create({"user": "ada"})
    >>> def app(environ, start_response):
    ...     logout(environ)
    ...     start_response("200 OK", [])
    ...     return [b"bye"]
    >>> environ = {"HTTP_COOKIE": f"session={session.id}"}
    >>> setup_testing_defaults(environ)
    >>> headers = []
    >>> body = WsgiSessionMiddleware(app, store)(environ, lambda s, h: headers.extend(h))
    >>> headers
    [('Set-Cookie', 'session=; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Path=/; ...')]
    >>> store.load(session.id) is None
    True
    """
    state = _state_of(request)
    state.logout = True
    state.session.clear()
