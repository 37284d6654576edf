"""The ``Balancer`` protocol and the bookkeeping every balancer shares.

A balancer keeps one :class:`_Backend` record per backend: weight, requests in
flight, health marks and outlier-ejection state. A lease holds on to the record
it counted on, so releasing after the backend was removed (or re-added) still
decrements the right counter, and no counter ever goes negative.

Subclasses choose among the eligible backends (:meth:`Balancer._choose`) and are
told when a backend's load or eligibility changes (:meth:`Balancer._changed`).
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from scalekit._validate import (
    MAX_WEIGHT,
    check_callable,
    check_count,
    check_name,
    check_node,
    check_number,
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
from scalekit.protocols import Clock

__all__ = ["BackendStats", "Balancer", "BalancerStats", "Lease", "OutlierEjection"]

B = TypeVar("B", bound=Hashable)

_log = logging.getLogger("scalekit.balancing")


@runtime_checkable
class Balancer(Protocol[B]):
    """Spreads requests over backends and routes around the ones that fail."""

    def pick(self, key: Any = None) -> B:
        """Choose a backend for one request (without counting it in flight)."""
        ...

    def lease(self, key: Any = None) -> Lease[B]:
        """Choose a backend and count the request in flight until the block ends."""
        ...

    def report(self, backend: B, ok: bool, latency: float | None = None) -> None:
        """Record the outcome of a request sent to ``backend`` without a lease."""
        ...

    def add(self, backend: B, weight: float = 1) -> None:
        """Add ``backend`` with a relative ``weight``."""
        ...

    def remove(self, backend: B) -> None:
        """Remove ``backend``; requests in flight on it finish normally."""
        ...

    def set_weight(self, backend: B, weight: float) -> None:
        """Change the weight of ``backend``."""
        ...

    def mark_down(self, backend: B) -> None:
        """Take ``backend`` out of rotation until :meth:`mark_up`."""
        ...

    def mark_up(self, backend: B) -> None:
        """Put ``backend`` back into rotation."""
        ...

    @property
    def backends(self) -> tuple[B, ...]:
        """Every backend, healthy or not, in the order added."""
        ...

    def healthy(self) -> tuple[B, ...]:
        """The backends a pick can choose now."""
        ...

    def stats(self) -> BalancerStats[B]:
        """A snapshot of the counters."""
        ...


@dataclass(frozen=True)
class OutlierEjection:
    """Passive health checking, as in Envoy's outlier detection.

    After ``consecutive_failures`` failures in a row a backend is ejected from the
    very next pick, for ``base_ejection`` seconds times the number of times it
    has been ejected (at most ``max_ejection`` seconds), then re-admitted. At most
    ``max_ejection_percent`` of the backends are ejected at once, but one always may be.
    """

    consecutive_failures: int = 5
    base_ejection: float = 30.0
    max_ejection: float = 300.0
    max_ejection_percent: float = 50.0

    def __post_init__(self) -> None:
        check_count(self.consecutive_failures, "consecutive_failures", minimum=1)
        base = check_seconds(self.base_ejection, "base_ejection")
        longest = check_seconds(self.max_ejection, "max_ejection")
        if longest < base:
            raise ConfigurationError(
                f"max_ejection must be >= base_ejection, got {longest!r} < {base!r}"
            )
        check_number(self.max_ejection_percent, "max_ejection_percent", minimum=0, maximum=100)


@dataclass(frozen=True)
class BackendStats:
    """One backend's counters in a :class:`BalancerStats` snapshot."""

    weight: float
    share: float
    """The weight picks use now: lower than ``weight`` while slow start ramps it up."""
    in_flight: int
    picks: int
    successes: int
    failures: int
    ejections: int
    down: bool
    ejected: bool
    latency: float | None
    """Exponentially weighted moving average of the reported latencies (alpha 0.2)."""


@dataclass(frozen=True)
class BalancerStats(Generic[B]):
    """A snapshot of a balancer's counters, per backend and in all."""

    backends: dict[B, BackendStats]
    no_backend: int  # picks that found nothing to choose
    panic_picks: int  # picks made in panic mode, among all backends
    panicking: bool  # whether the last pick was in panic mode

    @property
    def in_flight(self) -> int:
        """Requests in flight on every backend together."""
        return sum(b.in_flight for b in self.backends.values())

    @property
    def picks(self) -> int:
        """Picks made, in all."""
        return sum(b.picks for b in self.backends.values())


class _Backend:
    """Everything a balancer knows about one backend."""

    __slots__ = (
        "backend",
        "consecutive_failures",
        "down",
        "ejected_until",
        "ejections",
        "failures",
        "in_flight",
        "latency",
        "picks",
        "present",
        "ramp_from",
        "share",
        "successes",
        "weight",
    )

    def __init__(self, backend: Any, weight: float) -> None:
        self.backend = backend
        self.weight = weight
        self.share = weight  # the weight picks use: ``weight`` scaled down by slow start
        self.ramp_from: float | None = None  # when slow start began, while it runs
        self.in_flight = 0
        self.latency: float | None = None  # moving average of reported latencies
        self.picks = 0
        self.successes = 0
        self.failures = 0
        self.consecutive_failures = 0
        self.ejections = 0
        self.ejected_until = -math.inf
        self.down = False
        self.present = True


class Lease(Generic[B]):
    """One request in flight on a backend; a context manager, sync or async.

    On exit it records a success, or a failure if the block raised (a cancelled
    asyncio task counts as neither), with the latency, and releases the backend.
    Releasing twice is a no-op.
    """

    __slots__ = ("_balancer", "_record", "_started", "backend")

    def __init__(self, balancer: BalancerBase[B], record: _Backend, started: float) -> None:
        self._balancer = balancer
        self._record: _Backend | None = record
        self._started = started
        self.backend: B = record.backend

    def release(self, ok: bool | None = True) -> None:
        """Stop counting the request; ``ok=None`` records no outcome."""
        if ok is not True and ok is not False and ok is not None:
            check_ok(ok, allow_none=True)  # type: ignore[unreachable]  # raises: still held
        record, self._record = self._record, None
        if record is not None:
            self._balancer._release(record, ok, self._balancer._clock() - self._started)

    def __enter__(self) -> B:
        return self.backend

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release(_outcome(kind))

    async def __aenter__(self) -> B:
        return self.backend

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release(_outcome(kind))


def _two_choices(
    eligible: list[_Backend], rng: random.Random, load: Callable[[_Backend], float]
) -> _Backend:
    """The power of two choices: two distinct random backends, the less loaded wins
    (the first drawn on a tie). O(1)."""
    if len(eligible) == 1:
        return eligible[0]
    first, second = rng.sample(eligible, 2)
    return second if load(second) < load(first) else first


def check_backend(backend: B) -> B:
    """``backend`` if it can name a backend: hashable, not None, equal to itself, and
    valid text if it is a ``str`` (no lone surrogate: it must survive a log line, a
    metrics label, a JSON document)."""
    check_node(backend, "backend")
    if isinstance(backend, str):
        check_name(backend, "backend")
    return backend


def check_backends(backends: object) -> list[Any]:
    """The backends of an iterable (not a lone ``str`` or ``bytes``), each checked."""
    if isinstance(backends, (str, bytes)) or not isinstance(backends, Iterable):
        raise ArgumentTypeError(
            f"backends must be an iterable of backends, got {type_name(backends)}"
        )
    return [check_backend(backend) for backend in backends]


def check_rng(rng: object) -> random.Random:
    """``rng`` if it is a :class:`random.Random`; a fresh one for ``None``."""
    if rng is None:
        return random.Random()
    if not isinstance(rng, random.Random):
        raise ArgumentTypeError(f"rng must be a random.Random or None, got {type_name(rng)}")
    return rng


def check_ok(ok: object, *, allow_none: bool = False) -> bool | None:
    """``ok`` if it is a ``bool`` (or ``None`` where no outcome is allowed)."""
    if ok is None and allow_none:
        return None
    if not isinstance(ok, bool):
        allowed = "a bool or None" if allow_none else "a bool"
        raise ArgumentTypeError(f"ok must be {allowed}, got {type_name(ok)}")
    return ok


def check_latency(latency: object) -> float | None:
    """``latency`` as seconds (>= 0, finite), or ``None``."""
    if latency is None:
        return None
    return check_seconds(latency, "latency", allow_zero=True)


def _outcome(kind: type[BaseException] | None) -> bool | None:
    if kind is None:
        return True
    if issubclass(kind, Exception):
        return False
    return None  # cancelled, interrupted: not the backend's fault


class BalancerBase(Generic[B]):
    """Backends, health, ejection, leases and stats; subclasses choose."""

    def __init__(
        self,
        backends: Iterable[B] = (),
        weights: Mapping[B, float] | None = None,
        *,
        clock: Clock = time.monotonic,
        ejection: OutlierEjection | None = None,
        panic_threshold: float = 50.0,
        slow_start: float = 0.0,
    ) -> None:
        """``backends`` in the order picks visit them; ``weights`` maps some of them to a
        relative weight (1 for the others); ``clock`` returns seconds; ``ejection``
        is the passive health policy (:class:`OutlierEjection`'s defaults when
        ``None``); ``panic_threshold`` is the percentage of healthy backends under
        which picks spread over all; ``slow_start`` is seconds of ramp-up (0: off).
        Every argument is checked before anything is built: a bad one raises
        :class:`~scalekit.errors.ArgumentTypeError` or
        :class:`~scalekit.errors.ConfigurationError` naming it.
        """
        listed = check_backends(backends)
        chosen = self._check_weights(listed, weights)
        check_callable(clock, "clock")
        if ejection is not None and not isinstance(ejection, OutlierEjection):
            raise ArgumentTypeError(
                f"ejection must be an OutlierEjection or None, got {type_name(ejection)}"
            )
        panic_threshold = check_number(panic_threshold, "panic_threshold", minimum=0, maximum=100)
        slow_start = check_seconds(slow_start, "slow_start", allow_zero=True)
        self._slow_start = slow_start
        self._panic_threshold = panic_threshold / 100
        self._panicking = False
        self._panic_picks = 0
        self._lock = threading.RLock()
        self._clock = clock
        self._ejection = OutlierEjection() if ejection is None else ejection
        self._records: dict[B, _Backend] = {}
        self._no_backend = 0
        self._eligible_cache: list[_Backend] | None = None
        self._next_refresh = math.inf  # an ejection runs out or a slow start steps up
        for backend, weight in zip(listed, chosen, strict=True):
            self._records[backend] = _Backend(backend, weight)

    @staticmethod
    def _check_weights(listed: list[Any], weights: object) -> list[float]:
        """The weight of each listed backend (1 unless given), every one checked."""
        if weights is None:
            given: dict[Any, Any] = {}
        elif isinstance(weights, Mapping):
            given = dict(weights)
        else:
            raise ArgumentTypeError(
                f"weights must be a mapping of backend to weight, got {type_name(weights)}"
            )
        seen: set[Any] = set()
        for backend in listed:
            if backend in seen:
                raise DuplicateNode(f"{backend!r} is listed twice")
            seen.add(backend)
        unknown = [backend for backend in given if backend not in seen]
        if unknown:
            raise UnknownNode(f"weights given for backends not listed: {unknown!r}")
        return [check_weight(given.get(backend, 1)) for backend in listed]

    # -- what a balancer chooses ------------------------------------------------

    def _choose(self, eligible: list[_Backend], key: Any) -> _Backend:  # pragma: no cover
        raise NotImplementedError

    def _changed(self) -> None:
        """The set of backends, a weight or an eligibility changed."""

    # -- backends ---------------------------------------------------------------

    def _insert(self, backend: B, weight: float) -> None:
        check_backend(backend)
        weight = check_weight(weight)
        if backend in self._records:
            raise DuplicateNode(f"{backend!r} is already a backend")
        self._records[backend] = _Backend(backend, weight)

    def _record_of(self, backend: B) -> _Backend:
        try:
            return self._records[backend]
        except KeyError:
            raise UnknownNode(f"{backend!r} is not a backend") from None
        except TypeError:  # unhashable: it cannot be one
            raise ArgumentTypeError(f"backend must be hashable, got {type_name(backend)}") from None

    def _ramp(self, record: _Backend, since: float) -> None:
        if self._slow_start > 0:
            record.ramp_from = since

    def add(self, backend: B, weight: float = 1) -> None:
        """Add ``backend`` with a relative ``weight`` (default 1); with ``slow_start``,
        its share ramps up from 10% of it."""
        with self._lock:
            self._insert(backend, weight)
            self._ramp(self._records[backend], self._clock())
            self._invalidate()

    def remove(self, backend: B) -> None:
        """Remove ``backend``; its requests in flight finish and release normally."""
        with self._lock:
            self._record_of(backend).present = False
            del self._records[backend]
            self._invalidate()

    def set_weight(self, backend: B, weight: float) -> None:
        """Change the weight of ``backend``."""
        weight = check_weight(weight)
        with self._lock:
            record = self._record_of(backend)
            record.weight = record.share = weight
            self._invalidate()

    def mark_down(self, backend: B) -> None:
        """Take ``backend`` out of rotation until :meth:`mark_up`."""
        with self._lock:
            self._record_of(backend).down = True
            self._invalidate()

    def mark_up(self, backend: B) -> None:
        """Put ``backend`` back into rotation (also ends an ejection); with
        ``slow_start``, a backend that was out ramps up again."""
        with self._lock:
            record = self._record_of(backend)
            if record.down or record.ejected_until != -math.inf:
                self._ramp(record, self._clock())
            record.down = False
            record.ejected_until = -math.inf
            record.consecutive_failures = 0
            self._invalidate()

    @property
    def backends(self) -> tuple[B, ...]:
        """Every backend, healthy or not, in the order added."""
        return tuple(self._records)

    def weight_of(self, backend: B) -> float:
        """The weight of ``backend``."""
        return self._record_of(backend).weight

    def in_flight(self, backend: B) -> int:
        """Requests in flight on ``backend``."""
        return self._record_of(backend).in_flight

    def healthy(self) -> tuple[B, ...]:
        """The backends a pick can choose now (not down, not ejected)."""
        with self._lock:
            return tuple(r.backend for r in self._eligible(self._clock()))

    def _eligible(self, now: float) -> list[_Backend]:
        """The backends that can be picked: cached until something changes, an
        ejection runs out or a slow start steps up, so a pick is O(1) amortized."""
        cached = self._eligible_cache
        if cached is not None and now < self._next_refresh:
            return cached
        eligible = []
        next_refresh = math.inf
        changed = False
        for record in self._records.values():
            if record.down:
                continue
            if record.ejected_until > now:
                next_refresh = min(next_refresh, record.ejected_until)
                continue
            if record.ejected_until != -math.inf:
                self._ramp(record, record.ejected_until)
                record.ejected_until = -math.inf  # the ejection ran out: re-admitted
                changed = True
                _log.info(
                    "backend %r re-admitted: its ejection ran out",
                    record.backend,
                    extra={"backend": record.backend, "reason": "ejection ended"},
                )
            if record.ramp_from is not None:
                changed |= self._step_up(record, now)
                if record.ramp_from is not None:
                    next_refresh = min(next_refresh, self._next_step(record, now))
            eligible.append(record)
        if changed:
            self._changed()
        self._eligible_cache = eligible
        self._next_refresh = next_refresh
        return eligible

    # Slow start (Envoy's, linear): a share of 10%, 20%, ... of the weight, one step
    # per tenth of the window, so the algorithms rebuild 10 times, not every pick.
    _RAMP_STEPS = 10

    def _step_up(self, record: _Backend, now: float) -> bool:
        assert record.ramp_from is not None
        done = math.floor((now - record.ramp_from) / self._slow_start * self._RAMP_STEPS)
        if done >= self._RAMP_STEPS:
            record.ramp_from = None
            share = record.weight
        else:
            share = record.weight * max(1, done) / self._RAMP_STEPS
        if share == record.share:
            return False
        record.share = share
        return True

    def _next_step(self, record: _Backend, now: float) -> float:
        assert record.ramp_from is not None
        done = math.floor((now - record.ramp_from) / self._slow_start * self._RAMP_STEPS)
        return record.ramp_from + (done + 1) * self._slow_start / self._RAMP_STEPS

    def _invalidate(self) -> None:
        self._eligible_cache = None
        self._changed()

    # -- picking ----------------------------------------------------------------

    def _pick_record(self, key: Any) -> _Backend:
        eligible = self._eligible(self._clock())
        panicking = len(eligible) < self._panic_threshold * len(self._records)
        if panicking != self._panicking:
            self._panicking = panicking
            self._changed()  # the candidates change: subclasses start afresh
        if panicking:
            # Envoy's panic mode: too few healthy backends would drown; spread over
            # every backend not taken down by hand, ejected ones included.
            eligible = [r for r in self._records.values() if not r.down]
            if eligible:
                self._panic_picks += 1
        if not eligible:
            self._no_backend += 1
            if not self._records:
                raise NoBackendAvailable("the balancer has no backends")
            raise NoBackendAvailable(
                f"all {len(self._records)} backends are down or ejected: "
                f"{sorted(map(str, self._records))}"
            )
        record = self._choose(eligible, key)
        record.picks += 1
        return record

    def pick(self, key: Any = None) -> B:
        """Choose a backend for one request, without counting it in flight.

        Raises :class:`~scalekit.errors.NoBackendAvailable` when none can be chosen.
        """
        with self._lock:
            backend: B = self._pick_record(key).backend
            return backend

    def lease(self, key: Any = None) -> Lease[B]:
        """Choose a backend and count the request in flight: ``with b.lease() as backend``.

        Works as ``async with`` too. The outcome (success, or failure if the block
        raised) and the latency are recorded when the block ends.
        """
        with self._lock:
            record = self._pick_record(key)
            record.in_flight += 1
            self._loaded(record)
            return Lease(self, record, self._clock())

    def _loaded(self, record: _Backend) -> None:
        """``record.in_flight`` changed."""

    def _release(self, record: _Backend, ok: bool | None, latency: float) -> None:
        with self._lock:
            if record.in_flight > 0:
                record.in_flight -= 1
            if record.present:
                self._loaded(record)
                if ok is not None:
                    self._outcome(record, ok, latency)

    def report(self, backend: B, ok: bool, latency: float | None = None) -> None:
        """Record the outcome of a request sent to ``backend`` without a lease.

        ``ok`` is a ``bool``; ``latency`` is seconds (>= 0, finite) or ``None``.
        """
        check_ok(ok)
        latency = check_latency(latency)
        with self._lock:
            self._outcome(self._record_of(backend), ok, latency)

    def _outcome(self, record: _Backend, ok: bool, latency: float | None) -> None:
        if latency is not None:
            previous = record.latency
            record.latency = latency if previous is None else previous + 0.2 * (latency - previous)
        if ok:
            record.successes += 1
            record.consecutive_failures = 0
            return
        record.failures += 1
        now = self._clock()
        if record.ejected_until > now:
            return  # failures of requests sent before the ejection do not count twice
        record.consecutive_failures += 1
        policy = self._ejection
        if record.consecutive_failures < policy.consecutive_failures:
            return
        ejected = sum(1 for r in self._records.values() if r.ejected_until > now)
        limit = max(1, math.floor(len(self._records) * policy.max_ejection_percent / 100))
        if ejected >= limit:
            return
        record.ejections += 1
        record.consecutive_failures = 0
        seconds = min(policy.base_ejection * record.ejections, policy.max_ejection)
        record.ejected_until = now + seconds
        self._invalidate()
        _log.warning(
            "backend %r ejected for %g s after %d failures in a row",
            record.backend,
            seconds,
            policy.consecutive_failures,
            extra={
                "backend": record.backend,
                "reason": "consecutive failures",
                "failures": policy.consecutive_failures,
                "seconds": seconds,
                "ejections": record.ejections,
            },
        )

    # -- stats ------------------------------------------------------------------

    def stats(self) -> BalancerStats[B]:
        """A snapshot of the counters, per backend."""
        with self._lock:
            now = self._clock()
            self._eligible(now)  # brings ejections and slow starts up to date
            return BalancerStats(
                backends={
                    r.backend: BackendStats(
                        weight=r.weight,
                        share=r.share,
                        in_flight=r.in_flight,
                        picks=r.picks,
                        successes=r.successes,
                        failures=r.failures,
                        ejections=r.ejections,
                        down=r.down,
                        ejected=r.ejected_until > now,
                        latency=r.latency,
                    )
                    for r in self._records.values()
                },
                no_backend=self._no_backend,
                panic_picks=self._panic_picks,
                panicking=self._panicking,
            )

    # -- invariants -------------------------------------------------------------

    def _check(self) -> None:
        """Assert the internal invariants (for tests: the stateful tests call it
        after every step). Raises :class:`AssertionError` when one is broken.

        Runtime complexity: O(n) for n backends (plus the subclass's own checks).
        """
        with self._lock:
            now = self._clock()
            policy = self._ejection
            for backend, record in self._records.items():
                _expect(record.backend is backend or record.backend == backend, "record key")
                _expect(record.present, f"{backend!r} is listed but marked removed")
                _expect(record.in_flight >= 0, f"{backend!r} has {record.in_flight} in flight")
                _expect(0 < record.weight <= MAX_WEIGHT, f"{backend!r} weight {record.weight!r}")
                _expect(
                    0 < record.share <= record.weight,
                    f"{backend!r} share {record.share!r} outside (0, {record.weight!r}]",
                )
                _expect(
                    record.ramp_from is not None or record.share == record.weight,
                    f"{backend!r} is ramped down with no slow start running",
                )
                counters = (record.picks, record.successes, record.failures, record.ejections)
                _expect(min(counters) >= 0, f"{backend!r} has a negative counter {counters}")
                _expect(record.consecutive_failures >= 0, f"{backend!r} failures in a row < 0")
                if record.ejected_until != -math.inf:
                    _expect(record.ejections >= 1, f"{backend!r} ejected, never counted")
                    _expect(
                        record.ejected_until <= now + policy.max_ejection,
                        f"{backend!r} ejected for longer than max_ejection",
                    )
            _expect(self._no_backend >= 0 and self._panic_picks >= 0, "negative counters")
            cached = self._eligible_cache
            if cached is not None and now < self._next_refresh:
                expected = [
                    r for r in self._records.values() if not r.down and r.ejected_until <= now
                ]
                _expect(
                    [r.backend for r in cached] == [r.backend for r in expected]
                    and all(a is b for a, b in zip(cached, expected, strict=True)),
                    "the eligible backends cached are not the ones eligible",
                )
            self._check_choice()

    def _check_choice(self) -> None:
        """The subclass's own invariants (its picking state), under the lock."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({list(self._records)!r})"


def _expect(condition: bool, message: str) -> None:
    """``assert``, but kept under ``python -O``."""
    if not condition:
        raise AssertionError(message)
