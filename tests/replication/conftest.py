"""``pg_cluster``: two streaming replicas of the test PostgreSQL server (see pg_cluster.py).

Built once per session, on top of ``postgres_dsn`` (skipped or failed without a server),
and stopped and removed at the end. Where this machine cannot build replicas (no
pg_basebackup, not root nor postgres, ...) the tests are skipped with the reason, or fail
when SCALEKIT_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.replication.pg_cluster import ClusterUnavailable, ReplicaCluster
from tests.services import services_required


def _start(primary_dsn: str) -> ReplicaCluster | ClusterUnavailable:
    try:
        return ReplicaCluster.start(primary_dsn)
    except ClusterUnavailable as exc:  # returned, so skip/fail is not raised while handling it
        return exc


@pytest.fixture(scope="session")
def pg_cluster(postgres_dsn: str) -> Iterator[ReplicaCluster]:
    """The primary of ``postgres_dsn`` with a fast replica and one lagging by 3 s."""
    cluster = _start(postgres_dsn)
    if isinstance(cluster, ClusterUnavailable):
        reason = f"cannot build PostgreSQL streaming replicas: {cluster}"
        if services_required():
            pytest.fail(f"{reason} (SCALEKIT_REQUIRE_SERVICES=1)", pytrace=False)
        pytest.skip(reason)
    try:
        yield cluster
    finally:
        cluster.close()
