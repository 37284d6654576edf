"""The Redis session stores: sessions shared by every web server that reaches one Redis.

One string key per session, ``prefix + session_id``, holding a packed record::

    offset  size  field
    0       4     b"SKS2": this format (a value without it is not ours)
    4       8     version, unsigned big-endian
    12      8     created_at, big-endian IEEE double (seconds, the store's clock)
    20      8     accessed_at, big-endian IEEE double
    28      32    the ids of the last 4 writes (8 bytes each, newest first)
    60      ...   the serialized data (JSON)

Records of the first release (``b"SKS1"``: no write ids, the data at offset 28)
still load, and their next save writes ``SKS2``.

Each key has a native TTL (``PX``) of ``expires - now`` milliseconds, at least 1,
where ``expires`` is the idle or absolute expiry, whichever comes first; a store
with neither timeout sets no TTL. Redis deletes a session when its TTL runs out,
so there is nothing to purge: ``purge_expired()`` returns 0 without a round trip.

Time: expiry decisions use the store's clock, like every store: ``created_at``
and ``accessed_at`` are stored, and a session expired by the clock loads as None
even while its key still lives in Redis (the TTL only lets Redis reclaim the
memory, and is refreshed with the expiry by every save and touch).

Every operation is one round trip, and atomic: a single command where one is
enough (``GET`` to load, ``SET ... NX PX`` to insert, ``DEL`` to delete), else a
Lua script (compare-and-set replace, touch, rotate), kept in
``scalekit/_resources/lua/sessions_*.lua`` and run by ``EVALSHA`` through
:func:`scalekit._lua.register_scripts`. A request that loads then saves (or,
unchanged, touches) its session costs 2 round trips. Only a save that lost a race
adds more: one read and one compare-and-set per merge.

Retries. redis-py sends a command again when the connection drops before the
reply came (``retry=`` of the client; 10 retries by default in redis-py 8), so a
script may run twice. Every write is idempotent: it carries an 8-byte op id, which
the record keeps in its ring of the last 4 writes; a second run of a save or a
rotation finds its id there and answers 1, as the first run did, without storing
again; an insert whose ``SET NX`` finds the key holding its own id is a success;
a touch never moves ``accessed_at`` back; ``DEL`` is idempotent.

Redis Cluster: every operation but ``rotate`` touches one key. ``rotate``'s
script touches the old and the new key, which lie in different slots, so on a
cluster it fails (``CROSSSLOT``, raised as :class:`~scalekit.errors.BackendError`)
unless the prefix holds a hash tag, ``prefix="{scalekit:session}:"``: every
session then lives in one slot, so on one primary (and its replicas) -- enough
for most session tiers, but not spread over the cluster.

Needs Redis 2.6.12 or later (``SET ... NX PX``, Lua); tested on 7.0.
"""

from __future__ import annotations

import inspect
import math
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

from scalekit._lua import register_scripts
from scalekit._validate import check_str
from scalekit.errors import BackendError, ConfigurationError, SessionCorrupted
from scalekit.sessions._core import Settings
from scalekit.sessions._session import Record
from scalekit.sessions._store import AsyncSessionStoreBase, SessionStoreBase

if TYPE_CHECKING:
    import redis
    import redis.asyncio

__all__ = ["AsyncRedisSessionStore", "RedisSessionStore"]

MAGIC = b"SKS2"
"""The first bytes of every record this module writes."""

LEGACY_MAGIC = b"SKS1"
"""The first bytes of a record of the first release (no ring of write ids)."""

_HEAD = struct.Struct(">4sQdd8s24x")  # magic, version, created_at, accessed_at, op, ring
_LEGACY_HEAD = struct.Struct(">4sQdd")
_VERSION = struct.Struct(">Q")  # what a compare-and-set checks
_DOUBLE = struct.Struct(">d")
_NO_OP = bytes(8)
_MAX_MS = 10**15  # ~31,700 years: longer TTLs are stored as this


def ttl_ms(expires: float, now: float) -> int:
    """The TTL to give a key that expires at ``expires``: whole milliseconds from
    ``now``, rounded up, at least 1 (a session already expired by the clock still
    gets a key, which loads as None and goes within 1 ms); 0 for no expiry.

    >>> ttl_ms(100.0, 99.25), ttl_ms(100.0, 100.0), ttl_ms(float("inf"), 0.0)
    (750, 1, 0)
    """
    if expires == math.inf:
        return 0
    return max(1, min(_MAX_MS, math.ceil((expires - now) * 1000)))


def pack(record: Record, op: bytes = _NO_OP) -> bytes:
    """The stored form of ``record``, written by ``op``: a 60-byte header, then the
    data.

    >>> pack(Record(b"{}", 1, 0.0, 0.0))[:4], len(pack(Record(b"{}", 1, 0.0, 0.0)))
    (b'SKS2', 62)
    """
    return (
        _HEAD.pack(MAGIC, record.version, record.created_at, record.accessed_at, op) + record.data
    )


def unpack(raw: bytes) -> Record:
    """The record stored as ``raw``; :class:`SessionCorrupted` if this module did
    not write it (nothing after the header is looked at: the data is decoded, as
    JSON only, by the store). Reads records of the first release (SKS1) too.

    >>> unpack(pack(Record(b"{}", 3, 1.5, 2.5)))
    Record(data=b'{}', version=3, created_at=1.5, accessed_at=2.5)
    """
    magic = raw[:4]
    if magic == MAGIC and len(raw) >= _HEAD.size:
        _, version, created_at, accessed_at, _ = _HEAD.unpack_from(raw)
        return Record(raw[_HEAD.size :], version, created_at, accessed_at)
    if magic == LEGACY_MAGIC and len(raw) >= _LEGACY_HEAD.size:
        _, version, created_at, accessed_at = _LEGACY_HEAD.unpack_from(raw)
        return Record(raw[_LEGACY_HEAD.size :], version, created_at, accessed_at)
    raise SessionCorrupted("a stored session is not a scalekit record (no SKS2 header)")


def _ops(raw: bytes | None) -> tuple[bytes, ...]:
    """The ids of the last writes of a stored record (none for another value)."""
    if raw is None or raw[:4] != MAGIC or len(raw) < _HEAD.size:
        return ()
    return tuple(raw[offset : offset + 8] for offset in range(28, 60, 8))


_SCRIPT_NAMES = ("sessions_replace", "sessions_rotate", "sessions_touch", "sessions_touch_live")


class _Core:
    """What the sync and async stores share, free of I/O: checks, keys, script
    arguments and error translation."""

    __slots__ = ("_absolute", "_idle", "_prefix", "_settings", "errors", "noscript", "wrongtype")

    def __init__(self, client: Any, prefix: str, settings: Settings, *, asynchronous: bool) -> None:
        import redis as redis_module

        check_str(prefix, "prefix", allow_empty=True)
        try:
            self._prefix = prefix.encode()
        except UnicodeEncodeError:
            raise ConfigurationError(f"prefix must be valid text, got {prefix!r}") from None
        get_encoder = getattr(client, "get_encoder", None)
        execute_command = getattr(client, "execute_command", None)
        if get_encoder is None or execute_command is None:
            raise ConfigurationError(f"client is a redis-py client, got {type(client).__name__}")
        if get_encoder().decode_responses:
            raise ConfigurationError(
                "the redis client must be made with decode_responses=False: records are bytes"
            )
        if inspect.iscoroutinefunction(execute_command) != asynchronous:
            wanted = "redis.asyncio.Redis" if asynchronous else "redis.Redis"
            other = "RedisSessionStore" if asynchronous else "AsyncRedisSessionStore"
            raise ConfigurationError(f"the client must be a {wanted} (or use {other})")
        self._settings = settings
        self.errors: tuple[type[Exception], ...] = (redis_module.RedisError,)
        self.wrongtype: type[Exception] = redis_module.ResponseError
        self.noscript: type[Exception] = redis_module.exceptions.NoScriptError
        idle, absolute = settings.idle_timeout, settings.absolute_timeout
        self._idle = b"" if idle is None else repr(float(idle)).encode()
        self._absolute = b"" if absolute is None else repr(float(absolute)).encode()

    def key(self, session_id: str) -> bytes:
        return self._prefix + session_id.encode()

    @staticmethod
    def op(op: bytes) -> bytes:
        """``op``, checked: the ring of write ids holds 8 bytes per id."""
        if type(op) is not bytes or len(op) != 8:
            raise ConfigurationError(f"op must be 8 bytes, got {op!r}")
        return op

    def ttl(self, expires: float) -> int:
        return ttl_ms(expires, self._settings.clock())

    def insert(
        self, session_id: str, record: Record, expires: float, op: bytes
    ) -> tuple[bytes, bytes, int]:
        """Key, value and TTL (0: none) of a ``SET ... NX [PX]``."""
        return self.key(session_id), pack(record, self.op(op)), self.ttl(expires)

    def replace(
        self, session_id: str, record: Record, expires: float, expected: int, op: bytes
    ) -> list[Any]:
        """KEYS and ARGV of sessions_replace.lua."""
        if type(op) is not bytes or len(op) != 8:
            self.op(op)
        return [
            self._prefix + session_id.encode(),
            _VERSION.pack(expected),
            _HEAD.pack(MAGIC, record.version, record.created_at, record.accessed_at, op)
            + record.data,
            ttl_ms(expires, self._settings.clock()),
            op,
        ]

    def rotate(
        self, old_id: str, new_id: str, record: Record, expires: float, expected: int, op: bytes
    ) -> list[Any]:
        """KEYS and ARGV of sessions_rotate.lua."""
        op = self.op(op)
        return [
            self.key(old_id),
            self.key(new_id),
            _VERSION.pack(expected),
            pack(record, op),
            self.ttl(expires),
            op,
        ]

    def touch(self, session_id: str, accessed_at: float, expires: float) -> list[Any]:
        """KEYS and ARGV of sessions_touch.lua."""
        return [self.key(session_id), _DOUBLE.pack(accessed_at), self.ttl(expires)]

    def touch_live(self, session_id: str, now: float) -> list[Any]:
        """KEYS and ARGV of sessions_touch_live.lua."""
        return [self.key(session_id), _DOUBLE.pack(now), self._idle, self._absolute]

    @staticmethod
    def touched(reply: Any) -> bool:
        if reply == -1:
            raise SessionCorrupted("a stored session is not a scalekit record (no SKS2 header)")
        return bool(reply)

    def fail(self, what: str, session_id: str, exc: Exception) -> NoReturn:
        """Raise ``exc``, a redis-py error, as a scalekit error. The id is cut short:
        a whole one is a credential, and must not reach logs."""
        if isinstance(exc, self.wrongtype) and str(exc).startswith("WRONGTYPE"):
            raise SessionCorrupted(
                f"session {session_id[:8]}...: the key holds another Redis type ({exc})"
            ) from exc
        raise BackendError(
            f"redis: {what} of session {session_id[:8]}... failed: {type(exc).__name__}: {exc}",
            backend="redis",
        ) from exc


class RedisSessionStore(SessionStoreBase):
    """Sessions in Redis, shared by every web server that reaches it: the store of
    a stateless web tier. A request that loads then saves (or touches) its session
    costs 2 round trips; Redis deletes expired sessions itself.

    ``client`` is a ``redis.Redis`` made with ``decode_responses=False`` (the
    default); the store never closes it. ``prefix`` starts every key. The other
    settings are :class:`~scalekit.sessions.SessionStoreBase`'s (``idle_timeout``,
    ``absolute_timeout``, ``max_bytes``, ``policies``, ``serializer``, ``clock``).
    See the module docstring for the key layout, retries and Redis Cluster. A
    redis-py error is raised as :class:`~scalekit.errors.BackendError`, with the
    cause chained.

    Runtime complexity: every operation one round trip, O(1) in Redis, plus the
    (de)serialization of one session; ``purge_expired`` none (Redis expires keys).
    Round trips: ``load`` 1 (``GET``); ``save`` 1 (``EVALSHA``), plus 2 for each
    merge after a lost race; an unchanged ``save`` and ``touch`` 1; ``create`` 1
    (``SET NX PX``); ``rotate`` 1; ``delete`` 1 (``DEL``). Thread-safe, as the client is.

    Example (needs a Redis server)::

        import redis
        from scalekit.sessions import RedisSessionStore

        store = RedisSessionStore(redis.Redis(), idle_timeout=1800)
        session = store.create({"user": 42})
        again = store.load(session.id)
        again["cart"] = ["book"]
        store.save(again)
    """

    _native_touch = True

    def __init__(
        self, client: redis.Redis, *, prefix: str = "scalekit:session:", **settings: Any
    ) -> None:
        super().__init__(**settings)
        self._core = _Core(client, prefix, self.settings, asynchronous=False)
        self.client = client
        self.prefix = prefix
        self._scripts = register_scripts(client, _SCRIPT_NAMES)
        self._execute: Callable[..., Any] = client.execute_command

    def _script(self, name: str, what: str, session_id: str, nkeys: int, args: list[Any]) -> Any:
        script = self._scripts[name]
        try:
            try:  # the common case in one call: the script is loaded
                return self._execute("EVALSHA", script.sha, nkeys, *args)
            except self._core.noscript:  # the Script loads it and runs it again
                return script(keys=args[:nkeys], args=args[nkeys:])
        except self._core.errors as exc:
            self._core.fail(what, session_id, exc)

    def _read(self, session_id: str) -> Record | None:
        """Cost: one ``GET``."""
        core = self._core
        try:
            raw = self.client.get(core._prefix + session_id.encode())
        except core.errors as exc:
            core.fail("load", session_id, exc)
        return None if raw is None else unpack(raw)  # type: ignore[arg-type]

    def _insert(self, session_id: str, record: Record, expires: float, op: bytes) -> bool:
        """Cost: one ``SET ... NX PX``; one ``GET`` more if the id is taken (by this
        op's first run, when the client sent it twice: then True)."""
        key, value, ttl = self._core.insert(session_id, record, expires, op)
        try:
            if self.client.set(key, value, nx=True, px=ttl or None):
                return True
            return op in _ops(self.client.get(key))  # type: ignore[arg-type]
        except self._core.errors as exc:
            self._core.fail("create", session_id, exc)

    def _replace(
        self, session_id: str, record: Record, expires: float, expected: int, op: bytes
    ) -> bool:
        """Cost: one script call (compare-and-set), O(1) in Redis."""
        args = self._core.replace(session_id, record, expires, expected, op)
        return bool(self._script("sessions_replace", "save", session_id, 1, args))

    def _touch(self, session_id: str, accessed_at: float, expires: float) -> bool:
        """Cost: one script call, O(1) in Redis; the data is not rewritten."""
        args = self._core.touch(session_id, accessed_at, expires)
        return bool(self._script("sessions_touch", "touch", session_id, 1, args))

    def _touch_live(self, session_id: str, now: float) -> bool:
        """Touch a session live at ``now``: one script call, which decides from the
        stored timestamps (a read then a write would take two round trips)."""
        args = self._core.touch_live(session_id, now)
        return self._core.touched(self._script("sessions_touch_live", "touch", session_id, 1, args))

    def _delete(self, session_id: str) -> None:
        """Cost: one ``DEL``."""
        try:
            self.client.delete(self._core.key(session_id))
        except self._core.errors as exc:
            self._core.fail("delete", session_id, exc)

    def _rotate(
        self, old_id: str, new_id: str, record: Record, expires: float, expected: int, op: bytes
    ) -> bool:
        """Cost: one script call on both keys, O(1) in Redis."""
        args = self._core.rotate(old_id, new_id, record, expires, expected, op)
        return bool(self._script("sessions_rotate", "rotate", old_id, 2, args))

    def _purge(self, now: float) -> int:
        """Nothing to do: Redis deletes each session when its TTL runs out.
        Cost: none (no round trip)."""
        return 0


class AsyncRedisSessionStore(AsyncSessionStoreBase):
    """:class:`RedisSessionStore` for asyncio, over a ``redis.asyncio.Redis``: the
    same keys, scripts and costs, awaited.

    Runtime complexity: every operation one round trip, O(1) in Redis, plus the
    (de)serialization of one session; ``purge_expired`` none (Redis expires keys).

    Example (needs a Redis server)::

        import redis.asyncio
        from scalekit.sessions import AsyncRedisSessionStore

        store = AsyncRedisSessionStore(redis.asyncio.Redis())
        session = await store.create({"user": 42})
    """

    _native_touch = True

    def __init__(
        self, client: redis.asyncio.Redis, *, prefix: str = "scalekit:session:", **settings: Any
    ) -> None:
        super().__init__(**settings)
        self._core = _Core(client, prefix, self.settings, asynchronous=True)
        self.client = client
        self.prefix = prefix
        self._scripts = register_scripts(client, _SCRIPT_NAMES)
        self._execute: Callable[..., Any] = client.execute_command

    async def _script(
        self, name: str, what: str, session_id: str, nkeys: int, args: list[Any]
    ) -> Any:
        script = self._scripts[name]
        try:
            try:
                return await self._execute("EVALSHA", script.sha, nkeys, *args)
            except self._core.noscript:
                return await script(keys=args[:nkeys], args=args[nkeys:])
        except self._core.errors as exc:
            self._core.fail(what, session_id, exc)

    async def _read(self, session_id: str) -> Record | None:
        """Cost: one ``GET``."""
        try:
            raw = await self.client.get(self._core.key(session_id))
        except self._core.errors as exc:
            self._core.fail("load", session_id, exc)
        return None if raw is None else unpack(raw)  # type: ignore[arg-type]

    async def _insert(self, session_id: str, record: Record, expires: float, op: bytes) -> bool:
        """:meth:`RedisSessionStore._insert`."""
        key, value, ttl = self._core.insert(session_id, record, expires, op)
        try:
            if await self.client.set(key, value, nx=True, px=ttl or None):
                return True
            return op in _ops(await self.client.get(key))  # type: ignore[arg-type]
        except self._core.errors as exc:
            self._core.fail("create", session_id, exc)

    async def _replace(
        self, session_id: str, record: Record, expires: float, expected: int, op: bytes
    ) -> bool:
        """Cost: one script call (compare-and-set), O(1) in Redis."""
        args = self._core.replace(session_id, record, expires, expected, op)
        return bool(await self._script("sessions_replace", "save", session_id, 1, args))

    async def _touch(self, session_id: str, accessed_at: float, expires: float) -> bool:
        """Cost: one script call, O(1) in Redis; the data is not rewritten."""
        args = self._core.touch(session_id, accessed_at, expires)
        return bool(await self._script("sessions_touch", "touch", session_id, 1, args))

    async def _touch_live(self, session_id: str, now: float) -> bool:
        """:meth:`RedisSessionStore._touch_live`."""
        args = self._core.touch_live(session_id, now)
        reply = await self._script("sessions_touch_live", "touch", session_id, 1, args)
        return self._core.touched(reply)

    async def _delete(self, session_id: str) -> None:
        """Cost: one ``DEL``."""
        try:
            await self.client.delete(self._core.key(session_id))
        except self._core.errors as exc:
            self._core.fail("delete", session_id, exc)

    async def _rotate(
        self, old_id: str, new_id: str, record: Record, expires: float, expected: int, op: bytes
    ) -> bool:
        """Cost: one script call on both keys, O(1) in Redis."""
        args = self._core.rotate(old_id, new_id, record, expires, expected, op)
        return bool(await self._script("sessions_rotate", "rotate", old_id, 2, args))

    async def _purge(self, now: float) -> int:
        """Nothing to do: Redis deletes each session when its TTL runs out.
        Cost: none (no round trip)."""
        return 0
