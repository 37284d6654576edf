"""How well a sharder spreads keys, and how much a plan moves."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from scalekit.sharding._base import Key, ShardingScheme
from scalekit.sharding._plan import ReshardPlan

__all__ = ["ShardingReport", "report"]

N = TypeVar("N", bound=Hashable)


@dataclass(frozen=True)
class ShardingReport(Generic[N]):
    """Balance of a sharder over some keys and, given a plan, what it moves.

    ``max_over_mean`` is the load of the fullest node over the mean load
    (1.0 is perfect); loads are weighted, so a node of weight 2 is expected to
    hold twice the keys. ``shares`` is each node's share of the key space as the
    structure itself says (ring arcs, slots, table entries), where it can.
    """

    keys: int
    counts: dict[N, int]
    max_over_mean: float
    stddev_over_mean: float
    shares: dict[N, float] | None
    share_max_over_mean: float | None
    moved_fraction: float | None = None
    ideal_fraction: float | None = None

    @property
    def moved_over_ideal(self) -> float | None:
        """How many times the least possible share of keys the plan moves."""
        if self.moved_fraction is None or not self.ideal_fraction:
            return None
        return self.moved_fraction / self.ideal_fraction

    def __str__(self) -> str:
        lines = [
            f"{len(self.counts)} nodes, {self.keys:,} keys: max/mean {self.max_over_mean:.3f}, "
            f"stddev/mean {self.stddev_over_mean:.3f}"
        ]
        if self.share_max_over_mean is not None:
            lines.append(f"structural share max/mean {self.share_max_over_mean:.3f}")
        if self.moved_fraction is not None:
            lines.append(
                f"plan moves {self.moved_fraction:.2%} of keys, ideal {self.ideal_fraction:.2%}"
                f" ({self.moved_over_ideal:.2f} x)"
            )
        return "\n".join(lines)


def report(
    sharder: ShardingScheme[N, Any],
    keys: Iterable[Key],
    plan: ReshardPlan[N] | None = None,
) -> ShardingReport[N]:
    """Count ``keys`` per node of ``sharder`` and summarize the balance (and ``plan``).

    Runtime complexity: O(len(keys)) lookups.

    >>> from scalekit.sharding import HashRing
    >>> ring = HashRing(["a", "b", "c"])
    >>> r = report(ring, [f"key{i}" for i in range(3000)])
    >>> 1.0 <= r.max_over_mean < 1.2
    True
    """
    counts: Counter[N] = Counter(sharder.node_for(key) for key in keys)
    weights = sharder._weights
    total_weight = sum(weights.values())
    total = sum(counts.values())
    relative = [
        counts.get(node, 0) / (total * weight / total_weight) if total else 0.0
        for node, weight in weights.items()
    ]
    shares = sharder._shares(sharder._state)
    share_ratio = None
    if shares is not None and shares:
        share_ratio = max(
            shares.get(node, 0.0) / (weight / total_weight) for node, weight in weights.items()
        )
    return ShardingReport(
        keys=total,
        counts={node: counts.get(node, 0) for node in weights},
        max_over_mean=max(relative) if relative else math.nan,
        stddev_over_mean=statistics.pstdev(relative) if relative else math.nan,
        shares=shares,
        share_max_over_mean=share_ratio,
        moved_fraction=None if plan is None else plan.moved_fraction,
        ideal_fraction=None if plan is None else plan.ideal_fraction,
    )
