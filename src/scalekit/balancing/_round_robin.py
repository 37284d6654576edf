"""Smooth weighted round robin, nginx's algorithm."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, TypeVar

from scalekit.balancing._base import BalancerBase, _Backend

__all__ = ["RoundRobin"]

B = TypeVar("B", bound=Hashable)


class RoundRobin(BalancerBase[B]):
    """Smooth weighted round robin (nginx): heavier backends get more picks, spread out.

    Each pick adds every eligible backend's weight to its running score, picks the
    highest score (the first on a tie) and subtracts the total weight from it. For
    weights ``{a: 5, b: 1, c: 1}`` the picks run ``a a b a c a a``. With up to three
    backends, after any N picks every backend's count is within 1 of ``N * w / W``;
    with more, nginx's algorithm can stray slightly further (1.06 for six backends
    weighted 1, 1, 1, 5, 5, 5). When the eligible backends or their weights change,
    the scores start again from zero.

    Runtime complexity: ``pick`` O(1) when the eligible backends share one weight
    (a rotation, which is what smooth round robin reduces to), O(n) otherwise.

    >>> rr = RoundRobin(["a", "b", "c"], weights={"a": 5})
    >>> "".join(rr.pick() for _ in range(7))
    'aabacaa'
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._scores: dict[_Backend, float] = {}
        self._turn = 0
        self._uniform: bool | None = None
        super().__init__(*args, **kwargs)

    def _changed(self) -> None:
        self._scores = {}
        self._turn = 0
        self._uniform = None

    def _choose(self, eligible: list[_Backend], key: Any) -> _Backend:
        uniform = self._uniform
        if uniform is None:
            first = eligible[0].weight
            uniform = self._uniform = all(r.weight == first for r in eligible)
        if uniform:
            record = eligible[self._turn % len(eligible)]
            self._turn += 1
            return record
        scores = self._scores
        total = 0.0
        best: _Backend | None = None
        best_score = 0.0
        for record in eligible:
            score = scores.get(record, 0.0) + record.weight
            scores[record] = score
            total += record.weight
            if best is None or score > best_score:
                best, best_score = record, score
        assert best is not None
        scores[best] = best_score - total
        return best
