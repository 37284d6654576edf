"""Zero leaks: 1,000 users on personalised endpoints, concurrent, on ASGI and WSGI.

Every response of the app carries the identity it was rendered for (``marker=<user>`` in
the body and ``X-User``) and every ``Set-Cookie`` it issues names the request it answered
(``X-Request-Id``). Users are anonymous or logged in (Cookie, or Authorization on the
``auth`` endpoints); requests go in concurrent batches (``asyncio.gather`` on ASGI, a thread
pool on WSGI) so that requests for one key join each other's flights, while the fake clock
moves so that entries expire, go stale, and are refreshed in the background.

The endpoints, and what their author did:

- ``/vary/profile``      public, max-age, ``Vary: Cookie``           (correct)
- ``/novary/profile``    max-age, forgets ``Vary``                    (Cookie requests bypass)
- ``/public-cc/profile`` ``public``, forgets ``Vary``                 (Cookie requests bypass)
- ``/swr/profile``       max-age + stale-while-revalidate, no Vary    (background refreshes)
- ``/setcookie/home``    public, issues ``Set-Cookie`` to everyone    (never stored)
- ``/auth/profile``      max-age, personalised by ``Authorization``   (bypass)
- ``/pub/vary``          under the public prefix, ``Vary: Cookie``    (one variant per cookie)
- ``/pub/private``       under the public prefix, ``private``         (never stored)
- ``/pub/setcookie``     under the public prefix, ``Set-Cookie``      (never stored)
- ``/pub/auth``          under the public prefix, ``Authorization`` with max-age only
                         (RFC 9111 3.5: not stored)
- ``/pub/mistake``       under the public prefix, a per-user body with max-age and no
                         ``Vary``: the author declared a personal page public.

A leak is a response carrying another user's marker (an anonymous page served to a logged-
in user on a public path is not one). Expected: 0 leaks on every endpoint but
``/pub/mistake``, and 0 Set-Cookie replays anywhere. On ``/pub/mistake`` the cache does
what it was told (``public`` promises that Cookie does not select the response; no cache
can tell a personal body from a shared one), so other users' pages ARE served there; the
test asserts that they are (which also proves the marker detector works) and documents it
as the price of a wrong ``public`` declaration. Even there no Set-Cookie is replayed.

It runs over the default in-process store and (marked ``redis``) over a RedisCache, where
responses are serialised and coalescing goes through the store's lease. The seed is
printed; rerun one with SCALEKIT_LEAK_SEED=<seed>.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from typing import Any

import pytest

from tests.web import _http_apps as h
from tests.web._http_apps import Reply, Request

make = h.make_fixture

SEED = int(os.environ.get("SCALEKIT_LEAK_SEED", "20261207"))
USERS = 1000
REQUESTS_PER_USER = 3
BATCH = 50

ENDPOINTS: dict[str, dict[str, str]] = {
    "/vary/profile": {"Cache-Control": "public, max-age=30", "Vary": "Cookie"},
    "/novary/profile": {"Cache-Control": "max-age=30"},
    "/public-cc/profile": {"Cache-Control": "public, max-age=30"},
    "/swr/profile": {"Cache-Control": "max-age=5, stale-while-revalidate=60"},
    "/setcookie/home": {"Cache-Control": "public, max-age=30", "Set-Cookie": "yes"},
    "/auth/profile": {"Cache-Control": "max-age=30"},
    "/pub/vary": {"Cache-Control": "public, max-age=30", "Vary": "Cookie"},
    "/pub/private": {"Cache-Control": "private, max-age=30"},
    "/pub/setcookie": {"Cache-Control": "public, max-age=30", "Set-Cookie": "yes"},
    "/pub/auth": {"Cache-Control": "max-age=30"},
    "/pub/mistake": {"Cache-Control": "max-age=30"},
}
MISTAKE = "/pub/mistake"


def identity(request: Request) -> str:
    authorization = request.header("authorization")
    if authorization:
        return authorization.removeprefix("Bearer ")
    cookie = request.header("cookie")
    if cookie:
        return cookie.partition("sid=")[2].partition(";")[0]
    return "anon"


def origin(request: Request) -> Reply:
    user = identity(request)
    rid = request.header("x-request-id") or "?"
    headers = dict(ENDPOINTS.get(request.path, {"Cache-Control": "no-store"}))
    if request.method != "GET" and request.method != "HEAD":
        headers = {"Cache-Control": "no-store"}
    if headers.pop("Set-Cookie", None):
        headers["Set-Cookie"] = f"sid={user}.{rid}; Path=/; HttpOnly"
    headers["X-User"] = user
    return Reply(200, headers, f"marker={user};rendered-for={rid}".encode())


def plan(rng: random.Random) -> list[dict[str, Any]]:
    """3 requests of each of 1,000 users, shuffled: anonymous or logged in, GET or POST."""
    paths = list(ENDPOINTS)
    requests = []
    for number in range(USERS):
        user = f"u{number}"
        for _ in range(REQUESTS_PER_USER):
            path = rng.choice(paths)
            anonymous = rng.random() < 0.3
            headers: dict[str, str] = {}
            if not anonymous:
                if "auth" in path:
                    headers["Authorization"] = f"Bearer {user}"
                else:
                    headers["Cookie"] = f"theme=dark; sid={user}"
            method = "POST" if rng.random() < 0.03 else "GET"
            requests.append(
                {
                    "method": method,
                    "path": path,
                    "headers": headers,
                    "user": user if headers else "anon",
                }
            )
    rng.shuffle(requests)
    for number, request in enumerate(requests):
        request["headers"]["X-Request-Id"] = f"r{number}"
    return requests


def test_no_response_reaches_another_user(make: h.Make) -> None:
    run_users(make(public=("/pub/",)))


@pytest.mark.redis
def test_no_response_reaches_another_user_through_redis(make: h.Make, redis_client: Any) -> None:
    """The same, with the responses serialised into a shared RedisCache (JSON values), where
    coalescing goes through the store's lease."""
    from scalekit.cache import RedisCache

    run_users(make(RedisCache(redis_client, prefix="leaks:"), public=("/pub/",)))


def run_users(d: h.Driver) -> None:
    print(f"leak test seed={SEED}")
    rng = random.Random(SEED)
    d.app.set(origin)
    d.app.yields = 3
    d.app.render_seconds = 0.001
    requests = plan(rng)
    leaks: Counter[str] = Counter()
    replays: list[str] = []
    problems: list[str] = []
    served = 0
    for start in range(0, len(requests), BATCH):
        batch = requests[start : start + BATCH]
        # hot keys: repeat a few requests of the batch so flights are joined
        batch = batch + [dict(r, headers=dict(r["headers"])) for r in rng.sample(batch, 10)]
        for number, request in enumerate(batch[-10:]):
            request["headers"]["X-Request-Id"] = f"r{start}-dup{number}"
        d.clock.advance(rng.choice([0, 0, 1, 3, 7, 20, 40]))
        responses = d.many([{k: r[k] for k in ("method", "path", "headers")} for r in batch])
        for request, got in zip(batch, responses, strict=True):
            served += 1
            where = f"{request['method']} {request['path']} {request['headers']}"
            if got.status != 200 or got.error is not None:
                problems.append(f"{where}: {got.status} {got.error!r}")
                continue
            if not got.all("cache-status"):
                problems.append(f"{where}: no Cache-Status")
            marker = got.body.decode().partition(";")[0].removeprefix("marker=")
            if got.header("x-user") != marker:
                problems.append(f"{where}: X-User {got.header('x-user')} with body of {marker}")
            if marker not in (request["user"], "anon"):
                leaks[request["path"]] += 1
            rid = request["headers"]["X-Request-Id"]
            replays += [
                f"{where}: {cookie}"
                for cookie in got.all("set-cookie")
                if not cookie.partition(";")[0].endswith(f".{rid}")
            ]
    stats = d.cache.stats()
    report = (
        f"seed={SEED} kind={d.kind} served={served} leaks={dict(leaks)} "
        f"replays={len(replays)} stats={stats}"
    )
    print(report)
    assert served >= USERS * REQUESTS_PER_USER
    assert problems == [], report
    assert replays == [], report
    assert {path: n for path, n in leaks.items() if path != MISTAKE} == {}, report
    assert leaks[MISTAKE] > 0, "the detector must see the pages of a wrong public declaration"
    assert stats.hits > 0, report
    assert stats.coalesced > 0, report
