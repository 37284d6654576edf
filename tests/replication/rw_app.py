"""An app server for test_pg_middleware.py: notes written to the primary, read where the
router says, with the read-your-writes token carried by the middleware.

Configured by the environment: ``SK_PRIMARY_URL`` and ``SK_REPLICA_URLS`` (SQLAlchemy
URLs, psycopg driver, the replica URLs separated by spaces).

- ASGI (``python -m uvicorn tests.replication.rw_app:asgi_app``): Starlette, mounted
  three ways: ``/sync`` (sync endpoints, which Starlette runs in a thread pool with a
  copy of the request's context), ``/base`` (the same behind a ``BaseHTTPMiddleware``,
  which runs them in a task of their own), ``/async`` (async endpoints on async
  sessions, with an async router). Each mount has its own router and its own
  :class:`ReplicaRouterMiddleware`; the token (a WAL position) means the same to all.
- WSGI: the same endpoints as a plain WSGI app in :class:`ReplicaRouterWSGIMiddleware`,
  served by wsgiref (threaded).

``python -m tests.replication.rw_app ASGI_PORT WSGI_PORT`` serves both from one process
(uvicorn, and wsgiref in a thread): an app server as two would be, for half the start-up.

``POST <mount>/notes?body=...`` answers ``{"id": ...}``; ``GET <mount>/notes/<id>``
answers ``{"body": ... or null, "port": <the port of the server that answered>}``.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any
from urllib.parse import parse_qs

from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from scalekit.replication import ReplicaRouterMiddleware, ReplicaRouterWSGIMiddleware
from scalekit.replication import sqlalchemy as sk

PRIMARY_URL = os.environ.get("SK_PRIMARY_URL", "")
REPLICA_URLS = os.environ.get("SK_REPLICA_URLS", "").split()

INSERT = text("INSERT INTO sk_rw_notes (body) VALUES (:body) RETURNING id")
READ = text("SELECT (SELECT body FROM sk_rw_notes WHERE id = :id), inet_server_port()")


def _engines(create: Any) -> tuple[Any, list[Any]]:
    options = {"pool_size": 4, "connect_args": {"connect_timeout": 2}}
    return create(PRIMARY_URL, **options), [create(url, **options) for url in REPLICA_URLS]


def sync_sessions() -> Any:
    primary, replicas = _engines(create_engine)
    return sk.routing_sessionmaker(sk.pg_router(primary, replicas))


def write_note(sessions: Any, body: str) -> int:
    with sessions() as session:
        note_id = int(session.execute(INSERT, {"body": body}).scalar_one())
        session.commit()
    return note_id


def read_note(sessions: Any, note_id: int) -> dict[str, Any]:
    with sessions() as session:
        body, port = session.execute(READ, {"id": note_id}).one()
    return {"body": body, "port": port}


def _sync_app(*, behind_base_http_middleware: bool) -> Starlette:
    sessions = sync_sessions()

    def post(request: Request) -> Response:
        return JSONResponse({"id": write_note(sessions, request.query_params["body"])})

    def get(request: Request) -> Response:
        return JSONResponse(read_note(sessions, int(request.path_params["id"])))

    middleware = [Middleware(ReplicaRouterMiddleware, router=sessions.kw["router"], secure=False)]
    if behind_base_http_middleware:
        middleware.append(Middleware(_Passthrough))
    return Starlette(
        routes=[Route("/notes", post, methods=["POST"]), Route("/notes/{id:int}", get)],
        middleware=middleware,
    )


class _Passthrough(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        response.headers["x-passed"] = "base-http-middleware"
        return response


def _async_app() -> Starlette:
    primary, replicas = _engines(create_async_engine)
    router = sk.pg_router(primary, replicas)
    sessions = sk.async_routing_sessionmaker(router)

    async def post(request: Request) -> Response:
        async with sessions() as session:
            result = await session.execute(INSERT, {"body": request.query_params["body"]})
            note_id = int(result.scalar_one())
            await session.commit()
        return JSONResponse({"id": note_id})

    async def get(request: Request) -> Response:
        async with sessions() as session:
            result = await session.execute(READ, {"id": int(request.path_params["id"])})
            body, port = result.one()
        return JSONResponse({"body": body, "port": port})

    return Starlette(
        routes=[Route("/notes", post, methods=["POST"]), Route("/notes/{id:int}", get)],
        middleware=[Middleware(ReplicaRouterMiddleware, router=router, secure=False)],
    )


def _health(request: Request) -> Response:
    return JSONResponse({"ok": True})


def _asgi_app() -> Starlette:
    return Starlette(
        routes=[
            Route("/health", _health),
            Mount("/sync", _sync_app(behind_base_http_middleware=False)),
            Mount("/base", _sync_app(behind_base_http_middleware=True)),
            Mount("/async", _async_app()),
        ]
    )


def _wsgi_app() -> Any:
    sessions = sync_sessions()

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        path, method = environ["PATH_INFO"], environ["REQUEST_METHOD"]
        if path == "/health":
            answer: dict[str, Any] = {"ok": True}
        elif method == "POST" and path == "/notes":
            body = parse_qs(environ.get("QUERY_STRING", ""))["body"][0]
            answer = {"id": write_note(sessions, body)}
        elif method == "GET" and path.startswith("/notes/"):
            answer = read_note(sessions, int(path.rsplit("/", 1)[1]))
        else:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found"]
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(answer).encode()]

    return ReplicaRouterWSGIMiddleware(app, sessions.kw["router"], secure=False)


asgi_app = _asgi_app() if PRIMARY_URL else None


def main(asgi_port: int, wsgi_port: int) -> None:
    import threading
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    import uvicorn

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    class Threading(ThreadingMixIn, WSGIServer):
        daemon_threads = True

    wsgi = make_server("127.0.0.1", wsgi_port, _wsgi_app(), Threading, Quiet)
    threading.Thread(target=wsgi.serve_forever, daemon=True).start()
    uvicorn.run(asgi_app, host="127.0.0.1", port=asgi_port, log_level="warning")


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
