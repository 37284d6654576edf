"""Carry the read-your-writes token between requests, and between app servers.

:class:`ReplicaRouterMiddleware` (ASGI: Starlette, FastAPI, any ASGI 3 app) and
:class:`ReplicaRouterWSGIMiddleware` (Flask, any WSGI app) do, per HTTP request:

1. Read the token of the user's last write from a cookie (or a request header),
   verify its signature when a ``secret_key`` is set, and start a fresh
   read-your-writes scope of the router from it: reads wait for a replica that
   has replayed it, or go to the primary.
2. Run the app in that scope. The scope holds one mutable record for the request,
   so a write made in a context copied from the request's (a Starlette sync
   endpoint runs in a thread pool with a copy; ``BaseHTTPMiddleware`` runs the rest
   of the app in a task with a copy) is seen by the middleware.
3. When the response starts, add a ``Set-Cookie`` (or a response header) with the
   newest token, if the request wrote since it began; otherwise nothing.

A token that is malformed, badly signed, or that does not compare with the
router's positions is ignored (logged on the ``scalekit.replication`` logger): the
request starts with no token, as a first visit would; a bad cookie is expired.

Both shells drive one core, :class:`_TokenCarrier`, that does no I/O: it parses the
request's headers into a token and renders the response's headers from the token.

Only HTTP requests get a scope: websocket connections and lifespan events pass
through untouched (a websocket has no response headers to carry a token in).

Limits: a write made after the response has started (while a body streams, in a
background task) reaches no response; the next response of the same user carries
it only if that request writes again. Without ``secret_key`` a client can send any
token: it cannot read stale data by that, but a far-future token sends its own
reads to the primary. Sign the token when clients are not trusted.
"""

from __future__ import annotations

import contextvars
import hashlib
import inspect
import logging
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, TypeVar

from scalekit._asgi import ASGIApp, Message, Receive, Scope, Send
from scalekit._validate import (
    check_bool,
    check_callable,
    check_choice,
    check_count,
    check_name,
    check_str,
    type_name,
)
from scalekit.errors import ArgumentTypeError, ConfigurationError, ScalekitError
from scalekit.replication._router import ReplicaRouter, _Holder

if TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import (
        StartResponse,
        WSGIApplication,  # noqa: F401 - in a string: a base's type argument
        WSGIEnvironment,
    )

__all__ = ["ReplicaRouterMiddleware", "ReplicaRouterWSGIMiddleware"]

_log = logging.getLogger("scalekit.replication")

_App = TypeVar("_App")

_SALT = b"scalekit.replication.token"
_INT_TOKEN = re.compile(r"[0-9]{1,20}")  # a 64-bit position (PostgreSQL's WAL) in digits
_COOKIE_SAFE = re.compile(r"[A-Za-z0-9!#$%&'*+\-.^_`|~:/=?@]{1,1024}")  # RFC 6265 cookie-octets
_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+\-.^_`|~]+")  # an RFC 9110 token
_ATTRIBUTE = re.compile(r"[\x21-\x3a\x3c-\x7e]+")  # a cookie attribute's value: no ";", no CTL


def encode_int_token(token: Any) -> str:
    """The default encoding of a token: an ``int`` (a PostgreSQL WAL position from
    :func:`~scalekit.replication.sqlalchemy.pg_commit_token`) in decimal digits."""
    if isinstance(token, bool) or not isinstance(token, int) or token < 0:
        raise ArgumentTypeError(
            f"the default token encoding takes an int >= 0, got {type_name(token)}: "
            "pass encode_token= and decode_token= for other tokens"
        )
    return str(token)


def decode_int_token(text: str) -> int:
    """The inverse of :func:`encode_int_token`; ``ValueError`` for anything but 1 to
    20 ASCII digits."""
    if _INT_TOKEN.fullmatch(text) is None:
        raise ValueError(f"not a token: {text[:40]!r}")
    return int(text)


class _TokenCarrier:
    """The I/O-free core both middlewares drive: request headers in, token out;
    token in, response headers out."""

    def __init__(
        self,
        router: ReplicaRouter[Any],
        *,
        cookie_name: str | None,
        header_name: str | None,
        secret_key: str | bytes | Sequence[str | bytes] | None,
        max_age: int | None,
        path: str,
        domain: str | None,
        secure: bool,
        samesite: Literal["lax", "strict", "none"] | None,
        encode_token: Callable[[Any], str] | None,
        decode_token: Callable[[str], Any] | None,
    ) -> None:
        if not isinstance(router, ReplicaRouter):
            raise ArgumentTypeError(f"router must be a ReplicaRouter, got {type_name(router)}")
        if cookie_name is None and header_name is None:
            raise ConfigurationError("cookie_name and header_name are both None: nothing carries")
        if cookie_name is not None:
            check_name(cookie_name, "cookie_name")
            if _HEADER_NAME.fullmatch(cookie_name) is None:
                raise ConfigurationError(f"cookie_name must be a cookie name, got {cookie_name!r}")
        if header_name is not None:
            check_name(header_name, "header_name")
            if _HEADER_NAME.fullmatch(header_name) is None:
                raise ConfigurationError(f"header_name must be a header name, got {header_name!r}")
        if max_age is not None:
            max_age = check_count(max_age, "max_age", minimum=1)
        check_str(path, "path")
        if not path.startswith("/") or _ATTRIBUTE.fullmatch(path) is None:
            raise ConfigurationError(f"path must be a URL path without ';' or spaces: {path!r}")
        if domain is not None:
            check_name(domain, "domain")
            if _ATTRIBUTE.fullmatch(domain) is None:
                raise ConfigurationError(f"domain must be a host name: {domain!r}")
        check_bool(secure, "secure")
        check_choice(samesite, "samesite", ("lax", "strict", "none", None))
        if samesite == "none" and not secure:
            raise ConfigurationError('samesite="none" needs secure=True (browsers require it)')
        check_callable(encode_token, "encode_token", allow_none=True)
        check_callable(decode_token, "decode_token", allow_none=True)
        signer = None if secret_key is None else _signer(secret_key)
        self.router = router
        self.cookie_name = cookie_name
        self.header_name = None if header_name is None else header_name.lower()
        self.header_title = header_name or ""  # as given, for the response
        self._signer = signer
        self._encode = encode_int_token if encode_token is None else encode_token
        self._decode = decode_int_token if decode_token is None else decode_token
        attributes = f"; Path={path}"
        if max_age is not None:
            attributes = f"; Max-Age={max_age}" + attributes
        if domain is not None:
            attributes += f"; Domain={domain}"
        if secure:
            attributes += "; Secure"
        attributes += "; HttpOnly"
        if samesite is not None:
            attributes += f"; SameSite={samesite.capitalize()}"
        self._attributes = attributes
        self._expire = f"; Max-Age=0; Path={path}" + (
            "" if domain is None else f"; Domain={domain}"
        )

    # -- requests ----------------------------------------------------------------

    def read(self, cookie_header: str | None, header_value: str | None) -> tuple[Any, bool]:
        """The token a request carries (None: none, or none usable), and whether its
        cookie must be expired (it was malformed or badly signed)."""
        if self.header_name is not None and header_value:
            token = self._parse(header_value, "header")
            if token is not None:
                return token, False
        if self.cookie_name is None or not cookie_header:
            return None, False
        value = _cookie(cookie_header, self.cookie_name)
        if value is None:
            return None, False
        token = self._parse(value, "cookie")
        return token, token is None

    def _parse(self, value: str, where: str) -> Any:
        text = value.strip()
        if self._signer is not None:
            try:
                text = self._signer.unsign(text.encode("latin-1")).decode("ascii")
            except Exception:  # BadSignature, a non-latin-1 or non-ASCII value
                _log.info("ignored a read-your-writes %s with a bad signature", where)
                return None
        try:
            token = self._decode(text)
        except Exception:
            _log.info("ignored a malformed read-your-writes %s: %r", where, text[:40])
            return None
        if token is None:
            return None
        try:
            self.router._check_token(token)
        except (ScalekitError, TypeError, ValueError) as exc:
            _log.warning("ignored a read-your-writes %s the router refuses: %s", where, exc)
            return None
        return token

    def holder(self) -> _Holder:
        """The record of the router's scope just entered in this context."""
        holder = self.router._causality.get()
        assert holder is not None  # scope() always sets one
        return holder

    def begin(self, token: Any) -> _Holder:
        """Enter a fresh scope in the current context without leaving it: for a
        context made for the request alone (the WSGI shell's), which is dropped."""
        return self.router._begin(token)

    # -- responses ---------------------------------------------------------------

    def headers(self, incoming: Any, expire: bool, holder: _Holder) -> list[tuple[str, str]]:
        """The headers to add to the response: the token, when the request wrote
        since it began (it differs from the one it came with)."""
        causality = holder.causality
        token = None if causality is None else causality.token
        added: list[tuple[str, str]] = []
        if token is None or token == incoming:
            if expire and self.cookie_name is not None:
                added.append(("Set-Cookie", f"{self.cookie_name}={self._expire}"))
            return added
        text = self._encode(token)
        if not isinstance(text, str):
            raise ArgumentTypeError(f"encode_token must return a str, got {type_name(text)}")
        value = text if self._signer is None else self._signer.sign(text.encode()).decode()
        if _COOKIE_SAFE.fullmatch(value) is None:
            raise ConfigurationError(
                f"encode_token returned {text[:40]!r}: a token must be 1 to 1024 cookie-safe "
                "characters (letters, digits and !#$%&'*+-.^_`|~:/=?@)"
            )
        if self.cookie_name is not None:
            added.append(("Set-Cookie", f"{self.cookie_name}={value}{self._attributes}"))
        if self.header_name is not None:
            added.append((self.header_title, value))
        return added


def _cookie(header: str, name: str) -> str | None:
    """The value of cookie ``name`` in a ``Cookie`` header (the first one), or None.

    Split by hand rather than with :class:`http.cookies.SimpleCookie`, which drops
    a whole header silently when one cookie in it is malformed (then a bad token
    could not be told from no token, and expired).

    >>> _cookie('a=1; scalekit_rw="42"; b=2', "scalekit_rw")
    '42'
    """
    for part in header.split(";"):
        key, sep, value = part.partition("=")
        if sep and key.strip() == name:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            return value
    return None


def _signer(secret_key: str | bytes | Sequence[str | bytes]) -> Any:
    """An itsdangerous ``Signer``: HMAC-SHA256, the last key signs, every key verifies."""
    keys = [secret_key] if isinstance(secret_key, (str, bytes)) else secret_key
    if not isinstance(keys, Sequence):
        raise ArgumentTypeError(
            f"secret_key must be a str, bytes or a list of them, got {type_name(secret_key)}"
        )
    encoded = [
        key.encode("utf-8", "surrogatepass") if isinstance(key, str) else key for key in keys
    ]
    if not encoded or not all(isinstance(key, bytes) and key for key in encoded):
        raise ConfigurationError(
            "secret_key is a non-empty str or bytes, or a list of them (the last one signs)"
        )
    if any(isinstance(key, str) and not _encodes(key) for key in keys):
        raise ConfigurationError("secret_key must be valid text (no lone surrogate)")
    try:
        import itsdangerous  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        raise ConfigurationError(
            "signed read-your-writes tokens (secret_key=...) need itsdangerous: "
            "pip install itsdangerous"
        ) from None
    return itsdangerous.Signer(
        encoded, salt=_SALT, key_derivation="hmac", digest_method=hashlib.sha256
    )


def _encodes(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


class _TokenMiddleware(Generic[_App]):
    """What both middlewares share: the app, checked for its kind, and the
    :class:`_TokenCarrier` built from the same parameters."""

    _asgi: ClassVar[bool]  # the kind of app the subclass wraps: ASGI (True) or WSGI
    _wrong_app: ClassVar[str]  # the error for an app of the other kind

    def __init__(
        self,
        app: _App,
        router: ReplicaRouter[Any],
        *,
        cookie_name: str | None = "scalekit_rw",
        header_name: str | None = None,
        secret_key: str | bytes | Sequence[str | bytes] | None = None,
        max_age: int | None = 3600,
        path: str = "/",
        domain: str | None = None,
        secure: bool = True,
        samesite: Literal["lax", "strict", "none"] | None = "lax",
        encode_token: Callable[[Any], str] | None = None,
        decode_token: Callable[[str], Any] | None = None,
    ) -> None:
        check_callable(app, "app")
        if _is_async_app(app) != self._asgi:
            raise ArgumentTypeError(self._wrong_app)
        self.app = app
        self._core = _TokenCarrier(
            router,
            cookie_name=cookie_name,
            header_name=header_name,
            secret_key=secret_key,
            max_age=max_age,
            path=path,
            domain=domain,
            secure=secure,
            samesite=samesite,
            encode_token=encode_token,
            decode_token=decode_token,
        )


class ReplicaRouterMiddleware(_TokenMiddleware[ASGIApp]):
    """ASGI middleware: every HTTP request runs in a fresh read-your-writes scope of
    ``router`` that starts from the token the request carries, and a response to a
    request that wrote carries the new token.

    ``router`` is the app server's :class:`~scalekit.replication.ReplicaRouter` (in
    token mode, for the token to mean anything). The token travels in a cookie
    named ``cookie_name`` (``None``: no cookie) and/or in the request and response
    header ``header_name`` (for API clients that keep it themselves). With
    ``secret_key`` (a str or bytes, or a list of them: the last one signs, every
    one verifies) it is signed with HMAC-SHA256 by itsdangerous, which must then be
    installed; a token with a bad signature is ignored. ``encode_token`` and
    ``decode_token`` turn a token into a cookie-safe str and back (an ``int``, as
    PostgreSQL's WAL position, by default); ``decode_token`` raises ``ValueError``
    for text that is not a token. The cookie is ``HttpOnly``, ``Secure`` and
    ``SameSite=Lax`` unless told otherwise, with ``Max-Age=max_age`` seconds.

    With Starlette::

        app = Starlette(routes=routes, middleware=[
            Middleware(ReplicaRouterMiddleware, router=router, secret_key=keys),
        ])

    Runtime complexity: O(1) per request, plus the router's check of the token.
    """

    _asgi = True
    _wrong_app = (
        "app is not an ASGI app (no coroutine function): "
        "wrap WSGI apps with ReplicaRouterWSGIMiddleware"
    )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        core = self._core
        cookie_header = header_value = None
        for raw_name, raw_value in scope.get("headers", ()):
            name = raw_name.decode("latin-1").lower()
            if name == "cookie":
                value = raw_value.decode("latin-1")
                cookie_header = value if cookie_header is None else f"{cookie_header}; {value}"
            elif name == core.header_name:
                header_value = raw_value.decode("latin-1")
        incoming, expire = core.read(cookie_header, header_value)
        with core.router.scope(incoming):
            holder = core.holder()

            async def send_with_token(message: Message) -> None:
                if message["type"] == "http.response.start":
                    added = core.headers(incoming, expire, holder)
                    if added:
                        headers = list(message.get("headers", ()))
                        headers.extend((n.lower().encode(), v.encode("latin-1")) for n, v in added)
                        message = {**message, "headers": headers}
                await send(message)

            await self.app(scope, receive, send_with_token)


class ReplicaRouterWSGIMiddleware(_TokenMiddleware["WSGIApplication"]):
    """WSGI middleware: the twin of :class:`ReplicaRouterMiddleware`, with the same
    parameters::

        app.wsgi_app = ReplicaRouterWSGIMiddleware(app.wsgi_app, router, secret_key=keys)

    Each request runs in a context of its own (a copy of the server's), where the
    router's scope begins; the response body is iterated in it too, so an app that
    calls ``start_response`` late (a generator) still gets the token.

    Runtime complexity: O(1) per request, plus the router's check of the token.
    """

    _asgi = False
    _wrong_app = "app is an ASGI app (a coroutine function): wrap it with ReplicaRouterMiddleware"

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        core = self._core
        header = None
        if core.header_name is not None:
            header = environ.get("HTTP_" + core.header_name.upper().replace("-", "_"))
        incoming, expire = core.read(environ.get("HTTP_COOKIE"), header)
        context = contextvars.copy_context()
        holder = context.run(core.begin, incoming)

        def start_with_token(
            status: str, headers: list[tuple[str, str]], exc_info: OptExcInfo | None = None
        ) -> Callable[[bytes], object]:
            headers = [*headers, *core.headers(incoming, expire, holder)]
            if exc_info is None:
                return start_response(status, headers)
            return start_response(status, headers, exc_info)

        body = context.run(self.app, environ, start_with_token)
        return _Body(body, context)


class _Body:
    """The app's response body, iterated and closed in the request's context."""

    def __init__(self, body: Iterable[bytes], context: contextvars.Context) -> None:
        self._body = body
        self._iterator: Iterator[bytes] | None = None
        self._context = context

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self._iterator is None:
            self._iterator = self._context.run(iter, self._body)
        return self._context.run(next, self._iterator)

    def close(self) -> None:
        close = getattr(self._body, "close", None)
        if close is not None:
            self._context.run(close)


def _is_async_app(app: Any) -> bool:
    if inspect.iscoroutinefunction(app):
        return True
    call = getattr(type(app), "__call__", None)  # noqa: B004 - the class's, not an instance attribute
    return call is not None and inspect.iscoroutinefunction(call)
