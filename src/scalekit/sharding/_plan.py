"""Resharding plans: exactly which keys move where when the nodes change."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from scalekit.sharding._base import Key, ShardingScheme

__all__ = ["Move", "ReshardPlan"]

N = TypeVar("N", bound=Hashable)


@dataclass(frozen=True)
class Move(Generic[N]):
    """One flow of keys from ``source`` to ``target``.

    ``fraction`` is the share of the whole key space that flows (exact for rings,
    slot maps and Maglev, whose structure says it; the expected share for jump
    and rendezvous hashing). A ring move lists its ``ranges`` of the ring's hash
    space (``ring.space``: 2**32 for the default hash and for ketama), as half-open
    intervals ``(start, end]`` (``start > end`` wraps around); a slot move lists its
    ``slots`` (table entries, for Maglev).
    """

    source: N
    target: N
    fraction: float
    ranges: tuple[tuple[int, int], ...] = field(default=(), repr=False)
    slots: tuple[int, ...] = field(default=(), repr=False)


class ReshardPlan(Generic[N]):
    """What a change of nodes moves: the moves, and the owner of any key before and after.

    ``move_for(key)`` compares the two placements, so it is exact by construction;
    ``moves`` describe the same change in terms of the scheme's structure (ranges,
    slots), which is what a migration copies.
    """

    def __init__(
        self,
        before: ShardingScheme[N, Any],
        after: ShardingScheme[N, Any],
        moves: list[Move[N]],
    ) -> None:
        self.before = before
        self.after = after
        self.moves: tuple[Move[N], ...] = tuple(
            sorted(moves, key=lambda m: (-m.fraction, str(m.source), str(m.target)))
        )

    @classmethod
    def between(
        cls, before: ShardingScheme[N, Any], after: ShardingScheme[N, Any]
    ) -> ReshardPlan[N]:
        """The plan from the placement of ``before`` to that of ``after`` (same scheme)."""
        moves = before._moves(before._state, after._state) or []
        return cls(before, after, moves)

    @property
    def moved_fraction(self) -> float:
        """The share of all keys that change owner."""
        return sum(move.fraction for move in self.moves)

    @property
    def ideal_fraction(self) -> float:
        """The least share any scheme must move: how much the weight shares changed."""
        old, new = _weight_shares(self.before), _weight_shares(self.after)
        return sum(max(0.0, new.get(node, 0.0) - old.get(node, 0.0)) for node in new)

    @property
    def sources(self) -> frozenset[N]:
        """The nodes keys leave."""
        return frozenset(move.source for move in self.moves)

    @property
    def targets(self) -> frozenset[N]:
        """The nodes keys go to."""
        return frozenset(move.target for move in self.moves)

    def move_for(self, key: Key) -> tuple[N, N] | None:
        """``(source, target)`` if ``key`` changes owner, else ``None``. O(lookup)."""
        before = self.before.node_for(key) if len(self.before) else None
        after = self.after.node_for(key) if len(self.after) else None
        if before == after or before is None or after is None:
            return None
        return before, after

    def summary(self) -> str:
        """A few readable lines: how much moves, from where to where."""
        lines = [
            f"{len(self.before)} -> {len(self.after)} nodes: {self.moved_fraction:.2%} of keys "
            f"move (ideal {self.ideal_fraction:.2%})"
        ]
        for move in self.moves:
            detail = ""
            if move.ranges:
                detail = f" in {len(move.ranges)} ranges"
            elif move.slots:
                detail = f" in {len(move.slots)} slots"
            lines.append(f"  {move.source} -> {move.target}: {move.fraction:.2%}{detail}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"ReshardPlan({len(self.moves)} moves, {self.moved_fraction:.2%} of keys, "
            f"{sorted(map(str, self.sources))} -> {sorted(map(str, self.targets))})"
        )


def _weight_shares(sharder: ShardingScheme[N, Any]) -> dict[N, float]:
    total = sum(sharder._weights.values())
    return {node: weight / total for node, weight in sharder._weights.items()} if total else {}
