"""SQLAlchemy sessions that write to the primary, read from replicas, and read their writes.

Needs PostgreSQL: the primary is SCALEKIT_POSTGRES_URL (default
postgresql+psycopg://postgres@127.0.0.1:5432/test) and the replicas are
SCALEKIT_REPLICA_URLS (comma-separated streaming replicas of it). Without
SCALEKIT_REPLICA_URLS, the two "replicas" are STAND-INS: the primary itself, reached
under the application_name stand-in-replica-1 and -2, so the routing shows but nothing
replicates and no replica can lag; not being in recovery, they report no replay
position, so a read that must see a write goes to the primary. The example
creates, and drops at the end, a table example_replication_notes.

Run: python examples/replication_sqlalchemy.py
"""

from __future__ import annotations

import os
import sys
from typing import Any
from wsgiref.util import setup_testing_defaults

from sqlalchemy import Engine, create_engine, make_url, text
from sqlalchemy.orm import Session

from scalekit.replication import ReplicaRouterWSGIMiddleware
from scalekit.replication.sqlalchemy import int_to_lsn, pg_router, routing_sessionmaker

PRIMARY_URL = os.environ.get(
    "SCALEKIT_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REPLICA_URLS = [u for u in os.environ.get("SCALEKIT_REPLICA_URLS", "").split(",") if u.strip()]
WHO = "inet_server_port(), current_setting('application_name')"


def named(url: str, name: str) -> str:
    """``url`` with ``application_name=name``, unless it names one already."""
    parsed = make_url(url.strip())
    if "application_name" not in parsed.query:
        parsed = parsed.update_query_dict({"application_name": name})
    return parsed.render_as_string(hide_password=False)


def engine(url: str) -> Engine:
    # pool_pre_ping: a pooled connection to a replica that restarted is replaced, not used
    return create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 2})


stand_ins = not REPLICA_URLS
if stand_ins:
    REPLICA_URLS = [named(PRIMARY_URL, f"stand-in-replica-{i}") for i in (1, 2)]
    print("no SCALEKIT_REPLICA_URLS: the 2 replicas are STAND-INS, the primary under 2 names")
    print(
        "(not in recovery, they report no replay position: reads after a write go to the primary)"
    )
primary = engine(named(PRIMARY_URL, "example-primary"))
replicas = [engine(named(url, f"replica-{i}")) for i, url in enumerate(REPLICA_URLS, 1)]
try:
    with primary.connect() as connection:
        connection.exec_driver_sql("SELECT 1")
except Exception as exc:
    sys.exit(f"PostgreSQL is not reachable at {PRIMARY_URL}: {type(exc).__name__}: {exc}")

# token mode (the default of pg_router): a read goes to a replica that has replayed
# the WAL position of this context's last commit, else to the primary
router = pg_router(primary, replicas, max_lag=5.0, probe_interval=0.5)
Sessions = routing_sessionmaker(router)


def who(session: Session, note_id: int = 0) -> tuple[Any, str]:
    """(the note's body or None, which server answered) in one read."""
    sql = f"SELECT (SELECT body FROM example_replication_notes WHERE id = :id), {WHO}"
    body, port, app = session.execute(text(sql), {"id": note_id}).one()
    return body, f"from port {port}, application_name {app!r}"


found: list[bool] = []
try:
    with Sessions() as session:  # DDL is no read: it goes to the primary
        session.execute(text("DROP TABLE IF EXISTS example_replication_notes"))
        session.execute(
            text("CREATE TABLE example_replication_notes (id serial PRIMARY KEY, body text)")
        )
        session.commit()

        insert = "INSERT INTO example_replication_notes (body) VALUES (:b) RETURNING id"
        note_id: int = session.execute(text(insert), {"b": "hello"}).scalar_one()
        session.commit()  # the router notes the commit's WAL position: the token
        body, server = who(session, note_id)
        found.append(body == "hello")
        print(f"wrote note {note_id} (token {int_to_lsn(router.token())}), read {body!r} {server}")

    with router.scope():  # a fresh context, one that wrote nothing: plain reads
        for i in range(1, 5):
            with Sessions() as session:
                print(f"plain read {i}: answered {who(session)[1]}")

    with router.transaction(), Sessions() as session:  # everything here: the primary
        print(f"inside router.transaction(): a read answered {who(session)[1]}")
        update = "UPDATE example_replication_notes SET body = :b WHERE id = :id"
        session.execute(text(update), {"b": "hello again", "id": note_id})
        session.commit()

    # Two app servers, each with its own router (as two processes would have), behind
    # ReplicaRouterWSGIMiddleware: the token of a write on app-1 rides in a cookie to
    # app-2, whose next read must see the write.
    def notes_app(sessions: Any) -> Any:
        def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
            with sessions() as session:
                if environ["REQUEST_METHOD"] == "POST":
                    update = "UPDATE example_replication_notes SET body = :b WHERE id = :id"
                    session.execute(text(update), {"b": "hello from app-1", "id": note_id})
                    session.commit()  # its token goes into the response's cookie
                    answer = "updated"
                else:
                    body, server = who(session, note_id)
                    answer = f"{body}|{server}"
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [answer.encode()]

        return app

    def call(app: Any, method: str, cookie: str | None = None) -> tuple[str | None, str]:
        """One request, by hand (a WSGI server does this): (Set-Cookie, body)."""
        environ: dict[str, Any] = {"REQUEST_METHOD": method, "PATH_INFO": "/note"}
        if cookie:
            environ["HTTP_COOKIE"] = cookie
        setup_testing_defaults(environ)
        started: list[list[tuple[str, str]]] = []
        body = b"".join(app(environ, lambda status, headers: started.append(headers)))
        return dict(started[0]).get("Set-Cookie"), body.decode()

    router_2 = pg_router(primary, replicas, max_lag=5.0, probe_interval=0.5)
    app_1 = ReplicaRouterWSGIMiddleware(notes_app(Sessions), router, secure=False)
    app_2 = ReplicaRouterWSGIMiddleware(
        notes_app(routing_sessionmaker(router_2)), router_2, secure=False
    )
    set_cookie, _ = call(app_1, "POST")
    assert set_cookie is not None
    cookie = set_cookie.split(";")[0]
    print(f"app-1 wrote; its response sets the cookie {cookie}")
    _, answer = call(app_2, "GET", cookie)
    body, server = answer.split("|")
    found.append(body == "hello from app-1")
    print(f"app-2, given that cookie, read {body!r} {server}")

    stats = router.stats()
    # a session asks the router once per transaction, and not when pinned or after a write
    print(f"router: routed {stats.reads} reads ({stats.primary_reads} to the primary)")
    for replica in router.replicas:
        late = " (over max_lag: no reads)" if replica in stats.lagging else ""
        name, lag = replica.url.query.get("application_name"), stats.lag[replica]
        print(f"  {name}: {stats.replica_reads[replica]} reads, lag {lag} s{late}")
    if stand_ins:
        print("(the replicas above were stand-ins: the primary under another name)")
    print(f"every read of the note found it: {all(found) and len(found) == 2}")
finally:
    with primary.begin() as connection:
        connection.exec_driver_sql("DROP TABLE IF EXISTS example_replication_notes")
    for each in [primary, *replicas]:
        each.dispose()
