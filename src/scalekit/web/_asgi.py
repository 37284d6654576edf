"""CacheMiddleware: the ASGI shell of :class:`~scalekit.web.HttpCache`.

It builds the cache's :class:`~scalekit.web._cache.Request` from the scope and
drives the request's flow: store calls (awaited on an async store, inline on a
sync one), app calls with their response buffered (up to ``max_body``, then
streamed through), waits for another request's flight, and background refreshes
as asyncio tasks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

from scalekit._asgi import ASGIApp, Message, Receive, Scope, Send
from scalekit._flow import LATER, drive_async
from scalekit._validate import check_callable, type_name
from scalekit.errors import ArgumentTypeError
from scalekit.web._cache import (
    STORE_STEPS,
    STREAMED,
    Flow,
    HttpCache,
    Reply,
    Request,
    Response,
    Step,
    store_step,
    store_step_async,
)
from scalekit.web._headers import MEMO_TEXT
from scalekit.web._keys import encoded_path, normal_path

__all__ = ["CacheMiddleware"]

_log = logging.getLogger("scalekit.web")
_STRIPPED = (b"surrogate-key", b"surrogate-control")
# ASGI extensions that still send the body as http.response.body messages
_BUFFERED = frozenset({"http.response.trailers", "http.response.early_hint", "http.response.debug"})


_names: dict[str, bytes] = {}
_lower: set[bytes] = set()  # header names seen, all lower case
_targets: dict[bytes, str] = {}  # raw paths seen and their key parts
_sets: dict[frozenset[str], frozenset[bytes]] = {}


class _ScopeHeaders:
    """A scope's header fields read by lower-case name, decoded when read.

    Built with one C-level ``dict()`` of the raw pairs; a scope that repeats a
    field gets the repeats joined by ``, `` (``; `` for ``Cookie``) instead.
    """

    __slots__ = ("_raw",)

    def __init__(self, pairs: list[tuple[bytes, bytes]]) -> None:
        raw = dict(pairs)
        # ASGI servers send lower-case names, an app or middleware in between may
        # not: a "Cookie" read as absent would put a personal response in the store
        mixed = False
        if not _lower.issuperset(raw):
            mixed = any(name != name.lower() for name in raw)
            if not mixed and len(_lower) < 4096:
                _lower.update(raw)
        if mixed or len(raw) != len(pairs):
            raw = {}
            for name, value in pairs:
                name = name.lower()
                if name in raw:
                    raw[name] += (b"; " if name == b"cookie" else b", ") + value
                else:
                    raw[name] = value
        self._raw = raw

    def get(self, name: str, default: None = None, /) -> str | None:
        key = _names.get(name)
        if key is None:
            key = name.encode("latin-1", "replace")
            if len(_names) < 4096:  # names come from the code and from Vary fields
                _names[name] = key
        value = self._raw.get(key)
        return None if value is None else value.decode("latin-1")

    def any_of(self, names: frozenset[str], /) -> bool:
        key = _sets.get(names)
        if key is None:
            key = _sets[names] = frozenset(name.encode("latin-1") for name in names)
        return not key.isdisjoint(self._raw)

    def __contains__(self, name: object) -> bool:
        key = _names.get(name) if isinstance(name, str) else None
        if key is None:
            return isinstance(name, str) and name.encode("latin-1", "replace") in self._raw
        return key in self._raw


def _request(scope: Scope) -> Request:
    pairs = scope.get("headers") or []  # ASGI: names are lower case
    if not isinstance(pairs, list):
        pairs = list(pairs)
    headers = _ScopeHeaders(pairs)
    host = headers.get("host")
    if host is None:
        server = scope.get("server")
        host = f"{server[0]}:{server[1]}" if server else ""
    path = scope.get("path", "/")
    raw = scope.get("raw_path")
    if isinstance(raw, bytes):  # the key tells apart what the app can: /a%2Fb, /%E9
        found = _targets.get(raw)
        if found is None:
            found = normal_path(raw.split(b"?", 1)[0] or b"/")
            if len(raw) <= MEMO_TEXT:  # a client's long paths would fill memory
                if len(_targets) >= 4096:
                    _targets.clear()
                _targets[raw] = found
        target = found
    else:
        target = encoded_path(path.encode("utf-8", "surrogatepass"))
    return Request(
        scope.get("method", "GET"),
        scope.get("scheme", "http"),
        host,
        path,
        scope.get("query_string", b"").decode("latin-1"),
        headers,
        target,
    )


def _changed_scope(scope: Scope, changes: dict[str, str | None]) -> Scope:
    """A copy of ``scope`` with the named request fields removed or replaced."""
    drop = {name.encode("latin-1") for name in changes}
    headers = [
        (name, value) for name, value in scope.get("headers", ()) if name.lower() not in drop
    ]
    for name, value in changes.items():
        if value is not None:
            headers.append((name.encode("latin-1"), value.encode("latin-1")))
    scope = dict(scope)
    scope["headers"] = headers
    extensions = scope.get("extensions")
    if extensions and not _BUFFERED.issuperset(extensions):
        # the response is held here: no file path or zero-copy send to hold
        scope["extensions"] = {
            name: value for name, value in extensions.items() if name in _BUFFERED
        }
    return scope


async def _empty_receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


def _refresh_receive(finished: asyncio.Event) -> Receive:
    """The ``receive`` of a background refresh: an empty request body, then, as
    from a client that waits for the whole response, ``http.disconnect`` once the
    response ended. (Answering the body again at once, forever, made an app that
    listens for the disconnect, such as Starlette's ``StreamingResponse``, spin
    without ever yielding: the whole event loop hung.)"""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await finished.wait()
        return {"type": "http.disconnect"}

    return receive


async def _no_client(message: Message) -> None:
    return None


class CacheMiddleware:
    """ASGI 3 middleware that serves responses from ``cache``
    (:class:`~scalekit.web.HttpCache`); scopes other than ``http`` pass through.

    Every HTTP response gets a ``Cache-Status`` field; responses from the store
    an ``Age``; ``Surrogate-Key`` and ``Surrogate-Control`` never reach the
    client. A request that the cache may answer has its response buffered until
    it ends, or until it grows past ``max_body``: then what came so far and the
    rest stream through, and nothing is stored.

    >>> import asyncio
    >>> from scalekit.testing import FakeClock
    >>> from scalekit.web import CacheMiddleware, HttpCache
    >>> calls = []
    >>> async def app(scope, receive, send):
    ...     calls.append(scope["path"])
    ...     await send({"type": "http.response.start", "status": 200,
    ...                 "headers": [(b"cache-control", b"max-age=60")]})
    ...     await send({"type": "http.response.body", "body": b"hello"})
    >>> cached = CacheMiddleware(app, HttpCache(clock=FakeClock(1_700_000_000)))
    >>> def get(path):
    ...     sent = []
    ...     async def receive():
    ...         return {"type": "http.request", "body": b""}
    ...     async def send(message):
    ...         sent.append(message)
    ...     scope = {"type": "http", "method": "GET", "scheme": "http", "path": path,
    ...              "query_string": b"", "headers": [(b"host", b"example.com")]}
    ...     asyncio.run(cached(scope, receive, send))
    ...     return dict(sent[0]["headers"])[b"cache-status"], sent[1]["body"]
    >>> get("/a")
    (b'scalekit; fwd=uri-miss; stored', b'hello')
    >>> get("/a")
    (b'scalekit; hit; ttl=60', b'hello')
    >>> calls
    ['/a']
    """

    def __init__(self, app: ASGIApp, cache: HttpCache) -> None:
        check_callable(app, "app")
        if not isinstance(cache, HttpCache):
            raise ArgumentTypeError(f"cache must be an HttpCache, got {type_name(cache)}")
        self.app = app
        self.cache = cache
        self._tasks: set[asyncio.Task[None]] = set()
        self._now = None if cache.asynchronous else self._store_now

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = _request(scope)
        context = (request, scope, receive, send)  # as _drive, without its call: a hit's cost
        reply = await drive_async(
            self.cache.handle(request), self._perform, BaseException, context, self._now
        )
        if reply is not None:
            await _send_reply(send, reply)

    def _drive(
        self, flow: Flow, request: Request, scope: Scope, receive: Receive, send: Send | None
    ) -> Awaitable[Any]:
        """Run ``flow`` with :func:`~scalekit._flow.drive_async`: :meth:`_perform`
        does its steps, a sync store's calls are made at once by :meth:`_store_now`."""
        context = (request, scope, receive, send)
        return drive_async(flow, self._perform, BaseException, context, self._now)

    def _store_now(self, step: Step) -> Any:
        """Do a store step on a sync store; leave any other step :data:`LATER`."""
        if step[0] not in STORE_STEPS:
            return LATER
        cache = self.cache
        try:
            return store_step(cache.store, step)
        except Exception as exc:
            return cache.store_failed(exc, step)

    async def _perform(
        self, step: Step, request: Request, scope: Scope, receive: Receive, send: Send | None
    ) -> Any:
        """Do one step of a flow. A store call that raises an ``Exception`` answers
        the cache's fallback (``store_failed``); whatever else a step raises, a
        cancellation too, the driver throws into the flow, so its cleanups (its
        flight, its lease) run and its joiners never wait forever."""
        name = step[0]
        if name in STORE_STEPS:
            cache = self.cache
            try:
                return await store_step_async(cache.store, step)
            except Exception as exc:
                return cache.store_failed(exc, step)
        if name == "call":
            return await self._call(request, scope, receive, send, step[1], step[2], step[3])
        if name == "forward":
            await self._forward(scope, receive, send, step[1], step[2])
        elif name == "join":
            await step[1].wait_async()
        elif name == "sleep":
            await asyncio.sleep(step[1])
        elif name == "refresh":
            self._background(step[1], request, scope)
        else:  # pragma: no cover - the core yields no other step
            raise AssertionError(f"unknown step {name!r}")
        return None

    async def _run_steps(self, flow: Flow) -> None:
        """Drive a flow of store steps only (an invalidation)."""
        await self._drive(flow, None, {}, _empty_receive, None)  # type: ignore[arg-type]

    async def _call(
        self,
        request: Request,
        scope: Scope,
        receive: Receive,
        send: Send | None,
        changes: dict[str, str | None],
        cache_status: str,
        release: Any,
    ) -> Any:
        cache = self.cache
        limit = cache.max_body
        start: Message | None = None
        headers: list[tuple[str, str]] = []
        parts: list[bytes] = []
        size = 0
        streaming = False
        overflow = False
        ended = False
        finished = asyncio.Event()  # a background refresh's client "leaves" at the end

        async def capture(message: Message) -> None:
            nonlocal start, headers, size, streaming, overflow, ended
            kind = message["type"]
            if streaming:
                await send(message)  # type: ignore[misc]
                return
            if overflow:
                return
            if kind == "http.response.start":
                if start is not None:
                    raise RuntimeError("the app sent http.response.start twice")
                start = message
                headers = [
                    (name.decode("latin-1"), value.decode("latin-1"))
                    for name, value in message.get("headers", ())
                ]
                # trailers follow the body: such a response is passed through, never stored
                if message.get("trailers") or not cache.buffers(int(message["status"]), headers):
                    await stream()
                return
            if start is None or ended:
                return
            if kind != "http.response.body":  # another way to send the body: pass it on
                if await stream():
                    await send(message)  # type: ignore[misc]
                return
            ended = not message.get("more_body", False)
            if ended:
                finished.set()
            body = message.get("body", b"")
            size += len(body)
            if size <= limit:
                parts.append(body)
                return
            if await stream():
                await send(message)  # type: ignore[misc]

        async def stream() -> bool:
            """Send what came so far and pass the rest through: it will not be
            stored; whether there is a client to pass it to."""
            nonlocal streaming, overflow
            if send is None:  # a background refresh: drop it, store nothing
                overflow = True
                finished.set()
                parts.clear()
                return False
            streaming = request.started = True
            assert start is not None
            if release is not None:
                await self._run_steps(release())
            await send(_with_status(start, cache_status))
            for part in parts:
                await send({"type": "http.response.body", "body": part, "more_body": True})
            parts.clear()
            return True

        if send is None:
            receive = _refresh_receive(finished)
        await self.app(_changed_scope(scope, changes), receive, capture)
        if streaming or overflow:
            return STREAMED
        if start is None:
            raise RuntimeError("the app returned without starting a response")
        if not ended:  # a truncated response is never stored (RFC 9111 3.3)
            raise RuntimeError("the app returned before the end of its response body")
        return Response(int(start["status"]), headers, b"".join(parts))

    async def _forward(
        self, scope: Scope, receive: Receive, send: Send | None, cache_status: str, on_start: Any
    ) -> None:
        assert send is not None

        async def passing(message: Message) -> None:
            if message["type"] == "http.response.start":
                if on_start is not None:
                    headers = [
                        (name.decode("latin-1"), value.decode("latin-1"))
                        for name, value in message.get("headers", ())
                    ]
                    await self._run_steps(on_start(int(message["status"]), headers))
                message = _with_status(message, cache_status)
            await send(message)

        await self.app(scope, receive, passing)

    def _background(self, flow: Flow, request: Request, scope: Scope) -> None:
        async def refresh() -> None:
            try:
                await self._drive(flow, request, scope, _empty_receive, None)
            except Exception as exc:
                self.cache.refresh_failed(exc)

        task = asyncio.get_running_loop().create_task(refresh())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _with_status(start: Message, cache_status: str) -> Message:
    """A copy of a response start with ``Cache-Status`` set and the surrogate fields gone."""
    headers = [
        (name, value)
        for name, value in start.get("headers", ())
        if name.lower() not in _STRIPPED and name.lower() != b"cache-status"
    ]
    headers.append((b"cache-status", cache_status.encode("latin-1")))
    message = dict(start)
    message["headers"] = headers
    return message


_encoded: dict[str, bytes] = {}


def _latin1(text: str) -> bytes:
    """``text`` as latin-1 bytes, remembered (Cache-Status and Age values repeat)."""
    found = _encoded.get(text)
    if found is None:
        found = text.encode("latin-1")
        if len(_encoded) >= 4096:
            _encoded.clear()
        _encoded[text] = found
    return found


async def _send_reply(send: Send, reply: Reply) -> None:
    stored = reply.stored
    if stored is not None:
        (_, age), (_, status) = reply.extra  # what HttpCache._serve sends
        headers = [
            *stored.asgi_headers(),
            (b"age", _latin1(age)),
            (b"cache-status", _latin1(status)),
        ]
    else:
        headers = [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in (*(reply.headers or ()), *reply.extra)
        ]
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": reply.body})
