"""The replica router: where each read and write goes, and read-your-writes.

The router does no I/O of its own. Probes (lag, replayed position) and the reads
it retries are callables the caller injects, and time comes from a ``Clock``, so
every decision can be tested with a :class:`~scalekit.testing.FakeClock`.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence, Set
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar, cast

from scalekit._validate import (
    check_callable,
    check_choice,
    check_name,
    check_node,
    check_seconds,
    check_weight,
    type_name,
)
from scalekit.errors import (
    ArgumentTypeError,
    ConfigurationError,
    DuplicateNode,
    NoBackendAvailable,
    UnknownNode,
)
from scalekit.protocols import Clock, SupportsNodeFor, SupportsPick

__all__ = ["ReadYourWrites", "ReplicaRouter", "RouterStats", "is_connection_error"]

_log = logging.getLogger("scalekit.replication")

T = TypeVar("T")
R = TypeVar("R")  # a target: an engine, a DSN, a pool... anything hashable

ReadYourWrites = Literal["window", "token"] | None


def is_connection_error(exc: BaseException) -> bool:
    """The default test of whether a failed read means the target is unreachable:
    any :class:`OSError` (refused, reset, timed out)."""
    return isinstance(exc, OSError)


@dataclass(frozen=True, slots=True)
class _Causality:
    """What one context has written, and so what its reads must see (immutable)."""

    written_at: float = -math.inf  # the last write that has no token (yet)
    token: Any = None  # the newest causal token the context must read
    primary: Any = None  # the primary written last (several primaries)


class _Holder:
    """One unit of work's read-your-writes record (one web request, say).

    The context variable holds this object, and a write replaces its attribute
    rather than setting the variable: a context copied from the one that holds it
    (a thread pool's copy for a sync endpoint, the task of a ``BaseHTTPMiddleware``)
    shares the object, so its writes are seen by the code that began the unit of
    work, which reads the token when the response starts. ``ContextVar.set`` in a
    copy is seen by nobody else.
    """

    __slots__ = ("causality",)

    def __init__(self, causality: _Causality | None = None) -> None:
        self.causality = causality


@dataclass(slots=True)
class _Replica:
    """What the router knows about one replica."""

    failed_until: float = -math.inf  # reported unreachable until then (or a probe passes)
    failures_seen: int = 0  # bumped by each report: a probe begun before it can't undo it
    lagging: bool = False  # over max_lag, or not measured yet
    lag: float | None = None
    position: Any = None  # the replayed position, as of ``position_at``
    position_at: float = -math.inf
    reads: int = 0
    failures: int = 0
    down: bool = False  # as marked in the balancer by the router
    logged_out: bool = False  # its going out of reads was logged (its coming back will be)


@dataclass(frozen=True)
class RouterStats(Generic[R]):
    """A snapshot of a :class:`ReplicaRouter`'s counters.

    ``primary_reads`` splits by reason: ``pinned`` (inside ``transaction()`` or
    ``use_primary()``), ``read_your_writes`` (the context's own write is not
    known to be on any replica), and ``fallbacks`` (no replica was healthy,
    caught up and within ``max_lag``).
    """

    reads: int
    writes: int
    replica_reads: Mapping[R, int]
    pinned: int
    read_your_writes: int
    fallbacks: int
    failures: int
    retries: int
    probe_errors: int
    lag: Mapping[R, float | None]
    lagging: tuple[R, ...]
    down: tuple[R, ...]

    @property
    def primary_reads(self) -> int:
        """Reads that went to a primary, for any reason."""
        return self.pinned + self.read_your_writes + self.fallbacks


@dataclass(slots=True)
class _Counters:
    reads: int = 0
    writes: int = 0
    pinned: int = 0
    read_your_writes: int = 0
    fallbacks: int = 0
    retries: int = 0
    probe_errors: int = 0


class ReplicaRouter(Generic[R]):
    """Sends writes to the primary and reads to replicas, without losing your writes.

    Targets are opaque: engines, DSNs, connection pools. ``for_write()`` returns the
    primary and ``for_read()`` a healthy replica within ``max_lag`` (spread by the
    ``balancer``, round robin by default), or the primary when none qualifies.

    Read-your-writes is tracked per unit of work: :meth:`scope` (one web request;
    :class:`~scalekit.replication.ReplicaRouterMiddleware` opens one per request)
    starts a record that every context copied inside it shares, so a write made in
    a thread pool or a task of the request counts for the whole request. Outside
    a scope, a context's first write makes a record for it, which the contexts
    copied from it afterwards share (a new thread starts with none): open a scope
    per unit of work to keep units apart. The modes:

    - ``"window"``: after a write, the context reads from the primary for
      ``window`` seconds (what django-multidb-router does).
    - ``"token"``: after a write, :meth:`note_write` records a causal token (for
      PostgreSQL the WAL position after the commit), and reads go only to replicas
      that ``position_probe`` shows have replayed it. :meth:`token` exports it and
      :meth:`use_token` imports it, so one request's write is seen by the next
      request on another server. A write without a token pins reads to the
      primary for ``window`` seconds.
    - ``None``: no stickiness.

    Lag: ``lag_probe(replica)`` (seconds behind) runs at most every
    ``probe_interval``; a replica over ``max_lag`` gets no reads until it catches
    up. A replica reported unreachable (:meth:`report_failure`, or a failed
    :meth:`read`) is marked down in the balancer until a probe passes, or for
    ``down_for`` seconds when there is no probe.

    Several primaries (multi-master): pass a sequence, or a mapping of name to
    target, and a ``sharder`` whose ``node_for(key)`` names the owner;
    ``for_write(key=...)`` then routes each write by its key.

    Runtime complexity: O(1) per ``for_write``; ``for_read`` costs one balancer
    pick (O(1) for round robin), O(replicas) when a token rules some out or a
    probe is due.

    >>> router = ReplicaRouter("primary", ["replica-a", "replica-b"])
    >>> router.for_read(), router.for_read()
    ('replica-a', 'replica-b')
    >>> router.for_write()
    'primary'
    >>> router.for_read()  # this context just wrote: read it from the primary
    'primary'
    """

    def __init__(
        self,
        primary: R | Sequence[R] | Mapping[Any, R],
        replicas: Sequence[R] = (),
        *,
        balancer: SupportsPick[R] | None = None,
        max_lag: float | None = None,
        lag_probe: Callable[[R], float] | None = None,
        position_probe: Callable[[R], Any] | None = None,
        read_your_writes: ReadYourWrites = "window",
        window: float = 15.0,
        probe_interval: float = 1.0,
        down_for: float = 5.0,
        sharder: SupportsNodeFor[Any] | None = None,
        is_failure: Callable[[BaseException], bool] = is_connection_error,
        clock: Clock | None = None,
    ) -> None:
        # every argument is checked before anything is built: a refused call changes nothing
        check_choice(read_your_writes, "read_your_writes", ("window", "token", None))
        window = check_seconds(window, "window", allow_zero=True)
        probe_interval = check_seconds(probe_interval, "probe_interval", allow_zero=True)
        down_for = check_seconds(down_for, "down_for")
        if max_lag is not None:
            max_lag = check_seconds(max_lag, "max_lag", allow_zero=True)
            if lag_probe is None:
                raise ConfigurationError("max_lag needs a lag_probe to measure the lag")
        for probe_name, probe in (("lag_probe", lag_probe), ("position_probe", position_probe)):
            check_callable(probe, probe_name, allow_none=True)
        check_callable(is_failure, "is_failure")
        check_callable(clock, "clock", allow_none=True)
        if read_your_writes == "token" and position_probe is None:
            raise ConfigurationError(
                'read_your_writes="token" needs a position_probe: how far a replica has replayed'
            )
        names, primaries = _primaries(primary)
        replicas = _check_replicas(replicas)
        if len(primaries) > 1:
            if sharder is None:
                raise ConfigurationError("several primaries need a sharder to route writes by key")
            if read_your_writes == "token":
                raise ConfigurationError(
                    "token mode needs one primary: positions of different primaries don't compare"
                )
        if sharder is not None and not callable(getattr(sharder, "node_for", None)):
            raise ArgumentTypeError(
                f"sharder must have node_for(key) (scalekit.protocols.SupportsNodeFor), "
                f"got {type_name(sharder)}"
            )
        if balancer is not None:
            _check_balancer(balancer)
        seen: set[Any] = set(primaries)
        for replica in replicas:
            if replica in seen:
                raise DuplicateNode(f"{replica!r} is listed twice")
            seen.add(replica)
        if balancer is not None:
            listed = _backends(balancer)
            if listed is not None and set(listed) != set(replicas):
                raise ConfigurationError(
                    f"the balancer's backends {sorted(map(repr, set(listed)))} are not the "
                    f"replicas {sorted(map(repr, replicas))}"
                )
        self._names: dict[Any, R] | None = names
        self._primaries: tuple[R, ...] = primaries
        self._sharder: SupportsNodeFor[Any] | None = sharder
        self._mode = read_your_writes
        self._window = window
        self._max_lag = max_lag
        self._lag_probe = lag_probe
        self._position_probe = position_probe
        self._probe_interval = probe_interval
        self._down_for = down_for
        self._is_failure = is_failure
        self._clock: Clock = time.monotonic if clock is None else clock
        self._lock = threading.Lock()
        self._causality: ContextVar[_Holder | None] = ContextVar(
            f"scalekit.replication.causality.{id(self)}", default=None
        )
        self._pins: ContextVar[int] = ContextVar(f"scalekit.replication.pins.{id(self)}", default=0)
        # a token accepted before any position was known: later tokens must compare with it
        self._reference: Any = None
        self._accepted: set[type] = set()  # kinds of token known to order with the positions
        self._counters = _Counters()
        self._replicas: dict[R, _Replica] = {r: self._new_replica() for r in replicas}
        if balancer is None:
            from scalekit.balancing import RoundRobin

            # No panic mode: a replica the router marks down must get no reads.
            balancer = RoundRobin(self._replicas, panic_threshold=0, clock=self._clock)
        self._balancer: SupportsPick[R] = balancer
        for replica, state in self._replicas.items():
            self._apply(replica, state)
        self._next_poll = math.inf
        self._poll_on_next_read()
        self._next_revival = math.inf  # the earliest ``failed_until`` without a probe
        self._polling = False
        self._poller: threading.Thread | None = None
        self._stop_poller = threading.Event()

    # -- topology -------------------------------------------------------------

    @property
    def primary(self) -> R:
        """The primary (the first one, with several)."""
        return self._primaries[0]

    @property
    def primaries(self) -> tuple[R, ...]:
        """Every primary, in the order given."""
        return self._primaries

    @property
    def replicas(self) -> tuple[R, ...]:
        """Every replica, healthy or not."""
        return tuple(self._replicas)

    @property
    def balancer(self) -> SupportsPick[R]:
        """The balancer that spreads reads over the replicas."""
        return self._balancer

    @property
    def mode(self) -> ReadYourWrites:
        """The read-your-writes mode: ``"window"``, ``"token"`` or ``None``."""
        return self._mode

    def healthy(self) -> tuple[R, ...]:
        """The replicas reads can go to now: not down, not over ``max_lag``."""
        with self._lock:
            return tuple(r for r, state in self._replicas.items() if not state.down)

    def add_replica(self, replica: R, weight: float = 1) -> None:
        """Start sending reads to ``replica`` (its probes run on the next read).

        The balancer must have ``add(backend, weight)``, as every balancer of
        :mod:`scalekit.balancing` has. Runtime complexity: O(1) plus the balancer's add.
        """
        _check_target(replica, "replica")
        weight = check_weight(weight)
        add = getattr(self._balancer, "add", None)
        if not callable(add):
            raise ConfigurationError(f"the balancer {self._balancer!r} has no add(backend, weight)")
        with self._lock:
            if replica in self._replicas or replica in self._primaries:
                raise DuplicateNode(f"{replica!r} is already a target")
            add(replica, weight)
            self._replicas[replica] = state = self._new_replica()
            self._apply(replica, state)
            self._poll_on_next_read()

    def remove_replica(self, replica: R) -> None:
        """Stop sending reads to ``replica``. Runtime complexity: O(1) plus the
        balancer's remove."""
        _check_target(replica, "replica")
        remove = self._balancer_method("remove")
        with self._lock:
            if replica not in self._replicas:
                raise UnknownNode(f"{replica!r} is not a replica")
            remove(replica)
            del self._replicas[replica]

    def _balancer_method(self, name: str) -> Callable[..., Any]:
        method = getattr(self._balancer, name, None)
        if not callable(method):
            raise ConfigurationError(
                f"the balancer {self._balancer!r} has no {name}(): it cannot change its backends"
            )
        return cast("Callable[..., Any]", method)

    def promote(
        self, new_primary: R, replicas: Sequence[R] | None = None, *, replacing: R | None = None
    ) -> None:
        """Make ``new_primary`` the primary (in place of ``replacing`` when there are
        several) and ``replicas`` the replicas, in one step: no read or write sees
        half of the change. By default the replicas stay, less the promoted one.

        Causal tokens stay valid: a promoted PostgreSQL standby continues the WAL
        positions of its old primary.
        """
        _check_target(new_primary, "new_primary")
        if replacing is not None:
            _check_target(replacing, "replacing")
        if replicas is not None:
            replicas = _check_replicas(replicas)
        add, remove = self._balancer_method("add"), self._balancer_method("remove")
        with self._lock:
            if replacing is None:
                if len(self._primaries) > 1:
                    raise ConfigurationError("with several primaries, say which one is replaced")
                replacing = self._primaries[0]
            if replacing not in self._primaries:
                raise UnknownNode(f"{replacing!r} is not a primary")
            wanted = (
                [r for r in self._replicas if r != new_primary] if replicas is None else replicas
            )
            if len(set(wanted)) != len(wanted):
                raise DuplicateNode(f"a replica is listed twice in {wanted!r}")
            primaries = tuple(new_primary if p == replacing else p for p in self._primaries)
            if new_primary in wanted or len(set(primaries)) != len(primaries):
                raise DuplicateNode(f"{new_primary!r} would be a primary twice, or also a replica")
            both = [r for r in wanted if r in primaries]
            if both:
                raise DuplicateNode(f"{both[0]!r} would be both a primary and a replica")
            for replica in [r for r in self._replicas if r not in wanted]:
                remove(replica)
                del self._replicas[replica]
            for replica in wanted:
                if replica not in self._replicas:
                    add(replica, 1)
            self._replicas = {r: self._replicas.get(r) or self._new_replica() for r in wanted}
            for replica, state in self._replicas.items():
                self._apply(replica, state)
            self._primaries = primaries
            if self._names is not None:
                self._names = {
                    n: new_primary if t == replacing else t for n, t in self._names.items()
                }
            self._poll_on_next_read()

    def _new_replica(self) -> _Replica:
        # with max_lag, a replica gets reads only once a probe has measured it
        return _Replica(lagging=self._max_lag is not None)

    @property
    def _probing(self) -> bool:
        return self._lag_probe is not None or self._position_probe is not None

    def _poll_on_next_read(self) -> None:
        """A replica is new, or the topology changed: measure them on the next read."""
        if self._probing:
            self._next_poll = -math.inf

    # -- writes ---------------------------------------------------------------

    def for_write(self, key: Any = None) -> R:
        """The primary for a write (by ``key`` with several primaries); the context
        counts as having written, for read-your-writes."""
        primary = self._primary_for(key, None)
        self._note(primary, None)
        return primary

    def primary_for(self, key: Any = None) -> R:
        """The primary that owns ``key``, without counting a write."""
        return self._primary_for(key, None)

    def note_write(self, token: Any = None, *, key: Any = None) -> None:
        """Record that this context wrote: with its causal ``token`` (in token mode,
        reads then go to replicas that have replayed it), or without one (reads go
        to the primary for ``window`` seconds).

        In token mode a token that cannot be compared with the replicas' positions
        (or with the tokens accepted before any position was known), or that is not
        equal to itself (NaN), is refused here, and nothing is recorded.
        """
        primary = self._primary_for(key, None)
        if token is not None and self._mode == "token":
            self._check_token(token)
        self._note(primary, token)

    def _note(self, primary: R, token: Any) -> None:
        if self._mode is None:
            with self._lock:
                self._counters.writes += 1
            return
        holder = self._holder()
        with self._lock:
            self._counters.writes += 1
            before = holder.causality
            if self._mode == "token" and token is not None:
                newest = (
                    token if before is None or before.token is None else max(before.token, token)
                )
                # a write noted without a token keeps pinning for its window: its
                # commit may come after the one this token is from
                written_at = -math.inf if before is None else before.written_at
                holder.causality = _Causality(written_at, newest, primary)
            else:
                kept = None if before is None else before.token
                holder.causality = _Causality(self._clock(), kept, primary)

    def _holder(self) -> _Holder:
        """This context's record, made and set here when it has none (outside any
        :meth:`scope`): then the record is this context's and the ones copied from it
        later, as a plain ``ContextVar`` would be."""
        holder = self._causality.get()
        if holder is None:
            holder = _Holder()
            self._causality.set(holder)
        return holder

    def _current(self) -> _Causality | None:
        holder = self._causality.get()
        return None if holder is None else holder.causality

    def _primary_for(self, key: Any, causality: _Causality | None) -> R:
        primaries = self._primaries
        if len(primaries) == 1:
            return primaries[0]
        if key is None:
            if causality is not None and causality.primary in primaries:
                written: R = causality.primary
                return written
            return primaries[0]
        assert self._sharder is not None  # several primaries always have one
        node = self._sharder.node_for(key)
        owner = node if self._names is None else self._names.get(node)
        if owner not in primaries:
            raise UnknownNode(f"the sharder named {node!r}, which is no primary")
        return owner

    # -- reads ----------------------------------------------------------------

    def for_read(self, key: Any = None) -> R:
        """A replica for a read, or the primary when the context must read its own
        writes, is pinned, or no replica is healthy and caught up."""
        replica, _ = self._route_read(key, ())
        return replica

    def _route_read(self, key: Any, excluded: Sequence[R]) -> tuple[R, bool]:
        now = self._clock()
        causality = self._current()
        if self._pins.get():
            with self._lock:
                self._counters.reads += 1
                self._counters.pinned += 1
            return self._primary_for(key, causality), False
        token = None
        if causality is not None:
            if now - causality.written_at < self._window:
                with self._lock:
                    self._counters.reads += 1
                    self._counters.read_your_writes += 1
                return self._primary_for(key, causality), False
            token = causality.token
        if now >= self._next_revival or (now >= self._next_poll and self._poller is None):
            self.poll()
        replica = self._pick(token, excluded)
        if replica is None and token is not None:
            self._refresh_positions(token)
            replica = self._pick(token, excluded)
        with self._lock:
            self._counters.reads += 1
            if replica is None:
                if token is not None and any(
                    not state.down and r not in excluded for r, state in self._replicas.items()
                ):
                    self._counters.read_your_writes += 1
                else:
                    self._counters.fallbacks += 1
                return self._primary_for(key, causality), False
            state = self._replicas.get(replica)
            if state is not None:
                state.reads += 1
        return replica, True

    def _pick(self, token: Any, excluded: Sequence[R]) -> R | None:
        """A replica from the balancer that is up and has replayed ``token``."""
        replicas = self._replicas
        for _ in range(len(replicas) + 1):
            try:
                replica = self._balancer.pick()
            except NoBackendAvailable:
                return None
            state = replicas.get(replica)
            if state is None or state.down or replica in excluded:
                break  # the balancer offers what the router ruled out: look at all of them
            if token is None or _replayed(state.position, token):
                return replica
        for replica, state in list(replicas.items()):
            if state.down or replica in excluded:
                continue
            if token is None or _replayed(state.position, token):
                return replica
        return None

    def read(self, fn: Callable[[R], T], key: Any = None) -> T:
        """Run ``fn(target)`` on :meth:`for_read`'s choice; when it fails because the
        replica is unreachable (``is_failure``), mark it down and run it again on
        another replica, and at last on the primary. Other errors propagate."""
        check_callable(fn, "fn")
        tried: list[R] = []
        while True:
            target, on_replica = self._route_read(key, tried)
            try:
                return fn(target)
            except Exception as exc:
                if not on_replica or not self._is_failure(exc):
                    raise
                self.report_failure(target)
                tried.append(target)
                with self._lock:
                    self._counters.retries += 1

    def token(self) -> Any:
        """This context's causal token (None before a write with a token): carry it to
        the next request, on any server, and pass it to :meth:`use_token` there.
        :class:`~scalekit.replication.ReplicaRouterMiddleware` does both."""
        causality = self._current()
        return None if causality is None else causality.token

    def use_token(self, token: Any) -> None:
        """Make this context read at least what ``token`` covers (a token exported by
        :meth:`token` elsewhere). The newer of it and the context's own is kept.

        A token that cannot be compared with the replicas' positions (a cookie's
        unparsed string where positions are ints), with the tokens accepted before
        any position was known, or with itself (NaN), raises
        :class:`~scalekit.errors.ArgumentTypeError` (a ``TypeError``) or
        :class:`~scalekit.errors.ConfigurationError` here, not on a later read, and
        changes nothing. Outside token mode the token is ignored.
        """
        if token is None or self._mode != "token":
            return
        self._check_token(token)
        holder = self._holder()
        with self._lock:
            before = holder.causality
            if before is not None and before.token is not None and before.token >= token:
                return
            written_at = -math.inf if before is None else before.written_at
            primary = None if before is None else before.primary
            holder.causality = _Causality(written_at, token, primary)

    def _check_token(self, token: Any) -> None:
        """Raise here, not on some later read, for a token of the wrong kind.

        The token must compare with itself (``token >= token``: NaN does not) and
        with a reference: a replica's known position, else (before the first probe
        has answered) the first token accepted, so that tokens of two kinds never
        mix. When no position is known yet and the probes are due, they run here.
        Should a probe later report positions of another kind all the same, reads
        that wait for such a token go to the primary (:func:`_replayed`): never an
        error on the read path."""
        if type(token) is int and int in self._accepted:
            return  # the common case, PostgreSQL's positions: an int always orders
        if isinstance(token, bool):
            raise ArgumentTypeError("token must be a causal position, got bool")
        try:
            same = token >= token
        except TypeError:
            raise ArgumentTypeError(
                f"token {token!r} does not compare: a token needs >= ({type_name(token)})"
            ) from None
        if same is not True:
            raise ConfigurationError(f"token must equal itself, got {token!r}")
        known = self._known_position()
        if known is None and self._position_probe is not None and self._clock() >= self._next_poll:
            self.poll()  # the first probe is due anyway: take it now, to check against
            known = self._known_position()
        with self._lock:
            if known is None:
                known = self._reference
            if known is None:
                self._reference = token
                return
        if not _comparable(known, token):
            raise ArgumentTypeError(
                f"token {token!r} does not compare with replica positions such as {known!r}"
            )
        if type(known) is int and type(token) is int:
            self._accepted.add(int)

    def _begin(self, token: Any) -> _Holder:
        """Begin a fresh scope from ``token`` in the current context, not to be
        reset: for a context made for one unit of work and then dropped (the WSGI
        middleware's per-request context)."""
        if token is not None and self._mode == "token":
            self._check_token(token)
        holder = _Holder()
        self._causality.set(holder)
        self._pins.set(0)
        self.use_token(token)
        return holder

    def _known_position(self) -> Any:
        with self._lock:
            return next(
                (s.position for s in self._replicas.values() if s.position is not None), None
            )

    @contextmanager
    def scope(self, token: Any = None) -> Iterator[None]:
        """A fresh read-your-writes context for the block (one web request, say),
        starting from ``token``; the outer context is restored afterwards.

        The block's record is one object shared by every context copied inside the
        block: a write made in a thread pool (a Starlette sync endpoint) or in a
        task (behind a ``BaseHTTPMiddleware``) is seen by :meth:`token` after it.
        A token refused by :meth:`use_token` is raised before the block is entered.
        """
        if token is not None and self._mode == "token":
            self._check_token(token)
        reset_causality = self._causality.set(_Holder())
        reset_pins = self._pins.set(0)
        try:
            self.use_token(token)
            yield
        finally:
            self._pins.reset(reset_pins)
            self._causality.reset(reset_causality)

    def pinned(self) -> bool:
        """Whether this context is inside :meth:`use_primary` or :meth:`transaction`."""
        return self._pins.get() > 0

    @contextmanager
    def use_primary(self, key: Any = None) -> Iterator[R]:
        """Send every read in the block to the primary (yielded)."""
        reset = self._pins.set(self._pins.get() + 1)
        try:
            yield self._primary_for(key, self._current())
        finally:
            self._pins.reset(reset)

    @contextmanager
    def transaction(self, key: Any = None) -> Iterator[R]:
        """A unit of work on the primary (yielded): every read in the block goes
        there, and the context counts as having written (without a token) when
        it ends: what the block wrote directly has no token to wait for."""
        primary = self._primary_for(key, self._current())
        reset = self._pins.set(self._pins.get() + 1)
        try:
            yield primary
        finally:
            self._pins.reset(reset)
            self._note(primary, None)

    # -- health and lag -------------------------------------------------------

    def report_failure(self, replica: R) -> None:
        """``replica`` could not be reached: no reads until a probe passes (or for
        ``down_for`` seconds without probes). A target that is no replica (the
        primary, a replica removed meanwhile) is ignored."""
        _check_target(replica, "replica")
        with self._lock:
            state = self._replicas.get(replica)
            if state is None:
                return  # the primary, or a replica removed meanwhile
            state.failures += 1
            state.failures_seen += 1
            state.failed_until = self._clock() + self._down_for
            if not self._probing:
                self._next_revival = min(self._next_revival, state.failed_until)
            self._apply(replica, state)

    def poll(self) -> None:
        """Run the probes of every replica now (reads run them when due: at most
        every ``probe_interval``), and revive replicas whose ``down_for`` is over.
        One thread polls at a time; others go on with what is known."""
        with self._lock:
            if self._polling:
                return
            self._polling = True
            now = self._clock()
            self._next_poll = now + self._probe_interval if self._probing else math.inf
            replicas = list(self._replicas)
        try:
            if self._probing:
                for replica in replicas:
                    self._probe(replica)
            else:
                self._revive(now)
        finally:
            with self._lock:
                self._polling = False

    def start_polling(self) -> None:
        """Probe the replicas from a daemon thread every ``probe_interval``, so that
        no read waits for a probe (reads otherwise run the probes when due). The
        refresh of a replica behind a token still happens on the read.
        Idempotent; :meth:`stop_polling` ends it."""
        with self._lock:
            if self._poller is not None or not self._probing:
                return
            self._stop_poller = stop = threading.Event()
            self._poller = threading.Thread(
                target=self._poll_forever, args=(stop,), name="scalekit-replica-poller", daemon=True
            )
            self._poller.start()

    def stop_polling(self) -> None:
        """Stop the thread of :meth:`start_polling` (reads poll again when due)."""
        with self._lock:
            poller, self._poller = self._poller, None
            self._stop_poller.set()
        if poller is not None and poller is not threading.current_thread():
            poller.join()

    def _poll_forever(self, stop: threading.Event) -> None:
        while True:
            try:
                self.poll()
            except Exception:  # pragma: no cover - poll() handles probe errors itself
                _log.exception("polling the replicas failed")
            if stop.wait(self._probe_interval):
                return

    def _revive(self, now: float) -> None:
        with self._lock:
            self._next_revival = math.inf
            for replica, state in self._replicas.items():
                if state.failed_until > now:
                    self._next_revival = min(self._next_revival, state.failed_until)
                self._apply(replica, state)

    def _probe(self, replica: R, *, lag_too: bool = True) -> None:
        """Probe ``replica``. A probe that raises, whatever the error, leaves the
        replica unverified: it is marked down like an unreachable one, counted in
        ``probe_errors`` and logged."""
        lag_probe = self._lag_probe if lag_too else None
        lag = position = None
        with self._lock:
            state = self._replicas.get(replica)
            failures_seen = None if state is None else state.failures_seen
        try:
            if lag_probe is not None:
                lag = lag_probe(replica)
            if self._position_probe is not None:
                position = self._position_probe(replica)
        except Exception:
            _log.warning("probing replica %r failed; no reads go to it", replica, exc_info=True)
            with self._lock:
                self._counters.probe_errors += 1
            self.report_failure(replica)
            return
        with self._lock:
            state = self._replicas.get(replica)
            if state is None:
                return
            if state.failures_seen == failures_seen:
                state.failed_until = -math.inf  # it answered, and nothing failed since
            if lag_probe is not None:
                state.lag = lag
                limit = self._max_lag
                # an unknown lag (None, NaN) is not within any limit
                state.lagging = limit is not None and not (lag is not None and lag <= limit)
            if self._position_probe is not None:
                state.position, state.position_at = position, self._clock()
            self._apply(replica, state)

    def _refresh_positions(self, token: Any) -> None:
        """Read again the positions of healthy replicas known to be behind ``token``
        whose reading is more than 10 ms old, so a replica that has caught up since
        the last poll is used at once (one probe per replica per 10 ms at most)."""
        if self._position_probe is None:
            return
        now = self._clock()
        with self._lock:
            stale = [
                replica
                for replica, state in self._replicas.items()
                if not state.down
                and not _replayed(state.position, token)
                and now - state.position_at >= 0.01
            ]
            for replica in stale:  # claimed: concurrent reads don't probe it again
                self._replicas[replica].position_at = now
        for replica in stale:
            self._probe(replica, lag_too=False)

    def _apply(self, replica: R, state: _Replica) -> None:
        """Mark ``replica`` down or up in the balancer to match what is known."""
        failed = state.failed_until > self._clock()
        down = state.lagging or failed
        if down != state.down:
            state.down = down
            if down:
                self._balancer.mark_down(replica)
            else:
                self._balancer.mark_up(replica)
            self._log_change(replica, state, failed)

    def _log_change(self, replica: R, state: _Replica, failed: bool) -> None:
        """Log a replica taken out of reads or put back; not a new replica waiting
        for its first lag probe (it was never in)."""
        fields = {"replica": replica, "lag": state.lag, "max_lag": self._max_lag}
        if not state.down:
            if state.logged_out:
                state.logged_out = False
                _log.info("replica %r back in reads (lag %s s)", replica, state.lag, extra=fields)
            return
        if failed:
            reason = "unreachable"
        elif state.lag is None and state.failures_seen == 0 and not state.reads:
            return  # not measured yet
        else:
            reason = "lag"
        state.logged_out = True
        _log.warning(
            "replica %r taken out of reads: %s (lag %s s, max_lag %s s)",
            replica,
            reason,
            state.lag,
            self._max_lag,
            extra={**fields, "reason": reason},
        )

    def stats(self) -> RouterStats[R]:
        """A snapshot of the counters."""
        with self._lock:
            counters = self._counters
            return RouterStats(
                reads=counters.reads,
                writes=counters.writes,
                replica_reads={r: s.reads for r, s in self._replicas.items()},
                pinned=counters.pinned,
                read_your_writes=counters.read_your_writes,
                fallbacks=counters.fallbacks,
                failures=sum(s.failures for s in self._replicas.values()),
                retries=counters.retries,
                probe_errors=counters.probe_errors,
                lag={r: s.lag for r, s in self._replicas.items()},
                lagging=tuple(r for r, s in self._replicas.items() if s.lagging),
                down=tuple(r for r, s in self._replicas.items() if s.down),
            )

    def _check(self) -> None:
        """Assert the router's invariants (for tests; O(replicas)).

        - primaries are distinct, and no target is both a primary and a replica;
        - with names, the names map onto exactly the primaries;
        - the balancer lists exactly the replicas (when it lists its backends);
        - a replica is marked down when it lags, and up when it neither lags nor
          has ever failed without a probe passing since;
        - a replica's position, once known, compares with the others';
        - the counters add up: every read is counted once, by where it went.
        """
        with self._lock:
            primaries, replicas = self._primaries, self._replicas
            assert len(set(primaries)) == len(primaries), primaries
            assert not set(primaries) & set(replicas), (primaries, list(replicas))
            if self._names is not None:
                assert set(self._names.values()) == set(primaries), (self._names, primaries)
            listed = _backends(self._balancer)
            if listed is not None:
                assert set(listed) == set(replicas), (listed, list(replicas))
            positions = [s.position for s in replicas.values() if s.position is not None]
            for replica, state in replicas.items():
                if state.lagging:
                    assert state.down, replica
                if not state.lagging and state.failed_until == -math.inf:
                    assert not state.down, replica
                if self._max_lag is None or self._lag_probe is None:
                    assert not state.lagging, replica
                assert min(state.reads, state.failures) >= 0, replica
                assert state.failures_seen >= state.failures, replica
            if positions:
                assert all(_comparable(positions[0], p) for p in positions), positions
            c = self._counters
            counted = (c.reads, c.writes, c.pinned, c.read_your_writes, c.fallbacks, c.retries)
            assert min(*counted, c.probe_errors) >= 0, c
            to_primary = c.pinned + c.read_your_writes + c.fallbacks
            # replicas removed since took their read counts with them
            assert c.reads >= to_primary + sum(s.reads for s in replicas.values()), c
            assert self._mode in ("window", "token", None)
            assert self._next_revival == math.inf or not self._probing

    def __repr__(self) -> str:
        primaries, replicas = list(self._primaries), list(self._replicas)
        return (
            f"ReplicaRouter(primaries={primaries!r}, replicas={replicas!r}, "
            f"read_your_writes={self._mode!r})"
        )


def _replayed(position: Any, token: Any) -> bool:
    """Whether a replica at ``position`` has replayed ``token``; a position that is
    unknown, or of another kind than the token, has not."""
    if position is None:
        return False
    try:
        return bool(position >= token)
    except TypeError:
        return False


def _comparable(a: Any, b: Any) -> bool:
    """Whether ``a >= b`` and ``b >= a`` both answer (positions and tokens must)."""
    try:
        _ = a >= b
        _ = b >= a
    except TypeError:
        return False
    return True


def _check_target(target: Any, name: str) -> None:
    """A primary or replica: hashable, not None, equal to itself (not NaN), and when
    it is a ``str``, valid text (no lone surrogate)."""
    check_node(target, name)
    if isinstance(target, str):
        check_name(target, name)


def _check_replicas(replicas: Any) -> list[Any]:
    """The replicas as a new list, each checked as a target."""
    if isinstance(replicas, (str, bytes)) or not isinstance(replicas, (Sequence, Set)):
        raise ArgumentTypeError(
            f"replicas must be a sequence of targets, got {type_name(replicas)}"
        )
    listed = list(replicas)
    for replica in listed:
        _check_target(replica, "replica")
    return listed


def _check_balancer(balancer: Any) -> None:
    missing = [
        m for m in ("pick", "mark_down", "mark_up") if not callable(getattr(balancer, m, None))
    ]
    if missing:
        raise ArgumentTypeError(
            f"balancer must have pick(), mark_down() and mark_up() "
            f"(scalekit.protocols.SupportsPick), got {type_name(balancer)}"
        )


def _backends(balancer: Any) -> tuple[Any, ...] | None:
    """The backends a balancer lists, or None when it lists none (a bare ``SupportsPick``)."""
    listed = getattr(balancer, "backends", None)
    return None if listed is None else tuple(listed)


def _primaries(primary: Any) -> tuple[dict[Any, Any] | None, tuple[Any, ...]]:
    if isinstance(primary, Mapping):
        if not primary:
            raise ConfigurationError("at least one primary is needed")
        for name, target in primary.items():
            _check_target(name, "primary name")
            _check_target(target, "primary")
        targets = tuple(primary.values())
        if len(set(targets)) != len(targets):
            raise DuplicateNode(f"a primary is listed twice in {primary!r}")
        return dict(primary), targets
    if isinstance(primary, (list, tuple)):
        if not primary:
            raise ConfigurationError("at least one primary is needed")
        for target in primary:
            _check_target(target, "primary")
        if len(set(primary)) != len(primary):
            raise DuplicateNode(f"a primary is listed twice in {primary!r}")
        return None, tuple(primary)
    _check_target(primary, "primary")
    return None, (primary,)
