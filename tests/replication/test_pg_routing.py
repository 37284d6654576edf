"""Routing SQLAlchemy sessions over real PostgreSQL streaming replicas.

``pg_cluster`` gives the local server two hot standbys: replica 1 replays at
once, replica 2 applies each commit 3 s late (``recovery_min_apply_delay``), so
a read that lands there right after a write misses it unless the router knows
better. ``inet_server_port()`` tells which server answered.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import Session

from scalekit.replication import ReplicaRouter
from scalekit.replication import sqlalchemy as sk
from tests.replication.pg_cluster import ReplicaCluster

pytestmark = pytest.mark.postgres

PRIMARY_PORT = 5432


def engine(url: str) -> Engine:
    return create_engine(url, pool_pre_ping=True, pool_size=8, connect_args={"connect_timeout": 2})


class Servers:
    def __init__(self, cluster: ReplicaCluster) -> None:
        self.cluster = cluster
        self.primary = engine(cluster.primary_url)
        self.fast, self.slow = cluster.replicas
        self.replicas = [engine(replica.url) for replica in cluster.replicas]
        self.port = {self.primary: PRIMARY_PORT}
        self.port.update({e: r.port for e, r in zip(self.replicas, cluster.replicas, strict=True)})

    def router(self, **options: Any) -> ReplicaRouter[Any]:
        return sk.pg_router(self.primary, self.replicas, **options)

    def dispose(self) -> None:
        for each in [self.primary, *self.replicas]:
            each.dispose()


@pytest.fixture(scope="module")
def servers(pg_cluster: ReplicaCluster) -> Iterator[Servers]:
    servers = Servers(pg_cluster)
    with servers.primary.begin() as connection:
        connection.exec_driver_sql("DROP TABLE IF EXISTS sk_notes")
        connection.exec_driver_sql(
            "CREATE TABLE sk_notes (id serial PRIMARY KEY, body text)"
            " WITH (autovacuum_enabled = false)"  # no surprise commits in the lag tests
        )
    pg_cluster.wait_caught_up()
    try:
        yield servers
    finally:
        servers.dispose()


def write_note(session: Session, body: str) -> int:
    note_id: int = session.execute(
        text("INSERT INTO sk_notes (body) VALUES (:body) RETURNING id"), {"body": body}
    ).scalar_one()
    session.commit()
    return note_id


def read_note(session: Session, note_id: int) -> tuple[str | None, int]:
    row = session.execute(
        text("SELECT (SELECT body FROM sk_notes WHERE id = :id), inet_server_port()"),
        {"id": note_id},
    ).one()
    return row[0], row[1]


# -- read your writes ------------------------------------------------------------


def test_token_mode_reads_every_write_within_a_session(servers: Servers) -> None:
    router = servers.router()
    Session = sk.routing_sessionmaker(router)
    answered: Counter[int] = Counter()
    seen = 0
    with Session() as session:
        for i in range(100):
            note = write_note(session, f"within {i}")
            body, port = read_note(session, note)
            seen += body == f"within {i}"
            answered[port] += 1
            session.commit()
    assert seen == 100
    assert answered[servers.slow.port] == 0  # 3 s behind: never caught up in time
    assert answered[servers.fast.port] > 0, answered  # not everything fell back


def test_token_mode_reads_every_write_across_sessions_of_one_context(servers: Servers) -> None:
    Session = sk.routing_sessionmaker(servers.router())
    seen = 0
    for i in range(100):
        with Session() as writer:
            note = write_note(writer, f"across {i}")
        with Session() as reader:
            body, _ = read_note(reader, note)
        seen += body == f"across {i}"
    assert seen == 100


def test_token_mode_reads_every_write_across_servers(servers: Servers) -> None:
    """One "server" (thread) writes and exports the token; another imports it."""
    router = servers.router()
    Session = sk.routing_sessionmaker(router)
    handoff: list[tuple[int, Any]] = []
    seen: list[bool] = []
    answered: Counter[int] = Counter()

    def app_server_1(i: int) -> None:
        with Session() as session:
            handoff.append((write_note(session, f"server {i}"), router.token()))

    def app_server_2(i: int) -> None:
        note, token = handoff.pop()
        with router.scope(token=token), Session() as session:
            body, port = read_note(session, note)
        seen.append(body == f"server {i}")
        answered[port] += 1

    for i in range(100):
        for step in (app_server_1, app_server_2):
            thread = threading.Thread(target=step, args=(i,))
            thread.start()
            thread.join()
    assert seen == [True] * 100
    assert answered[servers.slow.port] == 0


def test_without_read_your_writes_the_lagging_replica_serves_stale_reads(
    servers: Servers,
) -> None:
    """The control: the checks above can fail, and do, when the router does not care."""
    Session = sk.routing_sessionmaker(servers.router(read_your_writes=None))
    stale = 0
    for i in range(20):
        with Session() as session:
            note = write_note(session, f"control {i}")
            body, _ = read_note(session, note)
            stale += body is None
    assert stale >= 5  # about half the reads land on the replica 3 s behind


def test_window_mode_reads_from_the_primary_after_a_write(servers: Servers) -> None:
    router = servers.router(read_your_writes="window", window=5.0)
    Session = sk.routing_sessionmaker(router)
    with Session() as session:
        note = write_note(session, "window")
        assert read_note(session, note) == ("window", PRIMARY_PORT)
    assert router.stats().read_your_writes == 1


# -- where reads go --------------------------------------------------------------


def test_reads_spread_over_both_healthy_replicas(servers: Servers) -> None:
    Session = sk.routing_sessionmaker(servers.router())
    answered: Counter[int] = Counter()
    for _ in range(100):
        with Session() as session:
            answered[session.execute(text("SELECT inet_server_port()")).scalar_one()] += 1
    assert answered == {servers.fast.port: 50, servers.slow.port: 50}


def test_the_lagging_replica_gets_no_reads_over_max_lag_and_returns_once_caught_up(
    servers: Servers,
) -> None:
    router = servers.router(max_lag=1.0, probe_interval=0.1, read_your_writes=None)
    Session = sk.routing_sessionmaker(router)
    writing = threading.Event()
    writing.set()

    def keep_writing() -> None:
        with Session() as session:
            while writing.is_set():
                write_note(session, "load")
                time.sleep(0.02)

    def read_for(seconds: float) -> Counter[int]:
        answered: Counter[int] = Counter()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            with Session() as session:
                answered[session.execute(text("SELECT inet_server_port()")).scalar_one()] += 1
            time.sleep(0.005)
        return answered

    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        time.sleep(1.5)  # the slow replica is now about 3 s behind
        while_lagging = read_for(2.0)
    finally:
        writing.clear()
        writer.join()
    assert servers.slow.port not in while_lagging, while_lagging
    assert while_lagging[servers.fast.port] > 50
    assert router.stats().lagging == (servers.replicas[1],)
    lag = router.stats().lag[servers.replicas[1]]
    assert lag is not None
    assert lag > 1.0

    servers.cluster.wait_caught_up()
    caught_up = read_for(1.0)
    assert caught_up[servers.slow.port] > 20, caught_up
    assert router.stats().lagging == ()


def test_a_replica_stopped_mid_load_fails_no_read(servers: Servers) -> None:
    router = servers.router(read_your_writes=None, probe_interval=0.2)
    Session = sk.routing_sessionmaker(router)
    failures: list[BaseException] = []
    answered: Counter[int] = Counter()
    lock = threading.Lock()
    stopped = threading.Event()
    after_stop: Counter[int] = Counter()
    running = threading.Event()
    running.set()

    def client() -> None:
        while running.is_set():
            try:
                with Session() as session:
                    port = session.execute(text("SELECT inet_server_port()")).scalar_one()
                    session.execute(text("SELECT count(*) FROM sk_notes")).scalar_one()
            except BaseException as exc:
                failures.append(exc)
                return
            with lock:
                answered[port] += 1
                if stopped.is_set():
                    after_stop[port] += 1

    clients = [threading.Thread(target=client) for _ in range(4)]
    for thread in clients:
        thread.start()
    try:
        time.sleep(0.5)
        servers.fast.stop("immediate")
        stopped.set()
        time.sleep(1.0)
    finally:
        running.clear()
        for thread in clients:
            thread.join()
        servers.fast.start()
    assert failures == []
    assert answered[servers.fast.port] > 0  # it was serving before the stop
    assert sum(after_stop.values()) > 50
    assert set(after_stop) <= {servers.slow.port, PRIMARY_PORT, servers.fast.port}
    assert router.stats().failures + router.stats().probe_errors >= 1
    assert servers.replicas[0] not in router.healthy() or after_stop[servers.fast.port] == 0


def test_a_read_on_a_dead_connection_inside_a_session_is_retried(servers: Servers) -> None:
    """The replica dies between two reads of one transaction: the session rolls
    back (it has nothing to lose) and reads again elsewhere."""
    router = servers.router(read_your_writes=None)
    Session = sk.routing_sessionmaker(router)
    with Session() as session:
        first = session.execute(text("SELECT inet_server_port()")).scalar_one()
        victim = next(r for r in servers.cluster.replicas if r.port == first)
        victim.stop("immediate")
        try:
            second = session.execute(text("SELECT inet_server_port()")).scalar_one()
            session.commit()
        finally:
            victim.start()
    assert second != first
    assert router.stats().failures == 1


# -- the primary -----------------------------------------------------------------


def test_everything_in_a_router_transaction_goes_to_the_primary(servers: Servers) -> None:
    router = servers.router()
    Session = sk.routing_sessionmaker(router)
    with router.transaction(), Session() as session:
        ports = {session.execute(text("SELECT inet_server_port()")).scalar_one() for _ in range(5)}
        note = write_note(session, "in a transaction")
        assert read_note(session, note) == ("in a transaction", PRIMARY_PORT)
    assert ports == {PRIMARY_PORT}
    with router.use_primary(), Session() as session:
        assert session.execute(text("SELECT inet_server_port()")).scalar_one() == PRIMARY_PORT


def test_a_transaction_that_wrote_stays_on_the_primary(servers: Servers) -> None:
    Session = sk.routing_sessionmaker(servers.router(read_your_writes=None))
    with Session() as session:
        replica_port = session.execute(text("SELECT inet_server_port()")).scalar_one()
        assert replica_port != PRIMARY_PORT
        session.execute(text("UPDATE sk_notes SET body = body WHERE id = -1"))
        port = session.execute(text("SELECT inet_server_port()")).scalar_one()
        assert port == PRIMARY_PORT
        session.rollback()
        assert session.execute(text("SELECT inet_server_port()")).scalar_one() != PRIMARY_PORT


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT id FROM sk_notes LIMIT 1 FOR UPDATE",
        "SELECT id FROM sk_notes LIMIT 1 FOR SHARE",
        "SELECT nextval('sk_notes_id_seq')",
        "WITH gone AS (DELETE FROM sk_notes WHERE id = -1 RETURNING id) SELECT count(*) FROM gone",
    ],
)
def test_locking_and_writing_statements_go_to_the_primary(servers: Servers, statement: str) -> None:
    Session = sk.routing_sessionmaker(servers.router(read_your_writes=None))
    with Session() as session:
        session.execute(text(statement)).all()
        assert session.execute(text("SELECT inet_server_port()")).scalar_one() == PRIMARY_PORT


def test_orm_select_for_update_goes_to_the_primary(servers: Servers) -> None:
    from sqlalchemy import Column, Integer, MetaData, String, Table

    notes = Table(
        "sk_notes", MetaData(), Column("id", Integer, primary_key=True), Column("body", String)
    )
    Session = sk.routing_sessionmaker(servers.router(read_your_writes=None))
    with Session() as session:
        assert session.get_bind(clause=select(notes)).url in {r.url for r in servers.replicas}
        assert session.get_bind(clause=select(notes).with_for_update()) is servers.primary


# -- the probes ------------------------------------------------------------------


def test_lag_probe_is_zero_on_an_idle_caught_up_replica_whose_timestamp_is_old(
    servers: Servers,
) -> None:
    with servers.primary.begin() as connection:
        connection.exec_driver_sql("INSERT INTO sk_notes (body) VALUES ('idle')")
    replica = servers.replicas[0]
    for _ in range(5):  # until no commit anywhere on the server (autovacuum...) interferes
        servers.cluster.wait_caught_up()
        time.sleep(1.2)
        with replica.connect() as connection:
            naive = connection.exec_driver_sql(
                "SELECT extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8"
            ).scalar_one()
        lags = (
            sk.pg_lag_probe(replica),
            sk.pg_lag_probe(replica, primary=servers.primary),
            sk.PgLagProbe(servers.primary)(replica),
        )
        if naive > 1.0:
            break
    assert naive > 1.0  # what the naive formula reports
    assert lags == (0.0, 0.0, 0.0)


@pytest.mark.parametrize("sampled", [False, True])
def test_lag_probe_sees_the_delayed_replica_behind(servers: Servers, sampled: bool) -> None:
    probe: Any = functools.partial(sk.pg_lag_probe, primary=servers.primary)
    if sampled:
        probe = sk.PgLagProbe(servers.primary)
        assert probe(servers.replicas[1]) == 0.0  # the first sample
    with servers.primary.begin() as connection:
        connection.exec_driver_sql("INSERT INTO sk_notes (body) VALUES ('behind')")
    time.sleep(0.5)
    assert 0.4 < probe(servers.replicas[1]) < (1.0 if sampled else 1e9)
    if sampled:  # the replay timestamp can't tell: it is 0.5 s old on the fast one too
        assert probe(servers.replicas[0]) < 0.1
    servers.cluster.wait_caught_up()
    assert probe(servers.replicas[1]) == 0.0


def test_lag_probe_without_a_replay_timestamp_is_infinite(monkeypatch: pytest.MonkeyPatch) -> None:
    """A replica that has replayed nothing since it started, with WAL waiting."""
    rows = iter([(True, "0/3000100", "0/3000000", None)])
    monkeypatch.setattr(sk, "_query", lambda target, sql: next(rows))
    assert sk.pg_lag_probe("replica") == float("inf")


def test_lag_probe_on_a_server_not_in_recovery_is_zero(servers: Servers) -> None:
    assert sk.pg_lag_probe(servers.primary) == 0.0


def test_replay_position_and_commit_token_are_wal_positions(servers: Servers) -> None:
    with servers.primary.begin() as connection:
        connection.exec_driver_sql("INSERT INTO sk_notes (body) VALUES ('position')")
    token = sk.pg_commit_token(servers.primary)
    servers.fast.wait_replayed(token)
    assert sk.pg_replay_position(servers.replicas[0]) >= token
    assert sk.pg_replay_position(servers.primary) is None  # not in recovery: unknown
    assert sk.int_to_lsn(sk.lsn_to_int("16/B374D848")) == "16/B374D848"


# -- async -----------------------------------------------------------------------


def async_engine(url: str) -> AsyncEngine:
    return create_async_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 2})


def test_async_sessions_read_their_writes_and_spread_reads(servers: Servers) -> None:
    async def main() -> tuple[int, Counter[int], Counter[int]]:
        primary = async_engine(servers.cluster.primary_url)
        replicas = [async_engine(r.url) for r in servers.cluster.replicas]
        router = sk.pg_router(primary, replicas)
        Session = sk.async_routing_sessionmaker(router)
        seen = 0
        after_write: Counter[int] = Counter()
        for i in range(30):
            async with Session() as session:
                note = (
                    await session.execute(
                        text("INSERT INTO sk_notes (body) VALUES (:b) RETURNING id"),
                        {"b": f"async {i}"},
                    )
                ).scalar_one()
                await session.commit()
                row = (
                    await session.execute(
                        text(
                            "SELECT (SELECT body FROM sk_notes WHERE id = :i), inet_server_port()"
                        ),
                        {"i": note},
                    )
                ).one()
                seen += row[0] == f"async {i}"
                after_write[row[1]] += 1

        async def fresh_read() -> int:
            with router.scope():  # a new visitor, who wrote nothing
                return await port_of(Session)

        async def port_of(Session: Any) -> int:
            async with Session() as session:
                port: int = (await session.execute(text("SELECT inet_server_port()"))).scalar_one()
                return port

        spread = Counter(await asyncio.gather(*(fresh_read() for _ in range(20))))
        router.poll()  # outside any session's greenlet: the probes use a sync twin
        assert router.stats().probe_errors == 0
        assert router.healthy() == tuple(replicas)
        for each in [primary, *replicas]:
            await each.dispose()
        return seen, after_write, spread

    seen, after_write, spread = asyncio.run(main())
    assert seen == 30
    assert after_write[servers.slow.port] == 0
    assert set(spread) == {servers.fast.port, servers.slow.port}


def test_a_write_hidden_in_an_orm_select_runs_again_on_the_primary(servers: Servers) -> None:
    from sqlalchemy import func
    from sqlalchemy.exc import InternalError

    Session = sk.routing_sessionmaker(servers.router(read_your_writes=None))
    with Session() as session:
        assert session.execute(text("SELECT inet_server_port()")).scalar_one() != PRIMARY_PORT
        next_id = session.execute(select(func.nextval("sk_notes_id_seq"))).scalar_one()
        assert next_id > 0
        assert session.execute(text("SELECT inet_server_port()")).scalar_one() == PRIMARY_PORT
        session.commit()
    with Session() as session, session.begin():  # can't roll back for the caller: raised
        with pytest.raises(InternalError, match="read-only transaction"):
            session.execute(select(func.nextval("sk_notes_id_seq")))
        session.rollback()


def test_an_explicit_bind_to_the_primary_counts_as_a_write(servers: Servers) -> None:
    router = servers.router()
    Session = sk.routing_sessionmaker(router)
    with Session() as session:
        session.execute(
            text("INSERT INTO sk_notes (body) VALUES ('explicit')"),
            bind_arguments={"bind": servers.primary},
        )
        session.commit()
    assert router.token() is not None  # the commit was noted, with its token
    with Session() as session:
        session.execute(text("SELECT 1"), bind_arguments={"bind": servers.replicas[0]})
        assert not session._wrote


@pytest.mark.parametrize("snapshot_reads", [False, True])
def test_a_commit_that_flushes_never_loses_the_write_when_the_replica_died(
    servers: Servers, snapshot_reads: bool
) -> None:
    """The replica's connection dies between a read and a commit that flushes a write."""
    from sqlalchemy import Column, Integer, String
    from sqlalchemy.orm import DeclarativeBase

    class Base(DeclarativeBase):
        pass

    class Note(Base):
        __tablename__ = "sk_notes"
        id = Column(Integer, primary_key=True)
        body = Column(String)

    router = servers.router(read_your_writes=None)
    Session = sk.routing_sessionmaker(router, snapshot_reads=snapshot_reads)
    outcomes: Counter[str] = Counter()
    for i in range(10):
        body = f"flushed at commit {snapshot_reads} {i}"
        with Session() as session:
            port, pid = session.execute(text("SELECT inet_server_port(), pg_backend_pid()")).one()
            assert port != PRIMARY_PORT
            replica = next(e for e, p in servers.port.items() if p == port)
            with replica.connect() as admin:
                admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            session.add(Note(body=body))
            try:
                session.commit()
                committed = True
            except Exception:
                committed = False
        with servers.primary.connect() as connection:
            stored = connection.execute(
                text("SELECT count(*) FROM sk_notes WHERE body = :b"), {"b": body}
            ).scalar_one()
        assert stored or not committed, "commit() returned, and the row is not there"
        outcomes[f"{'committed' if committed else 'raised'}, {stored} stored"] += 1
    if not snapshot_reads:
        assert outcomes == {"committed, 1 stored": 10}  # autocommit reads: nothing to fail


def test_the_lag_probe_judges_replicas_on_their_own_when_the_primary_is_down(
    servers: Servers,
) -> None:
    dead = create_engine("postgresql+psycopg://postgres@127.0.0.1:1/test")
    probe = sk.PgLagProbe(lambda: dead)
    servers.cluster.wait_caught_up()
    assert probe(servers.replicas[0]) == 0.0
    dead.dispose()
