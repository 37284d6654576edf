"""Least connections: the backend with the fewest requests in flight per unit of weight."""

from __future__ import annotations

import random
import time
from collections.abc import Hashable, Iterable, Mapping
from itertools import count
from typing import Any, TypeVar

from sortedcontainers import SortedList  # type: ignore[import-untyped]

from scalekit._validate import check_choice, check_count
from scalekit.balancing._base import (
    BalancerBase,
    OutlierEjection,
    _Backend,
    _expect,
    _two_choices,
    check_rng,
)
from scalekit.protocols import Clock

__all__ = ["LeastConnections"]

B = TypeVar("B", bound=Hashable)


class LeastConnections(BalancerBase[B]):
    """Picks the backend with the fewest requests in flight relative to its weight.

    Exact mode keeps the eligible backends in a sorted list keyed by
    ``(in_flight / weight, turn)``: the least loaded is first, and among equally
    loaded backends the one chosen or changed longest ago, so equal load spreads
    round robin. ``choices=2`` switches to the power of two choices: two distinct
    random backends, the less loaded wins; O(1) whatever the pool size.

    Only leases count requests in flight: plain :meth:`pick` chooses, and moves the
    chosen backend behind its equals.

    Runtime complexity: exact ``pick`` and ``lease`` O(log n); ``choices=2`` O(1).

    >>> lc = LeastConnections(["a", "b"])
    >>> first = lc.lease()
    >>> lc.pick() != first.backend    # the other one has fewer in flight
    True
    >>> first.release()
    """

    def __init__(
        self,
        backends: Iterable[B] = (),
        weights: Mapping[B, float] | None = None,
        *,
        choices: int | None = None,
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
        ``choices``: ``None`` for the exact least loaded, ``2`` for the power of
        two choices drawn with ``rng``.
        Every argument is checked before anything is built: a bad one raises
        :class:`~scalekit.errors.ArgumentTypeError` or
        :class:`~scalekit.errors.ConfigurationError` naming it.
        """
        if choices is not None:
            check_choice(check_count(choices, "choices"), "choices (None: exact)", (2,))
        self._choices = choices
        self._rng = check_rng(rng)
        self._turns = count()
        self._order: Any = None  # SortedList of (load, turn, id, record); None: rebuild
        self._keys: dict[_Backend, tuple[float, int, int, _Backend]] = {}
        super().__init__(
            backends,
            weights,
            clock=clock,
            ejection=ejection,
            panic_threshold=panic_threshold,
            slow_start=slow_start,
        )

    def _changed(self) -> None:
        self._order = None

    @staticmethod
    def _load(record: _Backend) -> float:
        return record.in_flight / record.share

    def _key(self, record: _Backend) -> tuple[float, int, int, _Backend]:
        return (self._load(record), next(self._turns), id(record), record)

    def _rebuild(self, eligible: list[_Backend]) -> Any:
        self._keys = {record: self._key(record) for record in eligible}
        self._order = SortedList(self._keys.values())
        return self._order

    def _requeue(self, record: _Backend) -> None:
        old = self._keys.get(record)
        if old is None or self._order is None:
            return
        self._order.remove(old)
        new = self._keys[record] = self._key(record)
        self._order.add(new)

    def _loaded(self, record: _Backend) -> None:
        if self._choices is None:
            self._requeue(record)

    def _choose(self, eligible: list[_Backend], key: Any) -> _Backend:
        if self._choices == 2:
            return _two_choices(eligible, self._rng, self._load)
        order = self._order
        if order is None:
            order = self._rebuild(eligible)
        record: _Backend = order[0][3]
        self._requeue(record)  # behind its equals: ties go round robin
        return record

    def _check_choice(self) -> None:
        order = self._order
        if order is None:
            return
        _expect(self._choices is None, "a sorted order kept for the power of two choices")
        order._check()
        _expect(len(order) == len(self._keys), "the order and its keys differ in size")
        for record, key in self._keys.items():
            _expect(key[3] is record and key[2] == id(record), "a key names another backend")
            _expect(record.present and not record.down, "a removed or down backend is ordered")
            _expect(key[0] == self._load(record), f"{record.backend!r} is ordered by a stale load")
            _expect(key in order, f"{record.backend!r} is missing from the order")
