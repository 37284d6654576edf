"""Consistent hashing and resharding: which node owns a key, and what moves when
nodes come and go.

Every scheme implements the :class:`Sharder` protocol; changes are planned as a
:class:`ReshardPlan` before they are made.
"""

from scalekit.sharding._base import Key, Sharder, ShardingScheme
from scalekit.sharding._migration import Migration, MigrationProgress
from scalekit.sharding._plan import Move, ReshardPlan
from scalekit.sharding._report import ShardingReport, report
from scalekit.sharding._ring import DEFAULT_VNODES, HashRing

__all__ = [
    "DEFAULT_VNODES",
    "HashRing",
    "Key",
    "Migration",
    "MigrationProgress",
    "Move",
    "ReshardPlan",
    "Sharder",
    "ShardingReport",
    "ShardingScheme",
    "report",
]
