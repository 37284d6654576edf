"""SQLAlchemy sessions that route through a :class:`~scalekit.replication.ReplicaRouter`.

Needs the ``sql`` extra (SQLAlchemy 2). The router's targets are engines (or
async engines for :func:`async_routing_sessionmaker`). A routing session sends
flushes, DML, ``SELECT ... FOR UPDATE``, and every statement of a transaction
that has written, to the primary; other reads go to the replica the router
picks, the same one for the whole transaction. After a commit that wrote, it
tells the router: with PostgreSQL, the WAL position of the commit is the causal
token of ``read_your_writes="token"``.

:func:`pg_router` builds a router with PostgreSQL's probes wired in::

    router = pg_router(primary_engine, [replica_engine_1, replica_engine_2], max_lag=5)
    Session = routing_sessionmaker(router)
"""

from __future__ import annotations

import bisect
import logging
import math
import re
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, SessionTransaction, sessionmaker
from sqlalchemy.orm.session import SessionTransactionOrigin
from sqlalchemy.sql.elements import TextClause
from sqlalchemy.sql.selectable import CTE, TextualSelect

from scalekit._validate import check_bool, check_count
from scalekit.errors import ArgumentTypeError, ConfigurationError
from scalekit.replication._router import ReplicaRouter, is_connection_error

if TYPE_CHECKING:
    # The asyncio parts need greenlet, optional since SQLAlchemy 2.1: they are
    # imported where they are used, so sync-only users need no greenlet.
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

_ASYNCIO = "sqlalchemy.ext.asyncio"


def _is_async_engine(target: Any) -> bool:
    """Whether ``target`` is an ``AsyncEngine``, without importing the asyncio
    extension: an async engine exists only once that extension is imported."""
    module = sys.modules.get(_ASYNCIO)
    return module is not None and isinstance(target, module.AsyncEngine)


def _in_greenlet() -> bool:
    """Whether this code runs inside SQLAlchemy's greenlet (an async session's I/O);
    False whenever the asyncio extension, and so greenlet, was never loaded."""
    if sys.modules.get(_ASYNCIO) is None:
        return False
    try:
        from sqlalchemy.util.concurrency import in_greenlet as sqlalchemy_in_greenlet
    except ImportError:  # pragma: no cover - an older SQLAlchemy 2.0
        return False  # probes of async engines then always use the sync twin
    return bool(sqlalchemy_in_greenlet())


__all__ = [
    "PgLagProbe",
    "RoutingSession",
    "async_routing_sessionmaker",
    "int_to_lsn",
    "is_disconnect",
    "lsn_to_int",
    "pg_commit_token",
    "pg_lag_probe",
    "pg_replay_position",
    "pg_router",
    "routing_sessionmaker",
]

_log = logging.getLogger("scalekit.replication")

if TYPE_CHECKING:
    from typing import TypeAlias

    Target: TypeAlias = Engine | AsyncEngine
CommitToken = Callable[[Engine], Any]

# A text() statement is a read when it starts with one of these and locks nothing.
_READ = re.compile(r"\s*(?:\(\s*)*(?:SELECT|SHOW|VALUES|TABLE|EXPLAIN)\b", re.IGNORECASE)
_NOT_READ = re.compile(
    r"\bFOR\s+(?:UPDATE|SHARE|NO\s+KEY\s+UPDATE|KEY\s+SHARE)\b|\bINTO\b|\bANALYZE\b"
    r"|\b(?:nextval|setval|pg_(?:try_)?advisory\w*)\s*\("  # writes, or locks, in a SELECT
    r"|;\s*\S",  # a second statement
    re.IGNORECASE,
)


_READ_ONLY_TRANSACTION = "25006"  # what a hot standby answers to a write
_TEXT_IS_READ: dict[str, bool] = {}  # the verdicts on recent text() statements


def lsn_to_int(lsn: str) -> int:
    """A PostgreSQL WAL position (``pg_lsn``, like ``"16/B374D848"``) as an int.

    >>> lsn_to_int("16/B374D848")
    97500059720
    """
    high, _, low = lsn.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def int_to_lsn(position: int) -> str:
    """The inverse of :func:`lsn_to_int`.

    >>> int_to_lsn(97500059720)
    '16/B374D848'
    """
    return f"{position >> 32:X}/{position & 0xFFFFFFFF:X}"


def _engine(target: Any) -> Engine:
    """The sync engine of ``target`` (an async engine's ``sync_engine``)."""
    return cast(Engine, getattr(target, "sync_engine", target))


def _query(target: Any, sql: str) -> Any:
    with _probe_engine(target).connect() as connection:
        return connection.exec_driver_sql(sql).one()


_SYNC_TWINS: weakref.WeakKeyDictionary[Any, Engine] = weakref.WeakKeyDictionary()


def _probe_engine(target: Any) -> Engine:
    """The engine a probe queries ``target`` with. An async engine's own works only
    inside a greenlet (an async session's I/O); elsewhere (a poller thread, a
    direct ``for_read()``) a psycopg async engine gets a small sync twin on the
    same URL, so probing never needs a greenlet."""
    if not _is_async_engine(target) or _in_greenlet():
        return _engine(target)
    twin = _SYNC_TWINS.get(target)
    if twin is None:
        if target.dialect.driver != "psycopg":
            return _engine(target)  # no sync twin of this driver: fails here
        url = target.url.set(drivername="postgresql+psycopg")
        twin = _SYNC_TWINS[target] = create_engine(url, pool_size=2, pool_pre_ping=True)
        weakref.finalize(target, twin.dispose)  # close its connections with the original
    return twin


def pg_commit_token(primary: Any) -> int:
    """The causal token of a commit just made on ``primary``: its WAL position.

    Read after the commit returns, so it covers the commit (and maybe more).
    ``pg_current_wal_insert_lsn()`` is used rather than ``pg_current_wal_lsn()``:
    with ``synchronous_commit = off`` a commit's record may not be written yet,
    but it is always inserted.
    """
    (lsn,) = _query(primary, "SELECT pg_current_wal_insert_lsn()::text")
    return lsn_to_int(lsn)


def pg_replay_position(replica: Any) -> int | None:
    """How far ``replica`` has replayed the primary's WAL (``pg_last_wal_replay_lsn()``),
    as an int; None when that is unknown: it has replayed nothing yet, or it is not
    in recovery at all (promoted, perhaps without the primary's last writes), so it
    serves no read that waits for a token."""
    (lsn,) = _query(
        replica,
        "SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() END::text",
    )
    return None if lsn is None else lsn_to_int(lsn)


def pg_lag_probe(replica: Any, *, primary: Any = None) -> float:
    """Seconds ``replica`` is behind: ``now() - pg_last_xact_replay_timestamp()``,
    0 when it has replayed everything there is.

    The traps of the plain formula are handled:

    - An idle replica's replay timestamp is old although nothing is missing: when
      everything received is replayed (or, given ``primary``, everything the
      primary has written), the lag is 0.
    - A replica that has replayed nothing since it started has no replay
      timestamp while WAL waits unapplied: that is infinite lag, not none.

    Given ``primary`` (use ``functools.partial``), "everything" is the WAL the
    primary has flushed, read first (the sturdier source); without it, what the
    replica has received, which misses WAL it has not even received yet (a
    broken stream).
    """
    target = None if primary is None else _flushed(primary)
    return _timestamp_lag(_query(replica, _REPLICA_STATE), target)


# what a lag probe reads on a replica, in one query
_REPLICA_STATE = (
    "SELECT pg_is_in_recovery(), pg_last_wal_receive_lsn()::text,"
    " pg_last_wal_replay_lsn()::text,"
    " extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8"
)


def _flushed(primary: Any) -> int:
    # flushed WAL, not inserted: the primary may hold records (a standby
    # snapshot, say) in memory for a while, and no replica can have those
    (current,) = _query(primary, "SELECT pg_current_wal_flush_lsn()::text")
    return lsn_to_int(current)


def _timestamp_lag(state: Any, target: int | None) -> float:
    """:func:`pg_lag_probe`'s answer from a replica's ``_REPLICA_STATE`` and the WAL
    position ``target`` that counts as everything (None: what it has received)."""
    recovering, received, replayed, age = state
    if not recovering:
        return 0.0
    replayed_at = None if replayed is None else lsn_to_int(replayed)
    if target is None and received is not None:
        target = lsn_to_int(received)
    if replayed_at is not None and target is not None and replayed_at >= target:
        return 0.0
    if age is None:
        return math.inf
    return max(float(age), 0.0)


class PgLagProbe:
    """Replica lag measured against the primary's WAL history, as PostgreSQL's own
    ``pg_stat_replication.replay_lag`` is: a replica that has replayed what the
    primary had flushed at time *t* is ``now - t`` behind.

    Each call samples the primary's flushed position with the time, then reads
    the replica's replayed position; the lag is the age of the newest sample the
    replica has reached, 0 when it has everything. Unlike the replay timestamp,
    this is right for idle replicas and for replicas applying with a delay, and
    an unapplied record of no transaction (a standby snapshot) does not make a
    caught-up replica look seconds behind. The precision is the probe interval;
    before the replica reaches the first sample, :func:`pg_lag_probe` answers.

    Runtime complexity: O(log samples) per call, 2 queries.
    """

    def __init__(self, primary: Any, *, samples: int = 1024) -> None:
        samples = check_count(samples, "samples", minimum=2)
        self.primary = primary  # an engine, or a callable returning the current one
        self._positions: list[int] = []  # increasing, with the last time seen at each
        self._times: list[float] = []
        self._limit = samples
        self._lock = threading.Lock()

    def __call__(self, replica: Any) -> float:
        primary = self.primary() if callable(self.primary) else self.primary
        try:
            flushed = _flushed(primary)
        except Exception:
            # the primary's trouble is not the replica's: judge it on its own
            _log.warning("reading the primary's WAL position failed", exc_info=True)
            return pg_lag_probe(replica)
        now = time.monotonic()
        self._sample(flushed, now)
        state = _query(replica, _REPLICA_STATE)
        recovering, _, replayed, _ = state
        if recovering and replayed is not None:
            with self._lock:
                index = bisect.bisect_right(self._positions, lsn_to_int(replayed)) - 1
                if index == len(self._positions) - 1:
                    return 0.0
                if index >= 0:
                    return max(now - self._times[index], 0.0)
        return _timestamp_lag(state, flushed)  # not in recovery, or before the first sample

    def _sample(self, position: int, now: float) -> None:
        with self._lock:
            positions, times = self._positions, self._times
            if positions and position <= positions[-1]:
                times[-1] = now  # the primary still had (at least) this much now
                return
            positions.append(position)
            times.append(now)
            if len(positions) > self._limit:
                del positions[: len(positions) // 2]
                del times[: len(times) // 2]

    def __repr__(self) -> str:
        return f"PgLagProbe({self.primary!r})"


def is_disconnect(exc: BaseException) -> bool:
    """Whether ``exc`` means the database could not be reached (connection refused,
    dropped, or the server shutting down), so another target should be tried.
    Errors of the query itself (syntax, constraint, recovery conflicts) are not."""
    if is_connection_error(exc):
        return True
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if sqlstate is None:
        # raised by the driver itself, not the server: the connection failed
        return type(exc.orig).__name__ in ("OperationalError", "InterfaceError")
    return str(sqlstate).startswith(("08", "57P"))


def pg_router(primary: Target, replicas: Sequence[Target], **options: Any) -> ReplicaRouter[Any]:
    """A :class:`~scalekit.replication.ReplicaRouter` over PostgreSQL engines, with
    ``read_your_writes="token"``, :func:`pg_replay_position` and a :class:`PgLagProbe`
    of the primary wired in, and :func:`is_disconnect` as the failure test.
    ``options`` go to the router and win over these."""
    routers: list[ReplicaRouter[Any]] = []
    defaults: dict[str, Any] = {
        "read_your_writes": "token",
        "position_probe": pg_replay_position,
        # follows router.primary, so the lag is measured against the promoted one
        "lag_probe": PgLagProbe(lambda: routers[0].primary),
        "is_failure": is_disconnect,
    }
    router = ReplicaRouter(primary, replicas, **{**defaults, **options})
    routers.append(router)
    return router


class RoutingSession(Session):
    """A :class:`~sqlalchemy.orm.Session` whose statements go where ``router`` says.

    - Writes (flushes, DML, ``SELECT ... FOR UPDATE``, DDL, and ``text()`` that
      is not a plain ``SELECT``) go to the primary, and so does every statement
      after them until the transaction ends.
    - Reads go to ``router.for_read()``'s choice, taken once per transaction.
      On a replica they run in autocommit: no BEGIN and COMMIT round trips, and
      each statement sees what the replica has replayed when it runs. With
      ``snapshot_reads=True`` they run in one transaction on the replica (one
      snapshot, with REPEATABLE READ), and a replica that dies after
      answering makes the commit fail, which is ignored when nothing was written.
    - Inside ``router.use_primary()`` or ``router.transaction()``, everything
      goes to the primary.
    - A read whose replica cannot be reached is retried on another target; the
      replica is reported to the router. A statement the replica refuses as a
      write (``nextval()`` in an ORM select, say) runs again on the primary.
      When the connection broke inside the transaction, or the refusal aborted
      it, this needs a rollback: it is done when the transaction began on its
      own (not in ``session.begin()``) and nothing is pending, so no change is
      lost (loaded objects are expired); otherwise the error is raised.
    - After a commit that wrote, ``router.note_write(token)`` with the token from
      ``commit_token`` (PostgreSQL's WAL position by default).

    Runtime complexity: O(1) per statement (a router pick per transaction).
    """

    def __init__(
        self,
        *args: Any,
        router: ReplicaRouter[Any],
        commit_token: CommitToken | str | None = "auto",
        snapshot_reads: bool = False,
        **kwargs: Any,
    ) -> None:
        _check_session_options(router, snapshot_reads)
        if kwargs.get("bind") is not None or kwargs.get("binds"):
            raise ConfigurationError(
                "a routing session takes its engines from the router, not bind= or binds="
            )
        super().__init__(*args, **kwargs)
        if len(router.primaries) > 1:
            raise ConfigurationError("routing sessions need a router with one primary")
        self.router = router
        self._commit_token = _token_reader(router, commit_token)
        self._snapshot_reads = snapshot_reads
        self._wrote = False
        self._read_replica: Any = None  # the replica the router chose for this transaction
        self._read_bind: Engine | None = None

    def get_bind(
        self, mapper: Any = None, *, clause: Any = None, bind: Any = None, **kwargs: Any
    ) -> Engine:
        if bind is not None:
            engine = _engine(bind)
            replicas = {_engine(replica) for replica in self.router.replicas}
            if engine not in replicas or not _is_read(clause):
                self._wrote = True  # a commit failure here is never "only reads"
            return engine
        router = self.router
        if clause is None and mapper is None:
            # session.get_bind() asked to inspect (the dialect, say); connection()
            # marks the write itself
            return _engine(router.primary)
        if self._wrote or not _is_read(clause):
            self._wrote = True  # a flush (a mapper, no clause), DML, a locking read
            return _engine(router.primary)
        if router.pinned():
            return _engine(router.primary)
        read_bind = self._read_bind
        if read_bind is None:
            target = router.for_read()
            read_bind = _engine(target)
            if target is not router.primary:
                self._read_replica = target
                if not self._snapshot_reads:
                    read_bind = _autocommit(read_bind)
            self._read_bind = read_bind
        return read_bind

    def connection(self, *args: Any, **kwargs: Any) -> Any:
        """The session's connection to the primary (anything may be written on it),
        or to ``bind_arguments["bind"]``."""
        connection = super().connection(*args, **kwargs)
        if connection.engine is _engine(self.router.primary):
            self._wrote = True
        return connection

    def commit(self) -> None:
        """Commit; a read-only transaction whose replica died after answering
        commits nothing, so that is not an error (the replica is reported)."""
        self._end(super().commit)

    def close(self) -> None:
        """Close; as with :meth:`commit`, a replica that died after answering the
        transaction's reads is reported, not raised."""
        if self._snapshot_reads:
            self._end(super().close)
        else:
            super().close()

    def _end(self, end: Callable[[], None]) -> None:
        replica = self._read_replica
        if not self._snapshot_reads or replica is None:
            end()  # replicas were read in autocommit: there is nothing of theirs to end
            return
        pending = bool(self.new or self.deleted or self.dirty)
        try:
            end()
        except DBAPIError as exc:
            # _wrote as it is now: the commit's own flush may have written
            if self._wrote or pending or not is_disconnect(exc):
                raise
            _log.warning("replica %r died after answering; its reads stand", replica)
            self.router.report_failure(replica)
            self._read_replica = self._read_bind = None
            super().close()  # let go of the dead connection

    # Statements: a read that fails because its replica is unreachable runs again
    # elsewhere. (Wrapping these three costs far less than a do_orm_execute hook,
    # which runs every statement through SQLAlchemy's execute machinery twice.)
    def execute(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().execute(*args, **kwargs)
        except DBAPIError as exc:
            return self._retry(exc, super().execute, args, kwargs)

    def scalars(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().scalars(*args, **kwargs)
        except DBAPIError as exc:
            return self._retry(exc, super().scalars, args, kwargs)

    def scalar(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().scalar(*args, **kwargs)
        except DBAPIError as exc:
            return self._retry(exc, super().scalar, args, kwargs)

    def _retry(self, exc: DBAPIError, run: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        for _ in range(len(self.router.replicas)):
            self._recover(exc)
            try:
                return run(*args, **kwargs)
            except DBAPIError as again:
                exc = again
        self._recover(exc)
        return run(*args, **kwargs)

    def _recover(self, exc: DBAPIError) -> None:
        """Get ready to run a failed read again, or raise ``exc`` if it must not be."""
        replica = self._read_replica
        if self._wrote or replica is None or self.router.pinned():
            raise exc
        if getattr(exc.orig, "sqlstate", None) == _READ_ONLY_TRANSACTION:
            # a write hidden in a read (nextval(), a volatile function): the
            # replica refused it, and its transaction is now aborted
            if not self._can_restart():
                raise exc
            self.rollback()
            self._wrote = True  # the next transaction runs on the primary
            return
        if not is_disconnect(exc):
            raise exc
        self.router.report_failure(replica)
        if exc.connection_invalidated:
            # the broken connection sits in this transaction
            if not self._can_restart():
                raise exc
            self.rollback()
        self._read_replica = self._read_bind = None

    def _can_restart(self) -> bool:
        transaction = self.get_transaction()
        if transaction is None or transaction.origin is not SessionTransactionOrigin.AUTOBEGIN:
            return False
        return not (self.in_nested_transaction() or self.new or self.deleted or self.dirty)

    def _committed(self) -> None:
        if not self._wrote or self.in_nested_transaction():
            return
        token = None
        if self._commit_token is not None:
            try:
                token = self._commit_token(_engine(self.router.primary))
            except Exception:
                # the commit is done; without its token, reads pin to the primary
                _log.warning("reading the commit token failed", exc_info=True)
        self.router.note_write(token)

    def _transaction_ended(self, transaction: SessionTransaction) -> None:
        if transaction.parent is None:
            self._wrote = False
            self._read_replica = self._read_bind = None


def _check_session_options(router: Any, snapshot_reads: Any) -> None:
    if not isinstance(router, ReplicaRouter):
        raise ArgumentTypeError(f"router must be a ReplicaRouter, got {type(router).__name__}")
    check_bool(snapshot_reads, "snapshot_reads")


def _token_reader(router: ReplicaRouter[Any], commit_token: Any) -> CommitToken | None:
    if (
        commit_token is not None
        and not isinstance(commit_token, str)
        and not callable(commit_token)
    ):
        raise ArgumentTypeError(
            f'commit_token must be "auto", a callable or None, got {type(commit_token).__name__}'
        )
    if commit_token == "auto":
        dialect = _engine(router.primary).dialect.name
        return pg_commit_token if dialect == "postgresql" else None
    if isinstance(commit_token, str):
        raise ConfigurationError(f'commit_token is "auto", a callable or None: {commit_token!r}')
    return cast("CommitToken | None", commit_token)


_AUTOCOMMIT: weakref.WeakKeyDictionary[Engine, Engine] = weakref.WeakKeyDictionary()


def _autocommit(engine: Engine) -> Engine:
    """``engine`` with AUTOCOMMIT isolation (on the same pool), made once."""
    twin = _AUTOCOMMIT.get(engine)
    if twin is None:
        twin = _AUTOCOMMIT[engine] = engine.execution_options(isolation_level="AUTOCOMMIT")
    return twin


def _is_read(clause: Any) -> bool:
    if clause is None:
        return False  # a flush, or session.connection()
    if isinstance(clause, TextualSelect):  # text(...).columns(...)
        clause = clause.element
    if isinstance(clause, TextClause):
        sql = clause.text
        known = _TEXT_IS_READ.get(sql)
        if known is None:
            known = _READ.match(sql) is not None and _NOT_READ.search(sql) is None
            if len(_TEXT_IS_READ) >= 4096:
                _TEXT_IS_READ.clear()
            _TEXT_IS_READ[sql] = known
        return known
    if not getattr(clause, "is_select", False):
        return False  # DML, DDL
    if getattr(clause, "_for_update_arg", None) is not None:
        return False
    return not any(_writes(part) for part in _ctes_and_froms(clause))


def _ctes_and_froms(select: Any) -> Iterator[Any]:
    yield from getattr(select, "_independent_ctes", ())
    yield from getattr(select, "_raw_columns", ())
    yield from getattr(select, "_from_obj", ())


def _writes(part: Any) -> bool:
    """Whether ``part`` of a select is a CTE of an INSERT, UPDATE or DELETE."""
    return isinstance(part, CTE) and bool(getattr(part.element, "is_dml", False))


@event.listens_for(RoutingSession, "after_commit")
def _on_commit(session: Session) -> None:
    if isinstance(session, RoutingSession):
        session._committed()


@event.listens_for(RoutingSession, "after_transaction_end")
def _on_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    if isinstance(session, RoutingSession):
        session._transaction_ended(transaction)


def routing_sessionmaker(
    router: ReplicaRouter[Any],
    *,
    commit_token: CommitToken | str | None = "auto",
    snapshot_reads: bool = False,
    **sessionmaker_kwargs: Any,
) -> sessionmaker[RoutingSession]:
    """A ``sessionmaker`` of :class:`RoutingSession` over ``router``'s engines.

    ``commit_token(primary_engine)`` reads the causal token after a commit that
    wrote; ``"auto"`` uses :func:`pg_commit_token` on PostgreSQL and no token
    elsewhere (reads then stay on the primary for the router's ``window``).
    """
    _check_session_options(router, snapshot_reads)
    return sessionmaker(
        class_=RoutingSession,
        router=router,
        commit_token=_token_reader(router, commit_token),
        snapshot_reads=snapshot_reads,
        **sessionmaker_kwargs,
    )


def async_routing_sessionmaker(
    router: ReplicaRouter[Any],
    *,
    commit_token: CommitToken | str | None = "auto",
    snapshot_reads: bool = False,
    **sessionmaker_kwargs: Any,
) -> async_sessionmaker[AsyncSession]:
    """An ``async_sessionmaker`` whose sessions route like :class:`RoutingSession`;
    the router's targets are :class:`~sqlalchemy.ext.asyncio.AsyncEngine` objects.
    Needs greenlet (``SQLAlchemy[asyncio]``), imported here and not before.

    The probes and the commit token run inside the session's own greenlet, the
    way SQLAlchemy runs all of an async session's I/O, so they need no awaiting.
    """
    _check_session_options(router, snapshot_reads)
    from sqlalchemy.ext.asyncio import async_sessionmaker

    return async_sessionmaker(
        sync_session_class=RoutingSession,
        router=router,
        commit_token=_token_reader(router, commit_token),
        snapshot_reads=snapshot_reads,
        **sessionmaker_kwargs,
    )
