"""A live Redis Cluster: its slot table, a reshard carried out slot by slot, and a
small client that routes by a :class:`SlotMap` and follows ``MOVED`` and ``ASK``.

redis-py is imported only when a function here talks to a server (it is an
optional extra), and its errors are raised as :class:`~scalekit.errors.BackendError`.
Nodes are named ``"host:port"``, as :meth:`SlotMap.from_cluster` names them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from scalekit._validate import check_callable, check_count, check_methods, type_name
from scalekit.errors import ArgumentTypeError, BackendError, ConfigurationError
from scalekit.sharding._plan import ReshardPlan
from scalekit.sharding._progress import ProgressLog, progress_bar
from scalekit.sharding._slots import REDIS_CLUSTER_SLOTS, SlotMap, redis_key_slot

__all__ = [
    "ClusterReshardProgress",
    "ClusterResharder",
    "ClusterRouter",
    "read_cluster_table",
]

ClientFactory = Callable[[str, int], Any]
"""Makes a redis-py ``Redis`` client of the node at ``(host, port)``."""


@contextmanager
def _redis_errors(what: str) -> Iterator[None]:
    """Raise redis-py's errors inside as :class:`BackendError` naming ``what``."""
    import redis

    try:
        yield
    except redis.RedisError as exc:
        raise BackendError(f"{what}: {type(exc).__name__}: {exc}") from exc


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _address(host: str, port: int) -> str:
    return f"{host}:{port}"


def _check_command(command: tuple[Any, ...]) -> None:
    """Refuse, before any I/O, a command redis-py could not send."""
    if not command or command[0] in ("", b""):
        raise ConfigurationError("command must start with a Redis command's name, got none")
    if not isinstance(command[0], (str, bytes)):
        raise ArgumentTypeError(
            f"command must start with a Redis command's name, got {type_name(command[0])}"
        )
    for arg in command:
        if isinstance(arg, bool) or not isinstance(arg, (str, bytes, int, float)):
            raise ArgumentTypeError(
                f"command arguments must be str, bytes, int or float, got {type_name(arg)}"
            )


def _is_cluster_map(slot_map: object) -> bool:
    """Whether ``slot_map`` places keys as a Redis Cluster does."""
    return (
        isinstance(slot_map, SlotMap)
        and slot_map._hash is redis_key_slot
        and slot_map.slots == REDIS_CLUSTER_SLOTS
    )


def split_address(node: str) -> tuple[str, int]:
    """``("host", port)`` of a node named ``"host:port"`` (``"[::1]:7000"`` too).

    Runtime complexity: O(len(node)).
    """
    if not isinstance(node, str):
        raise ArgumentTypeError(f"a cluster node is named 'host:port', not {type_name(node)}")
    host, colon, port = node.rpartition(":")
    if not colon or not host or not port.isdigit():
        raise ConfigurationError(f"a cluster node is named 'host:port', not {node!r}")
    return host.strip("[]"), int(port)


def _as_mapping(entry: Any) -> dict[str, Any]:
    """A ``CLUSTER SHARDS`` map, parsed by redis-py (a dict) or not (a flat list)."""
    if isinstance(entry, Mapping):
        return {_text(key): value for key, value in entry.items()}
    return {_text(entry[i]): entry[i + 1] for i in range(0, len(entry), 2)}


def read_cluster_table(client: Any) -> tuple[list[str], list[str]]:
    """``(table, masters)``: the owner of each of the 16384 slots, and every master
    (also those with no slot, when ``CLUSTER SHARDS`` lists them), as ``"host:port"``,
    in the order of their first slot.

    Asks ``CLUSTER SHARDS`` (Redis 7), else ``CLUSTER SLOTS``. A slot without an
    owner raises :class:`~scalekit.errors.ConfigurationError`.

    Runtime complexity: one round trip, then O(S).
    """
    import redis

    check_methods(client, "client", "a redis.Redis of a cluster node", ("execute_command",))
    owners: list[str | None] = [None] * REDIS_CLUSTER_SLOTS
    masters: list[str] = []
    with _redis_errors("CLUSTER SHARDS"):
        try:
            shards = client.execute_command("CLUSTER", "SHARDS")
        except redis.ResponseError:  # before Redis 7
            shards = None
        if shards is None:
            for entry in client.execute_command("CLUSTER", "SLOTS"):
                node = _address(_text(entry[2][0]), int(entry[2][1]))
                owners[int(entry[0]) : int(entry[1]) + 1] = [node] * (
                    int(entry[1]) - int(entry[0]) + 1
                )
                if node not in masters:
                    masters.append(node)
        else:
            for raw in shards:
                shard = _as_mapping(raw)
                nodes = [_as_mapping(node) for node in shard["nodes"]]
                primary = [n for n in nodes if _text(n.get("role")) == "master"]
                if not primary:
                    continue
                info = primary[0]
                host = _text(info.get("endpoint") or info.get("ip"))
                node = _address(host, int(info["port"]))
                masters.append(node)
                bounds = [int(bound) for bound in shard["slots"]]
                for start, end in zip(bounds[::2], bounds[1::2], strict=True):
                    owners[start : end + 1] = [node] * (end - start + 1)
    missing = [slot for slot, owner in enumerate(owners) if owner is None]
    if missing:
        raise ConfigurationError(
            f"{len(missing)} slots have no owner in the cluster (first {missing[0]})"
        )
    first = {node: slot for slot, node in reversed(list(enumerate(owners)))}
    masters.sort(key=lambda node: (first.get(node, REDIS_CLUSTER_SLOTS), node))
    return owners, masters  # type: ignore[return-value]


@dataclass(frozen=True)
class _NodeLine:
    """One line of ``CLUSTER NODES``."""

    id: str
    address: str
    flags: frozenset[str]
    migrating: dict[int, str]  # slot -> id of the node it migrates to (on "myself")
    importing: dict[int, str]  # slot -> id of the node it imports from (on "myself")
    ranges: tuple[tuple[int, int], ...]  # the slots it owns, first and last of each range


def _cluster_nodes(client: Any) -> list[_NodeLine]:
    """``CLUSTER NODES`` of ``client``'s node, parsed."""
    with _redis_errors("CLUSTER NODES"):
        text = _text(client.execute_command("CLUSTER", "NODES"))
    lines = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        address = fields[1].split("@")[0].split(",")[0]
        migrating: dict[int, str] = {}
        importing: dict[int, str] = {}
        ranges: list[tuple[int, int]] = []
        for item in fields[8:]:
            if not item.startswith("["):
                first, _, last = item.partition("-")
                ranges.append((int(first), int(last or first)))
            elif "->-" in item:
                slot, node = item[1:-1].split("->-")
                migrating[int(slot)] = node
            elif "-<-" in item:
                slot, node = item[1:-1].split("-<-")
                importing[int(slot)] = node
        lines.append(
            _NodeLine(
                fields[0],
                address,
                frozenset(fields[2].split(",")),
                migrating,
                importing,
                tuple(ranges),
            )
        )
    return lines


@dataclass(frozen=True)
class ClusterReshardProgress:
    """How far a :class:`ClusterResharder` is: slots done of the plan's, keys moved."""

    slots_done: int
    slots_total: int
    keys_moved: int
    stopped: bool = False

    @property
    def done(self) -> bool:
        """Whether every slot of the plan has moved."""
        return self.slots_done == self.slots_total


SlotCallback = Callable[[int, str, str, int], object]
"""``on_slot(slot, source, target, keys_moved)``, called after each slot has moved."""


class ClusterResharder:
    """Carries out a :class:`ReshardPlan` of a Redis Cluster :class:`SlotMap` on the
    live cluster, slot by slot, as ``redis-cli --cluster reshard`` does.

    For each slot of each move: ``CLUSTER SETSLOT <slot> IMPORTING <source id>``
    on the target, ``SETSLOT <slot> MIGRATING <target id>`` on the source, then
    ``CLUSTER GETKEYSINSLOT`` and ``MIGRATE host port "" 0 <timeout> KEYS ...``
    in batches until the slot is empty at the source, then ``SETSLOT <slot> NODE
    <target id>`` on the target, the source and every other master. Meanwhile the
    cluster answers ``ASK`` for the slot's keys that have left, and ``MOVED``
    once it has moved (:class:`ClusterRouter` follows both).

    ``slot_map``, the map clients route by (usually the one the plan was made
    from), is updated as each slot finishes, so routing by it is right as soon
    as a slot has moved; when every slot has, it becomes ``plan.after`` (its
    weights, table and epoch). ``on_slot(slot, source, target, keys_moved)`` is
    called after each slot; ``progress=True`` shows a bar (rich or tqdm when
    installed, else a line on stderr every second); a callable gets a
    :class:`ClusterReshardProgress`.

    :meth:`stop` (from any thread) ends :meth:`run` after the slot in hand. A
    new resharder of the same plan resumes: slots already at their target are
    skipped, and a slot a crash left ``MIGRATING``/``IMPORTING`` is finished if
    the markers are the plan's (source to target), rolled back otherwise (its
    keys sent back to the owner, the markers cleared with ``SETSLOT STABLE``).

    Runtime complexity: O(S) round trips for S slots moved, plus one ``MIGRATE``
    per ``batch_size`` keys.
    """

    def __init__(
        self,
        client_factory: ClientFactory,
        plan: ReshardPlan[str],
        slot_map: SlotMap[str] | None = None,
        *,
        batch_size: int = 100,
        timeout_ms: int = 5000,
        on_slot: SlotCallback | None = None,
        progress: Callable[[ClusterReshardProgress], object] | bool | None = None,
    ) -> None:
        check_callable(client_factory, "client_factory")
        if not isinstance(plan, ReshardPlan):
            raise ArgumentTypeError(f"plan must be a ReshardPlan, got {type_name(plan)}")
        for side in (plan.before, plan.after):
            if not _is_cluster_map(side):
                raise ConfigurationError("the plan must be between two Redis Cluster slot maps")
            for node in side.nodes:
                try:
                    split_address(node)
                except (ArgumentTypeError, ConfigurationError) as exc:
                    raise type(exc)(f"the plan has a node that is not an address: {exc}") from None
        if slot_map is not None and not isinstance(slot_map, SlotMap):
            raise ArgumentTypeError(f"slot_map must be a SlotMap, got {type_name(slot_map)}")
        check_callable(on_slot, "on_slot", allow_none=True)
        if not (progress is None or isinstance(progress, bool) or callable(progress)):
            raise ArgumentTypeError(
                f"progress must be a callable, a bool or None, got {type_name(progress)}"
            )
        self._factory = client_factory
        self._plan = plan
        self._map = slot_map
        self._batch = check_count(batch_size, "batch_size", minimum=1)
        self._timeout = check_count(timeout_ms, "timeout_ms", minimum=1)
        self._on_slot = on_slot
        self._progress = _progress_callback(progress)
        self._clients: dict[str, Any] = {}
        self._stop = threading.Event()
        self._work = [
            (slot, move.source, move.target)
            for move in sorted(plan.moves, key=lambda m: (str(m.source), str(m.target)))
            for slot in move.slots
        ]
        self._done = 0
        self._keys = 0
        self.rolled_back: list[int] = []
        """Slots whose stray migration markers a run cleared (none of the plan's)."""

    # -- public ---------------------------------------------------------------------

    def stop(self) -> None:
        """Make :meth:`run` return after the slot it is moving. Thread-safe.

        Runtime complexity: O(1).
        """
        self._stop.set()

    def progress(self) -> ClusterReshardProgress:
        """How far the reshard is.

        Runtime complexity: O(1).
        """
        return ClusterReshardProgress(self._done, len(self._work), self._keys, self._stop.is_set())

    def run(self) -> ClusterReshardProgress:
        """Move every slot of the plan not at its target yet (see the class).

        Raises :class:`~scalekit.errors.ConfigurationError` if the cluster is not
        the plan's (a slot owned by neither its source nor its target, a target
        that is not a master of the cluster: ``CLUSTER MEET`` it first), and
        :class:`~scalekit.errors.BackendError` when a node fails; either way the
        slots moved so far stay moved, and a new resharder resumes.

        Runtime complexity: see the class.
        """
        try:
            return self._run()
        finally:
            for client in self._clients.values():
                client.close()
            self._clients.clear()

    # -- the work ---------------------------------------------------------------------

    def _client(self, node: str) -> Any:
        client = self._clients.get(node)
        if client is None:
            client = self._clients[node] = self._factory(*split_address(node))
        return client

    def _run(self) -> ClusterReshardProgress:
        nodes = sorted({n for side in (self._plan.before, self._plan.after) for n in side.nodes})
        views = {node: _cluster_nodes(self._client(node)) for node in nodes}
        ids: dict[str, str] = {}
        for node, lines in views.items():
            mine = [line for line in lines if "myself" in line.flags]
            if not mine or "master" not in mine[0].flags:
                raise ConfigurationError(f"{node} is not a master of the cluster")
            ids[node] = mine[0].id
        masters = [line for line in views[nodes[0]] if "master" in line.flags]
        known = {line.id for line in masters}
        for node, node_id in ids.items():
            if node_id not in known:
                raise ConfigurationError(f"{node} is not in the cluster yet: CLUSTER MEET it")
        self._ids = ids
        self._masters = sorted(ids, key=lambda n: n not in self._plan.after.nodes)
        owners, _ = read_cluster_table(self._client(nodes[0]))
        claims = {
            node: {s for a, b in line.ranges for s in range(a, b + 1)}
            for node, lines in views.items()
            for line in lines
            if "myself" in line.flags
        }
        for slot, _, target in self._work:  # a target that says it owns a slot does
            if slot in claims[target]:
                owners[slot] = target
        self._owners = owners
        self._marked = set(self._markers(views))
        self._prepare_map()
        self._roll_back_strays(views)
        self._done = 0
        report = self.progress()
        logged = ProgressLog("ClusterResharder", "slot")
        logged.report(0, report.slots_total, self._keys, False)
        for slot, source, target in self._work:
            if self._stop.is_set():
                logged.stopped(report.slots_done, report.slots_total, report.keys_moved)
                break
            moved = self._move_slot(slot, source, target)
            self._done += 1
            self._keys += moved
            if self._map is not None:
                self._map.assign_slot(slot, target)
            if self._on_slot is not None:
                self._on_slot(slot, source, target, moved)
            report = self.progress()
            logged.report(report.slots_done, report.slots_total, report.keys_moved, report.done)
            if self._progress is not None:
                self._progress(report)
        if report.done:
            logged.report(report.slots_done, report.slots_total, report.keys_moved, True)
        if report.done and self._map is not None:
            after = self._plan.after
            with self._map._lock:
                self._map._adopt(
                    dict(after._weights),
                    after._state.table,
                    adopted=after._state.adopted,
                    epoch=after.epoch,
                )
        return report

    def _prepare_map(self) -> None:
        """Add the plan's new nodes to the routing map, owning no slot yet."""
        slot_map = self._map
        if slot_map is None:
            return
        with slot_map._lock:
            weights = dict(slot_map._weights)
            missing = [n for n in self._plan.after.nodes if n not in weights]
            if missing:
                for node in missing:
                    weights[node] = self._plan.after.weight_of(node)
                slot_map._adopt(weights, slot_map._state.table, adopted=True)

    def _markers(self, views: Mapping[str, Sequence[_NodeLine]]) -> dict[int, dict[str, Any]]:
        """Each slot with a marker: ``{"migrating": (node, to id), "importing": ...}``."""
        found: dict[int, dict[str, Any]] = {}
        for node, lines in views.items():
            for line in lines:
                if "myself" not in line.flags:
                    continue
                for slot, other in line.migrating.items():
                    found.setdefault(slot, {})["migrating"] = (node, other)
                for slot, other in line.importing.items():
                    found.setdefault(slot, {})["importing"] = (node, other)
        return found

    def _roll_back_strays(self, views: Mapping[str, Sequence[_NodeLine]]) -> None:
        """Clear the markers a crash left that are not those of this plan's moves."""
        planned = {slot: (source, target) for slot, source, target in self._work}
        for slot, markers in sorted(self._markers(views).items()):
            expected = planned.get(slot)
            fits = expected is not None and all(
                marker[0] == (expected[0] if kind == "migrating" else expected[1])
                and marker[1] == self._ids[expected[1] if kind == "migrating" else expected[0]]
                for kind, marker in markers.items()
            )
            if fits:
                continue  # the plan's own slot: _move_slot finishes it
            owner = self._owners[slot]
            for kind, (node, _) in markers.items():
                if kind == "importing" and node != owner:
                    self._migrate_keys(slot, node, owner)  # send what arrived back
            for node, _ in markers.values():
                self._command(node, "CLUSTER", "SETSLOT", slot, "STABLE")
            self.rolled_back.append(slot)

    def _command(self, node: str, *args: Any) -> Any:
        with _redis_errors(f"{args[0]} {args[1] if len(args) > 1 else ''} on {node}"):
            return self._client(node).execute_command(*args)

    def _move_slot(self, slot: int, source: str, target: str) -> int:
        owner = self._owners[slot]
        if owner not in (source, target):
            raise ConfigurationError(
                f"slot {slot} is at {owner}, neither its source {source} nor target {target}"
            )
        moved = 0
        if owner == source:
            self._command(target, "CLUSTER", "SETSLOT", slot, "IMPORTING", self._ids[source])
            self._command(source, "CLUSTER", "SETSLOT", slot, "MIGRATING", self._ids[target])
            moved = self._migrate_keys(slot, source, target)
        elif slot not in self._marked:  # at its target, no marker left: moved before
            return 0
        for node in [target, source, *(m for m in self._masters if m not in (source, target))]:
            self._command(node, "CLUSTER", "SETSLOT", slot, "NODE", self._ids[target])
        self._owners[slot] = target
        return moved

    def _migrate_keys(self, slot: int, source: str, target: str) -> int:
        """MIGRATE every key of ``slot`` from ``source`` to ``target``, in batches."""
        host, port = split_address(target)
        moved = 0
        while True:
            keys = self._command(source, "CLUSTER", "GETKEYSINSLOT", slot, self._batch)
            if not keys:
                return moved
            reply = self._command(
                source, "MIGRATE", host, port, "", 0, self._timeout, "KEYS", *keys
            )
            if _text(reply) != "NOKEY":
                moved += len(keys)


def _progress_callback(
    progress: Callable[[ClusterReshardProgress], object] | bool | None,
) -> Callable[[ClusterReshardProgress], object] | None:
    if progress is False or progress is None:
        return None
    if progress is not True:
        return progress
    show = progress_bar("resharding", unit="slot", moved="keys moved")
    return lambda report: show(_SlotReport(report))


class _SlotReport:
    """A :class:`ClusterReshardProgress` as :func:`progress_bar` reads a report."""

    __slots__ = ("done", "examined", "moved", "total")

    def __init__(self, report: ClusterReshardProgress) -> None:
        self.examined = report.slots_done
        self.total = report.slots_total
        self.moved = report.keys_moved
        self.done = report.done


class ClusterRouter:
    """A minimal Redis Cluster client: routes each command by a :class:`SlotMap`
    and follows the cluster's redirections, so it stays right while slots move.

    ``MOVED <slot> <host:port>`` updates the map (``assign_slot``, or
    ``reload`` for a master the map does not know) and retries there; ``ASK``
    sends ``ASKING`` then the command to the importing node, once, without
    changing the map; ``TRYAGAIN`` (a multi-key command on a slot half moved)
    waits a little and retries. ``moved`` and ``asked`` count redirections seen.
    Errors of redis are raised as :class:`~scalekit.errors.BackendError`.

    Runtime complexity: one round trip a command, plus one per redirection.
    """

    def __init__(
        self, slot_map: SlotMap[str], client_factory: ClientFactory, *, redirects: int = 16
    ) -> None:
        if not isinstance(slot_map, SlotMap):
            raise ArgumentTypeError(f"slot_map must be a SlotMap, got {type_name(slot_map)}")
        if not _is_cluster_map(slot_map):
            raise ConfigurationError(
                "slot_map must be a Redis Cluster slot map (redis_cluster=True)"
            )
        check_callable(client_factory, "client_factory")
        self.slot_map = slot_map
        self._factory = client_factory
        self._redirects = check_count(redirects, "redirects", minimum=1)
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.moved = 0
        self.asked = 0

    def _client(self, node: str) -> Any:
        client = self._clients.get(node)
        if client is None:
            with self._lock:
                client = self._clients.get(node)
                if client is None:
                    client = self._clients[node] = self._factory(*split_address(node))
        return client

    def execute(self, key: str | bytes, *command: Any) -> Any:
        """Run ``command`` (which touches ``key``, and only keys of its slot) on the
        node that owns ``key``'s slot, following redirections; returns its reply.

        Runtime complexity: one round trip, plus one per redirection.
        """
        import redis

        node = self.slot_map.node_for(key)
        _check_command(command)
        asking = False
        for _ in range(self._redirects):
            client = self._client(node)
            try:
                if asking:
                    pipe = client.pipeline(transaction=False)
                    pipe.execute_command("ASKING")
                    pipe.execute_command(*command)
                    return pipe.execute()[1]
                return client.execute_command(*command)
            except redis.exceptions.MovedError as exc:  # first: a subclass of AskError
                with self._lock:
                    self.moved += 1
                node, asking = _address(exc.host, exc.port), False
                self._follow(exc.slot_id, node, client)
            except redis.exceptions.AskError as exc:
                with self._lock:
                    self.asked += 1
                node, asking = _address(exc.host, exc.port), True
            except redis.exceptions.TryAgainError:
                time.sleep(0.01)
            except redis.RedisError as exc:
                raise BackendError(f"{command[0]} on {node}: {exc}") from exc
        raise BackendError(f"{command[0]} {key!r}: more than {self._redirects} redirections")

    def _follow(self, slot: int, node: str, client: Any) -> None:
        if node in self.slot_map:
            self.slot_map.assign_slot(slot, node)
        else:
            self.slot_map.reload(client)

    def close(self) -> None:
        """Close every connection.

        Runtime complexity: O(nodes).
        """
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()
