"""Moving keys to their new owners while the service keeps reading and writing.

A :class:`Migration` walks the keys of every source node of a plan and moves the
ones the plan moves: copy to the target unless the target already has the key
(a write that arrived during the migration is newer), then delete from the
source. Each key's move is idempotent, so a migration that fails half-way (a
store raising, a process dying) is finished by running it again: no key is lost
and none is left behind.

While it runs, route requests through it (the Redis Cluster "ASK" rule):
reads of a moving key try the source, then the target; writes go to the target
and remove any copy left at the source.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from scalekit.errors import ConfigurationError
from scalekit.sharding._base import Key
from scalekit.sharding._plan import ReshardPlan

__all__ = ["Migration", "MigrationProgress"]

N = TypeVar("N", bound=Hashable)
_MISSING: Any = object()


@dataclass(frozen=True)
class MigrationProgress:
    """Where a migration stands: keys examined and moved so far, per the last batch."""

    examined: int
    moved: int
    sources_done: int
    sources: int
    total: int = 0
    """Keys on the source nodes to examine in all (0 until the first batch lists them)."""

    @property
    def fraction(self) -> float:
        """The share of the keys examined so far, from 0.0 to 1.0."""
        if self.sources_done == self.sources:
            return 1.0
        return self.examined / self.total if self.total else 0.0

    @property
    def done(self) -> bool:
        """Whether every source has been walked."""
        return self.sources_done == self.sources


class _StoreAdapter:
    """One interface over a ``MutableMapping`` or a :class:`~scalekit.protocols.Store`."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.mapping = isinstance(store, MutableMapping)

    def get(self, key: Key) -> Any:
        return self.store.get(key, _MISSING)  # a mapping and a Store both take a default

    def has(self, key: Key) -> bool:
        if self.mapping:
            return key in self.store
        return self.store.get(key, _MISSING) is not _MISSING

    def put(self, key: Key, value: Any) -> None:
        if self.mapping:
            self.store[key] = value
        else:
            self.store.set(key, value)

    def delete(self, key: Key) -> None:
        if self.mapping:
            self.store.pop(key, None)
        else:
            self.store.delete(key)

    def keys(self) -> list[Key]:
        if not hasattr(self.store, "__iter__"):
            raise ConfigurationError(
                f"{type(self.store).__name__} cannot list its keys; pass keys_of= to Migration"
            )
        return list(self.store)


class Migration(Generic[N]):
    """Carry out a :class:`ReshardPlan` on real stores, resumably.

    Args:
        plan: what moves (``sharder.plan_add(...)``, ``plan_remove``...).
        stores: node -> its store, a ``MutableMapping`` or a ``Store``.
        batch_size: keys examined per :meth:`step`.
        progress: called with a :class:`MigrationProgress` after each batch; pass
            ``True`` for a tqdm bar when tqdm is installed.
        keys_of: how to list a store's keys, for stores that cannot iterate.

    Runtime complexity: O(keys on the source nodes) lookups in all; each key
    moves with one read, one write and one delete.
    """

    def __init__(
        self,
        plan: ReshardPlan[N],
        stores: Mapping[N, Any],
        *,
        batch_size: int = 1000,
        progress: Callable[[MigrationProgress], object] | bool | None = None,
        keys_of: Callable[[Any], Iterable[Key]] | None = None,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigurationError(f"batch_size must be a positive int, got {batch_size!r}")
        missing = (plan.sources | plan.targets) - set(stores)
        if missing:
            raise ConfigurationError(f"no store for {sorted(map(str, missing))}")
        self.plan = plan
        self._stores = {node: _StoreAdapter(store) for node, store in stores.items()}
        self._batch_size = batch_size
        self._keys_of = keys_of
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._pending: list[tuple[N, list[Key]]] | None = None
        self._sources = sorted(plan.sources, key=str)
        self._sources_done = 0
        self._examined = 0
        self._moved = 0
        self._total = 0
        self._callback = self._progress_callback(progress)

    # -- routing while it runs --------------------------------------------------

    def read_owners(self, key: Key) -> list[N]:
        """Where to look for ``key``: the source then the target if it moves."""
        move = self.plan.move_for(key)
        return [self.plan.after.node_for(key)] if move is None else [move[0], move[1]]

    def read_owner(self, key: Key) -> N:
        """The node that holds ``key`` right now (source until moved, then target)."""
        owners = self.read_owners(key)
        if len(owners) == 2:
            with self._lock:
                if not self._stores[owners[0]].has(key):
                    return owners[1]
        return owners[0]

    def write_owner(self, key: Key) -> N:
        """The node a write of ``key`` goes to: always the new owner."""
        return self.plan.after.node_for(key)

    def get(self, key: Key, default: Any = None) -> Any:
        """Read ``key`` from wherever it is during the migration."""
        with self._lock:
            for node in self.read_owners(key):
                value = self._stores[node].get(key)
                if value is not _MISSING:
                    return value
        return default

    def set(self, key: Key, value: Any) -> None:
        """Write ``key`` at its new owner, and drop any stale copy at the source."""
        with self._lock:
            move = self.plan.move_for(key)
            self._stores[self.write_owner(key)].put(key, value)
            if move is not None:
                self._stores[move[0]].delete(key)

    def delete(self, key: Key) -> None:
        """Delete ``key`` wherever it is."""
        with self._lock:
            for node in self.read_owners(key):
                self._stores[node].delete(key)

    # -- running ----------------------------------------------------------------

    def _move(self, source: N, key: Key) -> bool:
        move = self.plan.move_for(key)
        if move is None or move[0] != source:
            return False
        with self._lock:
            source_store, target_store = self._stores[source], self._stores[move[1]]
            value = source_store.get(key)
            if value is _MISSING:
                return False  # deleted meanwhile
            if not target_store.has(key):
                target_store.put(key, value)
            source_store.delete(key)
        return True

    def step(self) -> MigrationProgress:
        """Examine up to ``batch_size`` keys and move those that move."""
        if self._pending is None:
            pending = []
            for source in self._sources:
                store = self._stores[source]
                keys = list(self._keys_of(store.store)) if self._keys_of else store.keys()
                pending.append((source, keys))
            self._pending = pending
            self._total = self._examined + sum(len(keys) for _, keys in pending)
        budget = self._batch_size
        while self._pending and budget:
            source, keys = self._pending[0]
            while keys and budget:
                key = keys[-1]
                if self._move(source, key):  # may raise: the key stays listed for resume()
                    self._moved += 1
                keys.pop()
                self._examined += 1
                budget -= 1
            if not keys:
                self._pending.pop(0)
                self._sources_done += 1
        report = self.progress()
        if self._callback is not None:
            self._callback(report)
        return report

    def run(self) -> MigrationProgress:
        """Move every key the plan moves; returns early if :meth:`stop` is called."""
        self._stop.clear()
        report = self.progress()
        while not report.done and not self._stop.is_set():
            report = self.step()
        return report

    resume = run

    def stop(self) -> None:
        """Ask :meth:`run` to return after the current batch (call :meth:`resume` later)."""
        self._stop.set()

    def progress(self) -> MigrationProgress:
        """The progress so far."""
        return MigrationProgress(
            examined=self._examined,
            moved=self._moved,
            sources_done=self._sources_done,
            sources=len(self._sources),
            total=self._total,
        )

    @property
    def done(self) -> bool:
        """Whether every source has been walked."""
        return self._sources_done == len(self._sources)

    @staticmethod
    def _progress_callback(
        progress: Callable[[MigrationProgress], object] | bool | None,
    ) -> Callable[[MigrationProgress], object] | None:
        if progress is True:
            try:
                from tqdm import tqdm  # type: ignore[import-not-found,import-untyped,unused-ignore]
            except ImportError:
                return None
            bar = tqdm(unit="key", desc="migrating")
            seen = [0]

            def update(report: MigrationProgress) -> None:
                bar.total = report.total
                bar.update(report.examined - seen[0])
                seen[0] = report.examined
                if report.done:
                    bar.close()

            return update
        if progress is False or progress is None:
            return None
        return progress
