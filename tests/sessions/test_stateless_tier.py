"""A stateless web tier, end to end over real sockets.

Two WSGI app instances each run in their own ``wsgiref.simple_server`` on
127.0.0.1, behind a :class:`~scalekit.balancing.RoundRobin`, and share one session
store (Redis, and the in-process memory store). Neither server keeps user state,
so a client that logs in on one is logged in on the other.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import parse_qsl
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest

from scalekit.balancing import RoundRobin
from scalekit.sessions import MemorySessionStore, Session
from scalekit.sessions._middleware import WsgiSessionMiddleware, logout, rotate_id


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def shop(name: str) -> Any:
    """The app every server runs: a cart, a login, a logout."""

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        session: Session = environ["scalekit.session"]
        query = dict(parse_qsl(environ["QUERY_STRING"]))
        path = environ["PATH_INFO"]
        if path == "/cart":
            session["cart"] = [*session.get("cart", []), query["item"]]
        elif path == "/login":
            session["user"] = query["user"]  # (after checking a password)
            rotate_id(environ)
        elif path == "/logout":
            logout(environ)
        body = json.dumps(
            {"server": name, "user": session.get("user"), "cart": session.get("cart", [])}
        ).encode()
        start_response(
            "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        )
        return [body]

    return app


class Browser:
    """A client with a cookie jar, sending each request where the balancer says.

    It keeps the Secure cookie over plain HTTP: it stands for a browser talking
    HTTPS to a balancer that terminates TLS.
    """

    def __init__(self, balancer: RoundRobin[str], addresses: dict[str, int]) -> None:
        self.balancer = balancer
        self.addresses = addresses
        self.cookies: dict[str, str] = {}
        self.set_cookies: list[str] = []

    def request(self, method: str, target: str) -> dict[str, Any]:
        with self.balancer.lease() as backend:
            connection = http.client.HTTPConnection("127.0.0.1", self.addresses[backend], timeout=5)
            try:
                headers = {}
                if self.cookies:
                    headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
                connection.request(method, target, headers=headers)
                response = connection.getresponse()
                assert response.status == 200
                for header in response.headers.get_all("Set-Cookie") or []:
                    self.set_cookies.append(header)
                    name, _, value = header.split(";")[0].partition("=")
                    if "Max-Age=0" in header:
                        self.cookies.pop(name, None)
                    else:
                        self.cookies[name] = value
                answer: dict[str, Any] = json.loads(response.read())
            finally:
                connection.close()
        assert answer["server"] == backend
        return answer


@pytest.fixture(params=["redis", "memory"])
def store(request: pytest.FixtureRequest) -> Any:
    """One store both servers share: Redis for real, or one in-process memory store."""
    if request.param == "memory":
        return MemorySessionStore()
    client = request.getfixturevalue("redis_client")  # skips without a Redis server
    from scalekit.sessions._redis import RedisSessionStore

    return RedisSessionStore(client, prefix="scalekit-test:tier:")


@pytest.fixture
def tier(store: Any) -> Iterator[tuple[RoundRobin[str], dict[str, int]]]:
    """Two app servers on 127.0.0.1, behind a round robin; yields it and their ports."""
    servers: dict[str, WSGIServer] = {}
    threads: list[threading.Thread] = []
    for name in ("app-1", "app-2"):
        app = WsgiSessionMiddleware(shop(name), store)
        server = make_server("127.0.0.1", 0, app, handler_class=QuietHandler)
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        servers[name] = server
        threads.append(thread)
    try:
        ports = {name: server.server_address[1] for name, server in servers.items()}
        yield RoundRobin(list(servers)), ports
    finally:
        for server in servers.values():
            server.shutdown()
            server.server_close()
        for thread in threads:
            thread.join(5)


def test_log_in_on_one_server_and_the_next_request_on_the_other_is_logged_in(
    store: Any, tier: tuple[RoundRobin[str], dict[str, int]]
) -> None:
    balancer, ports = tier
    browser = Browser(balancer, ports)

    shopping = browser.request("POST", "/cart?item=book")  # anonymous, before login
    assert (shopping["server"], shopping["user"]) == ("app-1", None)
    before_login = browser.cookies["session"]

    login = browser.request("POST", "/login?user=ada")
    assert (login["server"], login["user"]) == ("app-2", "ada")
    after_login = browser.cookies["session"]
    assert after_login != before_login
    assert store.load(before_login) is None  # rotated: the pre-login id is dead

    home = browser.request("GET", "/")  # the next request lands on the other server
    assert home == {"server": "app-1", "user": "ada", "cart": ["book"]}

    for i in range(6):  # each server sees what the other stored
        answer = browser.request("POST", f"/cart?item=pen-{i}")
        assert answer["user"] == "ada"
        assert answer["cart"] == ["book", *(f"pen-{j}" for j in range(i + 1))]
    assert browser.cookies["session"] == after_login
    assert len(browser.set_cookies) == 2  # the first save and the login, nothing since

    bye = browser.request("POST", "/logout")
    assert bye["user"] is None
    assert "session" not in browser.cookies
    assert store.load(after_login) is None
    assert browser.request("GET", "/") == {"server": "app-1", "user": None, "cart": []}


def test_a_stolen_pre_login_cookie_is_worthless_on_every_server(
    store: Any, tier: tuple[RoundRobin[str], dict[str, int]]
) -> None:
    balancer, ports = tier
    victim = Browser(balancer, ports)
    victim.request("POST", "/cart?item=book")  # app-1
    attacker = Browser(balancer, ports)
    attacker.cookies = dict(victim.cookies)  # planted, or read before login
    victim.request("POST", "/login?user=ada")  # app-2
    for _ in range(2):  # app-1, then app-2
        assert attacker.request("GET", "/")["user"] is None
    assert victim.request("GET", "/")["user"] == "ada"
