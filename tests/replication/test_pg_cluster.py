"""The replica helper itself: real hot standbys of the test server, the second one 3 s behind."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from tests.replication.pg_cluster import Replica, ReplicaCluster, int_to_lsn, lsn_to_int

pytestmark = pytest.mark.postgres

PROBE_TABLE = "scalekit_cluster_probe"


def _fetch(dsn: str, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(dsn, autocommit=True, connect_timeout=2) as connection:
        cursor = connection.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


def _visible(replica: Replica, token: str) -> bool:
    import psycopg

    try:
        return bool(_fetch(replica.dsn, f"SELECT 1 FROM {PROBE_TABLE} WHERE token = %s", [token]))
    except psycopg.errors.UndefinedTable:  # not even the CREATE TABLE is applied yet
        return False


def _commit_probe(cluster: ReplicaCluster, token: str) -> tuple[float, int]:
    """Insert ``token`` on the primary; when the commit returned, and the WAL position after."""
    _fetch(cluster.primary_dsn, f"INSERT INTO {PROBE_TABLE} (token) VALUES (%s)", [token])
    return time.monotonic(), cluster.primary_lsn()


@pytest.fixture
def probe_tokens(pg_cluster: ReplicaCluster) -> Iterator[list[str]]:
    """Unique tokens for rows of the probe table, the rows deleted afterwards."""
    _fetch(
        pg_cluster.primary_dsn,
        f"CREATE TABLE IF NOT EXISTS {PROBE_TABLE}"
        " (token text PRIMARY KEY, made timestamptz NOT NULL DEFAULT now())",
    )
    tokens = [uuid.uuid4().hex for _ in range(2)]
    yield tokens
    _fetch(pg_cluster.primary_dsn, f"DELETE FROM {PROBE_TABLE} WHERE token = ANY(%s)", [tokens])


def test_lsn_to_int() -> None:
    assert lsn_to_int("16/B374D848") == (0x16 << 32) | 0xB374D848
    assert lsn_to_int("0/0") == 0
    assert int_to_lsn(lsn_to_int("16/B374D848")) == "16/B374D848"
    with pytest.raises(ValueError, match="not a WAL position"):
        lsn_to_int("B374D848")


def test_replicas_are_hot_standbys_on_their_own_ports(pg_cluster: ReplicaCluster) -> None:
    from psycopg.conninfo import conninfo_to_dict

    fast, lagging = pg_cluster.replicas
    assert (fast.name, fast.apply_delay) == ("replica1", 0.0)
    assert (lagging.name, lagging.apply_delay) == ("replica2", 3.0)
    assert pg_cluster.primary_url == pg_cluster.primary_dsn.replace(
        "postgresql://", "postgresql+psycopg://", 1
    )
    primary = conninfo_to_dict(pg_cluster.primary_dsn)  # postgres, test by default
    user, dbname = primary["user"], primary["dbname"]
    primary_port = _fetch(pg_cluster.primary_dsn, "SELECT inet_server_port()")[0][0]
    assert len({primary_port, fast.port, lagging.port}) == 3
    for replica in pg_cluster.replicas:
        assert replica.dsn == f"postgresql://{user}@127.0.0.1:{replica.port}/{dbname}"
        assert replica.url == f"postgresql+psycopg://{user}@127.0.0.1:{replica.port}/{dbname}"
        assert replica.running()
        rows = _fetch(
            replica.dsn,
            "SELECT pg_is_in_recovery(), inet_server_port(),"
            " (SELECT status FROM pg_stat_wal_receiver)",
        )
        assert rows == [(True, replica.port, "streaming")]
    assert _fetch(pg_cluster.primary_dsn, "SELECT pg_is_in_recovery()") == [(False,)]


def test_a_commit_reaches_the_fast_replica_at_once_and_the_lagging_one_after_3_s(
    pg_cluster: ReplicaCluster, probe_tokens: list[str]
) -> None:
    fast, lagging = pg_cluster.replicas
    token = probe_tokens[0]
    committed, lsn = _commit_probe(pg_cluster, token)
    assert not _visible(lagging, token)

    while not _visible(fast, token):
        assert time.monotonic() - committed < 2.0, "the fast replica took over 2 s"
        time.sleep(0.01)
    fast.wait_replayed(lsn, timeout=2.0)
    assert not _visible(lagging, token), "the lagging replica is as fast as the other"
    assert lagging.replay_lsn() < lsn

    with pytest.raises(TimeoutError, match="has replayed the WAL up to"):
        lagging.wait_replayed(lsn, timeout=0.2)

    # Right away, so that its target is the commit (give or take other sessions' WAL of
    # the last few ms: each commit made later would hold the lagging replica up longer).
    pg_cluster.wait_caught_up(timeout=10.0)
    waited = time.monotonic() - committed
    lagging.wait_replayed(lsn, timeout=0.0)
    assert _visible(lagging, token)
    assert lagging.apply_delay - 0.5 <= waited < lagging.apply_delay + 3.0


def test_a_stopped_replica_refuses_connections_and_streams_again_once_started(
    pg_cluster: ReplicaCluster, probe_tokens: list[str]
) -> None:
    import psycopg

    fast = pg_cluster.replicas[0]
    fast.stop()
    try:
        assert not fast.running()
        fast.stop()  # idempotent
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(fast.dsn, connect_timeout=2).close()
    finally:
        fast.start()
    fast.start()  # idempotent
    assert fast.running()
    assert _fetch(fast.dsn, "SELECT status FROM pg_stat_wal_receiver") == [("streaming",)]

    token = probe_tokens[1]
    _, lsn = _commit_probe(pg_cluster, token)
    fast.wait_replayed(lsn, timeout=5.0)
    assert _visible(fast, token)
