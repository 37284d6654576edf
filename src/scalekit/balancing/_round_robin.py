"""Smooth weighted round robin, nginx's algorithm."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, TypeVar

from scalekit.balancing._base import BalancerBase, _Backend, _expect

__all__ = ["RoundRobin"]

B = TypeVar("B", bound=Hashable)


class _WeightClass:
    """The eligible backends of one weight, in list order.

    Under nginx's rule they are picked in turn: the next one (``members[turn]``)
    has been picked ``rounds`` times, the ones before it once more.
    """

    __slots__ = ("members", "positions", "rounds", "turn", "weight")

    def __init__(self, weight: float) -> None:
        self.weight = weight
        self.members: list[_Backend] = []
        self.positions: list[int] = []
        self.turn = 0
        self.rounds = 0


class RoundRobin(BalancerBase[B]):
    """Smooth weighted round robin (nginx): heavier backends get more picks, spread out.

    nginx's rule: each pick adds every eligible backend's weight to its score, picks
    the highest score (the first in list order on a tie) and subtracts the total
    weight from it. For weights ``{a: 5, b: 1, c: 1}`` the picks run
    ``a a b a c a a``. With up to three backends, after any N picks every
    backend's count is within 1 of ``N * w / W``; with more, nginx's rule can
    stray slightly further (19/18 for six backends weighted 1, 1, 1, 5, 5, 5).
    When the eligible backends or their weights change, the scores start again
    from zero.

    The picks are nginx's exactly, but computed without its scan: backends of one
    weight are picked in turn, so a score is only needed per distinct weight.

    Runtime complexity: ``pick`` O(k) for k distinct weights among the eligible
    backends (O(1) when they share one weight), whatever their number.

    >>> rr = RoundRobin(["a", "b", "c"], weights={"a": 5})
    >>> "".join(rr.pick() for _ in range(7))
    'aabacaa'
    """

    # The weight classes of the eligible backends, built by the first pick after a
    # change (None until then), the steps taken since, and the classes' total weight.
    _classes: list[_WeightClass] | None = None
    _step = 0
    _total = 0.0

    def _changed(self) -> None:
        self._classes = None

    def _start(self, eligible: list[_Backend]) -> list[_WeightClass]:
        by_weight: dict[float, _WeightClass] = {}
        for position, record in enumerate(eligible):
            group = by_weight.get(record.share)
            if group is None:
                group = by_weight[record.share] = _WeightClass(record.share)
            group.members.append(record)
            group.positions.append(position)
        self._step = 0
        self._total = sum(record.share for record in eligible)
        classes = self._classes = list(by_weight.values())
        return classes

    def _choose(self, eligible: list[_Backend], key: Any) -> _Backend:
        classes = self._classes
        if classes is None:
            classes = self._start(eligible)
        if len(classes) == 1:
            group = classes[0]
        else:
            # After s steps a backend of weight w picked x times scores s*w - W*x.
            step = self._step = self._step + 1
            total = self._total
            group = classes[0]
            best = step * group.weight - total * group.rounds
            for other in classes:
                score = step * other.weight - total * other.rounds
                if score > best or (
                    score == best and other.positions[other.turn] < group.positions[group.turn]
                ):
                    group, best = other, score
        record = group.members[group.turn]
        group.turn += 1
        if group.turn == len(group.members):
            group.turn = 0
            group.rounds += 1
        return record

    def _check_choice(self) -> None:
        classes = self._classes
        if classes is None:
            return
        members = [record for group in classes for record in group.members]
        _expect(len(set(map(id, members))) == len(members), "a backend is in two weight classes")
        _expect(
            all(record.present and not record.down for record in members),
            "a weight class holds a removed or down backend",
        )
        _expect(
            len({group.weight for group in classes}) == len(classes), "two classes of one weight"
        )
        for group in classes:
            _expect(bool(group.members), "an empty weight class")
            _expect(0 <= group.turn < len(group.members), "a turn outside its class")
            _expect(group.rounds >= 0, "negative rounds")
            _expect(
                all(record.share == group.weight for record in group.members),
                "a backend whose share is not its class's weight",
            )
            _expect(group.positions == sorted(set(group.positions)), "positions out of order")
        positions = sorted(p for group in classes for p in group.positions)
        _expect(positions == list(range(len(members))), "positions are not 0..n-1")
        total = sum(record.share for record in members)
        _expect(abs(self._total - total) <= 1e-9 * total, "the total weight is stale")
        if len(classes) > 1:
            # nginx's current weights, s*w - W*x for a backend of weight w picked x
            # times in s steps, sum to s*W - W*(picks): zero after every pick.
            picked = sum(group.rounds * len(group.members) + group.turn for group in classes)
            _expect(
                picked == self._step,
                f"current weights do not sum to 0: {picked} picks in {self._step} steps",
            )
