"""The Redis Streams backend: queues shared by every process that reaches one Redis.

A queue is a Redis stream per priority level in use, each with one consumer group
(``scalekit``). Producers ``XADD``; consumers read with ``XREADGROUP``, so a
delivery is an entry of the group's pending list (PEL) owned by the consumer
that read it. An entry left pending for the visibility timeout is taken again
with ``XAUTOCLAIM`` (min-idle = the visibility timeout), and its PEL delivery
count, plus the attempts it had before it was put back, is the attempt number.
Every change that touches several keys is one Lua script (EVALSHA), so it is
atomic: see the scripts at the end of this module.

Key layout, for a queue ``q`` under ``prefix`` (``{q}`` is a hash tag: one queue's
keys, and its dead letters', share a cluster slot)::

    prefix:{q}:s:<priority>   stream of one priority level, group "scalekit"; an
                              entry is a message: i id, k body kind (b/s/j),
                              d body bytes, h headers JSON, t put time (ms),
                              n attempts before this entry (after a delayed nack),
                              and in a dead-letter queue r reason, q queue, a attempts
    prefix:{q}:levels         sorted set of the priority levels in use
    prefix:{q}:delayed        sorted set of delayed messages by due time (ms); a
                              member is msgpack [level, field, value, ...]
    prefix:{q}:ext            hash level/entry-id -> "deadline count consumer", for
                              deliveries extended past the visibility timeout
    prefix:{q}:cur            hash level -> XAUTOCLAIM cursor
    prefix:{q}:signal         stream + group: one entry wakes one blocked getter
    prefix:{q}:room           stream: wakes blocked putters of a full queue (1 h TTL)
    prefix:{q}:stats          hash of counters (delivered, redelivered, acked,
                              dead_lettered), kept since the queue was created
    prefix:{q}:meta           hash of the queue's options, for handles opened
                              without options (a topic's publisher)
    prefix:{q}:ids            message id counter, shared with the dead letters
    prefix:{q}:d:<sha256>     a dedup key, with the dedup window as its TTL
    prefix:{q}:dlq:...        the dead-letter queue ``q.dlq``: the same keys
    prefix:topic:{t}          sorted set of topic t's subscribed groups, in order

How it differs from the memory backend, and why:

- Time is Redis's clock (``TIME``): deadlines, delays, dedup windows and
  ``enqueued_at`` follow it, not the broker's clock, so processes agree.
- Options are per handle. ``visibility_timeout`` and ``max_deliveries`` are
  applied by the handle that takes (or ``stats``) a message, ``maxsize`` by the
  handle that puts; a handle opened without options (a topic publishing to a
  group) uses the options last stored by an explicit open.
- ``close()`` closes this handle (puts refused, getters drain then stop); other
  handles and processes go on. Blocked getters of the handle are woken at once
  by a signal entry, at worst within ``block`` seconds.
- A timed-out or nacked delivery stays in the PEL and is found by
  ``XAUTOCLAIM``: each get scans from the oldest pending entry, then onwards
  from a kept cursor, at most 10 x n entries each. With more than that many
  messages in flight, one may wait a few gets before it is found (still before
  newer ready messages of its priority once found).
- Order of redeliveries: within a priority level, timed-out, nacked and given
  back messages come before new ones, oldest (first put) first; memory puts a
  nacked priority-0 message at the very front, the last nacked first.
- A blocked getter is woken at once by a put, nack or redrive from any
  process; it notices a delivery timing out or a delayed message falling due
  when it expects it (the oldest pending entry, the next delayed message) or
  otherwise within ``block`` seconds.
- ``extend(seconds)`` beyond the visibility timeout: ``XCLAIM ... TIME`` cannot
  set a delivery time in the future (Redis clamps it to now, so XCLAIM alone
  gives at most one visibility timeout). The deadline is kept in ``:ext``; a
  get that claims the entry earlier hands it straight back to its owner with
  its delivery count, in the same script, so nobody else sees it.
- Async gets run each take (one short script call) on a worker thread and wait
  on a future: one "pump" thread per handle blocks in Redis for all its waiting
  tasks and wakes one task per signal (a task that takes a full batch wakes the
  next), so waiting tasks hold no thread. A cancelled async get gives back, at
  once and with the same attempt number, a message its worker thread took after
  the cancel; only if the process dies in between is the message left in
  flight until its visibility timeout (at-least-once).
- A put with a ``dedup_key`` already seen returns the first id even when a
  bounded queue is full (memory checks for room first).
- ``redrive`` moves dead letters by priority level and in the order they were
  dead-lettered (memory: by message id), in scripts of 1,000 messages.
- ``oldest_age`` looks at the head of each stream and at the next delayed
  message (a message put back with a delay is counted from its put time once it
  heads a stream).
- Priorities must lie within +-2**53 (they are sorted-set scores).
- Message ids are decimal strings (``"1"``, ``"2"``...), unique per queue.

Needs Redis 6.2 or later (``XAUTOCLAIM``, ``XPENDING ... IDLE``); tested on 7.0.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from scalekit._validate import check_name, check_seconds, type_name
from scalekit.errors import (
    ArgumentTypeError,
    BackendError,
    ConfigurationError,
    DeliveryExpired,
    QueueFull,
)
from scalekit.mq._body import from_stored, to_stored
from scalekit.mq._queue import (
    DEAD_LETTER_ATTEMPTS,
    DEAD_LETTER_QUEUE,
    DEAD_LETTER_REASON,
    Delivery,
    MessageId,
    Outgoing,
    Queue,
    QueueOptions,
    QueueStats,
    check_limit,
    nack_reason,
    open_handle,
)
from scalekit.protocols import Clock

if TYPE_CHECKING:
    import redis

__all__ = ["RedisStreamsBackend"]

log = logging.getLogger("scalekit.mq")

GROUP = "scalekit"
"""The consumer group of every stream."""

_MAX_MS = 10**15  # ~31,000 years: longer delays are stored as this
_IDLE_CONSUMER_MS = 600_000  # close() deletes consumers idle this long with nothing pending
_REDRIVE_BATCH = 1000
_dumps = json.JSONEncoder(separators=(",", ":")).encode


def _ms(seconds: float) -> int:
    """Whole milliseconds, rounded up (a positive delay never becomes 0)."""
    if seconds <= 0:
        return 0
    return min(_MAX_MS, math.ceil(seconds * 1000))


def _level(priority: int) -> str:
    return str(priority)  # within +-2**53: checked for every backend by check_priority


def _backend_error(what: str, name: str, exc: Exception) -> BackendError:
    return BackendError(
        f"redis: {what} on queue {name!r} failed: {type(exc).__name__}: {exc}", backend="redis"
    )


def _settle_failed(delivery: Delivery, action: str) -> None:
    """``action`` found ``delivery`` no longer held: say why (ack twice is fine)."""
    state = delivery._settled
    if state == "acked" and action == "ack":
        return
    why = f"was {state} already" if state else "timed out and is delivered again"
    raise DeliveryExpired(
        f"cannot {action} delivery {delivery.attempt} of message {delivery.id!r} in "
        f"{delivery._queue.name!r}: it {why}"
    )


class _RedisDelivery(Delivery):
    """A delivery and its receipt: the entry (level, id) and which delivery of it
    (owner consumer, PEL delivery count) this is."""

    __slots__ = ("_count", "_level", "_owner", "_sid")

    def __init__(
        self,
        queue: _RedisQueue,
        fields: dict[bytes, bytes],
        level: bytes,
        sid: bytes,
        count: int,
        owner: str,
        deadline: float,
    ) -> None:
        headers: dict[str, str] | None = None
        if b"h" in fields:
            headers = json.loads(fields[b"h"])
        if b"r" in fields:
            headers = dict(headers) if headers else {}
            headers[DEAD_LETTER_REASON] = fields[b"r"].decode()
            headers[DEAD_LETTER_QUEUE] = fields[b"q"].decode()
            headers[DEAD_LETTER_ATTEMPTS] = fields[b"a"].decode()
        super().__init__(
            queue,
            fields[b"i"].decode(),
            from_stored(fields[b"k"].decode(), fields[b"d"]),
            headers,
            int(level),
            int(fields[b"t"]) / 1000,
            count + int(fields.get(b"n", 0)),
        )
        self._level = level
        self._sid = sid
        self._count = count
        self._owner = owner
        self._deadline = deadline


class _Handoff:
    """Deliveries passed from a worker thread to an async get that may be
    cancelled meanwhile: whichever side comes second gives them back."""

    __slots__ = ("_got", "_lock", "cancelled")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._got: list[Delivery] = []
        self.cancelled = False

    def offer(self, got: list[Delivery]) -> bool:
        with self._lock:
            if self.cancelled:
                return False
            self._got = got
            return True

    def cancel(self) -> list[Delivery]:
        with self._lock:
            self.cancelled = True
            got, self._got = self._got, []
            return got


def _signal_kind(reply: Any) -> bytes | None:
    """The ``w`` field of the entry in an XREADGROUP reply (RESP2 or RESP3 shape)."""
    if not reply:
        return None
    stack = [reply]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if b"w" in item:
                kind: bytes = item[b"w"]
                return kind
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return b"p"


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _Waiter:
    """One asyncio task waiting for a message."""

    __slots__ = ("future", "loop", "woken")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()
        self.woken = False

    def reset(self) -> None:
        """A fresh future, for the next wait (call on the task's loop)."""
        if self.future.done():
            self.future = self.loop.create_future()
        self.woken = False


class _AsyncWaiters:
    """The asyncio tasks of one handle waiting for a message, oldest first. Woken
    one at a time (per signal, or by a task that took a full batch), or all at
    once (close); waking resolves the task's future from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[_Waiter, None] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def add(self, loop: asyncio.AbstractEventLoop) -> _Waiter:
        waiter = _Waiter(loop)
        with self._lock:
            self._waiting[waiter] = None
        return waiter

    def discard(self, waiter: _Waiter) -> None:
        with self._lock:
            self._waiting.pop(waiter, None)

    def wake_one(self) -> bool:
        """Wake the oldest task not woken yet; False if no task waits."""
        with self._lock:
            if not self._waiting:
                return False
            target = next((w for w in self._waiting if not w.woken), None)
            if target is None:
                return True  # all are woken already and will look again
            target.woken = True
        self._call(target)
        return True

    def wake_all(self) -> None:
        with self._lock:
            waiters = list(self._waiting)
            for waiter in waiters:
                waiter.woken = True
        for waiter in waiters:
            self._call(waiter)

    @staticmethod
    def _call(waiter: _Waiter) -> None:
        with contextlib.suppress(RuntimeError):  # its loop is closed: the task is gone
            waiter.loop.call_soon_threadsafe(_resolve, waiter.future)


class _RedisQueue(Queue):
    """One handle on a queue of a :class:`RedisStreamsBackend`.

    Put, get, ack, nack, reject and extend are one script call (one round trip)
    each; a blocked get or put adds one blocking read per wake-up or ``block``
    seconds.
    """

    _blocking_io = True

    def __init__(
        self,
        backend: RedisStreamsBackend,
        name: str,
        options: QueueOptions,
        clock: Clock,
        dead_letters: _RedisQueue | None,
        base: str,
        ids_key: str,
    ) -> None:
        super().__init__(name, options, clock, dead_letters)
        self._backend = backend
        self._client = backend.client
        self._scripts = backend._scripts
        self._errors = backend._errors
        self._base = base
        # a dead-letter queue names itself as its dead letters: the scripts read that
        # as "none" (an empty key name would be in another cluster slot)
        self._keys = [base, base if dead_letters is None else dead_letters._base]
        self._ids_key = ids_key
        self._signal_key = base + ":signal"
        self._room_key = base + ":room"
        self._vt_ms = max(1, round(options.visibility_timeout * 1000))
        self._max_deliveries = 0 if dead_letters is None else options.max_deliveries or 0
        self._lock = threading.Lock()
        self._getters = 0  # threads of this handle blocked in Redis, waiting for a message
        self._putters = 0  # ... waiting for room
        self._waiters = _AsyncWaiters()
        self._pumping = False  # a pump thread blocks in Redis for the waiting tasks
        self._pump_pid = -1
        self._pid = -1
        self._consumer = ""

    @property
    def consumer(self) -> str:
        """This handle's consumer name in the groups: host, process id and a random
        suffix (a new one in a forked child)."""
        pid = os.getpid()
        if pid != self._pid:
            self._consumer = f"{socket.gethostname()}:{pid}:{secrets.token_hex(4)}"
            self._pid = pid
        return self._consumer

    def _run(self, script: str, keys: list[str], args: list[Any], what: str) -> Any:
        try:
            return self._scripts[script](keys=keys, args=args)
        except self._errors as exc:
            raise _backend_error(what, self.name, exc) from exc

    # -- producing ------------------------------------------------------------

    def _put(
        self, outgoing: list[Outgoing], dedup_key: str | None, timeout: float | None
    ) -> list[MessageId]:
        """Cost: one script call, O(k + levels) in Redis for k messages (O(k log d)
        for delayed ones); a full bounded queue adds a blocking read per wake-up."""
        self._check_open()
        dedup = ""
        if dedup_key is not None:
            dedup = hashlib.sha256(dedup_key.encode("utf-8", "surrogatepass")).hexdigest()[:40]
        args: list[Any] = [self.maxsize or 0, dedup, _ms(self.options.dedup_window), len(outgoing)]
        for stored, headers, priority, delay in outgoing:
            kind, data = to_stored(stored)
            args += (kind, data, _dumps(headers) if headers else "", _level(priority), _ms(delay))
        keys = [self._base, self._ids_key]
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            done, value = self._run("put", keys, args, "put")
            if done == 2:
                first = int(value)
                return [str(first + j) for j in range(len(outgoing))]
            if done == 1:
                return [value.decode()]
            wait = self._backend.block
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
            if wait <= 0:
                raise QueueFull(
                    f"queue {self.name!r} is full ({self.maxsize} messages ready, delayed "
                    f"or in flight) and stayed full for {timeout or 0:g} s"
                )
            self._wait_for_room(value, wait)
            self._check_open()

    def _wait_for_room(self, last: bytes, seconds: float) -> None:
        with self._lock:
            self._putters += 1
        try:
            self._client.xread({self._room_key: last}, count=1, block=max(1, int(seconds * 1000)))
        except self._errors as exc:
            raise _backend_error("waiting for room", self.name, exc) from exc
        finally:
            with self._lock:
                self._putters -= 1

    # -- consuming ------------------------------------------------------------

    def _take_now(self, n: int, arm: bool) -> tuple[list[Delivery], int]:
        """Up to ``n`` deliveries now, and if none, in how many ms something may
        fall due (-1: not known). ``arm``: if none, make the signal stream ready to
        block on. Cost: one script call, O(levels + n + d) in Redis with d delayed
        messages falling due (at most 1,000 moved per call)."""
        owner = self.consumer
        reply = self._run(
            "take",
            self._keys,
            [owner, n, self._vt_ms, self._max_deliveries, self.name, 1 if arm else 0],
            "get",
        )
        count = reply[0]
        if not count:
            return [], reply[1]
        deadline = self._clock() + self.visibility_timeout
        got: list[Delivery] = []
        for j in range(1, 4 * count, 4):
            level, sid, delivery_count, fields = reply[j : j + 4]
            entry = dict(zip(fields[0::2], fields[1::2], strict=True))
            got.append(_RedisDelivery(self, entry, level, sid, delivery_count, owner, deadline))
        return got, -1

    def _wait_seconds(self, deadline: float | None, due_in_ms: int) -> float | None:
        """How long to block next: at most ``block``, the time left, and the time
        until something falls due; None once the deadline has passed."""
        wait = self._backend.block
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            wait = min(wait, left)
        if due_in_ms >= 0:
            wait = min(wait, max(due_in_ms / 1000, 0.005))
        return wait

    def _sleep(self, seconds: float) -> bytes | None:
        """Block until a signal entry comes, or ``seconds`` pass; the signal's kind
        (``b"p"``: something became ready, ``b"c"``: a handle closed) or None.

        ``XREADGROUP ... NOACK`` on the signal stream: each entry wakes one getter,
        in any process. The TAKE script that found nothing trimmed the stale ones
        and created the stream, atomically, so no wake-up is lost in between."""
        with self._lock:
            self._getters += 1
        try:
            reply = self._client.xreadgroup(
                GROUP,
                self.consumer,
                {self._signal_key: ">"},
                count=1,
                block=max(1, int(seconds * 1000)),
                noack=True,
            )
        except self._errors as exc:
            raise _backend_error("waiting for a message", self.name, exc) from exc
        finally:
            with self._lock:
                self._getters -= 1
        return _signal_kind(reply)

    def _take(
        self, n: int, timeout: float | None, stop: Callable[[], bool] | None = None
    ) -> list[Delivery]:
        """Cost: one script call; waiting adds a blocking read and a script call
        per wake-up (a put, or ``block`` seconds)."""
        got, due_in = self._take_now(n, timeout != 0)
        if got or timeout == 0:
            return got
        deadline = None if timeout is None else time.monotonic() + timeout
        while not (self._closed or (stop is not None and stop())):
            wait = self._wait_seconds(deadline, due_in)
            if wait is None:
                break
            self._sleep(wait)
            got, due_in = self._take_now(n, True)
            if got:
                return got
        return []

    async def _take_async(self, n: int, timeout: float | None) -> list[Delivery]:
        """:meth:`_take` for a coroutine. Takes run on a worker thread (one short
        script call each); waiting is on a future, woken by the handle's pump
        thread (one blocking read for all the handle's waiting tasks), so waiting
        tasks hold no thread. A cancelled call gives back what its thread took
        after the cancel, at once and with the same attempt number."""
        waiter = None if timeout == 0 else self._waiter(asyncio.get_running_loop())
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                if waiter is not None:
                    waiter.reset()  # before the take: a wake-up after it is not lost
                got, due_in = await self._handed(
                    functools.partial(self._take_step, n, waiter is not None)
                )
                if got:
                    if waiter is not None:
                        self._waiters.discard(waiter)
                        waiter = None
                        if len(got) == n:  # more may be ready: let the next task look
                            self._waiters.wake_one()
                    return got
                if waiter is None or self._closed:
                    return []
                wait = self._wait_seconds(deadline, due_in)
                if wait is None:
                    return []
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(waiter.future, wait)
        except asyncio.CancelledError:
            if waiter is not None and waiter.woken:
                self._waiters.wake_one()  # woken but cancelled: pass the wake-up on
            raise
        finally:
            if waiter is not None:
                self._waiters.discard(waiter)

    async def _handed(
        self, step: Callable[[_Handoff], tuple[list[Delivery], int]]
    ) -> tuple[list[Delivery], int]:
        handoff = _Handoff()
        try:
            return await asyncio.to_thread(step, handoff)
        except asyncio.CancelledError:
            stolen = handoff.cancel()
            if stolen:  # the thread finished, but its result never reached us
                asyncio.get_running_loop().run_in_executor(None, self._give_back, stolen)
            raise

    def _take_step(self, n: int, arm: bool, handoff: _Handoff) -> tuple[list[Delivery], int]:
        """On a worker thread: take, and hand over (or give back if cancelled)."""
        got, due_in = self._take_now(n, arm)
        if got and not handoff.offer(got):
            self._give_back(got)
            return [], -1
        return got, due_in

    def _waiter(self, loop: asyncio.AbstractEventLoop) -> _Waiter:
        """Register a waiting task, and start the pump thread if none runs."""
        waiter = self._waiters.add(loop)
        with self._lock:
            start = not self._pumping or self._pump_pid != os.getpid()  # none in a fork
            self._pumping = True
            self._pump_pid = os.getpid()
        if start:
            threading.Thread(target=self._pump, name=f"{self!r} pump", daemon=True).start()
        return waiter

    def _pump(self) -> None:
        """While tasks of this handle wait: block on the signal stream for them all,
        and wake one task per signal (or pass the signal on if none wants it)."""
        while True:
            with self._lock:
                if not self._waiters:
                    self._pumping = False
                    return
            try:
                kind = self._sleep(self._backend.block)
            except Exception:  # the tasks see errors in their own takes; keep pumping
                log.debug("%r: pump: blocking read failed", self, exc_info=True)
                time.sleep(min(self._backend.block, 0.5))
                continue
            if kind is not None and not self._waiters.wake_one() and kind == b"p":
                self._signal_quietly(1, False)

    def _give_back(self, deliveries: list[Delivery]) -> None:
        """Make deliveries nobody will see ready again at once, with the attempt
        number they had (best effort: failures are logged)."""
        for delivery in deliveries:
            assert isinstance(delivery, _RedisDelivery)
            try:
                if self._settle(delivery, ["release", "1" if delivery.attempt != 1 else "0"]):
                    delivery._settled = "given back"  # its receipt will match the next one
            except BackendError:
                log.warning("%r: could not give back message %r", self, delivery.id, exc_info=True)

    def _signal_quietly(self, getters: int, putters: bool) -> None:
        try:
            self._run("wake", [self._base], [getters, 1 if putters else 0], "wake-up")
        except BackendError:
            log.warning("%r: could not wake blocked callers", self, exc_info=True)

    def _wake_all(self) -> None:
        """Wake this handle's waiting tasks (at once, locally) and blocked threads
        (a signal entry each). Cost: one script call if a thread is blocked."""
        self._waiters.wake_all()
        with self._lock:
            getters, putters = self._getters, self._putters
        if getters or putters:
            self._signal_quietly(getters, bool(putters))

    # -- settling -------------------------------------------------------------

    def _settle(self, delivery: _RedisDelivery, action: list[Any]) -> bool:
        args = [
            action[0],
            delivery._level,
            delivery._sid,
            delivery._owner,
            delivery._count,
            *action[1:],
        ]
        return bool(self._run("settle", self._keys, args, action[0]))

    def _ack(self, delivery: Delivery) -> None:
        """Cost: one script call, O(log n) in Redis."""
        assert isinstance(delivery, _RedisDelivery)
        if delivery._settled is None:
            args = [delivery._level, delivery._sid, delivery._owner, delivery._count]
            if self._run("ack", [self._base], args, "ack"):
                delivery._settled = "acked"
                return
        _settle_failed(delivery, "ack")

    def _nack(self, delivery: Delivery, delay: float, reason: str | None) -> None:
        """Cost: one script call, O(log n) in Redis."""
        assert isinstance(delivery, _RedisDelivery)
        if delivery._settled is None:
            if self._exhausted(delivery.attempt):
                why = nack_reason(reason, delivery.attempt)
                action: list[Any] = ["bury", why, self.name, delivery.attempt]
            elif delay > 0:
                action = ["delay", _ms(delay)]
            else:
                action = ["park"]
            if self._settle(delivery, action):
                delivery._settled = "nacked"
                return
        _settle_failed(delivery, "nack")

    def _reject(self, delivery: Delivery, reason: str) -> None:
        """Cost: one script call, O(log n) in Redis."""
        assert isinstance(delivery, _RedisDelivery)
        if delivery._settled is None:
            if self._dead_letters is None:  # a dead-letter queue: rejecting deletes
                action: list[Any] = ["drop"]
            else:
                action = ["bury", reason, self.name, delivery.attempt]
            if self._settle(delivery, action):
                delivery._settled = "rejected"
                return
        _settle_failed(delivery, "reject")

    def _extend(self, delivery: Delivery, seconds: float) -> None:
        """Cost: one script call, O(log n) in Redis."""
        assert isinstance(delivery, _RedisDelivery)
        if delivery._settled is None and self._settle(
            delivery, ["extend", _ms(seconds), self._vt_ms]
        ):
            delivery._deadline = self._clock() + seconds
            return
        _settle_failed(delivery, "extend")

    # -- housekeeping -----------------------------------------------------------

    def close(self) -> None:
        """Refuse further puts on this handle and wake its blocked getters; delete
        its consumers, and any idle for 10 minutes, that hold no message (other
        handles and processes are not affected). Cost: one or two script calls,
        O(consumers) in Redis."""
        first = not self._closed
        super().close()
        if first:
            for queue in (self, self._dead_letters):
                if isinstance(queue, _RedisQueue) and queue._pid == os.getpid():
                    try:
                        queue._run(
                            "cleanup",
                            [queue._base],
                            [queue._consumer, _IDLE_CONSUMER_MS],
                            "close",
                        )
                    except BackendError:
                        log.warning("%r: could not delete its consumers", queue, exc_info=True)

    def stats(self) -> QueueStats:
        """A snapshot; like a get, it moves due delayed messages and dead-letters
        deliveries that timed out on their last attempt. Cost: one script call,
        O(levels + t) in Redis for t timed-out deliveries."""
        (ready, delayed, in_flight, dead, oldest, now, *counters) = self._run(
            "stats", self._keys, [self._vt_ms, self._max_deliveries, self.name], "stats"
        )
        return QueueStats(
            name=self.name,
            ready=ready,
            delayed=delayed,
            in_flight=in_flight,
            dead_letters=dead,
            oldest_age=None if oldest < 0 else max(0.0, (now - oldest) / 1000),
            delivered=counters[0],
            redelivered=counters[1],
            acked=counters[2],
            dead_lettered=counters[3],
        )

    def purge(self) -> int:
        """Cost: one script call, O(ready + delayed) in Redis (a level with nothing
        in flight is unlinked whole)."""
        purged: int = self._run("purge", [self._base], [self._vt_ms], "purge")
        return purged

    def redrive(self, limit: int | None = None) -> int:
        """Cost: one script call per 1,000 messages, O(m) in Redis for m moved."""
        check_limit(limit)
        dead = self.dead_letters
        assert isinstance(dead, _RedisQueue)
        self._check_open()
        moved = 0
        while limit is None or moved < limit:
            batch = _REDRIVE_BATCH if limit is None else min(_REDRIVE_BATCH, limit - moved)
            done: int = self._run(
                "redrive", [self._base, dead._base], [batch, dead._vt_ms], "redrive"
            )
            moved += done
            if done < batch:
                break
        return moved

    def _check(self) -> None:
        """Assert the invariants of this queue's keys (for tests; O(n) reads)."""
        client: Any = self._client
        levels = {level.decode() for level in client.zrange(self._base + ":levels", 0, -1)}
        streams = {
            key.decode().rsplit(":", 1)[1]
            for key in client.scan_iter(match=_glob(self._base) + ":s:*", count=1000)
        }
        assert streams == levels, f"streams {streams} but levels {levels}"
        for level in levels:
            stream = f"{self._base}:s:{level}"
            assert any(g["name"] == GROUP.encode() for g in client.xinfo_groups(stream))
            pending = client.xpending(stream, GROUP)["pending"]
            assert client.xlen(stream) >= pending
            if pending:
                for entry in client.xpending_range(stream, GROUP, "-", "+", pending):
                    found = client.xrange(stream, entry["message_id"], entry["message_id"])
                    assert found, f"pending entry {entry['message_id']!r} is not in {stream}"
            for _, fields in client.xrange(stream, "-", "+"):
                assert {b"i", b"k", b"d", b"t"} <= set(fields), fields
        for key in client.hkeys(self._base + ":ext"):
            level, sid = key.decode().split("/", 1)
            stream = f"{self._base}:s:{level}"
            assert client.xpending_range(stream, GROUP, sid, sid, 1), f"stale extension {key!r}"


def _glob(text: str) -> str:
    """``text`` with the glob characters of SCAN MATCH escaped."""
    for char in "\\*?[]":
        text = text.replace(char, "\\" + char)
    return text


class RedisStreamsBackend:
    """Queues in Redis Streams, shared by every process and machine that reaches
    the server: a put in one process is delivered to a consumer in another, and
    a message a dead consumer held is delivered again after its visibility
    timeout. Subscriptions of topics are kept in Redis too.

    ``client`` is a ``redis.Redis`` made with ``decode_responses=False`` (the
    default); its ``socket_timeout``, if any, must exceed ``block``. The backend
    never closes it. ``prefix`` starts every key. ``block``: the longest single
    blocking read, in seconds; it bounds how late a blocked getter notices a
    delivery timing out unexpectedly, and how long ``close()`` may take to stop
    a getter of this handle whose wake-up was lost. See the module docstring for
    the key layout and how this backend differs from :class:`MemoryBackend`.

    Example (needs a Redis server)::

        import redis
        from scalekit.mq import Broker
        from scalekit.mq._redis import RedisStreamsBackend

        broker = Broker(RedisStreamsBackend(redis.Redis()))
        emails = broker.queue("emails", visibility_timeout=60)
        emails.put({"to": "ada@example.com"})
        delivery = emails.get(timeout=5)
        delivery.ack()
    """

    name = "redis"

    def __init__(
        self, client: redis.Redis, *, prefix: str = "scalekit:mq", block: float = 1.0
    ) -> None:
        import redis as redis_module
        import redis.asyncio

        asyncio_client: Any = redis_module.asyncio.Redis
        if isinstance(client, asyncio_client) or not callable(
            getattr(client, "register_script", None)
        ):
            raise ArgumentTypeError(f"client must be a redis.Redis, got {type_name(client)}")
        check_name(prefix, "prefix")
        block = check_seconds(block, "block", maximum=60)
        pool = getattr(client, "connection_pool", None)
        kwargs: dict[str, Any] = getattr(pool, "connection_kwargs", None) or {}
        if kwargs.get("decode_responses"):
            raise ConfigurationError(
                "the redis client must be made with decode_responses=False: bodies are bytes"
            )
        socket_timeout = kwargs.get("socket_timeout")
        if socket_timeout is not None and socket_timeout <= block:
            raise ConfigurationError(
                f"the client's socket_timeout ({socket_timeout} s) must exceed block ({block} s)"
            )
        self.client = client
        self.prefix = prefix
        self.block = float(block)
        self._errors: tuple[type[Exception], ...] = (redis_module.RedisError,)
        self._scripts: dict[str, Any] = {
            name: client.register_script(source) for name, source in _SCRIPTS.items()
        }
        self._lock = threading.Lock()
        self._queues: dict[str, _RedisQueue] = {}

    def key(self, name: str) -> str:
        """The base key of queue ``name``; its keys start with it (see the module
        docstring), its dead letters' with ``key(name) + ":dlq"``."""
        return f"{self.prefix}:{{{name}}}"

    def _topic_key(self, topic: str) -> str:
        return f"{self.prefix}:topic:{{{topic}}}"

    def _wrap(self, what: str, name: str, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except self._errors as exc:
            raise _backend_error(what, name, exc) from exc

    def open_queue(self, name: str, options: QueueOptions | None, clock: Clock) -> Queue:
        """The queue ``name`` with its dead-letter queue. Explicit ``options`` are
        stored in Redis; ``None`` uses the handle open in this backend, else the
        stored options, else the defaults. Cost: one round trip on first open."""
        with self._lock:
            queue = open_handle(self._queues.get(name), name, options, clock)
            if queue is not None:
                return queue
            base = self.key(name)
            if options is None:
                options = self._load_options(name, base)
            else:
                meta: dict[Any, Any] = {
                    "visibility_timeout": repr(options.visibility_timeout),
                    "max_deliveries": str(options.max_deliveries or ""),
                    "maxsize": str(options.maxsize or ""),
                    "dedup_window": repr(options.dedup_window),
                }
                self._wrap("open", name, lambda: self.client.hset(base + ":meta", mapping=meta))
            dead = _RedisQueue(
                self,
                f"{name}.dlq",
                QueueOptions(options.visibility_timeout, None, None, options.dedup_window),
                clock,
                None,
                base + ":dlq",
                base + ":ids",
            )
            queue = _RedisQueue(self, name, options, clock, dead, base, base + ":ids")
            self._queues[name] = queue
            return queue

    def _load_options(self, name: str, base: str) -> QueueOptions:
        stored = self._wrap("open", name, lambda: self.client.hgetall(base + ":meta"))
        if not stored:
            return QueueOptions()
        try:
            return QueueOptions(
                float(stored[b"visibility_timeout"]),
                int(stored[b"max_deliveries"]) if stored[b"max_deliveries"] else None,
                int(stored[b"maxsize"]) if stored[b"maxsize"] else None,
                float(stored[b"dedup_window"]),
            )
        except (KeyError, ValueError):
            log.warning("queue %r: unreadable stored options %r; using defaults", name, stored)
            return QueueOptions()

    def subscribe(self, topic: str, group: str) -> None:
        """Cost: one script call, O(log g) in Redis."""
        script = self._scripts["subscribe"]
        self._wrap("subscribe", topic, lambda: script(keys=[self._topic_key(topic)], args=[group]))

    def unsubscribe(self, topic: str, group: str) -> None:
        """Cost: one round trip, O(log g) in Redis."""
        self._wrap("unsubscribe", topic, lambda: self.client.zrem(self._topic_key(topic), group))

    def subscribers(self, topic: str) -> list[str]:
        """Cost: one round trip, O(g) in Redis."""
        groups = self._wrap(
            "subscribers", topic, lambda: self.client.zrange(self._topic_key(topic), 0, -1)
        )
        return [group.decode() for group in groups]

    def close(self) -> None:
        """Close every queue handle opened through this backend (not the client)."""
        with self._lock:
            queues = list(self._queues.values())
        for queue in queues:
            queue.close()

    def __repr__(self) -> str:
        return f"RedisStreamsBackend(prefix={self.prefix!r})"


# -- Lua ------------------------------------------------------------------------
#
# Every script starts with PRELUDE, the helpers they share. KEYS[1] is the queue's
# base key and KEYS[2] its dead letters' (a dead-letter queue passes its own base
# there, read as "none"); the scripts derive the other key names, which all share
# the base's hash tag. Numbers built into strings go through int(): Lua's tostring
# keeps only 14 digits.

PRELUDE = r"""
local G = 'scalekit'

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- an integer as a string, exactly (tostring loses digits past 1e14)
local function int(x) return string.format('%d', x) end

local function skey(base, lvl) return base .. ':s:' .. lvl end

local function extkey(lvl, sid) return lvl .. '/' .. sid end

local function field(fields, name)
  for i = 1, #fields, 2 do
    if fields[i] == name then return fields[i + 1] end
  end
  return nil
end

-- the fields without those named in `drop`, then `extra`
local function rebuild(fields, drop, extra)
  local out = {}
  for i = 1, #fields, 2 do
    if not drop[fields[i]] then
      out[#out + 1] = fields[i]
      out[#out + 1] = fields[i + 1]
    end
  end
  for i = 1, #extra do out[#out + 1] = extra[i] end
  return out
end

-- the stream of a priority level, with its consumer group, listed in :levels
local function ensure_level(base, lvl)
  local levels = base .. ':levels'
  if not redis.call('ZSCORE', levels, lvl) then
    redis.pcall('XGROUP', 'CREATE', skey(base, lvl), G, '0', 'MKSTREAM')
    redis.call('ZADD', levels, tonumber(lvl), lvl)
  end
end

-- drop the stream of an emptied level (level 0 stays: it is the usual one)
local function tidy(base, lvl)
  if lvl ~= '0' then
    local s = skey(base, lvl)
    if redis.call('XLEN', s) == 0 then
      redis.call('DEL', s)
      redis.call('ZREM', base .. ':levels', lvl)
      redis.call('HDEL', base .. ':cur', lvl)
    end
  end
end

-- wake up to k blocked getters (each signal entry goes to one consumer)
local function signal(base, k, why)
  if k > 0 then
    local sig = base .. ':signal'
    if redis.call('EXISTS', sig) == 1 then
      if k > 64 then k = 64 end
      for _ = 1, k do redis.call('XADD', sig, 'MAXLEN', '~', '256', '*', 'w', why) end
    end
  end
end

-- wake every blocked putter (they read :room with XREAD, so all see it)
local function room(base)
  local r = base .. ':room'
  if redis.call('EXISTS', r) == 1 then
    redis.call('XADD', r, 'MAXLEN', '~', '64', '*', 'r', '1')
  end
end

local function remove(base, lvl, sid)
  local s = skey(base, lvl)
  redis.call('XACK', s, G, sid)
  redis.call('XDEL', s, sid)
  redis.call('HDEL', base .. ':ext', extkey(lvl, sid))
end

local DROP_DEAD = {n = true, r = true, q = true, a = true}

local function bury(base, dlq, name, lvl, sid, fields, reason, attempts)
  remove(base, lvl, sid)
  ensure_level(dlq, lvl)
  local moved = rebuild(fields, DROP_DEAD, {'r', reason, 'q', name, 'a', int(attempts)})
  redis.call('XADD', skey(dlq, lvl), '*', unpack(moved))
  redis.call('HINCRBY', base .. ':stats', 'dead_lettered', 1)
  signal(dlq, 1, 'p')
end

local function expiry_reason(attempts)
  return 'not settled within the visibility timeout on delivery ' .. int(attempts)
end

local function delay(base, lvl, fields, due)
  local packed = {lvl}
  for i = 1, #fields do packed[#packed + 1] = fields[i] end
  redis.call('ZADD', base .. ':delayed', due, cmsgpack.pack(packed))
end

-- move due delayed messages into their streams; how many moved
local function promote(base, now)
  local dk = base .. ':delayed'
  local due = redis.call('ZRANGEBYSCORE', dk, '-inf', now, 'LIMIT', 0, 1000)
  for _, m in ipairs(due) do
    local t = cmsgpack.unpack(m)
    ensure_level(base, t[1])
    redis.call('XADD', skey(base, t[1]), '*', unpack(t, 2))
  end
  if #due > 0 then redis.call('ZREM', dk, unpack(due)) end
  return #due
end

-- an extension past now: its deadline, delivery count and owner; else false
local function extended(base, lvl, sid, now)
  local key = extkey(lvl, sid)
  local x = redis.call('HGET', base .. ':ext', key)
  if not x then return false end
  local deadline, count, owner = string.match(x, '^(%d+) (%d+) (.+)$')
  if tonumber(deadline) > now then return tonumber(deadline), count, owner end
  redis.call('HDEL', base .. ':ext', key)
  return false
end

-- whether `me` still holds delivery `count` of entry `sid`
local function owns(s, sid, me, count)
  if redis.call('EXISTS', s) == 0 then return false end
  local p = redis.call('XPENDING', s, G, sid, sid, 1)
  return #p == 1 and p[1][2] == me and p[1][4] == count
end

-- pending entries idle for vt or more (timed out, nacked or given back)
local function reclaimable(s, vt)
  local pc = redis.call('XPENDING', s, G)[1]
  if pc == 0 then return {} end
  return redis.call('XPENDING', s, G, 'IDLE', vt, '-', '+', pc)
end
"""

PUT = (
    PRELUDE
    + r"""
-- KEYS: base, ids counter
-- ARGV: maxsize (0: none), dedup key hash (''), dedup window ms, k,
--       then k times: kind, data, headers JSON (''), level, delay ms
local base, ids = KEYS[1], KEYS[2]
local maxsize, dedup, window, k = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
if dedup ~= '' then
  local seen = redis.call('GET', base .. ':d:' .. dedup)
  if seen then return {1, seen} end
end
local levels = redis.call('ZRANGE', base .. ':levels', 0, -1)
if maxsize > 0 then
  local size = redis.call('ZCARD', base .. ':delayed')
  for _, lvl in ipairs(levels) do size = size + redis.call('XLEN', skey(base, lvl)) end
  if size + k > maxsize then
    local r = base .. ':room'
    local last
    if redis.call('EXISTS', r) == 1 then
      last = redis.call('XREVRANGE', r, '+', '-', 'COUNT', 1)[1][1]
    else
      last = redis.call('XADD', r, '*', 'r', '0')
    end
    redis.call('PEXPIRE', r, 3600000)
    return {0, last}
  end
end
local known = {}
for _, lvl in ipairs(levels) do known[lvl] = true end
local first = redis.call('INCRBY', ids, k) - k + 1
local now = now_ms()
local ready = 0
for j = 0, k - 1 do
  local a = 5 + j * 5
  local fields = {'i', int(first + j), 'k', ARGV[a], 'd', ARGV[a + 1], 't', int(now)}
  if ARGV[a + 2] ~= '' then
    fields[9] = 'h'
    fields[10] = ARGV[a + 2]
  end
  local lvl, wait = ARGV[a + 3], tonumber(ARGV[a + 4])
  if wait > 0 then
    delay(base, lvl, fields, now + wait)
  else
    if not known[lvl] then
      ensure_level(base, lvl)
      known[lvl] = true
    end
    redis.call('XADD', skey(base, lvl), '*', unpack(fields))
    ready = ready + 1
  end
end
signal(base, ready, 'p')
if dedup ~= '' and window > 0 then
  redis.call('SET', base .. ':d:' .. dedup, int(first), 'PX', window)
end
return {2, first}
"""
)

TAKE = (
    PRELUDE
    + r"""
-- KEYS: base, dead letters' base (the base itself for a dead-letter queue)
-- ARGV: consumer, n, visibility timeout ms, max deliveries (0: none), queue name,
--       arm ('1': if nothing is ready, make ready the signal stream to block on)
-- Returns {k, then k times: level, entry id, delivery count, fields}
-- or, when nothing was ready, {0, ms until something may be due (-1: unknown)}.
local base, dlq = KEYS[1], KEYS[2]
if dlq == base then dlq = '' end
local me, need, vt = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local maxd, name, arm = tonumber(ARGV[4]), ARGV[5], ARGV[6] == '1'
local now = now_ms()
local promoted = promote(base, now)
local out = {0}
local redelivered, buried = 0, 0

local function deliver(lvl, sid, count, fields)
  out[#out + 1] = lvl
  out[#out + 1] = sid
  out[#out + 1] = count
  out[#out + 1] = fields
  out[1] = out[1] + 1
  need = need - 1
  if count + tonumber(field(fields, 'n') or '0') ~= 1 then redelivered = redelivered + 1 end
end

-- entries XAUTOCLAIM just gave `me`: hand back the extended ones to their owner,
-- dead-letter the exhausted ones, deliver the rest
local function claimed(lvl, s, entries)
  for _, e in ipairs(entries) do
    local sid, fields = e[1], e[2]
    if type(fields) ~= 'table' then
      redis.call('XACK', s, G, sid)  -- deleted while pending (Redis 6.2 lists them)
    else
      local count = redis.call('XPENDING', s, G, sid, sid, 1)[1][4]
      local deadline, ecount, owner = extended(base, lvl, sid, now)
      if deadline then
        redis.call('XCLAIM', s, G, owner, 0, sid, 'TIME', int(deadline - vt),
          'RETRYCOUNT', ecount, 'JUSTID')
      else
        local before = tonumber(field(fields, 'n') or '0') + count - 1
        if maxd > 0 and dlq ~= '' and before >= maxd then
          bury(base, dlq, name, lvl, sid, fields, expiry_reason(before), before)
          buried = buried + 1
        else
          deliver(lvl, sid, count, fields)
        end
      end
    end
  end
end

local levels = redis.call('ZREVRANGE', base .. ':levels', 0, -1)
for _, lvl in ipairs(levels) do
  if need <= 0 then break end
  local s = skey(base, lvl)
  -- timed out, nacked, given back: the oldest first, then on from a kept cursor
  local r = redis.call('XAUTOCLAIM', s, G, me, vt, '0-0', 'COUNT', need)
  claimed(lvl, s, r[2])
  if need > 0 and r[1] ~= '0-0' then
    local cur = redis.call('HGET', base .. ':cur', lvl)
    if not cur or cur == '0-0' then cur = r[1] end
    r = redis.call('XAUTOCLAIM', s, G, me, vt, cur, 'COUNT', need)
    redis.call('HSET', base .. ':cur', lvl, r[1])
    claimed(lvl, s, r[2])
  end
  if need > 0 then
    local got = redis.call('XREADGROUP', 'GROUP', G, me, 'COUNT', need, 'STREAMS', s, '>')
    if got then
      for _, e in ipairs(got[1][2]) do deliver(lvl, e[1], 1, e[2]) end
    end
  end
  if buried > 0 then tidy(base, lvl) end
end

if out[1] > 0 then
  redis.call('HINCRBY', base .. ':stats', 'delivered', out[1])
  if redelivered > 0 then redis.call('HINCRBY', base .. ':stats', 'redelivered', redelivered) end
end
if buried > 0 then room(base) end
if promoted > out[1] then signal(base, promoted - out[1], 'p') end
if out[1] > 0 then return out end

local hint = -1
if arm then
  local sig = base .. ':signal'
  if redis.call('EXISTS', sig) == 1 then
    redis.call('XTRIM', sig, 'MAXLEN', 0)  -- nothing is ready: every signal is stale
  else
    redis.call('XGROUP', 'CREATE', sig, G, '$', 'MKSTREAM')
  end
  local first = redis.call('ZRANGE', base .. ':delayed', 0, 0, 'WITHSCORES')
  if #first > 0 then hint = tonumber(first[2]) - now end
  for _, lvl in ipairs(redis.call('ZRANGE', base .. ':levels', 0, -1)) do
    local p = redis.call('XPENDING', skey(base, lvl), G, '-', '+', 1)
    if #p > 0 then
      local due = vt - p[1][3]
      if due < 0 then due = 0 end
      if hint < 0 or due < hint then hint = due end
    end
  end
end
return {0, hint}
"""
)

ACK = (
    PRELUDE
    + r"""
-- KEYS: base. ARGV: level, entry id, consumer, delivery count. Returns 1, or 0
-- when that delivery no longer holds the entry.
local base, lvl, sid = KEYS[1], ARGV[1], ARGV[2]
if not owns(skey(base, lvl), sid, ARGV[3], tonumber(ARGV[4])) then return 0 end
remove(base, lvl, sid)
redis.call('HINCRBY', base .. ':stats', 'acked', 1)
room(base)
tidy(base, lvl)
return 1
"""
)

SETTLE = (
    PRELUDE
    + r"""
-- KEYS: base, dead letters' base (the base itself for a dead-letter queue)
-- ARGV: action, level, entry id, consumer, delivery count, then by action:
--   park                             ready again now (a nack)
--   release redelivered('1'/'0')     given back unseen (a cancelled async get)
--   delay   ms                       ready again in ms (a nack with a delay)
--   bury    reason queue attempts    to the dead letters
--   drop                             deleted (a reject on a dead-letter queue)
--   extend  ms visibility-timeout-ms invisible for ms from now
-- Returns 1, or 0 when that delivery no longer holds the entry.
local base, dlq = KEYS[1], KEYS[2]
if dlq == base then dlq = '' end
local action, lvl, sid, me, count = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local s = skey(base, lvl)
if not owns(s, sid, me, count) then return 0 end
local now = now_ms()
if action == 'extend' then
  local ms, vt = tonumber(ARGV[6]), tonumber(ARGV[7])
  if ms <= vt then
    redis.call('XCLAIM', s, G, me, 0, sid, 'TIME', int(now + ms - vt),
      'RETRYCOUNT', count, 'JUSTID')
    redis.call('HDEL', base .. ':ext', extkey(lvl, sid))
  else
    -- XCLAIM cannot set a delivery time in the future (Redis clamps it to now):
    -- keep the deadline aside; TAKE hands the entry back to `me` until then
    redis.call('XCLAIM', s, G, me, 0, sid, 'RETRYCOUNT', count, 'JUSTID')
    redis.call('HSET', base .. ':ext', extkey(lvl, sid),
      int(now + ms) .. ' ' .. int(count) .. ' ' .. me)
  end
  return 1
end
if action == 'park' or action == 'release' then
  local keep = count
  if action == 'release' then
    keep = count - 1
    redis.call('HINCRBY', base .. ':stats', 'delivered', -1)
    if ARGV[6] == '1' then redis.call('HINCRBY', base .. ':stats', 'redelivered', -1) end
  end
  -- TIME 0: idle since 1970, so the next XAUTOCLAIM takes it at once
  redis.call('XCLAIM', s, G, '~parked', 0, sid, 'TIME', 0, 'RETRYCOUNT', keep, 'JUSTID')
  redis.call('HDEL', base .. ':ext', extkey(lvl, sid))
  signal(base, 1, 'p')
  return 1
end
local fields = redis.call('XRANGE', s, sid, sid)[1][2]
if action == 'delay' then
  local attempts = tonumber(field(fields, 'n') or '0') + count
  remove(base, lvl, sid)
  delay(base, lvl, rebuild(fields, {n = true}, {'n', int(attempts)}), now + tonumber(ARGV[6]))
elseif action == 'bury' then
  bury(base, dlq, ARGV[7], lvl, sid, fields, ARGV[6], tonumber(ARGV[8]))
  room(base)
else
  remove(base, lvl, sid)
  room(base)
end
tidy(base, lvl)
return 1
"""
)

STATS = (
    PRELUDE
    + r"""
-- KEYS: base, dead letters' base (the base itself: none)
-- ARGV: visibility timeout ms, max deliveries, name
-- Returns {ready, delayed, in flight, dead letters, oldest put time ms (-1), now ms,
--          delivered, redelivered, acked, dead lettered}.
local base, dlq = KEYS[1], KEYS[2]
if dlq == base then dlq = '' end
local vt, maxd, name = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local now = now_ms()
promote(base, now)
local ready, inflight, oldest, buried = 0, 0, -1, 0
local function older(t)
  if t and (oldest < 0 or tonumber(t) < oldest) then oldest = tonumber(t) end
end
for _, lvl in ipairs(redis.call('ZRANGE', base .. ':levels', 0, -1)) do
  local s = skey(base, lvl)
  local len = redis.call('XLEN', s)
  local pc = redis.call('XPENDING', s, G)[1]
  ready = ready + len - pc
  inflight = inflight + pc
  local head = redis.call('XRANGE', s, '-', '+', 'COUNT', 1)[1]
  if head then older(field(head[2], 't')) end
  for _, e in ipairs(reclaimable(s, vt)) do
    local sid = e[1]
    if not extended(base, lvl, sid, now) then
      local entry = redis.call('XRANGE', s, sid, sid)[1]
      inflight = inflight - 1
      if entry then
        local before = tonumber(field(entry[2], 'n') or '0') + e[4]
        if maxd > 0 and dlq ~= '' and before >= maxd then
          bury(base, dlq, name, lvl, sid, entry[2], expiry_reason(before), before)
          buried = buried + 1
        else
          ready = ready + 1
        end
      end
    end
  end
  if buried > 0 then tidy(base, lvl) end
end
if buried > 0 then room(base) end
local dk = base .. ':delayed'
local delayed = redis.call('ZCARD', dk)
local nextdue = redis.call('ZRANGE', dk, 0, 0)[1]
if nextdue then
  local t = cmsgpack.unpack(nextdue)
  older(field({unpack(t, 2)}, 't'))
end
local dead = 0
if dlq ~= '' then
  dead = redis.call('ZCARD', dlq .. ':delayed')
  for _, lvl in ipairs(redis.call('ZRANGE', dlq .. ':levels', 0, -1)) do
    dead = dead + redis.call('XLEN', skey(dlq, lvl))
  end
end
local c = redis.call('HMGET', base .. ':stats',
  'delivered', 'redelivered', 'acked', 'dead_lettered')
return {ready, delayed, inflight, dead, oldest, now,
  tonumber(c[1] or '0'), tonumber(c[2] or '0'), tonumber(c[3] or '0'), tonumber(c[4] or '0')}
"""
)

PURGE = (
    PRELUDE
    + r"""
-- KEYS: base. ARGV: visibility timeout ms. Deletes what is ready or delayed (not
-- what is in flight); returns how many.
local base, vt = KEYS[1], tonumber(ARGV[1])
local now = now_ms()
local dk = base .. ':delayed'
local purged = redis.call('ZCARD', dk)
redis.call('DEL', dk)
for _, lvl in ipairs(redis.call('ZRANGE', base .. ':levels', 0, -1)) do
  local s = skey(base, lvl)
  local pc = redis.call('XPENDING', s, G)[1]
  if pc == 0 then
    purged = purged + redis.call('XLEN', s)
    redis.call('UNLINK', s)
    redis.call('ZREM', base .. ':levels', lvl)
    redis.call('HDEL', base .. ':cur', lvl)
  else
    for _, e in ipairs(reclaimable(s, vt)) do
      if not extended(base, lvl, e[1], now) then
        remove(base, lvl, e[1])
        purged = purged + 1
      end
    end
    while true do
      local got = redis.call('XREADGROUP', 'GROUP', G, '~purge', 'COUNT', 1000, 'STREAMS', s, '>')
      if not got then break end
      local ids = {}
      for _, e in ipairs(got[1][2]) do ids[#ids + 1] = e[1] end
      if #ids == 0 then break end
      redis.call('XACK', s, G, unpack(ids))
      redis.call('XDEL', s, unpack(ids))
      purged = purged + #ids
    end
    redis.call('XGROUP', 'DELCONSUMER', s, G, '~purge')
    tidy(base, lvl)
  end
end
room(base)
return purged
"""
)

REDRIVE = (
    PRELUDE
    + r"""
-- KEYS: base, dead letters' base. ARGV: at most how many, visibility timeout ms.
-- Moves dead letters that wait (not those in flight) back, by priority level, in
-- the order they were dead-lettered, then delayed ones; returns how many moved.
local base, dlq = KEYS[1], KEYS[2]
local limit, vt = tonumber(ARGV[1]), tonumber(ARGV[2])
local now = now_ms()
local moved = 0
local function back(lvl, fields)
  ensure_level(base, lvl)
  redis.call('XADD', skey(base, lvl), '*', unpack(rebuild(fields, DROP_DEAD, {})))
  moved = moved + 1
end
for _, lvl in ipairs(redis.call('ZREVRANGE', dlq .. ':levels', 0, -1)) do
  if moved >= limit then break end
  local s = skey(dlq, lvl)
  for _, e in ipairs(reclaimable(s, vt)) do
    if moved >= limit then break end
    if not extended(dlq, lvl, e[1], now) then
      local entry = redis.call('XRANGE', s, e[1], e[1])[1]
      if entry then back(lvl, entry[2]) end
      remove(dlq, lvl, e[1])
    end
  end
  if moved < limit then
    local got = redis.call('XREADGROUP', 'GROUP', G, '~redrive', 'COUNT', limit - moved,
      'STREAMS', s, '>')
    if got then
      for _, e in ipairs(got[1][2]) do
        back(lvl, e[2])
        remove(dlq, lvl, e[1])
      end
    end
    redis.call('XGROUP', 'DELCONSUMER', s, G, '~redrive')
  end
  tidy(dlq, lvl)
end
if moved < limit then
  local dk = dlq .. ':delayed'
  local waiting = redis.call('ZRANGE', dk, 0, limit - moved - 1)
  for _, m in ipairs(waiting) do
    local t = cmsgpack.unpack(m)
    back(t[1], {unpack(t, 2)})
  end
  if #waiting > 0 then redis.call('ZREM', dk, unpack(waiting)) end
end
signal(base, moved, 'p')
if moved > 0 then room(dlq) end
return moved
"""
)

WAKE = (
    PRELUDE
    + r"""
-- KEYS: base. ARGV: getters to wake, whether to wake putters ('1').
signal(KEYS[1], tonumber(ARGV[1]), 'c')
if ARGV[2] == '1' then room(KEYS[1]) end
return 1
"""
)

CLEANUP = (
    PRELUDE
    + r"""
-- KEYS: base. ARGV: consumer, idle ms. Deletes `me` and every consumer idle for
-- longer than idle ms, from every group of the queue, if it holds no entry (a
-- consumer is created again by its next read; one with entries is kept, since
-- deleting it would orphan them).
local base, me, idle = KEYS[1], ARGV[1], tonumber(ARGV[2])
local removed = 0
local function sweep(s)
  if redis.call('EXISTS', s) == 0 then return end
  for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', s, G)) do
    local info = {}
    for i = 1, #c, 2 do info[c[i]] = c[i + 1] end
    if info['pending'] == 0 and (info['name'] == me or info['idle'] > idle) then
      redis.call('XGROUP', 'DELCONSUMER', s, G, info['name'])
      removed = removed + 1
    end
  end
end
for _, lvl in ipairs(redis.call('ZRANGE', base .. ':levels', 0, -1)) do sweep(skey(base, lvl)) end
sweep(base .. ':signal')
return removed
"""
)

SUBSCRIBE = r"""
-- KEYS: the topic's subscriptions (a sorted set, scored in subscription order).
-- ARGV: group. Idempotent; a group subscribing again after leaving goes last.
local key, group = KEYS[1], ARGV[1]
if redis.call('ZSCORE', key, group) then return 0 end
local last = redis.call('ZREVRANGE', key, 0, 0, 'WITHSCORES')
local score = 1
if #last > 0 then score = tonumber(last[2]) + 1 end
redis.call('ZADD', key, score, group)
return 1
"""


_SCRIPTS = {
    "put": PUT,
    "take": TAKE,
    "ack": ACK,
    "settle": SETTLE,
    "stats": STATS,
    "purge": PURGE,
    "redrive": REDRIVE,
    "wake": WAKE,
    "cleanup": CLEANUP,
    "subscribe": SUBSCRIBE,
}
