"""scalekit.replication: what routing adds to a statement, next to the statement.

The issue's target: routing adds under 5% to a ``SELECT 1`` round trip on
loopback. Measured on the PostgreSQL at 127.0.0.1:5432, in one run:

- the router's decisions alone (pure Python, no I/O): ``for_read()`` with no
  write in the context, ``for_read()`` in token mode with a token every replica
  has replayed, and ``for_write()``;
- ``SELECT 1`` on one psycopg connection (the wire floor), through a plain
  SQLAlchemy ``Session`` bound to one engine, and through a ``RoutingSession``
  whose router has two replica engines (on the same server, so both sides pay
  the same round trip and the difference is routing alone): per statement
  inside one transaction, and per transaction (a new session per read: one
  router pick, one pool checkout). Routing sessions read replicas in
  autocommit, so the plain session does too; a plain session in SQLAlchemy's
  default transaction (BEGIN, SELECT, ROLLBACK) is shown beside them;
- ``test_routing_overhead``: the routed and the plain session, interleaved
  (this machine is shared, so separate runs drift); the ratio is recorded in
  ``extra_info``.

PostgreSQL cases are skipped without a server (failed with SCALEKIT_REQUIRE_SERVICES=1).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from tests.services import POSTGRES_DSN, probe_postgres, require_service

from scalekit._bench import decision_router

URL = POSTGRES_DSN.replace("postgresql://", "postgresql+psycopg://", 1)


def test_for_read(benchmark: Any) -> None:
    benchmark.group = "router decision (pure Python)"
    router = decision_router("window")
    assert benchmark(router.for_read) in ("replica-a", "replica-b")


def test_for_read_with_a_token(benchmark: Any) -> None:
    benchmark.group = "router decision (pure Python)"
    router = decision_router("token")
    assert benchmark(router.for_read) in ("replica-a", "replica-b")


def test_for_write(benchmark: Any) -> None:
    benchmark.group = "router decision (pure Python)"
    router = decision_router(None)
    assert benchmark(router.for_write) == "primary"


# -- carrying the token: what the middleware adds to one request --------------------


def _wsgi_app(router: Any) -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        router.for_read()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    return app


def _wsgi_request(app: Any) -> Callable[[], bytes]:
    from wsgiref.util import setup_testing_defaults

    environ: dict[str, Any] = {"HTTP_COOKIE": "session=abc; scalekit_rw=50"}
    setup_testing_defaults(environ)
    return lambda: b"".join(app(dict(environ), lambda status, headers: None))


def test_wsgi_request_bare(benchmark: Any) -> None:
    benchmark.group = "one WSGI request (token in the cookie)"
    router = decision_router("token")
    assert benchmark(_wsgi_request(_wsgi_app(router))) == b"ok"


def test_wsgi_request_through_the_middleware(benchmark: Any) -> None:
    from scalekit.replication import ReplicaRouterWSGIMiddleware

    benchmark.group = "one WSGI request (token in the cookie)"
    router = decision_router("token")
    app = ReplicaRouterWSGIMiddleware(_wsgi_app(router), router)
    assert benchmark(_wsgi_request(app)) == b"ok"


# -- on PostgreSQL ---------------------------------------------------------------


class Setup:
    def __init__(self) -> None:
        from sqlalchemy import create_engine

        from scalekit.replication import sqlalchemy as sk

        self.primary = create_engine(URL)
        self.replicas = [create_engine(f"{URL}?application_name=replica-{name}") for name in "ab"]
        self.router = sk.pg_router(self.primary, self.replicas, read_your_writes=None)
        # routing sessions read from replicas in autocommit: the plain side does too,
        # so both do the same work on the wire and the difference is routing
        self.plain = self.replicas[0].execution_options(isolation_level="AUTOCOMMIT")
        self.routed = sk.routing_sessionmaker(self.router)

    def dispose(self) -> None:
        for engine in [self.primary, *self.replicas]:
            engine.dispose()


@pytest.fixture(scope="module")
def setup() -> Iterator[Setup]:
    require_service("PostgreSQL", POSTGRES_DSN, probe_postgres)
    setup = Setup()
    try:
        yield setup
    finally:
        setup.dispose()


SELECT_1 = "SELECT 1"


def test_psycopg_select_1(benchmark: Any) -> None:
    require_service("PostgreSQL", POSTGRES_DSN, probe_postgres)
    import psycopg

    benchmark.group = "SELECT 1 per statement, one transaction"
    with psycopg.connect(POSTGRES_DSN) as connection:
        assert benchmark(lambda: connection.execute(SELECT_1).fetchone()) == (1,)


def plain_statements(setup: Setup) -> tuple[Any, Callable[[], Any]]:
    from sqlalchemy import text
    from sqlalchemy.orm import Session

    session = Session(setup.plain)
    statement = text(SELECT_1)
    return session, lambda: session.execute(statement).scalar_one()


def routed_statements(setup: Setup) -> tuple[Any, Callable[[], Any]]:
    from sqlalchemy import text

    session = setup.routed()
    statement = text(SELECT_1)
    return session, lambda: session.execute(statement).scalar_one()


def test_sqlalchemy_session_select_1(benchmark: Any, setup: Setup) -> None:
    benchmark.group = "SELECT 1 per statement, one transaction"
    session, run = plain_statements(setup)
    with session:
        assert benchmark(run) == 1


def test_routing_session_select_1(benchmark: Any, setup: Setup) -> None:
    benchmark.group = "SELECT 1 per statement, one transaction"
    session, run = routed_statements(setup)
    with session:
        assert benchmark(run) == 1


def plain_transaction(setup: Setup, engine: Any = None) -> Callable[[], Any]:
    from sqlalchemy import text
    from sqlalchemy.orm import sessionmaker

    plain = sessionmaker(setup.plain if engine is None else engine)
    statement = text(SELECT_1)

    def run() -> Any:
        with plain() as session:
            return session.execute(statement).scalar_one()

    return run


def routed_transaction(setup: Setup) -> Callable[[], Any]:
    from sqlalchemy import text

    statement = text(SELECT_1)

    def run() -> Any:
        with setup.routed() as session:
            return session.execute(statement).scalar_one()

    return run


def test_sqlalchemy_session_per_read(benchmark: Any, setup: Setup) -> None:
    benchmark.group = "SELECT 1 in a new session per read"
    assert benchmark(plain_transaction(setup)) == 1


def test_sqlalchemy_session_per_read_in_a_transaction(benchmark: Any, setup: Setup) -> None:
    """SQLAlchemy's default: BEGIN, SELECT 1, ROLLBACK (what routing saves on replicas)."""
    benchmark.group = "SELECT 1 in a new session per read"
    assert benchmark(plain_transaction(setup, setup.replicas[0])) == 1


def test_routing_session_per_read(benchmark: Any, setup: Setup) -> None:
    benchmark.group = "SELECT 1 in a new session per read"
    assert benchmark(routed_transaction(setup)) == 1


def interleaved(
    routed: Callable[[], Any], plain: Callable[[], Any], rounds: int
) -> dict[str, float]:
    """Medians per call of each, in alternating batches of 100: wall time, and the
    CPU time of this process. The CPU difference is what routing adds; the wall
    times carry the round trip, and its noise, which is larger than that."""
    samples: dict[str, list[float]] = {"rw": [], "pw": [], "rc": [], "pc": []}
    for _ in range(rounds):
        for run, wall, cpu in ((routed, "rw", "rc"), (plain, "pw", "pc")):
            started, cpu_started = time.perf_counter(), time.process_time()
            for _ in range(100):
                run()
            samples[wall].append((time.perf_counter() - started) / 100)
            samples[cpu].append((time.process_time() - cpu_started) / 100)
    median = {key: statistics.median(values) for key, values in samples.items()}
    added = median["rc"] - median["pc"]
    return {
        "routed_us": round(median["rw"] * 1e6, 1),
        "plain_us": round(median["pw"] * 1e6, 1),
        "added_cpu_us": round(added * 1e6, 2),
        "added_pct": round(added / median["pw"] * 100, 2),
    }


def test_routing_overhead(benchmark: Any, setup: Setup) -> None:
    """The routed session over the plain one, per statement and per session, interleaved."""
    benchmark.group = "routing overhead, interleaved (target < 5%)"
    routed_session, routed = routed_statements(setup)
    plain_session, plain = plain_statements(setup)
    with routed_session, plain_session:
        statement = benchmark.pedantic(
            interleaved, args=(routed, plain, 30), rounds=1, iterations=1
        )
    per_session = interleaved(routed_transaction(setup), plain_transaction(setup), 30)
    benchmark.extra_info.update(
        {f"statement_{k}": v for k, v in statement.items()}
        | {f"session_{k}": v for k, v in per_session.items()}
    )
    assert statement["routed_us"] > 0
    assert per_session["routed_us"] > 0
