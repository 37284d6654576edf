"""Moving keys to their new owners while the service keeps reading and writing.

A :class:`Migration` walks the keys of every source node of a plan and moves the
ones the plan moves: it reads the value and its remaining TTL at the source,
*adds* it at the target (``Store.add``: set only if absent, atomic at the store,
as memcached ``add`` and Redis ``SET NX`` are), then deletes it at the source. A
write that reached the target first is newer and the add leaves it alone, so any
number of processes can route their reads and writes through their own
``Migration`` of the same plan while one of them (or several) moves the keys.
Each key's move is idempotent, so a migration that fails half-way (a store
raising, a process dying) is finished by running it again: no key is lost and
none is left behind.

While it runs, route requests through it (the Redis Cluster "ASK" rule): reads
of a moving key try the source, then the target; writes go to the target and
remove any copy left at the source. No lock is held around store I/O, and a key
the plan does not move costs one lookup in the plan and one read of its store.

A fleet learns the plan from its serialised form (:meth:`ReshardPlan.to_json`),
published where every process looks (a key in Redis, a row, a config service):
a process adopts a plan whose ``epoch`` is higher than the one it routes by.
"""

from __future__ import annotations

import math
import threading
from collections.abc import (
    AsyncIterable,
    Callable,
    Generator,
    Hashable,
    Iterable,
    Mapping,
    MutableMapping,
)
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from scalekit._flow import drive, drive_async
from scalekit._validate import check_callable, check_count, check_seconds, type_name
from scalekit.errors import ArgumentTypeError, ConfigurationError
from scalekit.sharding._base import Key
from scalekit.sharding._plan import ReshardPlan
from scalekit.sharding._progress import ProgressLog, progress_bar

__all__ = ["AsyncMigration", "Migration", "MigrationProgress"]

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


def _is_store(store: object) -> bool:
    """Whether ``store`` has the :class:`~scalekit.protocols.Store` primitives a move needs."""
    return all(
        callable(getattr(store, name, None)) for name in ("get", "set", "add", "ttl_of", "delete")
    )


class _StoreAdapter:
    """One interface over a :class:`~scalekit.protocols.Store` or a ``MutableMapping``.

    A ``Store`` moves a key with its own atomic ``add`` and keeps its TTL. A plain
    ``MutableMapping`` (a dict) lives in one process: its "add if absent" is made
    atomic by a lock of its own, held for that one in-memory operation only.
    """

    def __init__(self, store: Any) -> None:
        self.store = store
        self.mapping = not _is_store(store)
        if self.mapping and not isinstance(store, MutableMapping):
            raise ConfigurationError(
                f"a store must be a Store (get, set, add, ttl_of, delete) or a MutableMapping, "
                f"got {type(store).__name__}"
            )
        self._lock = threading.Lock()

    def get(self, key: Key) -> Any:
        return self.store.get(key, _MISSING)  # a mapping and a Store both take a default

    def has(self, key: Key) -> bool:
        if self.mapping:
            return key in self.store
        return self.store.get(key, _MISSING) is not _MISSING

    def ttl_of(self, key: Key) -> float | None:
        """Seconds left, ``math.inf`` if it never expires; KeyError if gone."""
        if self.mapping:
            return None
        ttl: float | None = self.store.ttl_of(key)
        return math.inf if ttl is None else ttl

    def add(self, key: Key, value: Any, ttl: float | None) -> bool:
        if self.mapping:
            with self._lock:  # in memory: no I/O under it
                if key in self.store:
                    return False
                self.store[key] = value
                return True
        return bool(self.store.add(key, value, ttl=ttl))

    def put(self, key: Key, value: Any, ttl: float | None) -> None:
        if self.mapping:
            self.store[key] = value
        elif ttl is None:
            self.store.set(key, value)
        else:
            self.store.set(key, value, ttl=ttl)

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
    """Carry out a :class:`ReshardPlan` on real stores, resumably, from any process.

    Args:
        plan: what moves (``sharder.plan_add(...)``, ``plan_remove``..., or
            :meth:`ReshardPlan.from_json` of a plan another process published).
        stores: node -> its store: a :class:`~scalekit.protocols.Store` (its ``add``
            and ``ttl_of`` make moves safe across processes and keep each item's
            TTL), or a ``MutableMapping`` (one process only).
        batch_size: keys examined per :meth:`step`.
        progress: called with a :class:`MigrationProgress` after each batch; pass
            ``True`` for a bar (rich or tqdm when installed, plain lines otherwise).
        keys_of: how to list a store's keys, for stores that cannot iterate.

    A key moves in three store calls, none under a lock: read the value and its
    remaining TTL at the source, ``add`` it at the target (so a write that got
    there first wins), delete it at the source. An item that never expires is
    added with ``ttl=math.inf`` (what :class:`~scalekit.cache.Cache` reads as
    "never"); one that expired meanwhile is not copied.

    One case the store primitives cannot close: a *delete* of a moving key by
    another process, landing between the mover's read and its ``add``, is undone
    by the copy (the key comes back with its old value and remaining TTL). Writes
    are safe; a fleet that deletes moving keys should delete with a TTL'd
    tombstone value, or run its deletes of moving keys through the mover's process.

    Runtime complexity: O(keys on the source nodes) lookups in all; each key
    moves with one read, one TTL read, one add and one delete.
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
        if not isinstance(plan, ReshardPlan):
            raise ArgumentTypeError(f"plan must be a ReshardPlan, got {type_name(plan)}")
        batch_size = check_count(batch_size, "batch_size", minimum=1)
        if not isinstance(stores, Mapping):
            raise ArgumentTypeError(
                f"stores must be a mapping of node to store, got {type_name(stores)}"
            )
        check_callable(keys_of, "keys_of", allow_none=True)
        if not (progress is None or isinstance(progress, bool) or callable(progress)):
            raise ArgumentTypeError(
                f"progress must be a callable, a bool or None, got {type_name(progress)}"
            )
        missing = (plan.sources | plan.targets) - set(stores)
        if missing:
            raise ConfigurationError(f"no store for {sorted(map(str, missing))}")
        self.plan = plan
        self._stores = {node: _StoreAdapter(store) for node, store in stores.items()}
        self._batch_size = batch_size
        self._keys_of = keys_of
        # Guards the bookkeeping of step() (which keys are left, the counters),
        # never held across a store call: reads and writes take no lock at all.
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pending: list[tuple[N, list[Key]]] | None = None
        self._busy: dict[N, int] = {}  # batches of each source being moved now
        self._sources = sorted(plan.sources, key=str)
        self._sources_done = 0
        self._examined = 0
        self._moved = 0
        self._total = 0
        self._callback = self._progress_callback(progress)
        self._log = ProgressLog(type(self).__name__, "key")

    @property
    def epoch(self) -> int:
        """The epoch of the plan this migration carries out (:attr:`ReshardPlan.epoch`)."""
        return self.plan.epoch

    # -- routing while it runs --------------------------------------------------

    def read_owners(self, key: Key) -> list[N]:
        """Where to look for ``key``: the source then the target if it moves.

        Runtime complexity: two sharder lookups.
        """
        move = self.plan.move_for(key)
        return [self.plan.after.node_for(key)] if move is None else [move[0], move[1]]

    def read_owner(self, key: Key) -> N:
        """The node that holds ``key`` right now (source until moved, then target)."""
        owners = self.read_owners(key)
        if len(owners) == 2 and not self._stores[owners[0]].has(key):
            return owners[1]
        return owners[0]

    def write_owner(self, key: Key) -> N:
        """The node a write of ``key`` goes to: always the new owner."""
        return self.plan.after.node_for(key)

    def get(self, key: Key, default: Any = None) -> Any:
        """Read ``key`` from wherever it is during the migration.

        The source first: a mover deletes there only after its copy is at the
        target, and a write lands at the target before it deletes the source, so
        a key missing at the source is at the target, if anywhere.

        Runtime complexity: two sharder lookups and one store read (two for a
        moving key not at its source).
        """
        for node in self.read_owners(key):
            value = self._stores[node].get(key)
            if value is not _MISSING:
                return value
        return default

    def set(self, key: Key, value: Any, *, ttl: float | None = None) -> None:
        """Write ``key`` at its new owner, then drop any stale copy at the source.

        ``ttl`` is passed to the target store (``None``: its default).
        """
        if ttl is not None:
            ttl = check_seconds(ttl, "ttl", allow_inf=True)
        move = self.plan.move_for(key)
        target = move[1] if move is not None else self.plan.after.node_for(key)
        self._stores[target].put(key, value, ttl)
        if move is not None:
            self._stores[move[0]].delete(key)

    def delete(self, key: Key) -> None:
        """Delete ``key`` wherever it is (the source, then the target)."""
        for node in self.read_owners(key):
            self._stores[node].delete(key)

    # -- running ----------------------------------------------------------------

    def _move_steps(self, source: N, key: Key) -> Generator[tuple[Any, ...], Any, bool]:
        """The move of ``key`` off ``source``, written once and free of I/O: it
        yields ``(node, operation, *arguments)`` for its store adapter calls and
        returns whether it moved the key (sync and async movers drive it)."""
        move = self.plan.move_for(key)
        if move is None or move[0] != source:
            return False
        value = yield (source, "get", key)
        if value is _MISSING:
            return False  # deleted, or moved by another process, meanwhile
        try:
            ttl = yield (source, "ttl_of", key)
        except KeyError:
            return False  # expired meanwhile: nothing to carry
        yield (move[1], "add", key, value, ttl)  # a write that got there first is newer
        yield (source, "delete", key)
        return True

    def _move(self, source: N, key: Key) -> bool:
        """Move ``key`` off ``source`` if the plan moves it; whether it was there."""
        stores = self._stores

        def perform(step: tuple[Any, ...]) -> Any:
            return getattr(stores[step[0]], step[1])(*step[2:])

        return bool(drive(self._move_steps(source, key), perform, KeyError))

    def _take(self) -> tuple[N, list[Key]] | None:
        """Up to a batch of keys of the first source with keys left, taken off the
        pending list; the source counts as busy until :meth:`_finish` hears back."""
        with self._lock:
            if self._pending is None:
                return None
            self._retire()
            for source, keys in self._pending:
                if keys:
                    batch = keys[-self._batch_size :]
                    del keys[-self._batch_size :]
                    self._busy[source] = self._busy.get(source, 0) + 1
                    return source, batch
            return None

    def _retire(self) -> None:
        """Under the lock: count as done the sources with no key left and no batch
        in flight (another thread's batch may fail and give its keys back)."""
        assert self._pending is not None
        kept = [entry for entry in self._pending if entry[1] or self._busy.get(entry[0])]
        self._sources_done += len(self._pending) - len(kept)
        self._pending[:] = kept

    def _finish(self, source: N, rest: list[Key], examined: int, moved: int) -> None:
        """A batch of ``source`` ended: count it, and list again the keys ``rest`` it
        did not get to (a store raised)."""
        with self._lock:
            assert self._pending is not None
            self._examined += examined
            self._moved += moved
            self._busy[source] -= 1
            if not self._busy[source]:
                del self._busy[source]
            if rest:
                for entry in self._pending:
                    if entry[0] == source:
                        entry[1].extend(rest)
                        break
                else:  # pragma: no cover - a busy source stays listed
                    self._pending.insert(0, (source, rest))
            self._retire()

    def _list_keys(self) -> None:
        pending = []
        for source in self._sources:
            store = self._stores[source]
            keys = list(self._keys_of(store.store)) if self._keys_of else store.keys()
            pending.append((source, keys))
        self._listed(pending)

    def _listed(self, pending: list[tuple[N, list[Key]]]) -> None:
        with self._lock:
            if self._pending is None:
                self._pending = pending
                self._total = self._examined + sum(len(keys) for _, keys in pending)

    def step(self) -> MigrationProgress:
        """Examine up to ``batch_size`` keys (of one source) and move those that move.

        Holds no lock during store calls. If a store raises, the keys not yet
        moved stay listed, and :meth:`resume` carries on from them.
        """
        if self._pending is None:
            self._list_keys()
        taken = self._take()
        if taken is not None:
            source, batch = taken
            done = 0
            moved = 0
            try:
                for key in reversed(batch):
                    if self._move(source, key):
                        moved += 1
                    done += 1
            finally:
                self._finish(source, batch[: len(batch) - done], done, moved)
        return self._report()

    def _report(self) -> MigrationProgress:
        report = self.progress()
        self._log.report(report.examined, report.total, report.moved, report.done)
        if self._callback is not None:
            self._callback(report)
        return report

    def run(self) -> MigrationProgress:
        """Move every key the plan moves; returns early if :meth:`stop` is called."""
        self._stop.clear()
        report = self.progress()
        while not report.done and not self._stop.is_set():
            report = self.step()
        if not report.done:
            self._log.stopped(report.examined, report.total, report.moved)
        return report

    resume = run

    def configure(
        self,
        *,
        progress: Callable[[MigrationProgress], object] | bool | None = None,
        batch_size: int | None = None,
    ) -> None:
        """Change how the next :meth:`run` reports and batches (``None``: keep it).

        Runtime complexity: O(1).
        """
        if batch_size is not None:
            batch_size = check_count(batch_size, "batch_size", minimum=1)
        if not (progress is None or isinstance(progress, bool) or callable(progress)):
            raise ArgumentTypeError(
                f"progress must be a callable, a bool or None, got {type_name(progress)}"
            )
        if batch_size is not None:
            self._batch_size = batch_size
        if progress is not None:
            self._callback = self._progress_callback(progress)

    def stop(self) -> None:
        """Ask :meth:`run` to return after the current batch (call :meth:`resume` later)."""
        self._stop.set()

    def progress(self) -> MigrationProgress:
        """The progress so far."""
        with self._lock:
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
            return progress_bar("resharding")
        if progress is False or progress is None:
            return None
        return progress


class _AsyncStoreAdapter:
    """The store calls of a move, awaited, on an :class:`~scalekit.protocols.AsyncStore`."""

    def __init__(self, store: Any) -> None:
        if not _is_store(store):
            raise ConfigurationError(
                f"an async store must have get, set, add, ttl_of and delete, got {type_name(store)}"
            )
        self.store = store

    async def get(self, key: Key) -> Any:
        return await self.store.get(key, _MISSING)

    async def ttl_of(self, key: Key) -> float | None:
        ttl: float | None = await self.store.ttl_of(key)
        return math.inf if ttl is None else ttl

    async def add(self, key: Key, value: Any, ttl: float | None) -> bool:
        return bool(await self.store.add(key, value, ttl=ttl))

    async def delete(self, key: Key) -> None:
        await self.store.delete(key)


class AsyncMigration(Migration[N]):
    """:class:`Migration` over :class:`~scalekit.protocols.AsyncStore` shards: the
    same moves (one I/O-free sequence of store calls per key), awaited.

    Route reads and writes meanwhile with
    :meth:`AsyncShardedStore.follow <scalekit.sharding.AsyncShardedStore.follow>`.
    ``keys_of(store)`` may return an iterable or an async iterable (the default
    calls the store's ``keys()``, as ``AsyncRedisCache.keys()``).

    Runtime complexity: as :class:`Migration`'s.
    """

    def __init__(
        self,
        plan: ReshardPlan[N],
        stores: Mapping[N, Any],
        *,
        batch_size: int = 1000,
        progress: Callable[[MigrationProgress], object] | bool | None = None,
        keys_of: Callable[[Any], Any] | None = None,
    ) -> None:
        super().__init__(plan, stores, batch_size=batch_size, progress=progress, keys_of=keys_of)
        self._async_stores = {node: _AsyncStoreAdapter(store) for node, store in stores.items()}

    def get(self, key: Key, default: Any = None) -> Any:
        raise ConfigurationError("route async reads with AsyncShardedStore.follow(plan)")

    def set(self, key: Key, value: Any, *, ttl: float | None = None) -> None:
        raise ConfigurationError("route async writes with AsyncShardedStore.follow(plan)")

    def delete(self, key: Key) -> None:
        raise ConfigurationError("route async deletes with AsyncShardedStore.follow(plan)")

    async def _move_async(self, source: N, key: Key) -> bool:
        stores = self._async_stores

        async def perform(step: tuple[Any, ...]) -> Any:
            return await getattr(stores[step[0]], step[1])(*step[2:])

        return bool(await drive_async(self._move_steps(source, key), perform, KeyError))

    async def _list_keys_async(self) -> None:
        pending = []
        for source in self._sources:
            store = self._async_stores[source].store
            listed = self._keys_of(store) if self._keys_of else _default_keys(store)
            if isinstance(listed, AsyncIterable):
                keys = [key async for key in listed]
            else:
                keys = list(listed)
            pending.append((source, keys))
        self._listed(pending)

    async def step(self) -> MigrationProgress:  # type: ignore[override]
        """:meth:`Migration.step`, awaited."""
        if self._pending is None:
            await self._list_keys_async()
        taken = self._take()
        if taken is not None:
            source, batch = taken
            done = 0
            moved = 0
            try:
                for key in reversed(batch):
                    if await self._move_async(source, key):
                        moved += 1
                    done += 1
            finally:
                self._finish(source, batch[: len(batch) - done], done, moved)
        return self._report()

    async def run(self) -> MigrationProgress:  # type: ignore[override]
        """Move every key the plan moves; returns early if :meth:`stop` is called."""
        self._stop.clear()
        report = self.progress()
        while not report.done and not self._stop.is_set():
            report = await self.step()
        if not report.done:
            self._log.stopped(report.examined, report.total, report.moved)
        return report

    resume = run  # type: ignore[assignment]


def _default_keys(store: Any) -> Any:
    keys = getattr(store, "keys", None)
    if callable(keys):
        return keys()
    if isinstance(store, AsyncIterable) or hasattr(store, "__iter__"):
        return store
    raise ConfigurationError(f"{type_name(store)} cannot list its keys, so it cannot be resharded")
