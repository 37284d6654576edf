"""Resharding plans: exactly which keys move where when the nodes change."""

from __future__ import annotations

import json
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from scalekit._validate import type_name
from scalekit.errors import ArgumentTypeError, ConfigurationError
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

    A plan has an :attr:`epoch`, the epoch of the placement it leads to (one more
    than the sharder's at planning), and a serialised form (:meth:`to_json`,
    :meth:`to_dict`) from which any process rebuilds the same plan: that is how a
    fleet learns it. Publish the JSON where every process looks; a process adopts
    a plan whose epoch is higher than that of the placement it routes by, routes
    through its own :class:`~scalekit.sharding.Migration` of it until the move is
    done, then routes by ``plan.after``.

    >>> from scalekit.sharding import HashRing
    >>> ring = HashRing(["a", "b"], vnodes=64)
    >>> plan = ring.plan_add("c")
    >>> plan.epoch
    1
    >>> again = ReshardPlan.from_json(plan.to_json())
    >>> again.epoch, again.after.nodes, again.move_for("k") == plan.move_for("k")
    (1, ('a', 'b', 'c'), True)
    >>> ring.add("c")
    >>> ring.epoch
    1
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
    def epoch(self) -> int:
        """The epoch of the placement this plan leads to (``after.epoch``)."""
        return self.after.epoch

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form: the placements before and after (see
        ``ShardingScheme.to_dict``) and the epoch. Moves are not recorded: they
        follow from the two placements.

        Runtime complexity: O(n) (O(S) for slot maps).
        """
        return {
            "format": _FORMAT,
            "epoch": self.epoch,
            "before": self.before.to_dict(),
            "after": self.after.to_dict(),
        }

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> ReshardPlan[Any]:
        """The plan :meth:`to_dict` described; :class:`~scalekit.errors.ConfigurationError`
        for anything else (another format, schemes that differ, an epoch that does
        not match its placement).

        Runtime complexity: building both placements and their moves.
        """
        if not isinstance(spec, Mapping):
            raise ArgumentTypeError(f"a plan description is a mapping, not {type_name(spec)}")
        if spec.get("format") != _FORMAT:
            raise ConfigurationError(f"not a plan description: format {spec.get('format')!r}")
        try:
            before_spec, after_spec = spec["before"], spec["after"]
            epoch = spec["epoch"]
        except KeyError as exc:
            raise ConfigurationError(f"a plan description lacks {exc}") from None
        if not isinstance(before_spec, Mapping) or not isinstance(after_spec, Mapping):
            raise ConfigurationError("a plan description holds two placements")
        if before_spec.get("scheme") != after_spec.get("scheme"):
            raise ConfigurationError("the placements of a plan are of one scheme")
        before = ShardingScheme.from_dict(before_spec)
        after = ShardingScheme.from_dict(after_spec)
        if epoch != after.epoch:
            raise ConfigurationError(f"epoch {epoch!r} is not that of the placement after")
        return cls.between(before, after)

    def to_json(self) -> str:
        """:meth:`to_dict` as JSON text (ASCII: a lone surrogate in a node name is
        escaped, and read back as it was)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> ReshardPlan[Any]:
        """The plan :meth:`to_json` wrote."""
        try:
            spec = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"not a plan in JSON: {exc}") from None
        return cls.from_dict(spec)

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


_FORMAT = "scalekit.reshard-plan/1"


def _weight_shares(sharder: ShardingScheme[N, Any]) -> dict[N, float]:
    total = sum(sharder._weights.values())
    return {node: weight / total for node, weight in sharder._weights.items()} if total else {}
