"""Least connections: the backend with the fewest requests in flight per unit of weight."""

from __future__ import annotations

import random
from collections.abc import Hashable
from itertools import count
from typing import Any, TypeVar

from sortedcontainers import SortedList  # type: ignore[import-untyped]

from scalekit.balancing._base import BalancerBase, _Backend, _two_choices
from scalekit.errors import ConfigurationError

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
        *args: Any,
        choices: int | None = None,
        rng: random.Random | None = None,
        **kwargs: Any,
    ) -> None:
        if choices is not None and choices != 2:
            raise ConfigurationError(f"choices must be None (exact) or 2, got {choices!r}")
        self._choices = choices
        self._rng = random.Random() if rng is None else rng
        self._turns = count()
        self._order: Any = None  # SortedList of (load, turn, id, record); None: rebuild
        self._keys: dict[_Backend, tuple[float, int, int, _Backend]] = {}
        super().__init__(*args, **kwargs)

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
