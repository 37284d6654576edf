"""A stateless web tier: two app servers, one session store.

Two WSGI app servers, app-1 and app-2, run on their own ports behind a
round-robin balancer. Neither keeps user state: the sessions live in Redis at
127.0.0.1:6379. Without Redis, they live in one MemorySessionStore that both
servers share, which works only because both run in this process. A client logs
in on app-1, and its next request goes to app-2, which knows it. The cookie
carries only the session id, and the id changes at login.

Run: python examples/sessions_stateless.py
"""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from scalekit.balancing import RoundRobin
from scalekit.sessions import (
    MemorySessionStore,
    SessionStore,
    WsgiSessionMiddleware,
    logout,
    rotate_id,
)


def shared_store() -> SessionStore:
    """Redis when it answers at 127.0.0.1:6379, else a memory store (with a note why)."""
    try:
        import redis

        client = redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=1)
        client.ping()
    except Exception as exc:  # redis-py missing, or no server
        print(f"Redis is not reachable at 127.0.0.1:6379 ({type(exc).__name__}: {exc});")
        print("using one MemorySessionStore shared by both servers (this process only)")
        return MemorySessionStore()
    from scalekit.sessions import RedisSessionStore

    print("sessions in Redis at 127.0.0.1:6379")
    return RedisSessionStore(client, prefix="scalekit-example:session:")


def shop(name: str) -> Any:
    """The app each server runs. It reads and writes the session; the middleware
    loads it before and stores it after."""

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        session = environ["scalekit.session"]
        query = dict(parse_qsl(environ["QUERY_STRING"]))
        path = environ["PATH_INFO"]
        if path == "/login":
            session["user"] = query["user"]  # after checking a password
            rotate_id(environ)  # a new id at login: a planted id is dead
        elif path == "/cart":
            session["cart"] = [*session.get("cart", []), query["item"]]
        elif path == "/logout":
            logout(environ)
        body = json.dumps(
            {"server": name, "user": session.get("user"), "cart": session.get("cart", [])}
        ).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]

    return app


class Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


store = shared_store()
servers: dict[str, WSGIServer] = {}
for name in ("app-1", "app-2"):
    # secure=True (the default) marks the cookie HTTPS-only: a real tier sits behind
    # a balancer that terminates TLS. This example's client talks plain HTTP to the
    # servers directly, and sends the cookie back all the same.
    app = WsgiSessionMiddleware(shop(name), store)
    server = make_server("127.0.0.1", 0, app, handler_class=Quiet)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    servers[name] = server
balancer: RoundRobin[str] = RoundRobin(list(servers))
cookies: dict[str, str] = {}


def request(method: str, target: str) -> dict[str, Any]:
    """One client request, sent where the balancer says, with the client's cookies."""
    backend = balancer.pick()
    connection = http.client.HTTPConnection("127.0.0.1", servers[backend].server_address[1])
    try:
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items())} if cookies else {}
        connection.request(method, target, headers=headers)
        response = connection.getresponse()
        for header in response.headers.get_all("Set-Cookie") or []:
            key, _, value = header.split(";")[0].partition("=")
            if "Max-Age=0" in header:
                cookies.pop(key, None)
            else:
                cookies[key] = value
        answer: dict[str, Any] = json.loads(response.read())
    finally:
        connection.close()
    who = answer["user"] or "anonymous"
    print(f"{method:4} {target:20} -> {answer['server']}: {who}, cart {answer['cart']}")
    return answer


try:
    login = request("POST", "/login?user=ada")
    first_id = cookies["session"]
    home = request("GET", "/")
    request("POST", "/cart?item=book")
    cart = request("GET", "/")
    request("POST", "/logout")
    after = request("GET", "/")
    gone = store.load(first_id) is None and after["user"] is None
    print(f"after logout, the session is gone: {gone}")
    served = login["server"] == "app-1" and home["server"] == "app-2"
    still = served and login["user"] == home["user"] == "ada" and cart["cart"] == ["book"]
    print(f"logged in on {login['server']}, still logged in on {home['server']}: {still}")
finally:
    for server in servers.values():
        server.shutdown()
        server.server_close()
