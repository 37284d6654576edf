"""One store over many: :class:`ShardedStore` and :class:`AsyncShardedStore`.

Every operation is written once, as a flow that does no I/O: it yields the
store calls it needs, as a list of ``(node, method, args)`` to run at once, and
receives their results (or the :class:`~scalekit.errors.BackendError` each
raised). ``ShardedStore._run`` drives a flow on sync stores: when a step spans several
shards, every batch a store can send without waiting (``RedisCache.start``) is
sent before any reply is read, and the others run on worker threads;
``AsyncShardedStore._run`` awaits them together (``asyncio.gather``).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Generator, Hashable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Generic, NamedTuple, TypeVar

from scalekit._flow import drive, drive_async
from scalekit._validate import (
    check_callable,
    check_count,
    check_methods,
    check_seconds,
    type_name,
)
from scalekit.errors import ArgumentTypeError, BackendError, ConfigurationError, ShardUnavailable
from scalekit.sharding._base import Sharder
from scalekit.sharding._migration import AsyncMigration, Migration, MigrationProgress
from scalekit.sharding._plan import ReshardPlan
from scalekit.sharding._plan_routing import AsyncPlanRoute
from scalekit.sharding._slots import REDIS_CLUSTER_SLOTS, SlotMap, redis_key_slot

__all__ = ["AsyncShardedStore", "ShardedStore", "ShardedStoreStats"]

N = TypeVar("N", bound=Hashable)
_R = TypeVar("_R")
_MISSING: Any = object()
_log = logging.getLogger("scalekit.sharding")

Calls = list[tuple[Any, str, tuple[Any, ...], dict[str, Any]]]
Flow = Generator[Calls, list[Any], _R]


@dataclass(frozen=True)
class ShardedStoreStats:
    """Counters of a sharded store: calls per shard, shard errors, failovers
    (a call served by a replica because an earlier node of the key failed), and
    the Redis Cluster redirections followed: ``moved`` (the map was updated),
    ``asked`` (a key asked of the node importing its slot) and ``retried`` (a
    batch split to single keys after ``TRYAGAIN``)."""

    calls: dict[Any, int]
    errors: dict[Any, int]
    failovers: int
    moved: int = 0
    asked: int = 0
    retried: int = 0


_STORE_METHODS = ("get", "set", "add", "delete", "get_many", "set_many")
_REDIRECTIONS = 16
"""How many Redis Cluster redirections one key follows before its call fails."""


class _Redirect(NamedTuple):
    kind: str  # "moved", "ask" or "tryagain"
    slot: int
    node: str


def _redirect_of(error: BaseException) -> _Redirect | None:
    """The redirection a Redis Cluster answered with, from a store's error (its
    ``__cause__`` is redis-py's ``MovedError``, ``AskError`` or ``TryAgainError``,
    or a ``ResponseError`` reading ``MOVED <slot> <host>:<port>``); else None.
    redis-py is not imported: its errors are known by class name."""
    cause = error.__cause__
    if cause is None:
        return None
    names = {kind.__name__ for kind in type(cause).__mro__}
    if "TryAgainError" in names:
        return _Redirect("tryagain", -1, "")
    slot, host, port = (getattr(cause, name, None) for name in ("slot_id", "host", "port"))
    if isinstance(slot, int) and isinstance(host, str) and isinstance(port, int):
        return _Redirect("moved" if "MovedError" in names else "ask", slot, f"{host}:{port}")
    if "ResponseError" in names:
        match = _REDIRECT_TEXT.match(str(cause))
        if match is not None:
            kind, slot_text, node = match.groups()
            return _Redirect(kind.lower(), int(slot_text), node)
    return None


_REDIRECT_TEXT = re.compile(r"(MOVED|ASK) (\d+) (\S+:\d+)$")


def _key_errors(result: BackendError, keys: Iterable[str]) -> dict[str, BaseException]:
    """Each key's error in a batch call's error: its own when the store said
    which keys failed (:class:`ShardUnavailable`), else the call's."""
    if isinstance(result, ShardUnavailable) and isinstance(result.failed, dict):
        return {key: result.failed[key] for key in keys if key in result.failed}
    return dict.fromkeys(keys, result)


class _Core(Generic[N]):
    """Routing and the flows of every operation; no I/O."""

    def __init__(
        self,
        sharder: Sharder[N],
        stores: Mapping[N, Any],
        replicas: int,
        store_factory: Callable[[Any], Any] | None = None,
    ) -> None:
        check_methods(sharder, "sharder", "a Sharder", ("node_for", "nodes_for"))
        check_callable(store_factory, "store_factory", allow_none=True)
        if not isinstance(stores, Mapping):
            raise ArgumentTypeError(f"stores must map nodes to stores, got {type_name(stores)}")
        for node, store in stores.items():
            check_methods(store, f"stores[{node!r}]", "a Store", _STORE_METHODS)
        self.replicas = check_count(replicas, "replicas")
        missing = [node for node in sharder.nodes if node not in stores]
        if missing:
            raise ConfigurationError(f"no store for node(s) {missing!r}")
        if self.replicas + 1 > len(sharder.nodes):
            raise ConfigurationError(
                f"replicas={self.replicas} needs {self.replicas + 1} nodes, "
                f"the sharder has {len(sharder.nodes)}"
            )
        # Redis Cluster redirections are followed over a cluster's slot map, one node a key
        self.follows = (
            isinstance(sharder, SlotMap)
            and sharder._hash is redis_key_slot
            and sharder.slots == REDIS_CLUSTER_SLOTS
            and self.replicas == 0
        )
        if store_factory is not None and not self.follows:
            raise ConfigurationError(
                "store_factory is for a Redis Cluster SlotMap (redis_cluster=True) without replicas"
            )
        self.sharder = sharder
        self.stores = dict(stores)
        self.store_factory = store_factory
        self.lock = threading.Lock()
        self.calls: dict[Any, int] = dict.fromkeys(self.stores, 0)
        self.errors: dict[Any, int] = dict.fromkeys(self.stores, 0)
        self.failovers = 0
        self.moved = 0
        self.asked = 0
        self.retried = 0

    def checked(self, key: object) -> str:
        """``key`` if it is a ``str``."""
        if type(key) is not str:
            raise ArgumentTypeError(f"a key must be a str, got {type_name(key)}")
        return key

    def owners(self, key: str) -> list[N]:
        if type(key) is not str:
            raise ArgumentTypeError(f"a key must be a str, got {type_name(key)}")
        if self.replicas:
            return self.sharder.nodes_for(key, self.replicas + 1)
        return [self.sharder.node_for(key)]

    def _counted(self, calls: Calls, results: list[Any]) -> None:
        with self.lock:
            for (node, *_), result in zip(calls, results, strict=True):
                self.calls[node] = self.calls.get(node, 0) + 1
                if isinstance(result, BackendError) and not self._redirected(result):
                    self.errors[node] = self.errors.get(node, 0) + 1

    def _redirected(self, result: BackendError) -> bool:
        """Whether ``result`` is a redirection this store follows (not an error)."""
        if not self.follows:
            return False
        if isinstance(result, ShardUnavailable) and isinstance(result.failed, dict):
            return all(_redirect_of(error) is not None for error in result.failed.values())
        return _redirect_of(result) is not None

    # -- Redis Cluster redirections --------------------------------------------------

    def _store_for(self, node: Any) -> Any:
        """The store of ``node``, made by ``store_factory`` the first time."""
        store = self.stores.get(node)
        if store is not None:
            return store
        if self.store_factory is None:
            raise ConfigurationError(
                f"the cluster redirected to {node}, a node with no store: "
                "give the sharded store a store_factory"
            )
        with self.lock:
            store = self.stores.get(node)
            if store is None:
                store = self.store_factory(node)
                check_methods(store, f"store_factory({node!r})", "a Store", _STORE_METHODS)
                self.stores = {**self.stores, node: store}  # copied: readers hold no lock
                self.calls.setdefault(node, 0)
                self.errors.setdefault(node, 0)
        return store

    def _follow(self, redirect: _Redirect, moves: dict[int, Any] | None = None) -> tuple[Any, bool]:
        """``(node, asking)`` to send a redirected key's call to next: a ``MOVED``
        slot is assigned in the map (its node joins if new), or added to
        ``moves`` to be assigned with others; an ``ASK`` leaves the map alone and
        asks once at the importing node."""
        store = self._store_for(redirect.node)
        if redirect.kind == "moved":
            if moves is None:
                self.sharder.assign_slot(redirect.slot, redirect.node, join=True)  # type: ignore[attr-defined]
            else:
                moves[redirect.slot] = redirect.node
            with self.lock:
                self.moved += 1
            return redirect.node, False
        if not callable(getattr(store, "asking", None)):
            raise ConfigurationError(
                f"the store of {redirect.node} cannot send ASKING "
                "(a RedisCache(..., cluster=True) can)"
            )
        with self.lock:
            self.asked += 1
        return redirect.node, True

    def _one(
        self, node: Any, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Flow[Any]:
        """The result (or error) of one call of one key, following redirections."""
        asking = False
        result: Any = None
        for _ in range(_REDIRECTIONS + 1):
            if asking:
                call = (node, "asking", (method, *args), kwargs)
            else:
                call = (node, method, args, kwargs)
            results = yield [call]
            self._counted([call], results)
            result = results[0]
            redirect = None
            if self.follows and isinstance(result, BackendError):
                redirect = _redirect_of(result)
            if redirect is None:
                return result
            if redirect.kind == "tryagain":
                with self.lock:
                    self.retried += 1
                continue
            node, asking = self._follow(redirect)
        error = BackendError(f"{method}: more than {_REDIRECTIONS} redirections, last at {node}")
        error.__cause__ = result
        return error

    def _spread(
        self,
        routes: dict[str, Any],
        method: str,
        args_of: Callable[[list[str]], tuple[Any, ...]],
        kwargs: dict[str, Any],
    ) -> Flow[tuple[dict[str, Any], dict[str, BaseException]]]:
        """One batch call per node for the keys of ``routes`` (``key -> node``), all
        at once, then again for the keys redirected, regrouped: ``MOVED`` and
        ``ASK`` keys at their new node, a ``TRYAGAIN`` batch split to single
        keys. Returns ``(found, failed)``: what the calls returned, merged, and
        each key's error when it was not a redirection or they ran out."""
        pending: dict[str, tuple[Any, bool, bool]] = {
            key: (node, False, False) for key, node in routes.items()
        }  # key -> (node, asking, alone)
        found: dict[str, Any] = {}
        failed: dict[str, BaseException] = {}
        last: dict[str, BaseException] = {}
        for _ in range(_REDIRECTIONS + 1):
            if not pending:
                break
            groups: dict[tuple[Any, bool, str | None], list[str]] = {}
            for key, (node, asking, alone) in pending.items():
                groups.setdefault((node, asking, key if alone else None), []).append(key)
            calls: Calls = [
                (node, "asking", (method, *args_of(group)), kwargs)
                if asking
                else (node, method, args_of(group), kwargs)
                for (node, asking, _), group in groups.items()
            ]
            results = yield calls
            self._counted(calls, results)
            retry: dict[str, tuple[Any, bool, bool]] = {}
            followed: dict[_Redirect, tuple[Any, bool]] = {}
            moves: dict[int, Any] = {}
            for ((node, asking, _), group), result in zip(groups.items(), results, strict=True):
                if not isinstance(result, BackendError):
                    if result:
                        found.update(result)
                    continue
                if isinstance(result, ShardUnavailable) and isinstance(result.found, dict):
                    found.update(result.found)
                split = False
                for key, error in _key_errors(result, group).items():
                    redirect = _redirect_of(error) if self.follows else None
                    if redirect is None:
                        failed[key] = error
                        continue
                    last[key] = error
                    if redirect.kind == "tryagain":
                        retry[key] = (node, asking, True)
                        split = True
                        continue
                    if redirect not in followed:
                        followed[redirect] = self._follow(redirect, moves)
                    retry[key] = (*followed[redirect], False)
                if split:
                    with self.lock:
                        self.retried += 1
            if moves:  # one new table for the batch's MOVED slots
                self.sharder.assign_slots(moves, join=True)  # type: ignore[attr-defined]
            pending = retry
        for key in pending:
            error = BackendError(f"{method}: more than {_REDIRECTIONS} redirections for {key!r}")
            error.__cause__ = last.get(key)
            failed[key] = error
        return found, failed

    def _failover(self) -> None:
        with self.lock:
            self.failovers += 1

    # Each flow yields lists of calls and gets each call's result or BackendError.

    def read(self, key: str, method: str, args: tuple[Any, ...]) -> Flow[Any]:
        """``method`` on the first owner that answers (the primary, then replicas)."""
        last: BaseException | None = None
        for index, node in enumerate(self.owners(key)):
            result = yield from self._one(node, method, args, {})
            if not isinstance(result, BackendError):
                if index:
                    self._failover()
                return result
            last = result
        raise ShardUnavailable(
            f"every node of {key!r} failed",
            found={},
            failed={key: last},  # type: ignore[dict-item]
        ) from last

    def write(
        self, key: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Flow[list[Any]]:
        """``method`` on every owner at once; the results of those that answered.
        Raises only when all failed (a failed replica is logged and counted)."""
        owners = self.owners(key)
        if len(owners) == 1:
            results = [(yield from self._one(owners[0], method, args, kwargs))]
        else:
            calls: Calls = [(node, method, args, kwargs) for node in owners]
            results = yield calls
            self._counted(calls, results)
        answered = [r for r in results if not isinstance(r, BackendError)]
        if not answered:
            raise ShardUnavailable(
                f"every node of {key!r} failed", found={}, failed={key: results[-1]}
            ) from results[-1]
        if len(answered) < len(results):
            self._failover()
            _log.warning("a replica of %r missed a write: %s", key, results)
        return answered

    def add(self, key: str, value: Any, kwargs: dict[str, Any]) -> Flow[bool]:
        """Set-if-absent at the first owner that answers, then set at the others."""
        owners = self.owners(key)
        for index, node in enumerate(owners):
            result = yield from self._one(node, "add", (key, value), kwargs)
            if isinstance(result, BackendError):
                if index == len(owners) - 1:
                    raise ShardUnavailable(
                        f"every node of {key!r} failed", found={}, failed={key: result}
                    ) from result
                continue
            if index:
                self._failover()
            rest = [(other, "set", (key, value), kwargs) for other in owners[index + 1 :]]
            if result and rest:
                copies = yield rest
                self._counted(rest, copies)
            return bool(result)
        raise AssertionError("unreachable")  # pragma: no cover

    def get_many(self, keys: Iterable[str], method: str = "get_many") -> Flow[dict[str, Any]]:
        """One ``get_many`` (or ``method``) per shard, all at once; a failed shard's
        keys are asked of their next owner."""
        if not isinstance(keys, Iterable) or isinstance(keys, (str, bytes)):
            raise ArgumentTypeError(f"keys must be an iterable of str, got {type_name(keys)}")
        routes = {key: self.owners(key) for key in keys}
        found: dict[str, Any]
        failed: dict[str, BaseException]
        found, failed = {}, {}
        if self.follows:
            start = {key: owners[0] for key, owners in routes.items()}
            found, failed = yield from self._spread(start, method, lambda group: (group,), {})
            routes = {}
        attempt = 0
        while routes:
            groups: dict[N, list[str]] = {}
            for key, owners in routes.items():
                groups.setdefault(owners[attempt], []).append(key)
            calls: Calls = [(node, method, (group,), {}) for node, group in groups.items()]
            results = yield calls
            self._counted(calls, results)
            retry: dict[str, list[N]] = {}
            for group, result in zip(groups.values(), results, strict=True):
                if isinstance(result, BackendError):
                    for key in group:
                        if attempt + 1 < len(routes[key]):
                            retry[key] = routes[key]
                        else:
                            failed[key] = result
                else:
                    if attempt:
                        self._failover()
                    found.update(result)
            routes = retry
            attempt += 1
        if failed:
            first = next(iter(failed.values()))
            raise ShardUnavailable(
                f"{len(failed)} key(s) failed on every node they have", found=found, failed=failed
            ) from first
        return found

    def set_many(self, items: Mapping[str, Any], kwargs: dict[str, Any]) -> Flow[None]:
        """One ``set_many`` per node (every owner of each key), all at once."""
        if not isinstance(items, Mapping):
            raise ArgumentTypeError(f"items must be a mapping, got {type_name(items)}")
        groups: dict[N, dict[str, Any]] = {}
        owners_of = {}
        for key, value in items.items():
            try:
                owners_of[key] = self.owners(key)
            except ArgumentTypeError as exc:
                raise ArgumentTypeError(f"items[{key!r}]: {exc}") from None
            for node in owners_of[key]:
                groups.setdefault(node, {})[key] = value
        for node, group in groups.items():  # a bad value anywhere stores nothing anywhere
            check = getattr(self.stores[node], "check_items", None)
            if check is not None:
                check(group)
        if self.follows:
            start = {key: owners[0] for key, owners in owners_of.items()}
            _, unsent = yield from self._spread(
                start, "set_many", lambda group: ({key: items[key] for key in group},), kwargs
            )
            if unsent:
                cause = next(iter(unsent.values()))
                raise ShardUnavailable(
                    f"{len(unsent)} key(s) failed on their node", found={}, failed=unsent
                ) from cause
            return
        calls: Calls = [(node, "set_many", (group,), kwargs) for node, group in groups.items()]
        results = yield calls
        self._counted(calls, results)
        down = {
            node: result
            for (node, _), result in zip(groups.items(), results, strict=True)
            if isinstance(result, BackendError)
        }
        if not down:
            return
        failed: dict[str, BaseException] = {
            key: down[owners[-1]]
            for key, owners in owners_of.items()
            if all(node in down for node in owners)
        }
        if failed:
            first = next(iter(failed.values()))
            raise ShardUnavailable(
                f"{len(failed)} key(s) failed on every node they have", found={}, failed=failed
            ) from first
        self._failover()
        _log.warning("replicas missed writes: %s", down)

    def stats(self) -> ShardedStoreStats:
        with self.lock:
            return ShardedStoreStats(
                dict(self.calls),
                dict(self.errors),
                self.failovers,
                self.moved,
                self.asked,
                self.retried,
            )


def _iterable(keys: object) -> Iterable[Any]:
    if not isinstance(keys, Iterable) or isinstance(keys, (str, bytes)):
        raise ArgumentTypeError(f"keys must be an iterable of str, got {type_name(keys)}")
    return keys


def _mapping(items: object) -> Mapping[Any, Any]:
    if not isinstance(items, Mapping):
        raise ArgumentTypeError(f"items must be a mapping, got {type_name(items)}")
    return items


def _check_ttl(ttl: float | timedelta | None) -> dict[str, Any]:
    if ttl is None:
        return {}
    return {"ttl": check_seconds(ttl, "ttl", allow_inf=True)}


class _ShardedBase(Generic[N]):
    def __init__(
        self,
        sharder: Sharder[N],
        stores: Mapping[N, Any],
        *,
        replicas: int = 0,
        store_factory: Callable[[N], Any] | None = None,
    ) -> None:
        self._core = _Core(sharder, stores, replicas, store_factory)

    @property
    def sharder(self) -> Sharder[N]:
        """The sharder keys are routed by."""
        return self._core.sharder

    @property
    def stores(self) -> dict[N, Any]:
        """``node -> store`` (a copy)."""
        return dict(self._core.stores)

    @property
    def replicas(self) -> int:
        """How many more nodes of each key's preference list hold it."""
        return self._core.replicas

    def _stores_for(self, plan: object, stores: object) -> dict[N, Any]:
        """The stores while ``plan`` moves keys: ours and ``stores`` (checked; nothing
        is changed here)."""
        if not isinstance(plan, ReshardPlan):
            raise ArgumentTypeError(f"plan must be a ReshardPlan, got {type_name(plan)}")
        if self._core.replicas:
            raise ConfigurationError("resharding a store with replicas is not supported")
        if stores is not None and not isinstance(stores, Mapping):
            raise ArgumentTypeError(f"stores must map nodes to stores, got {type_name(stores)}")
        for node, store in (stores or {}).items():
            check_methods(store, f"stores[{node!r}]", "a Store", _STORE_METHODS)
        return {**self._core.stores, **(stores or {})}

    def _use(self, stores: dict[N, Any]) -> None:
        """Route to ``stores`` from now on, counting calls for the new ones too."""
        with self._core.lock:
            for node in stores:
                self._core.calls.setdefault(node, 0)
                self._core.errors.setdefault(node, 0)
        self._core.stores = stores

    def store_for(self, key: str) -> Any:
        """The store that owns ``key`` (its first node). Runtime complexity: one lookup."""
        return self._core.stores[self._core.owners(key)[0]]

    def stats(self) -> ShardedStoreStats:
        """Calls and errors per node, and failovers. Runtime complexity: O(nodes)."""
        return self._core.stats()

    def check_items(self, items: Mapping[str, Any], /) -> None:
        """Raise what ``set_many(items)`` would raise for a bad key or value, with
        no I/O (every shard's ``check_items``). Runtime complexity: O(len(items))."""
        flow = self._core.set_many(items, {})
        next(flow)  # the checks all run before the first batch of calls
        flow.close()


class ShardedStore(_ShardedBase[N]):
    """One :class:`~scalekit.protocols.Store` over many, each key on the node a
    :class:`~scalekit.sharding.Sharder` gives it: a cache tier spread over
    several Redis or memcached servers, as twemproxy and Redis Cluster clients do.

    ``get_many`` and ``set_many`` send one batch per shard, to all shards at once
    (over Redis, every batch is sent before any reply is read; other stores run
    on worker threads, ``max_workers`` of them). A shard that fails raises
    :class:`ShardUnavailable` (a :class:`~scalekit.errors.BackendError`) for its
    keys only: ``get_many`` keeps what the other shards answered in ``found``.
    With ``replicas=r`` each key is written to the first ``r + 1`` nodes of its
    preference list, and read from the first that answers.

    :meth:`reshard` carries out a :class:`~scalekit.sharding.ReshardPlan` while
    reads and writes continue (see :class:`~scalekit.sharding.Migration`).

    Over a Redis Cluster (the sharder a :class:`~scalekit.sharding.SlotMap` with
    Redis Cluster hashing, e.g. :meth:`SlotMap.from_cluster`, no replicas, one
    ``RedisCache(client, cluster=True)`` per master), the store follows the
    cluster's redirections itself while slots move: ``MOVED`` hands the slot to
    the named master in the map (``assign_slot``; a master the map did not know
    joins, its store made by ``store_factory(node)``) and sends the keys there;
    ``ASK`` sends them once to the importing master with ``ASKING`` (the store's
    ``asking``); ``TRYAGAIN`` splits a batch to single keys. Only the redirected
    keys of a batch are sent again, regrouped; after 16
    redirections a key fails with :class:`ShardUnavailable`. :meth:`stats`
    counts them (``moved``, ``asked``, ``retried``).

    Runtime complexity: one sharder lookup per key, one round trip per shard,
    plus one per round of redirections (and O(S) per round that moves slots).

    >>> from scalekit.cache import LRUCache
    >>> from scalekit.sharding import JumpHash
    >>> store = ShardedStore(JumpHash(["a", "b"]), {"a": LRUCache(100), "b": LRUCache(100)})
    >>> store.set_many({"x": 1, "y": 2, "z": 3})
    >>> store.get_many(["x", "y", "z", "w"])
    {'x': 1, 'y': 2, 'z': 3}
    """

    def __init__(
        self,
        sharder: Sharder[N],
        stores: Mapping[N, Any],
        *,
        replicas: int = 0,
        max_workers: int | None = None,
        store_factory: Callable[[N], Any] | None = None,
    ) -> None:
        super().__init__(sharder, stores, replicas=replicas, store_factory=store_factory)
        self._max_workers = check_count(
            len(self._core.stores) if max_workers is None else max_workers,
            "max_workers",
            minimum=1,
        )
        self._executor: ThreadPoolExecutor | None = None
        self._executor_lock = threading.Lock()
        self._migration: Migration[N] | None = None

    # -- driving flows ---------------------------------------------------------

    def _call(self, call: tuple[Any, str, tuple[Any, ...], dict[str, Any]]) -> Any:
        node, method, args, kwargs = call
        store = self._core.stores[node]
        try:
            if method in _WITH_TTL and not hasattr(store, method):
                return _WITH_TTL[method](store, *args)
            return getattr(store, method)(*args, **kwargs)
        except BackendError as exc:
            return exc

    def _pool(self) -> ThreadPoolExecutor:
        with self._executor_lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    self._max_workers, thread_name_prefix="scalekit-shards"
                )
            return self._executor

    def _run(self, flow: Flow[_R]) -> _R:
        return drive(flow, self._perform, ())

    def _perform(self, calls: Calls) -> list[Any]:
        return [self._call(calls[0])] if len(calls) == 1 else self._scatter(calls)

    def _scatter(self, calls: Calls) -> list[Any]:
        """Run shard calls at once: the batches of stores that can send without
        waiting (:meth:`RedisCache.start`) are all sent before any reply is read;
        the others run on the worker threads (or one by one with ``max_workers=1``)."""
        results: list[Any] = [_MISSING] * len(calls)
        started: list[tuple[int, Any, Any]] = []
        try:
            for index, (node, method, args, kwargs) in enumerate(calls):
                store = self._core.stores[node]
                start = getattr(store, "start", None)
                if start is None:
                    continue
                try:
                    handle = start(method, *args, **kwargs)
                except BackendError as exc:
                    results[index] = exc
                    continue
                if handle is not None:
                    started.append((index, store, handle))
            sent = {index for index, _, _ in started}
            rest = [i for i, result in enumerate(results) if result is _MISSING and i not in sent]
            if len(rest) > 1 and self._max_workers > 1:
                answers = self._pool().map(self._call, [calls[i] for i in rest])
                for i, result in zip(rest, answers, strict=True):
                    results[i] = result
            else:
                for i in rest:
                    results[i] = self._call(calls[i])
            while started:
                index, store, handle = started.pop(0)
                try:
                    results[index] = store.finish(handle)
                except BackendError as exc:
                    results[index] = exc
        finally:
            for _, store, handle in started:  # an error stopped us: close what was sent
                store.abort(handle)
        return results

    def close(self) -> None:
        """Stop the worker threads (the stores stay open: they are the caller's)."""
        with self._executor_lock:
            if self._executor is not None:
                self._executor.shutdown()
                self._executor = None

    def __enter__(self) -> ShardedStore[N]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the Store -------------------------------------------------------------

    def get(self, key: str, default: Any = None, /) -> Any:
        """The value of ``key`` from its shard, or ``default``."""
        migration = self._migration
        if migration is not None:
            return migration.get(key, default)
        value = self._run(self._core.read(key, "get", (key, _MISSING)))
        return default if value is _MISSING else value

    def set(self, key: str, value: Any, /, *, ttl: float | timedelta | None = None) -> None:
        """Store ``value`` under ``key`` on its shard (and replicas)."""
        kwargs = _check_ttl(ttl)
        migration = self._migration
        if migration is not None:
            migration.set(key, value, ttl=kwargs.get("ttl"))
            return
        self._run(self._core.write(key, "set", (key, value), kwargs))

    def add(self, key: str, value: Any, /, *, ttl: float | timedelta | None = None) -> bool:
        """Store ``value`` only if ``key`` is absent on its shard; whether it did."""
        kwargs = _check_ttl(ttl)
        migration = self._migration
        if migration is not None:  # absent at the source too, then added at the target
            if migration.get(key, _MISSING) is not _MISSING:
                return False
            return bool(self._core.stores[migration.write_owner(key)].add(key, value, **kwargs))
        return self._run(self._core.add(key, value, kwargs))

    def delete(self, key: str, /) -> bool:
        """Remove ``key`` from its shard (and replicas); whether it was there."""
        migration = self._migration
        if migration is not None:
            present = migration.get(key, _MISSING) is not _MISSING
            migration.delete(key)
            return present
        return any(self._run(self._core.write(key, "delete", (key,), {})))

    def get_with_ttl(self, key: str, default: Any = None, /) -> tuple[Any, float | None]:
        """``(value, seconds left)`` from the key's shard, which must have
        ``get_with_ttl`` (:class:`~scalekit.cache.RedisCache` has)."""
        if self._migration is not None:
            value = self.get(key, _MISSING)
            if value is _MISSING:
                return default, None
            try:
                return value, self.ttl_of(key)
            except KeyError:
                return default, None
        return self._run(self._core.read(key, "get_with_ttl", (key, default)))  # type: ignore[no-any-return]

    def get_many_with_ttl(self, keys: Iterable[str], /) -> dict[str, tuple[Any, float | None]]:
        """``key -> (value, seconds left)``: one ``get_many_with_ttl`` per shard, at once."""
        if self._migration is not None:
            found = {}
            for key in keys:
                value, ttl = self.get_with_ttl(key, _MISSING)
                if value is not _MISSING:
                    found[key] = (value, ttl)
            return found
        return self._run(self._core.get_many(keys, "get_many_with_ttl"))

    def ttl_of(self, key: str, /) -> float | None:
        """Seconds ``key`` has left on its shard; :class:`KeyError` when missing."""
        migration = self._migration
        if migration is not None:
            return self._core.stores[migration.read_owner(key)].ttl_of(key)  # type: ignore[no-any-return]
        return self._run(self._core.read(key, "ttl_of", (key,)))  # type: ignore[no-any-return]

    def get_many(self, keys: Iterable[str], /) -> dict[str, Any]:
        """The present keys with their values: one ``get_many`` per shard, at once."""
        migration = self._migration
        if migration is not None:
            found = {}
            for key in keys:
                value = migration.get(key, _MISSING)
                if value is not _MISSING:
                    found[key] = value
            return found
        return self._run(self._core.get_many(keys))

    def set_many(
        self, items: Mapping[str, Any], /, *, ttl: float | timedelta | None = None
    ) -> None:
        """Store every item: one ``set_many`` per shard, at once."""
        kwargs = _check_ttl(ttl)
        migration = self._migration
        if migration is not None:
            for key, value in items.items():
                migration.set(key, value, ttl=kwargs.get("ttl"))
            return
        self._run(self._core.set_many(items, kwargs))

    # -- resharding ------------------------------------------------------------

    def follow(
        self,
        plan: ReshardPlan[N],
        stores: Mapping[N, Any] | None = None,
        *,
        progress: Callable[[MigrationProgress], object] | bool | None = None,
        batch_size: int = 1000,
    ) -> Migration[N]:
        """Route by ``plan`` while its keys move (this process or another moves them):
        reads try a moving key's source then its target, writes go to the target.

        ``stores`` adds the stores of nodes the plan brings in. Returns the
        :class:`Migration` reads and writes go through (``progress`` and
        ``batch_size`` are its settings for moving).
        """
        all_stores = self._stores_for(plan, stores)
        migration = Migration(
            plan,
            all_stores,
            keys_of=_keys_of,
            progress=progress,
            batch_size=batch_size,
        )
        self._use(all_stores)
        self._migration = migration
        return migration

    def complete(self, plan: ReshardPlan[N]) -> None:
        """Route by ``plan.after`` from now on: the plan's keys have all moved."""
        if not isinstance(plan, ReshardPlan):
            raise ArgumentTypeError(f"plan must be a ReshardPlan, got {type_name(plan)}")
        self._core.sharder = plan.after
        self._migration = None

    def reshard(
        self,
        plan: ReshardPlan[N],
        stores: Mapping[N, Any] | None = None,
        *,
        progress: Callable[[MigrationProgress], object] | bool | None = None,
        batch_size: int = 1000,
    ) -> MigrationProgress:
        """Move the keys ``plan`` moves, between live stores, then route by ``plan.after``.

        Reads and writes go on meanwhile (from any thread; other processes
        :meth:`follow` the same plan, or reshard it too: a copy is an ``add``
        with the item's remaining TTL, so a newer write is never overwritten).
        :meth:`stop` makes it return early; calling it again with the same plan
        resumes. ``progress=True`` shows a bar (rich or tqdm when installed,
        plain text otherwise), or pass a callable taking each
        :class:`MigrationProgress`.

        Runtime complexity: O(keys on the source nodes) store calls.
        """
        migration = self._migration
        if migration is None or migration.plan is not plan:
            migration = self.follow(plan, stores, progress=progress, batch_size=batch_size)
        else:  # following it already (or resuming): move with these settings
            migration.configure(progress=progress, batch_size=batch_size)
        report = migration.run()
        if report.done:
            self.complete(plan)
        return report

    def stop(self) -> None:
        """Make a running :meth:`reshard` return after its current batch."""
        migration = self._migration
        if migration is not None:
            migration.stop()


def _get_with_ttl(store: Any, key: str, default: Any) -> tuple[Any, float | None]:
    """``get_with_ttl`` for a store without it: two calls."""
    value = store.get(key, _MISSING)
    if value is _MISSING:
        return default, None
    try:
        return value, store.ttl_of(key)
    except KeyError:  # expired between the two calls
        return default, None


def _get_many_with_ttl(store: Any, keys: list[str]) -> dict[str, tuple[Any, float | None]]:
    found = {}
    for key, value in store.get_many(keys).items():
        try:
            found[key] = (value, store.ttl_of(key))
        except KeyError:
            continue
    return found


async def _get_with_ttl_async(store: Any, key: str, default: Any) -> tuple[Any, float | None]:
    value = await store.get(key, _MISSING)
    if value is _MISSING:
        return default, None
    try:
        return value, await store.ttl_of(key)
    except KeyError:
        return default, None


async def _get_many_with_ttl_async(
    store: Any, keys: list[str]
) -> dict[str, tuple[Any, float | None]]:
    found = {}
    for key, value in (await store.get_many(keys)).items():
        try:
            found[key] = (value, await store.ttl_of(key))
        except KeyError:
            continue
    return found


_WITH_TTL: dict[str, Callable[..., Any]] = {
    "get_with_ttl": _get_with_ttl,
    "get_many_with_ttl": _get_many_with_ttl,
}
_WITH_TTL_ASYNC: dict[str, Callable[..., Any]] = {
    "get_with_ttl": _get_with_ttl_async,
    "get_many_with_ttl": _get_many_with_ttl_async,
}


def _keys_of(store: Any) -> Iterable[Any]:
    keys = getattr(store, "keys", None)
    listed: Iterable[Any]
    if callable(keys):
        listed = keys()
    elif hasattr(store, "__iter__"):
        listed = iter(store)
    else:
        raise ConfigurationError(
            f"{type_name(store)} cannot list its keys, so it cannot be resharded"
        )
    return listed


class AsyncShardedStore(_ShardedBase[N]):
    """:class:`ShardedStore` over :class:`~scalekit.protocols.AsyncStore` shards:
    the same flows, each batch of shard calls awaited together
    (``asyncio.gather``).

    :meth:`reshard` moves a plan's keys live, awaited (an :class:`AsyncMigration`);
    while any process moves them, :meth:`follow` routes reads and writes by the
    plan (as :class:`ShardedStore` does), and :meth:`complete` switches to the
    new placement once the keys have moved.
    """

    def __init__(
        self,
        sharder: Sharder[N],
        stores: Mapping[N, Any],
        *,
        replicas: int = 0,
        store_factory: Callable[[N], Any] | None = None,
    ) -> None:
        super().__init__(sharder, stores, replicas=replicas, store_factory=store_factory)
        self._route: AsyncPlanRoute[N] | None = None
        self._mover: AsyncMigration[N] | None = None

    def follow(self, plan: ReshardPlan[N], stores: Mapping[N, Any] | None = None) -> None:
        """Route by ``plan`` while its keys move: reads try a moving key's source,
        then its target; writes go to the target and drop the source's copy.
        ``stores`` adds the stores of nodes the plan brings in. Runtime complexity: O(nodes).
        """
        all_stores = self._stores_for(plan, stores)
        missing = (plan.sources | plan.targets) - set(all_stores)
        if missing:
            raise ConfigurationError(f"no store for {sorted(map(str, missing))}")
        self._use(all_stores)
        self._route = AsyncPlanRoute(plan, all_stores)

    def complete(self, plan: ReshardPlan[N]) -> None:
        """Route by ``plan.after`` from now on: the plan's keys have all moved."""
        if not isinstance(plan, ReshardPlan):
            raise ArgumentTypeError(f"plan must be a ReshardPlan, got {type_name(plan)}")
        self._core.sharder = plan.after
        self._route = None
        self._mover = None

    async def reshard(
        self,
        plan: ReshardPlan[N],
        stores: Mapping[N, Any] | None = None,
        *,
        progress: Callable[[MigrationProgress], object] | bool | None = None,
        batch_size: int = 1000,
    ) -> MigrationProgress:
        """:meth:`ShardedStore.reshard`, awaited: move the keys ``plan`` moves while
        reads and writes go on (through :meth:`follow`), then route by
        ``plan.after``. :meth:`stop` makes it return after the current batch;
        awaiting it again with the same plan resumes.

        Runtime complexity: O(keys on the source nodes) store calls.
        """
        mover = self._mover
        if mover is None or mover.plan is not plan:
            self.follow(plan, stores)
            mover = AsyncMigration(
                plan,
                self._core.stores,
                progress=progress,
                batch_size=batch_size,
            )
            self._mover = mover
        else:
            mover.configure(progress=progress, batch_size=batch_size)
        report = await mover.run()
        if report.done:
            self.complete(plan)
        return report

    def stop(self) -> None:
        """Make a running :meth:`reshard` return after its current batch."""
        mover = self._mover
        if mover is not None:
            mover.stop()

    async def _run(self, flow: Flow[_R]) -> _R:
        import asyncio

        async def call(
            node: Any, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> Any:
            store = self._core.stores[node]
            try:
                if method in _WITH_TTL and not hasattr(store, method):
                    return await _WITH_TTL_ASYNC[method](store, *args)
                return await getattr(store, method)(*args, **kwargs)
            except BackendError as exc:
                return exc

        async def perform(calls: Calls) -> list[Any]:
            if len(calls) == 1:
                return [await call(*calls[0])]
            return list(await asyncio.gather(*(call(*c) for c in calls)))

        return await drive_async(flow, perform, ())

    async def get(self, key: str, default: Any = None, /) -> Any:
        """The value of ``key`` from its shard, or ``default``."""
        route = self._route
        if route is not None:
            return await route.get(self._core.checked(key), default)
        value = await self._run(self._core.read(key, "get", (key, _MISSING)))
        return default if value is _MISSING else value

    async def set(self, key: str, value: Any, /, *, ttl: float | timedelta | None = None) -> None:
        """Store ``value`` under ``key`` on its shard (and replicas)."""
        kwargs = _check_ttl(ttl)
        route = self._route
        if route is not None:
            await route.set(self._core.checked(key), value, kwargs)
            return
        await self._run(self._core.write(key, "set", (key, value), kwargs))

    async def add(self, key: str, value: Any, /, *, ttl: float | timedelta | None = None) -> bool:
        """Store ``value`` only if ``key`` is absent on its shard; whether it did."""
        kwargs = _check_ttl(ttl)
        route = self._route
        if route is not None:
            return await route.add(self._core.checked(key), value, kwargs)
        return await self._run(self._core.add(key, value, kwargs))

    async def delete(self, key: str, /) -> bool:
        """Remove ``key`` from its shard (and replicas); whether it was there."""
        route = self._route
        if route is not None:
            return await route.delete(self._core.checked(key))
        return any(await self._run(self._core.write(key, "delete", (key,), {})))

    async def ttl_of(self, key: str, /) -> float | None:
        """Seconds ``key`` has left on its shard; :class:`KeyError` when missing."""
        route = self._route
        if route is not None:
            return await route.ttl_of(self._core.checked(key))
        return await self._run(self._core.read(key, "ttl_of", (key,)))

    async def get_many(self, keys: Iterable[str], /) -> dict[str, Any]:
        """The present keys with their values: one ``get_many`` per shard, at once."""
        route = self._route
        if route is not None:
            return await route.get_many([self._core.checked(k) for k in _iterable(keys)])
        return await self._run(self._core.get_many(keys))

    async def set_many(
        self, items: Mapping[str, Any], /, *, ttl: float | timedelta | None = None
    ) -> None:
        """Store every item: one ``set_many`` per shard, at once."""
        kwargs = _check_ttl(ttl)
        route = self._route
        if route is not None:
            for key in _mapping(items):
                self._core.checked(key)
            check = getattr(self, "check_items", None)
            if check is not None:
                check(items)
            await route.set_many(items, kwargs)
            return
        await self._run(self._core.set_many(items, kwargs))
