"""Consistent hashing and resharding: which node owns a key, and what moves when
nodes come and go.

Every scheme implements the :class:`Sharder` protocol; changes are planned as a
:class:`ReshardPlan` before they are made, and carried out by a :class:`Migration`
while the service keeps serving. :class:`BoundedLoads` caps any node's load;
:class:`HotKeyDetector` and :class:`HotKeyRouter` find and spread hot keys.
:class:`ShardedStore` (and :class:`AsyncShardedStore`) is one store over many
servers, routed by any sharder, resharded live.
"""

from scalekit.sharding._base import Key, Sharder, ShardingScheme
from scalekit.sharding._bounded import BoundedLoads
from scalekit.sharding._cluster import ClusterResharder, ClusterReshardProgress, ClusterRouter
from scalekit.sharding._hotkeys import Estimate, HotKeyDetector, HotKeyRouter, KeySplitter
from scalekit.sharding._jump import JumpHash, jump_bucket
from scalekit.sharding._ketama import HASHES_PER_SERVER, KetamaRing, ketama_hash
from scalekit.sharding._maglev import DEFAULT_TABLE_SIZE, MaglevHash
from scalekit.sharding._migration import AsyncMigration, Migration, MigrationProgress
from scalekit.sharding._plan import Move, ReshardPlan
from scalekit.sharding._rendezvous import RendezvousHash
from scalekit.sharding._report import ShardingReport, report
from scalekit.sharding._ring import DEFAULT_VNODES, HashRing
from scalekit.sharding._slots import (
    REDIS_CLUSTER_SLOTS,
    SlotMap,
    crc16_xmodem,
    redis_cli_split,
    redis_key_slot,
)
from scalekit.sharding._store import AsyncShardedStore, ShardedStore, ShardedStoreStats

_SCHEMES: dict[str, type[ShardingScheme]] = {  # type: ignore[type-arg]
    scheme.__name__: scheme
    for scheme in (HashRing, JumpHash, KetamaRing, MaglevHash, RendezvousHash, SlotMap)
}
"""The schemes ``ShardingScheme.from_dict`` rebuilds, by the name ``to_dict`` records."""

__all__ = [
    "DEFAULT_TABLE_SIZE",
    "DEFAULT_VNODES",
    "HASHES_PER_SERVER",
    "REDIS_CLUSTER_SLOTS",
    "AsyncMigration",
    "AsyncShardedStore",
    "BoundedLoads",
    "ClusterReshardProgress",
    "ClusterResharder",
    "ClusterRouter",
    "Estimate",
    "HashRing",
    "HotKeyDetector",
    "HotKeyRouter",
    "JumpHash",
    "KetamaRing",
    "Key",
    "KeySplitter",
    "MaglevHash",
    "Migration",
    "MigrationProgress",
    "Move",
    "RendezvousHash",
    "ReshardPlan",
    "ShardedStore",
    "ShardedStoreStats",
    "Sharder",
    "ShardingReport",
    "ShardingScheme",
    "SlotMap",
    "crc16_xmodem",
    "jump_bucket",
    "ketama_hash",
    "redis_cli_split",
    "redis_key_slot",
    "report",
]
