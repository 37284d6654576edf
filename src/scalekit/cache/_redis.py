"""The shared cache tier on Redis: :class:`RedisCache` and :class:`AsyncRedisCache`.

Both drive one I/O-free core, :class:`RedisCommands`: each operation is built as
the commands it sends (one round trip: a single command, or a pipeline) and a
function that reads their replies, so the two shells only send and receive.
"""

from __future__ import annotations

import binascii
import inspect
import math
import re
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from datetime import timedelta
from typing import Any, Generic, NamedTuple, TypeVar

from scalekit._validate import check_count, check_methods, type_name
from scalekit.cache._remote import JSON, Codec, Counters, Serializer, StoreStats
from scalekit.errors import ArgumentTypeError, BackendError, ConfigurationError, ShardUnavailable

__all__ = ["AsyncRedisCache", "RedisCache", "RedisCommands"]

V = TypeVar("V")
_MISSING: Any = object()
_GLOB_SPECIAL = re.compile(rb"[*?\[\]\\]")


class Call(NamedTuple):
    """One round trip: the commands to send, and what reads their replies."""

    commands: tuple[tuple[Any, ...], ...]
    finish: Callable[[list[Any]], Any]
    partial: bool = False  # a pipeline whose error replies finish reads, key by key


def _ms(seconds: float) -> int:
    """Milliseconds for ``PX``, rounded up: an item never expires early."""
    return max(1, math.ceil(seconds * 1000))


def _seconds_left(reply: Any) -> float | None:
    """``PTTL``'s answer for a present key in seconds; ``None`` for no expiry."""
    left = int(reply)
    return None if left < 0 else left / 1000


def _connection(pool: Any) -> Any:
    """A connection of ``pool`` (redis-py before 5.3 wants a command name)."""
    try:
        return pool.get_connection()
    except TypeError:
        return pool.get_connection("MGET")


class RedisCommands(Generic[V]):
    """The commands of every :class:`RedisCache` operation, and the reading of
    their replies; no I/O. Runtime complexity: O(1) per key."""

    __slots__ = ("codec", "counters")

    def __init__(self, codec: Codec[V], counters: Counters) -> None:
        self.codec = codec
        self.counters = counters

    def _set(self, name: bytes, data: bytes, ttl: float | None, *flags: str) -> tuple[Any, ...]:
        if ttl is None:
            return ("SET", name, data, *flags)
        return ("SET", name, data, "PX", _ms(ttl), *flags)

    def get(self, key: str, default: Any) -> Call:
        name = self.codec.key(key)

        def finish(replies: list[Any]) -> Any:
            data = replies[0]
            if data is None:
                self.counters.looked_up(0, 1)
                return default
            self.counters.looked_up(1, 0)
            return self.codec.loads(data, key)

        return Call((("GET", name),), finish)

    def get_with_ttl(self, key: str, default: Any) -> Call:
        name = self.codec.key(key)

        def finish(replies: list[Any]) -> tuple[Any, float | None]:
            data, left = replies
            if data is None or int(left) == -2:
                self.counters.looked_up(0, 1)
                return default, None
            self.counters.looked_up(1, 0)
            return self.codec.loads(data, key), _seconds_left(left)

        return Call((("GET", name), ("PTTL", name)), finish)

    def get_many_with_ttl(self, keys: Iterable[str]) -> Call:
        names = self.codec.keys(keys)

        def finish(replies: list[Any]) -> dict[str, tuple[V, float | None]]:
            found = {}
            if names:
                for key, data, left in zip(names.values(), replies[0], replies[1:], strict=True):
                    if data is not None and int(left) != -2:
                        found[key] = (self.codec.loads(data, key), _seconds_left(left))
            self.counters.looked_up(len(found), len(names) - len(found))
            return found

        commands = (("MGET", *names), *(("PTTL", name) for name in names)) if names else ()
        return Call(commands, finish)

    def set(self, key: str, value: V, ttl: float | timedelta | None) -> Call:
        seconds = self.codec.ttl(ttl)
        command = self._set(self.codec.key(key), self.codec.dumps(value), seconds)
        return Call((command,), self._wrote_one)

    def _wrote_one(self, replies: list[Any]) -> None:
        self.counters.wrote(1)

    def set_if(
        self, key: str, value: V, guard: str, expected: Any, ttl: float | timedelta | None
    ) -> Call:
        seconds = self.codec.ttl(ttl)
        name, guard_name = self.codec.key(key), self.codec.key(guard, "the guard")
        data, wanted = (
            self.codec.dumps(value),
            self.codec.dumps(expected, "expected (the guard's value)"),
        )
        px = b"" if seconds is None else str(_ms(seconds)).encode()
        command = ("EVAL", _SET_IF, 2, name, guard_name, data, wanted, px)

        def finish(replies: list[Any]) -> bool:
            stored = bool(replies[0])
            if stored:
                self.counters.wrote(1)
            return stored

        return Call((command,), finish)

    def add(self, key: str, value: V, ttl: float | timedelta | None) -> Call:
        seconds = self.codec.ttl(ttl)
        command = self._set(self.codec.key(key), self.codec.dumps(value), seconds, "NX")

        def finish(replies: list[Any]) -> bool:
            added = bool(replies[0])
            if added:
                self.counters.wrote(1)
            return added

        return Call((command,), finish)

    def delete(self, key: str) -> Call:
        def finish(replies: list[Any]) -> bool:
            self.counters.deleted()
            return bool(replies[0])

        return Call((("DEL", self.codec.key(key)),), finish)

    def ttl_of(self, key: str) -> Call:
        def finish(replies: list[Any]) -> float | None:
            left = int(replies[0])
            if left == -2:
                raise KeyError(key)
            return None if left == -1 else left / 1000

        return Call((("PTTL", self.codec.key(key)),), finish)

    def scan(self, count: int) -> Callable[[Any], tuple[Any, ...]]:
        """The ``SCAN`` command for a cursor, matching this store's prefix."""
        count = check_count(count, "count", minimum=1)
        pattern = _GLOB_SPECIAL.sub(rb"\\\g<0>", self.codec.prefix) + b"*"
        return lambda cursor: ("SCAN", cursor, "MATCH", pattern, "COUNT", count)

    def decode_keys(self, names: Iterable[bytes | str]) -> list[str]:
        """The keys of server names found by ``SCAN``."""
        cut = len(self.codec.prefix)
        keys = []
        for name in names:
            raw = name.encode("utf-8", "surrogatepass") if isinstance(name, str) else name
            keys.append(raw[cut:].decode("utf-8", "surrogatepass"))
        return keys

    def get_many(self, keys: Iterable[str]) -> Call:
        names = self.codec.keys(keys)

        def finish(replies: list[Any]) -> dict[str, V]:
            found = {}
            for key, data in zip(names.values(), replies[0] if names else (), strict=True):
                if data is not None:
                    found[key] = self.codec.loads(data, key)
            self.counters.looked_up(len(found), len(names) - len(found))
            return found

        return Call((("MGET", *names),) if names else (), finish)

    def set_many(self, items: Mapping[str, V], ttl: float | timedelta | None) -> Call:
        seconds = self.codec.ttl(ttl)
        encoded = self.codec.items(items)
        commands = tuple(self._set(name, data, seconds) for name, (_, data) in encoded.items())

        def finish(replies: list[Any]) -> None:
            self.counters.wrote(len(commands))

        return Call(commands, finish)


# SET KEYS[1] ARGV[1] (for ARGV[3] ms, if given) only if KEYS[2] holds ARGV[2]
_SET_IF = """\
if redis.call('GET', KEYS[2]) ~= ARGV[2] then return 0 end
if ARGV[3] == '' then redis.call('SET', KEYS[1], ARGV[1])
else redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3]) end
return 1"""


def _cluster_slot(name: bytes) -> int:
    """The Redis Cluster slot of a server key: CRC16 of it (or of its hash tag) mod 16384
    (``scalekit.sharding.redis_key_slot``, which a cache module does not import)."""
    start = name.find(b"{")
    if start >= 0:
        end = name.find(b"}", start + 1)
        if end > start + 1:
            name = name[start + 1 : end]
    return binascii.crc_hqx(name, 0) & 0x3FFF


def _by_slot(names: Mapping[bytes, str]) -> list[list[bytes]]:
    """The server names grouped by cluster slot, in order of first appearance."""
    groups: dict[int, list[bytes]] = {}
    for name in names:
        groups.setdefault(_cluster_slot(name), []).append(name)
    return list(groups.values())


class ClusterRedisCommands(RedisCommands[V]):
    """:class:`RedisCommands` for one node of a Redis Cluster, where a command's keys
    must share a slot: ``get_many`` sends one ``MGET`` per slot (pipelined), and a
    batch whose commands partly fail raises
    :class:`~scalekit.errors.ShardUnavailable` with what the others read (``found``)
    and each failed key's error (``failed``, the redis-py error as ``__cause__``:
    ``MOVED``, ``ASK``, ``TRYAGAIN``...). Runtime complexity: O(1) per key."""

    __slots__ = ()

    def _partly_failed(
        self, found: dict[str, Any], failed: dict[str, BaseException]
    ) -> ShardUnavailable:
        """What a batch raises when some of its commands failed."""
        self.counters.failed()
        errors: dict[str, BaseException] = {}
        for key, reply in failed.items():
            error = BackendError(f"redis failed: {type(reply).__name__}: {reply}", backend="redis")
            error.__cause__ = reply
            errors[key] = error
        unavailable = ShardUnavailable(
            f"{len(errors)} key(s) failed on this cluster node", found=found, failed=errors
        )
        unavailable.__cause__ = next(iter(failed.values()))
        return unavailable

    def get_many(self, keys: Iterable[str]) -> Call:
        names = self.codec.keys(keys)
        groups = _by_slot(names)
        if len(groups) <= 1:
            return super().get_many(names.values())

        def finish(replies: list[Any]) -> dict[str, V]:
            found: dict[str, V] = {}
            failed: dict[str, BaseException] = {}
            for group, reply in zip(groups, replies, strict=True):
                if isinstance(reply, BaseException):
                    failed.update(dict.fromkeys((names[name] for name in group), reply))
                    continue
                for name, data in zip(group, reply, strict=True):
                    if data is not None:
                        key = names[name]
                        found[key] = self.codec.loads(data, key)
            self.counters.looked_up(len(found), len(names) - len(found) - len(failed))
            if failed:
                raise self._partly_failed(found, failed)
            return found

        return Call(tuple(("MGET", *group) for group in groups), finish, partial=True)

    def get_many_with_ttl(self, keys: Iterable[str]) -> Call:
        names = self.codec.keys(keys)
        groups = _by_slot(names)
        if not groups:
            return super().get_many_with_ttl(())

        def finish(replies: list[Any]) -> dict[str, tuple[V, float | None]]:
            found: dict[str, tuple[V, float | None]] = {}
            failed: dict[str, BaseException] = {}
            position = 0
            for group in groups:
                values = replies[position]
                lefts = replies[position + 1 : position + 1 + len(group)]
                position += 1 + len(group)
                for index, name in enumerate(group):
                    key, left = names[name], lefts[index]
                    if isinstance(values, BaseException) or isinstance(left, BaseException):
                        failed[key] = values if isinstance(values, BaseException) else left
                    elif values[index] is not None and int(left) != -2:
                        found[key] = (self.codec.loads(values[index], key), _seconds_left(left))
            self.counters.looked_up(len(found), len(names) - len(found) - len(failed))
            if failed:
                raise self._partly_failed(found, failed)
            return found

        commands = tuple(
            command
            for group in groups
            for command in (("MGET", *group), *(("PTTL", name) for name in group))
        )
        return Call(commands, finish, partial=True)

    def set_many(self, items: Mapping[str, V], ttl: float | timedelta | None) -> Call:
        seconds = self.codec.ttl(ttl)
        encoded = self.codec.items(items)
        keys = [key for key, _ in encoded.values()]
        commands = tuple(self._set(name, data, seconds) for name, (_, data) in encoded.items())

        def finish(replies: list[Any]) -> None:
            failed = {
                key: reply
                for key, reply in zip(keys, replies, strict=True)
                if isinstance(reply, BaseException)
            }
            self.counters.wrote(len(commands) - len(failed))
            if failed:
                raise self._partly_failed({}, failed)

        return Call(commands, finish, partial=len(commands) > 1)


def with_asking(call: Call) -> Call:
    """``call`` with ``ASKING`` before each of its commands, as a Redis Cluster node
    importing a slot needs (``ASKING`` holds for the next command only); sent as
    one pipeline, so on one connection. Runtime complexity: O(commands)."""
    commands = tuple(part for command in call.commands for part in (("ASKING",), command))
    return Call(commands, lambda replies: call.finish(replies[1::2]), partial=call.partial)


_ASKABLE = frozenset(
    (
        "get", "get_with_ttl", "get_many", "get_many_with_ttl", "set", "add", "delete",
        "ttl_of", "set_many",
    )
)  # fmt: skip


class _RedisShell(Generic[V]):
    """What the sync and async shells share: checking and keeping the settings."""

    def __init__(
        self,
        client: Any,
        *,
        prefix: str = "",
        ttl: float | timedelta | None = None,
        serializer: Serializer[V] = JSON,
        cluster: bool = False,
    ) -> None:
        import redis

        name = type(self).__name__
        what = "a redis.asyncio.Redis" if name.startswith("Async") else "a redis.Redis"
        self._client = check_methods(client, "client", what, ("execute_command",))
        if not isinstance(cluster, bool):
            raise ArgumentTypeError(f"cluster must be a bool, got {type_name(cluster)}")
        self._counters = Counters()
        commands = ClusterRedisCommands if cluster else RedisCommands
        self._commands = commands(Codec[V](name, prefix, ttl, serializer), self._counters)
        self._errors = (redis.RedisError, OSError)
        self._response_error: type[BaseException] = redis.ResponseError

    @property
    def client(self) -> Any:
        """The redis-py client this store sends its commands with."""
        return self._client

    @property
    def cluster(self) -> bool:
        """Whether this store is one node of a Redis Cluster (batches split by slot)."""
        return isinstance(self._commands, ClusterRedisCommands)

    @property
    def atomic_set_if(self) -> bool:
        """Whether :meth:`set_if` is one atomic step here: not on a cluster node,
        where the key and its guard may live in different slots."""
        return not self.cluster

    def _set_if(
        self, key: str, value: V, guard: str, expected: Any, ttl: float | timedelta | None
    ) -> Call:
        if self.cluster:
            raise ConfigurationError(
                "set_if needs its key and guard on one server: not on a Redis Cluster node"
            )
        return self._commands.set_if(key, value, guard, expected, ttl)

    @property
    def prefix(self) -> str:
        """What is put before every key on the server."""
        return self._commands.codec.prefix.decode("utf-8", "surrogatepass")

    @property
    def ttl(self) -> float | None:
        """The TTL of items written with ``ttl=None``; ``None`` for never."""
        return self._commands.codec.default_ttl

    def stats(self) -> StoreStats:
        """A snapshot of the counters. Runtime complexity: O(1)."""
        return self._counters.snapshot()

    def check_items(self, items: Mapping[str, V], /) -> None:
        """Raise what ``set_many(items)`` would raise for a bad key or value, with
        no I/O: a :class:`~scalekit.sharding.ShardedStore` checks every shard's
        batch before it sends any. Runtime complexity: O(size of the items)."""
        self._commands.codec.items(items)

    def reset_stats(self) -> None:
        """Set every counter back to zero."""
        self._counters.reset()

    def _asking(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Call:
        """The round trip of ``method(*args, **kwargs)`` with ``ASKING`` before each command."""
        commands = self._commands
        if not isinstance(method, str):
            raise ArgumentTypeError(f"method must be an operation's name, got {type_name(method)}")
        if method not in _ASKABLE:
            raise ConfigurationError(f"method must be one of {sorted(_ASKABLE)}, got {method!r}")
        try:
            inspect.signature(getattr(RedisCache, method)).bind(self, *args, **kwargs)
        except TypeError as exc:
            raise ArgumentTypeError(f"arguments of method {method!r}: {exc}") from None
        if method in ("set", "add"):
            key, value = args
            call = getattr(commands, method)(key, value, kwargs.get("ttl"))
        elif method == "set_many":
            call = commands.set_many(args[0], kwargs.get("ttl"))
        elif method in ("get", "get_with_ttl"):
            call = getattr(commands, method)(args[0], args[1] if len(args) > 1 else None)
        else:
            call = getattr(commands, method)(*args)
        return with_asking(call)

    def _failed(self, exc: BaseException) -> BackendError:
        self._counters.failed()
        return BackendError(f"redis failed: {type(exc).__name__}: {exc}", backend="redis")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._client!r}, prefix={self.prefix!r}, ttl={self.ttl!r})"


class RedisCache(_RedisShell[V]):
    """A :class:`~scalekit.protocols.Store` on a Redis server, shared by every process
    that reads it: the cache tier in front of a database.

    ``client`` is a ``redis.Redis`` (any ``decode_responses``); ``prefix`` is put
    before every key, ``ttl`` is the TTL of items written without one (``None``:
    never expire), and values go through ``serializer`` (strict JSON by default,
    never pickle). Each call is one round trip: ``get_many`` is one ``MGET``,
    ``set_many`` one pipeline. Errors of the client are raised as
    :class:`~scalekit.errors.BackendError` with the client's error as ``__cause__``.

    ``cluster=True`` makes it the store of one master of a Redis Cluster (give
    one per master to a :class:`~scalekit.sharding.ShardedStore` over
    :meth:`SlotMap.from_cluster <scalekit.sharding.SlotMap.from_cluster>`): a
    command's keys must share a slot there, so ``get_many`` and
    ``get_many_with_ttl`` send one ``MGET`` per slot, all in one pipeline, and
    a batch whose commands partly fail (``MOVED``, ``ASK``...) raises
    :class:`~scalekit.errors.ShardUnavailable` with what the rest read in
    ``found`` and each failed key's error in ``failed``; :meth:`asking` sends an
    operation with ``ASKING`` before each of its commands. Without it the
    commands are those of a single server, unchanged.

    Runtime complexity: one round trip per call; O(len(keys)) to encode and decode.

    >>> import redis                                     # doctest: +SKIP
    >>> cache = RedisCache(redis.Redis(), prefix="users:", ttl=300)  # doctest: +SKIP
    >>> cache.set("42", {"name": "Ada"})                 # doctest: +SKIP
    >>> cache.get("42")                                  # doctest: +SKIP
    {'name': 'Ada'}
    """

    def _run(self, call: Call) -> Any:
        commands = call.commands
        try:
            if len(commands) == 1:
                replies = [self._client.execute_command(*commands[0])]
            elif commands:
                pipe = self._client.pipeline(transaction=False)
                for command in commands:
                    pipe.execute_command(*command)
                replies = pipe.execute(raise_on_error=not call.partial)
            else:
                replies = []
        except self._errors as exc:
            raise self._failed(exc) from exc
        return call.finish(replies)

    def get(self, key: str, default: V | None = None, /) -> V | None:
        """The value of ``key``, or ``default`` when it is missing or expired."""
        return self._run(self._commands.get(key, default))  # type: ignore[no-any-return]

    def start(self, method: str, /, *args: Any, **kwargs: Any) -> Any:
        """Send the commands of a batch (``get_many``, ``get_many_with_ttl`` or
        ``set_many``) on a connection of the client's pool and return at once, so
        that a :class:`~scalekit.sharding.ShardedStore` can send every shard's batch
        before it reads any reply; :meth:`finish` reads them. ``None`` when this
        batch cannot go this way (another method, a cluster batch, a client
        without a connection pool): call the method itself then.

        Runtime complexity: as the method, without waiting for the reply.
        """
        build = _SCATTERED.get(method)
        pool = getattr(self._client, "connection_pool", None)
        if build is None or pool is None or not callable(getattr(pool, "release", None)):
            return None
        call: Call = build(self._commands, *args, **kwargs)
        if call.partial or not call.commands:
            return None
        try:
            connection = _connection(pool)
        except self._errors as exc:
            raise self._failed(exc) from exc
        try:
            connection.send_packed_command(connection.pack_commands(call.commands))
        except BaseException as exc:
            connection.disconnect()
            pool.release(connection)
            if isinstance(exc, self._errors):
                raise self._failed(exc) from exc
            raise
        return (pool, connection, call)

    def finish(self, started: Any) -> Any:
        """Read the replies of what :meth:`start` sent, and return the batch's result."""
        pool, connection, call = started
        replies: list[Any] = []
        refused: BaseException | None = None
        try:
            for _ in call.commands:  # read them all: the connection goes back clean
                try:
                    replies.append(connection.read_response())
                except self._response_error as exc:
                    replies.append(exc)
                    refused = refused or exc
        except BaseException as exc:
            connection.disconnect()
            if isinstance(exc, self._errors):
                raise self._failed(exc) from exc
            raise
        finally:
            pool.release(connection)
        if refused is not None:
            raise self._failed(refused) from refused
        return call.finish(replies)

    def abort(self, started: Any) -> None:
        """Drop what :meth:`start` sent without reading it (the connection is closed)."""
        pool, connection, _ = started
        connection.disconnect()
        pool.release(connection)

    def asking(self, method: str, /, *args: Any, **kwargs: Any) -> Any:
        """``method(*args, **kwargs)`` (``"get"``, ``"set_many"``...) with ``ASKING``
        before each of its commands, in one pipeline: what a Redis Cluster client
        sends to the node importing a slot after an ``ASK`` redirection.

        Runtime complexity: as ``method``, in one round trip.
        """
        return self._run(self._asking(method, args, kwargs))

    def get_with_ttl(self, key: str, default: Any = None, /) -> tuple[Any, float | None]:
        """``(value, seconds left)`` of ``key`` in one round trip (``GET`` and
        ``PTTL`` pipelined); ``(default, None)`` when it is missing; ``None``
        seconds when it never expires. What a near cache fills itself with."""
        return self._run(self._commands.get_with_ttl(key, default))  # type: ignore[no-any-return]

    def get_many_with_ttl(self, keys: Iterable[str], /) -> dict[str, tuple[V, float | None]]:
        """``key -> (value, seconds left)`` of the present keys, in one round trip."""
        return self._run(self._commands.get_many_with_ttl(keys))  # type: ignore[no-any-return]

    def keys(self, *, count: int = 1000) -> Iterator[str]:
        """Every key of this store (under its prefix), by ``SCAN``: a key written
        or deleted meanwhile may or may not be seen, and a key may be
        listed twice (``SCAN``'s promises). Runtime complexity: O(keys
        in the database) over many round trips of ``count`` keys."""
        return self._keys(self._commands.scan(count))

    def _keys(self, scan: Callable[[Any], tuple[Any, ...]]) -> Iterator[str]:
        cursor: Any = 0
        while True:
            try:
                cursor, names = self._client.execute_command(*scan(cursor))
            except self._errors as exc:
                raise self._failed(exc) from exc
            yield from self._commands.decode_keys(names)
            if int(cursor) == 0:
                return

    def __iter__(self) -> Iterator[str]:
        return self.keys()

    def set(self, key: str, value: V, /, *, ttl: float | timedelta | None = None) -> None:
        """Store ``value`` under ``key`` for ``ttl`` seconds (``math.inf``: forever)."""
        self._run(self._commands.set(key, value, ttl))

    def add(self, key: str, value: V, /, *, ttl: float | timedelta | None = None) -> bool:
        """Store ``value`` only if ``key`` is absent (``SET NX``); return whether it did."""
        return self._run(self._commands.add(key, value, ttl))  # type: ignore[no-any-return]

    def set_if(
        self,
        key: str,
        value: V,
        /,
        *,
        guard: str,
        expected: Any,
        ttl: float | timedelta | None = None,
    ) -> bool:
        """Store ``value`` under ``key`` only if ``guard`` holds ``expected``, in one
        atomic step (a script); return whether it did. What ``cached`` stores a
        result with, its lease as the guard, so that an invalidation (which drops
        the lease) is never undone by a call in flight. Not on a cluster node.

        Runtime complexity: one round trip."""
        return self._run(self._set_if(key, value, guard, expected, ttl))  # type: ignore[no-any-return]

    def delete(self, key: str, /) -> bool:
        """Remove ``key``; return whether it was there."""
        return self._run(self._commands.delete(key))  # type: ignore[no-any-return]

    def ttl_of(self, key: str, /) -> float | None:
        """Seconds ``key`` has left (``None``: never expires); :class:`KeyError` if missing."""
        return self._run(self._commands.ttl_of(key))  # type: ignore[no-any-return]

    def get_many(self, keys: Iterable[str], /) -> dict[str, V]:
        """The present keys among ``keys`` with their values, in one ``MGET``."""
        return self._run(self._commands.get_many(keys))  # type: ignore[no-any-return]

    def set_many(self, items: Mapping[str, V], /, *, ttl: float | timedelta | None = None) -> None:
        """Store every item with the same ``ttl``, in one pipelined round trip."""
        self._run(self._commands.set_many(items, ttl))


class AsyncRedisCache(_RedisShell[V]):
    """:class:`RedisCache` over a ``redis.asyncio.Redis`` client: the same
    commands, awaited (an :class:`~scalekit.protocols.AsyncStore`)."""

    async def _run(self, call: Call) -> Any:
        commands = call.commands
        try:
            if len(commands) == 1:
                replies = [await self._client.execute_command(*commands[0])]
            elif commands:
                pipe = self._client.pipeline(transaction=False)
                for command in commands:
                    pipe.execute_command(*command)
                replies = await pipe.execute(raise_on_error=not call.partial)
            else:
                replies = []
        except self._errors as exc:
            raise self._failed(exc) from exc
        return call.finish(replies)

    async def get(self, key: str, default: V | None = None, /) -> V | None:
        """The value of ``key``, or ``default`` when it is missing or expired."""
        return await self._run(self._commands.get(key, default))  # type: ignore[no-any-return]

    async def asking(self, method: str, /, *args: Any, **kwargs: Any) -> Any:
        """``method(*args, **kwargs)`` with ``ASKING`` before each command (see
        :meth:`RedisCache.asking`)."""
        return await self._run(self._asking(method, args, kwargs))

    async def get_with_ttl(self, key: str, default: Any = None, /) -> tuple[Any, float | None]:
        """``(value, seconds left)`` in one round trip (see :meth:`RedisCache.get_with_ttl`)."""
        return await self._run(self._commands.get_with_ttl(key, default))  # type: ignore[no-any-return]

    async def get_many_with_ttl(self, keys: Iterable[str], /) -> dict[str, tuple[V, float | None]]:
        """``key -> (value, seconds left)`` of the present keys, in one round trip."""
        return await self._run(self._commands.get_many_with_ttl(keys))  # type: ignore[no-any-return]

    def keys(self, *, count: int = 1000) -> AsyncIterator[str]:
        """Every key of this store, by ``SCAN`` (see :meth:`RedisCache.keys`)."""
        return self._keys(self._commands.scan(count))

    async def _keys(self, scan: Callable[[Any], tuple[Any, ...]]) -> AsyncIterator[str]:
        cursor: Any = 0
        while True:
            try:
                cursor, names = await self._client.execute_command(*scan(cursor))
            except self._errors as exc:
                raise self._failed(exc) from exc
            for key in self._commands.decode_keys(names):
                yield key
            if int(cursor) == 0:
                return

    async def set(self, key: str, value: V, /, *, ttl: float | timedelta | None = None) -> None:
        """Store ``value`` under ``key`` for ``ttl`` seconds (``math.inf``: forever)."""
        await self._run(self._commands.set(key, value, ttl))

    async def add(self, key: str, value: V, /, *, ttl: float | timedelta | None = None) -> bool:
        """Store ``value`` only if ``key`` is absent (``SET NX``); return whether it did."""
        return await self._run(self._commands.add(key, value, ttl))  # type: ignore[no-any-return]

    async def set_if(
        self,
        key: str,
        value: V,
        /,
        *,
        guard: str,
        expected: Any,
        ttl: float | timedelta | None = None,
    ) -> bool:
        """:meth:`RedisCache.set_if`."""
        return await self._run(self._set_if(key, value, guard, expected, ttl))  # type: ignore[no-any-return]

    async def delete(self, key: str, /) -> bool:
        """Remove ``key``; return whether it was there."""
        return await self._run(self._commands.delete(key))  # type: ignore[no-any-return]

    async def ttl_of(self, key: str, /) -> float | None:
        """Seconds ``key`` has left (``None``: never expires); :class:`KeyError` if missing."""
        return await self._run(self._commands.ttl_of(key))  # type: ignore[no-any-return]

    async def get_many(self, keys: Iterable[str], /) -> dict[str, V]:
        """The present keys among ``keys`` with their values, in one ``MGET``."""
        return await self._run(self._commands.get_many(keys))  # type: ignore[no-any-return]

    async def set_many(
        self, items: Mapping[str, V], /, *, ttl: float | timedelta | None = None
    ) -> None:
        """Store every item with the same ``ttl``, in one pipelined round trip."""
        await self._run(self._commands.set_many(items, ttl))


_SCATTERED: dict[str, Callable[..., Call]] = {
    "get_many": lambda commands, keys: commands.get_many(keys),
    "get_many_with_ttl": lambda commands, keys: commands.get_many_with_ttl(keys),
    "set_many": lambda commands, items, ttl=None: commands.set_many(items, ttl),
}
"""The batches :meth:`RedisCache.start` sends without waiting for the reply."""
