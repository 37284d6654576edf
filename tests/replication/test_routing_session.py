"""RoutingSession decisions that need no database: what is a read, what is a write."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import column, create_engine, insert, select, table, text, update

from scalekit.errors import ConfigurationError
from scalekit.replication import ReplicaRouter
from scalekit.replication import sqlalchemy as sk
from scalekit.replication.sqlalchemy import _is_read

t = table("t", column("id"), column("x"))

CLAUSES: dict[str, tuple[Any, bool]] = {
    "select": (select(t), True),
    "select ... for update": (select(t).with_for_update(), False),
    "select ... for share": (select(t).with_for_update(read=True), False),
    "insert": (insert(t).values(x=1), False),
    "update": (update(t).values(x=1), False),
    "a select of a select's cte": (select(select(t).cte()), True),
    "a select of an insert's cte": (select(insert(t).values(x=1).returning(t.c.id).cte()), False),
    "a select from an update's cte": (
        select(t).select_from(update(t).values(x=1).returning(t.c.id).cte()),
        False,
    ),
    "add_cte(insert)": (select(t).add_cte(insert(t).values(x=1).cte()), False),
    "text select": (text("SELECT 1"), True),
    "text select, parenthesised": (text("  (SELECT 1) UNION (SELECT 2)"), True),
    "text show": (text("SHOW server_version"), True),
    "text select;": (text("SELECT 1;"), True),
    "text select; delete": (text("SELECT 1; DELETE FROM t"), False),
    "text update": (text("UPDATE t SET x = 1"), False),
    "text with ... delete": (text("WITH d AS (DELETE FROM t RETURNING id) SELECT * FROM d"), False),
    "text for update": (text("SELECT * FROM t FOR UPDATE"), False),
    "text for no key update": (text("SELECT * FROM t FOR NO KEY UPDATE"), False),
    "text select into": (text("SELECT * INTO t2 FROM t"), False),
    "text nextval": (text("SELECT nextval('s')"), False),
    "text setval": (text("SELECT setval('s', 1)"), False),
    "text advisory lock": (text("SELECT pg_advisory_lock(1)"), False),
    "text try advisory xact lock": (text("SELECT pg_try_advisory_xact_lock(1)"), False),
    "text explain analyze": (text("EXPLAIN ANALYZE DELETE FROM t"), False),
    "textual select": (text("SELECT * FROM t").columns(t.c.id), True),
    "textual update returning": (text("UPDATE t SET x = 1 RETURNING id").columns(t.c.id), False),
    "textual for update": (text("SELECT * FROM t FOR UPDATE").columns(t.c.id), False),
}


@pytest.mark.parametrize("name", list(CLAUSES))
def test_what_is_a_read(name: str) -> None:
    clause, read = CLAUSES[name]
    assert _is_read(clause) is read
    assert _is_read(clause) is read  # the cached verdict too


def router() -> ReplicaRouter[Any]:
    primary = create_engine("postgresql+psycopg://app@primary/app")
    replicas = [create_engine(f"postgresql+psycopg://app@replica-{i}/app") for i in (1, 2)]
    return ReplicaRouter(primary, replicas, read_your_writes=None)


def test_reads_go_to_one_replica_per_transaction_and_writes_to_the_primary() -> None:
    r = router()
    with sk.routing_sessionmaker(r)() as session:
        first = session.get_bind(clause=select(t))
        assert first.url.host == "replica-1"
        assert first.get_execution_options()["isolation_level"] == "AUTOCOMMIT"
        assert session.get_bind(clause=select(t)) is first
        assert session.get_bind(clause=insert(t)) is r.primary
        assert session.get_bind(clause=select(t)) is r.primary  # it wrote


def test_snapshot_reads_run_in_a_transaction_on_the_replica() -> None:
    r = router()
    with sk.routing_sessionmaker(r, snapshot_reads=True)() as session:
        assert session.get_bind(clause=select(t)) is r.replicas[0]


def test_inspecting_the_bind_is_not_a_write() -> None:
    r = router()
    with sk.routing_sessionmaker(r)() as session:
        assert session.get_bind().dialect.name == "postgresql"
        assert session.get_bind(clause=select(t)) in {
            sk._autocommit(replica) for replica in r.replicas
        }


def test_bind_and_binds_are_refused() -> None:
    r = router()
    with pytest.raises(ConfigurationError, match="from the router"):
        sk.routing_sessionmaker(r, bind=r.primary)()
    with pytest.raises(ConfigurationError, match="from the router"):
        sk.routing_sessionmaker(r, binds={t: r.primary})()


def test_a_router_with_several_primaries_is_refused() -> None:
    from scalekit.sharding import HashRing

    several = ReplicaRouter(["p1", "p2"], [], sharder=HashRing(["p1", "p2"]))
    with pytest.raises(ConfigurationError, match="one primary"):
        sk.RoutingSession(router=several, commit_token=None)


# -- without greenlet (issue 13, item 14) ------------------------------------------------

NO_GREENLET = r'''
import sys

class NoGreenlet:
    """greenlet is not installed (it is optional since SQLAlchemy 2.1)."""

    def find_spec(self, name, path=None, target=None):
        if name == "greenlet" or name.startswith("greenlet."):
            raise ImportError("No module named 'greenlet' (blocked by the test)")
        return None

sys.meta_path.insert(0, NoGreenlet())
for name in [n for n in sys.modules if n == "greenlet" or n.startswith("greenlet.")]:
    del sys.modules[name]

from sqlalchemy import create_engine, text
from scalekit.replication import ReplicaRouter
from scalekit.replication import sqlalchemy as sk

assert "greenlet" not in sys.modules
assert "sqlalchemy.ext.asyncio" not in sys.modules

primary = create_engine("sqlite://")
replica = create_engine("sqlite://")
router = ReplicaRouter(primary, [replica], position_probe=None)
Session = sk.routing_sessionmaker(router)
with Session() as session:
    assert session.execute(text("SELECT 1")).scalar() == 1
    session.execute(text("CREATE TABLE t (x int)"))
    session.commit()
assert router.stats().writes == 1
assert sk._probe_engine(replica) is replica
try:  # SQLAlchemy 2.1 refuses here; 2.0 only when a session first awaits
    sk.async_routing_sessionmaker(router)
except ImportError as exc:
    assert "greenlet" in str(exc), exc
print("sync routing works without greenlet")
'''


def test_the_module_imports_and_routes_without_greenlet() -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "src"), str(root)])}
    result = subprocess.run(
        [sys.executable, "-c", NO_GREENLET], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "sync routing works without greenlet" in result.stdout


# -- arguments (issue 13, item 12) -----------------------------------------------------


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"router": "router"}, "router"),
        ({"snapshot_reads": "yes"}, "snapshot_reads"),
        ({"snapshot_reads": 1}, "snapshot_reads"),
        ({"commit_token": 3}, "commit_token"),
    ],
)
def test_session_makers_refuse_bad_arguments(options: dict[str, Any], match: str) -> None:
    from scalekit.errors import ArgumentTypeError

    router = ReplicaRouter(create_engine("sqlite://"), [create_engine("sqlite://")])
    arguments = {"router": router, **options}
    for make in (sk.routing_sessionmaker, sk.async_routing_sessionmaker):
        with pytest.raises(ArgumentTypeError, match=match):
            make(**arguments)


@pytest.mark.parametrize("samples", [0, 1, True, 1.5, None, 10**400])
def test_pg_lag_probe_refuses_bad_sample_counts(samples: Any) -> None:
    with pytest.raises((ConfigurationError, TypeError), match="samples"):
        sk.PgLagProbe(create_engine("sqlite://"), samples=samples)
