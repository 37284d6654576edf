"""Peak EWMA: least loaded by latency times requests in flight (Finagle's balancer)."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Hashable, Iterable, Mapping
from typing import Any, TypeVar

from scalekit._validate import check_seconds
from scalekit.balancing._base import (
    BalancerBase,
    OutlierEjection,
    _Backend,
    _expect,
    _two_choices,
    check_rng,
)
from scalekit.protocols import Clock

__all__ = ["PeakEwma"]

B = TypeVar("B", bound=Hashable)

# The load of a backend whose latency is not known yet but has requests in flight:
# worse than any measured one, so it is not flooded before its first answer.
_PENALTY = 1e9


class PeakEwma(BalancerBase[B]):
    """Latency-aware least loaded: the cost of a backend is its peak EWMA latency
    times its requests in flight plus one, divided by its weight (Finagle's
    ``P2CPeakEwma``).

    The latency estimate jumps up to any slower answer at once (the peak) and
    decays back towards faster ones exponentially, with time constant ``decay``
    seconds, also while the backend is idle, so a backend that was slow is tried
    again after a while. A backend with no latency yet costs nothing while idle
    (it is tried at once) and a penalty while its first requests are in flight.
    Latencies come from leases (the time the block ran) and from
    :meth:`report` with ``latency=``; a cancelled lease records none.

    Choice is the power of two choices: two distinct random eligible backends, the
    cheaper wins.

    Runtime complexity: ``pick``, ``lease`` and recording an outcome O(1).

    >>> from scalekit.testing import FakeClock
    >>> balancer = PeakEwma(["fast", "slow"], clock=FakeClock())
    >>> balancer.report("fast", True, latency=0.010)
    >>> balancer.report("slow", True, latency=0.250)
    >>> balancer.pick()
    'fast'
    """

    def __init__(
        self,
        backends: Iterable[B] = (),
        weights: Mapping[B, float] | None = None,
        *,
        decay: float = 10.0,
        rng: random.Random | None = None,
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
        ``decay``: the time constant of the latency estimate, in seconds; ``rng``
        draws the two choices.
        Every argument is checked before anything is built: a bad one raises
        :class:`~scalekit.errors.ArgumentTypeError` or
        :class:`~scalekit.errors.ConfigurationError` naming it.
        """
        self._decay = check_seconds(decay, "decay")
        self._rng = check_rng(rng)
        # per record: [estimate in seconds, clock reading when it was set]
        self._estimates: dict[_Backend, list[float]] = {}
        super().__init__(
            backends,
            weights,
            clock=clock,
            ejection=ejection,
            panic_threshold=panic_threshold,
            slow_start=slow_start,
        )

    def _latency(self, record: _Backend, now: float) -> float:
        """The estimate, decayed to ``now``; 0.0 if nothing was measured yet."""
        estimate = self._estimates.get(record)
        if estimate is None:
            return 0.0
        value, since = estimate
        return value * math.exp(-max(0.0, now - since) / self._decay)

    def _cost(self, record: _Backend, now: float) -> float:
        latency = self._latency(record, now)
        if latency == 0.0:
            return _PENALTY * record.in_flight / record.share
        return latency * (record.in_flight + 1) / record.share

    def _choose(self, eligible: list[_Backend], key: Any) -> _Backend:
        now = self._clock()
        return _two_choices(eligible, self._rng, lambda record: self._cost(record, now))

    def _outcome(self, record: _Backend, ok: bool, latency: float | None) -> None:
        super()._outcome(record, ok, latency)
        if latency is None or not record.present:
            return
        now = self._clock()
        estimate = self._estimates.get(record)
        if estimate is None or latency > estimate[0]:
            self._estimates[record] = [latency, now]
            return
        value, since = estimate
        kept = math.exp(-max(0.0, now - since) / self._decay)
        estimate[0] = value * kept + latency * (1 - kept)
        estimate[1] = now

    def remove(self, backend: B) -> None:
        with self._lock:
            record = self._record_of(backend)
            super().remove(backend)
            self._estimates.pop(record, None)

    def latency(self, backend: B) -> float | None:
        """The current peak EWMA latency estimate of ``backend`` in seconds, decayed
        to now; ``None`` before any latency was recorded."""
        with self._lock:
            record = self._record_of(backend)
            if record not in self._estimates:
                return None
            return self._latency(record, self._clock())

    def _check_choice(self) -> None:
        listed = {id(record) for record in self._records.values()}
        for record, (value, _since) in self._estimates.items():
            _expect(id(record) in listed, f"an estimate kept for removed {record.backend!r}")
            _expect(0 <= value < math.inf, f"{record.backend!r} has a latency of {value!r}")
