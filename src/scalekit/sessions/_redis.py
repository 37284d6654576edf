"""The Redis session stores: sessions shared by every web server that reaches one Redis.

One string key per session, ``prefix + session_id``, holding a packed record::

    offset  size  field
    0       4     b"SKS1": this format (a value without it is not ours)
    4       8     version, unsigned big-endian
    12      8     created_at, big-endian IEEE double (seconds, the store's clock)
    20      8     accessed_at, big-endian IEEE double
    28      ...   the serialized data (JSON)

and a native TTL (``PX``) of ``expires - now`` milliseconds, at least 1, where
``expires`` is the idle or absolute expiry, whichever comes first; a store with
neither timeout sets no TTL. Redis deletes a session when its TTL runs out, so
there is nothing to purge: ``purge_expired()`` returns 0 without a round trip.

Time: expiry decisions use the store's clock, like every store: ``created_at``
and ``accessed_at`` are stored, and a session expired by the clock loads as None
even while its key still lives in Redis (the TTL only lets Redis reclaim the
memory, and is refreshed with the expiry by every save and touch).

Every operation is one round trip, and atomic: a single command where one is
enough (``GET`` to load, ``SET ... NX PX`` to insert, ``DEL`` to delete), else a
Lua script run by ``EVALSHA`` (compare-and-set replace, touch, rotate); see the
scripts below. A request that loads then saves (or, unchanged, touches) its
session costs 2 round trips: ``touch`` is one script that checks the expiry
from the stored timestamps, instead of the base class's read then write. Only a
save that lost a race adds more: one read and one compare-and-set per merge.

Redis Cluster: every operation but ``rotate`` touches one key. ``rotate``'s
script touches the old and the new key, which lie in different slots, so on a
cluster it fails (``CROSSSLOT``, raised as :class:`~scalekit.errors.BackendError`)
unless the prefix holds a hash tag, ``prefix="{scalekit:session}:"``: every
session then lives in one slot, so on one primary (and its replicas) -- enough
for most session tiers, but not spread over the cluster.

Needs Redis 2.6.12 or later (``SET ... NX PX``, Lua); tested on 7.0.
"""

from __future__ import annotations

import hashlib
import inspect
import math
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

from scalekit.errors import BackendError, ConfigurationError, SessionCorrupted
from scalekit.sessions._session import Record, valid_id
from scalekit.sessions._store import AsyncSessionStoreBase, SessionStoreBase, _Settings

if TYPE_CHECKING:
    import redis
    import redis.asyncio

__all__ = ["AsyncRedisSessionStore", "RedisSessionStore"]

MAGIC = b"SKS1"
"""The first bytes of every record this module writes."""

_HEAD = struct.Struct(">4sQdd")  # magic, version, created_at, accessed_at
_VERSION = struct.Struct(">4sQ")  # the record's first 12 bytes: what a compare-and-set checks
_DOUBLE = struct.Struct(">d")
_MAX_MS = 10**15  # ~31,700 years: longer TTLs are stored as this

# KEYS[1] the session; ARGV[1] the expected magic + version (12 bytes), ARGV[2] the
# new record, ARGV[3] its TTL in ms ("0": none). 1 if stored, 0 if the version differs.
_REPLACE = """
if redis.call('GETRANGE', KEYS[1], 0, 11) ~= ARGV[1] then return 0 end
if ARGV[3] == '0' then redis.call('SET', KEYS[1], ARGV[2])
else redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end
return 1
"""

# KEYS[1] the old id, KEYS[2] the new id; ARGV as for _REPLACE. 0 if the old
# version differs or the new id is taken.
_ROTATE = """
if redis.call('GETRANGE', KEYS[1], 0, 11) ~= ARGV[1]
    or redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('DEL', KEYS[1])
if ARGV[3] == '0' then redis.call('SET', KEYS[2], ARGV[2])
else redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3]) end
return 1
"""

# KEYS[1] the session; ARGV[1] accessed_at (8-byte double), ARGV[2] TTL in ms ("0":
# none). Sets accessed_at in place (the data is not rewritten). 1, or 0 if gone.
_TOUCH = """
if redis.call('GETRANGE', KEYS[1], 0, 3) ~= 'SKS1' then return 0 end
redis.call('SETRANGE', KEYS[1], 20, ARGV[1])
if ARGV[2] == '0' then redis.call('PERSIST', KEYS[1])
else redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 1
"""

# The public touch in one round trip. KEYS[1] the session; ARGV[1] now (8-byte
# double), ARGV[2] idle_timeout, ARGV[3] absolute_timeout ("": none). Computes the
# expiry from the stored timestamps as expires_at() does, with the same double
# arithmetic. 1 if touched; 0 if gone or expired (then nothing changes); -1 if the
# value is not ours.
_TOUCH_LIVE = """
local head = redis.call('GETRANGE', KEYS[1], 0, 27)
if head == '' and redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if #head < 28 or string.sub(head, 1, 4) ~= 'SKS1' then return -1 end
local created = struct.unpack('>d', head, 13)
local accessed = struct.unpack('>d', head, 21)
local now = struct.unpack('>d', ARGV[1])
local idle, absolute = tonumber(ARGV[2]), tonumber(ARGV[3])
local limit = math.huge
if absolute then limit = created + absolute end
local expires = limit
if idle then expires = math.min(accessed + idle, limit) end
if expires <= now then return 0 end
if idle then expires = math.min(now + idle, limit) end
redis.call('SETRANGE', KEYS[1], 20, ARGV[1])
if expires == math.huge then redis.call('PERSIST', KEYS[1]) return 1 end
local ms = math.ceil((expires - now) * 1000)
if ms < 1 then ms = 1 elseif ms > 1e15 then ms = 1e15 end
redis.call('PEXPIRE', KEYS[1], string.format('%d', ms))
return 1
"""


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


def pack(record: Record) -> bytes:
    """The stored form of ``record``: a 28-byte header, then the data.

    >>> pack(Record(b"{}", 1, 0.0, 0.0))[:4], len(pack(Record(b"{}", 1, 0.0, 0.0)))
    (b'SKS1', 30)
    """
    return _HEAD.pack(MAGIC, record.version, record.created_at, record.accessed_at) + record.data


def unpack(raw: bytes) -> Record:
    """The record stored as ``raw``; :class:`SessionCorrupted` if this module did
    not write it (nothing after the header is looked at: the data is decoded, as
    JSON only, by the store).

    >>> unpack(pack(Record(b"{}", 3, 1.5, 2.5)))
    Record(data=b'{}', version=3, created_at=1.5, accessed_at=2.5)
    """
    if len(raw) < _HEAD.size or raw[:4] != MAGIC:
        raise SessionCorrupted("a stored session is not a scalekit record (no SKS1 header)")
    _, version, created_at, accessed_at = _HEAD.unpack_from(raw)
    return Record(raw[_HEAD.size :], version, created_at, accessed_at)


class _Script:
    """A Lua script, run by ``EVALSHA``: loaded (``SCRIPT LOAD``) the first time the
    server answers NOSCRIPT, then run by its digest, so a call sends only the
    digest and the arguments."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()


_SCRIPTS = {
    "replace": _Script(_REPLACE),
    "rotate": _Script(_ROTATE),
    "touch": _Script(_TOUCH),
    "touch_live": _Script(_TOUCH_LIVE),
}


class _Core:
    """What the sync and async stores share, free of I/O: checks, keys, script
    arguments and error translation."""

    __slots__ = ("_absolute", "_idle", "_prefix", "_settings", "errors", "noscript", "wrongtype")

    def __init__(
        self, client: Any, prefix: str, settings: _Settings, *, asynchronous: bool
    ) -> None:
        import redis as redis_module

        if not isinstance(prefix, str):
            raise ConfigurationError(f"prefix is a str, got {prefix!r}")
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
        self._prefix = prefix.encode()
        self._settings = settings
        self.errors: tuple[type[Exception], ...] = (redis_module.RedisError,)
        self.noscript: type[Exception] = redis_module.exceptions.NoScriptError
        self.wrongtype: type[Exception] = redis_module.ResponseError
        idle, absolute = settings.idle_timeout, settings.absolute_timeout
        self._idle = b"" if idle is None else repr(float(idle)).encode()
        self._absolute = b"" if absolute is None else repr(float(absolute)).encode()

    def key(self, session_id: str) -> bytes:
        return self._prefix + session_id.encode()

    def ttl(self, expires: float) -> int:
        return ttl_ms(expires, self._settings.clock())

    def insert(self, session_id: str, record: Record, expires: float) -> tuple[bytes, bytes, int]:
        """Key, value and TTL (0: none) of a ``SET ... NX [PX]``."""
        return self.key(session_id), pack(record), self.ttl(expires)

    def replace(
        self, session_id: str, record: Record, expires: float, expected: int
    ) -> tuple[bytes, bytes, bytes, int]:
        """KEYS and ARGV of the replace script."""
        head = _VERSION.pack(MAGIC, expected)
        return self.key(session_id), head, pack(record), self.ttl(expires)

    def rotate(
        self, old_id: str, new_id: str, record: Record, expires: float, expected: int
    ) -> tuple[bytes, bytes, bytes, bytes, int]:
        """KEYS and ARGV of the rotate script."""
        head = _VERSION.pack(MAGIC, expected)
        return self.key(old_id), self.key(new_id), head, pack(record), self.ttl(expires)

    def touch(
        self, session_id: str, accessed_at: float, expires: float
    ) -> tuple[bytes, bytes, int]:
        """KEYS and ARGV of the touch script."""
        return self.key(session_id), _DOUBLE.pack(accessed_at), self.ttl(expires)

    def touch_live(self, session_id: str) -> tuple[bytes, bytes, bytes, bytes]:
        """KEYS and ARGV of the script behind the public ``touch``."""
        now = _DOUBLE.pack(self._settings.clock())
        return self.key(session_id), now, self._idle, self._absolute

    @staticmethod
    def touched(reply: Any) -> bool:
        if reply == -1:
            raise SessionCorrupted("a stored session is not a scalekit record (no SKS1 header)")
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
    ``absolute_timeout``, ``max_bytes``, ``serializer``, ``clock``). See the module
    docstring for the key layout and Redis Cluster. A redis-py error is raised as
    :class:`~scalekit.errors.BackendError`, with the cause chained.

    Runtime complexity: every operation one round trip, O(1) in Redis, plus the
    (de)serialization of one session; ``purge_expired`` none (Redis expires keys).
    Round trips: ``load`` 1 (``GET``); ``save`` 1 (``EVALSHA``), plus 2 for each
    merge after a lost race; an unchanged ``save`` and ``touch`` 1; ``create`` 1
    (``SET NX PX``); ``rotate`` 1; ``delete`` 1 (``DEL``). Thread-safe, as the client is.

    Example (needs a Redis server)::

        import redis
        from scalekit.sessions._redis import RedisSessionStore

        store = RedisSessionStore(redis.Redis(), idle_timeout=1800)
        session = store.create({"user": 42})
        again = store.load(session.id)
        again["cart"] = ["book"]
        store.save(again)
    """

    def __init__(
        self, client: redis.Redis, *, prefix: str = "scalekit:session:", **settings: Any
    ) -> None:
        super().__init__(**settings)
        self._core = _Core(client, prefix, self.settings, asynchronous=False)
        self.client = client
        self.prefix = prefix
        self._execute: Callable[..., Any] = client.execute_command

    def _eval(self, script: _Script, what: str, session_id: str, nkeys: int, *args: Any) -> Any:
        try:
            try:
                return self._execute("EVALSHA", script.sha, nkeys, *args)
            except self._core.noscript:
                self.client.script_load(script.source)
                return self._execute("EVALSHA", script.sha, nkeys, *args)
        except self._core.errors as exc:
            self._core.fail(what, session_id, exc)

    def _read(self, session_id: str) -> Record | None:
        """Cost: one ``GET``."""
        try:
            raw = self.client.get(self._core.key(session_id))
        except self._core.errors as exc:
            self._core.fail("load", session_id, exc)
        return None if raw is None else unpack(raw)  # type: ignore[arg-type]

    def _insert(self, session_id: str, record: Record, expires: float) -> bool:
        """Cost: one ``SET ... NX PX``."""
        key, value, ttl = self._core.insert(session_id, record, expires)
        try:
            if ttl:
                return bool(self.client.set(key, value, nx=True, px=ttl))
            return bool(self.client.set(key, value, nx=True))
        except self._core.errors as exc:
            self._core.fail("create", session_id, exc)

    def _replace(self, session_id: str, record: Record, expires: float, expected: int) -> bool:
        """Cost: one script call (compare-and-set), O(1) in Redis."""
        args = self._core.replace(session_id, record, expires, expected)
        return bool(self._eval(_SCRIPTS["replace"], "save", session_id, 1, *args))

    def _touch(self, session_id: str, accessed_at: float, expires: float) -> bool:
        """Cost: one script call, O(1) in Redis; the data is not rewritten."""
        args = self._core.touch(session_id, accessed_at, expires)
        return bool(self._eval(_SCRIPTS["touch"], "touch", session_id, 1, *args))

    def _delete(self, session_id: str) -> None:
        """Cost: one ``DEL``."""
        try:
            self.client.delete(self._core.key(session_id))
        except self._core.errors as exc:
            self._core.fail("delete", session_id, exc)

    def _rotate(
        self, old_id: str, new_id: str, record: Record, expires: float, expected: int
    ) -> bool:
        """Cost: one script call on both keys, O(1) in Redis."""
        args = self._core.rotate(old_id, new_id, record, expires, expected)
        return bool(self._eval(_SCRIPTS["rotate"], "rotate", old_id, 2, *args))

    def _purge(self, now: float) -> int:
        """Nothing to do: Redis deletes each session when its TTL runs out.
        Cost: none (no round trip)."""
        return 0

    def touch(self, session_id: str) -> bool:
        """Extend the idle expiry without rewriting the data; False if the session
        is unknown or expired by the store's clock (then nothing changes).

        Cost: one script call, which decides from the stored timestamps (the base
        class reads, then writes: two round trips).
        """
        if not valid_id(session_id):
            return False
        args = self._core.touch_live(session_id)
        return self._core.touched(self._eval(_SCRIPTS["touch_live"], "touch", session_id, 1, *args))


class AsyncRedisSessionStore(AsyncSessionStoreBase):
    """:class:`RedisSessionStore` for asyncio, over a ``redis.asyncio.Redis``: the
    same keys, scripts and costs, awaited.

    Runtime complexity: every operation one round trip, O(1) in Redis, plus the
    (de)serialization of one session; ``purge_expired`` none (Redis expires keys).

    Example (needs a Redis server)::

        import redis.asyncio
        from scalekit.sessions._redis import AsyncRedisSessionStore

        store = AsyncRedisSessionStore(redis.asyncio.Redis())
        session = await store.create({"user": 42})
    """

    def __init__(
        self, client: redis.asyncio.Redis, *, prefix: str = "scalekit:session:", **settings: Any
    ) -> None:
        super().__init__(**settings)
        self._core = _Core(client, prefix, self.settings, asynchronous=True)
        self.client = client
        self.prefix = prefix
        self._execute: Callable[..., Any] = client.execute_command

    async def _eval(
        self, script: _Script, what: str, session_id: str, nkeys: int, *args: Any
    ) -> Any:
        try:
            try:
                return await self._execute("EVALSHA", script.sha, nkeys, *args)
            except self._core.noscript:
                await self.client.script_load(script.source)
                return await self._execute("EVALSHA", script.sha, nkeys, *args)
        except self._core.errors as exc:
            self._core.fail(what, session_id, exc)

    async def _read(self, session_id: str) -> Record | None:
        """Cost: one ``GET``."""
        try:
            raw = await self.client.get(self._core.key(session_id))
        except self._core.errors as exc:
            self._core.fail("load", session_id, exc)
        return None if raw is None else unpack(raw)  # type: ignore[arg-type]

    async def _insert(self, session_id: str, record: Record, expires: float) -> bool:
        """Cost: one ``SET ... NX PX``."""
        key, value, ttl = self._core.insert(session_id, record, expires)
        try:
            if ttl:
                return bool(await self.client.set(key, value, nx=True, px=ttl))
            return bool(await self.client.set(key, value, nx=True))
        except self._core.errors as exc:
            self._core.fail("create", session_id, exc)

    async def _replace(
        self, session_id: str, record: Record, expires: float, expected: int
    ) -> bool:
        """Cost: one script call (compare-and-set), O(1) in Redis."""
        args = self._core.replace(session_id, record, expires, expected)
        return bool(await self._eval(_SCRIPTS["replace"], "save", session_id, 1, *args))

    async def _touch(self, session_id: str, accessed_at: float, expires: float) -> bool:
        """Cost: one script call, O(1) in Redis; the data is not rewritten."""
        args = self._core.touch(session_id, accessed_at, expires)
        return bool(await self._eval(_SCRIPTS["touch"], "touch", session_id, 1, *args))

    async def _delete(self, session_id: str) -> None:
        """Cost: one ``DEL``."""
        try:
            await self.client.delete(self._core.key(session_id))
        except self._core.errors as exc:
            self._core.fail("delete", session_id, exc)

    async def _rotate(
        self, old_id: str, new_id: str, record: Record, expires: float, expected: int
    ) -> bool:
        """Cost: one script call on both keys, O(1) in Redis."""
        args = self._core.rotate(old_id, new_id, record, expires, expected)
        return bool(await self._eval(_SCRIPTS["rotate"], "rotate", old_id, 2, *args))

    async def _purge(self, now: float) -> int:
        """Nothing to do: Redis deletes each session when its TTL runs out.
        Cost: none (no round trip)."""
        return 0

    async def touch(self, session_id: str) -> bool:
        """:meth:`RedisSessionStore.touch`. Cost: one script call."""
        if not valid_id(session_id):
            return False
        args = self._core.touch_live(session_id)
        reply = await self._eval(_SCRIPTS["touch_live"], "touch", session_id, 1, *args)
        return self._core.touched(reply)
