"""One handle on a queue of the Redis backend: put, take, settle, wait."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from scalekit._waiting import AsyncWaiters, Handoff, Waiter
from scalekit.errors import BackendError, QueueFull
from scalekit.mq._body import UndecodableBody, dumps_headers, to_stored
from scalekit.mq._queue import (
    Delivery,
    MessageId,
    Outgoing,
    Queue,
    QueueOptions,
    QueueStats,
    nack_reason,
    settle_failed,
)
from scalekit.mq._redis._delivery import RedisDelivery, signal_kind
from scalekit.mq._redis._scripts import GROUP, OperationIds, backend_error, glob, ms
from scalekit.protocols import Clock

if TYPE_CHECKING:
    from scalekit.mq._redis._backend import RedisStreamsBackend

__all__ = ["RedisQueue"]

log = logging.getLogger("scalekit.mq")

_IDLE_CONSUMER_MS = 600_000  # close() deletes consumers idle this long with nothing pending
_REDRIVE_BATCH = 1000


class RedisQueue(Queue):
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
        dead_letters: RedisQueue | None,
        base: str,
        ids_key: str,
    ) -> None:
        super().__init__(name, options, clock, dead_letters)
        self._backend = backend
        self._client = backend.client
        self._scripts = backend._scripts
        self._errors = backend._errors
        self._dropped = backend._dropped
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
        self._waiters = AsyncWaiters()
        self._pumping = False  # a pump thread blocks in Redis for the waiting tasks
        self._pump_pid = -1
        self._pid = -1
        self._consumer = ""
        self._ops = OperationIds()

    @property
    def consumer(self) -> str:
        """This handle's consumer name in the groups: host, process id and a random
        suffix (a new one in a forked child)."""
        pid = os.getpid()
        if pid != self._pid:
            self._consumer = f"{socket.gethostname()}:{pid}:{secrets.token_hex(4)}"
            self._pid = pid
        return self._consumer

    def _run(
        self, script: str, keys: list[str], args: list[Any], what: str, op: bool = False
    ) -> Any:
        """Run ``script``; with ``op``, give it a fresh operation id (its last
        argument), so that a run again by the client's retry changes nothing."""
        if op:
            args = [*args, self._ops()]
        try:
            return self._scripts[script](keys=keys, args=args)
        except self._errors as exc:
            raise backend_error(what, self.name, exc) from exc

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
        args: list[Any] = [self.maxsize or 0, dedup, ms(self.options.dedup_window), len(outgoing)]
        for stored, headers, priority, delay in outgoing:
            kind, data = to_stored(stored)
            args += (kind, data, dumps_headers(headers) or "", str(priority), ms(delay))
        args.append(self._ops())  # one operation id for every try of this put
        keys = [self._base, self._ids_key]
        deadline = None if timeout is None else time.monotonic() + timeout
        dropped = False
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
            try:
                self._wait_for_room(value, wait)
            except BackendError as exc:
                dropped = self._dropped_once(exc, dropped)
            else:
                dropped = False
            self._check_open()

    def _wait_for_room(self, last: bytes, seconds: float) -> None:
        with self._lock:
            self._putters += 1
        try:
            self._client.xread({self._room_key: last}, count=1, block=max(1, int(seconds * 1000)))
        except self._errors as exc:
            raise backend_error("waiting for room", self.name, exc) from exc
        finally:
            with self._lock:
                self._putters -= 1

    def _dropped_once(self, exc: BackendError, dropped: bool) -> bool:
        """A blocking wait failed with ``exc``: True if its connection was lost
        (CLIENT KILL, an idle timeout of the server or a proxy, a failover) and the
        wait before it was not (``dropped``); then the caller looks again, as after
        a wake-up, since waiting changes nothing in Redis and the next script call
        raises if Redis is gone. Any other failure, or a second loss in a row, is
        raised."""
        if dropped or not isinstance(exc.__cause__, self._dropped):
            raise exc
        return True

    # -- consuming ------------------------------------------------------------

    def _take_now(self, n: int, arm: bool) -> tuple[list[Delivery], int]:
        """Up to ``n`` deliveries now, and if none, in how many ms something may
        fall due (-1: not known). ``arm``: if none, make the signal stream ready to
        block on. Cost: one script call, O(levels + n + d) in Redis with d delayed
        messages falling due (at most 1,000 moved per call); one more per damaged
        entry, which goes to the dead letters."""
        while True:
            got, due_in, damaged = self._take_once(n, arm)
            if got or not damaged:
                return got, due_in

    def _take_once(self, n: int, arm: bool) -> tuple[list[Delivery], int, bool]:
        owner = self.consumer
        reply = self._run(
            "take",
            self._keys,
            [owner, n, self._vt_ms, self._max_deliveries, self.name, 1 if arm else 0],
            "get",
            op=True,
        )
        count = reply[0]
        self._log_expired(reply[-1])
        if not count:
            return [], reply[1], False
        deadline = self._clock() + self.visibility_timeout
        got: list[Delivery] = []
        for j in range(1, 4 * count, 4):
            level, sid, delivery_count, fields = reply[j : j + 4]
            entry = dict(zip(fields[0::2], fields[1::2], strict=True))
            try:
                delivery = RedisDelivery(self, entry, level, sid, delivery_count, owner, deadline)
            except UndecodableBody as exc:
                damaged = self._damaged(entry, level, sid, delivery_count, owner, deadline, exc)
                if damaged is None:
                    continue
                delivery = damaged
            got.append(delivery)
        return got, -1, True

    def _log_expired(self, expired: list[bytes]) -> None:
        """Log the messages a script dead-lettered for their visibility timeout."""
        for j in range(0, len(expired), 2):
            attempts = int(expired[j + 1])
            reason = f"not settled within the visibility timeout on delivery {attempts}"
            self._log_dead_letter(expired[j].decode(errors="replace"), reason, attempts)

    def _damaged(
        self,
        entry: dict[bytes, bytes],
        level: bytes,
        sid: bytes,
        count: int,
        owner: str,
        deadline: float,
        exc: UndecodableBody,
    ) -> RedisDelivery | None:
        """An entry taken that cannot be decoded. A queue's goes to the dead letters
        with the reason, its data kept as a bytes body (None: nothing to deliver);
        a dead-letter queue's is delivered so, with the reason."""
        reason = f"undecodable message: {exc}"
        log.error("%r: entry %r cannot be decoded (%s)", self, sid, exc)
        attempts = count + _int_or(entry.get(b"n"), 0)
        if self._dead_letters is not None:
            args = ["bury", level, sid, owner, count, reason, self.name, attempts, 1]
            self._run("settle", self._keys, args, "bury", op=True)
            message_id = entry.get(b"i", sid)
            self._log_dead_letter(message_id.decode(errors="replace"), reason, attempts)
            return None
        raw = {b"i": entry.get(b"i", sid), b"k": b"b", b"d": entry.get(b"d", b""), b"t": b"0"}
        raw[b"r"], raw[b"q"], raw[b"a"] = reason.encode(), self.name.encode(), b"%d" % attempts
        return RedisDelivery(self, raw, level, sid, count, owner, deadline)

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
            raise backend_error("waiting for a message", self.name, exc) from exc
        finally:
            with self._lock:
                self._getters -= 1
        return signal_kind(reply)

    def _take(
        self, n: int, timeout: float | None, stop: Callable[[], bool] | None = None
    ) -> list[Delivery]:
        """Cost: one script call; waiting adds a blocking read and a script call
        per wake-up (a put, or ``block`` seconds)."""
        got, due_in = self._take_now(n, timeout != 0)
        if got or timeout == 0:
            return got
        deadline = None if timeout is None else time.monotonic() + timeout
        dropped = False
        while not (self._closed or (stop is not None and stop())):
            wait = self._wait_seconds(deadline, due_in)
            if wait is None:
                break
            try:
                self._sleep(wait)
            except BackendError as exc:
                dropped = self._dropped_once(exc, dropped)
            else:
                dropped = False
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
        self, step: Callable[[Handoff[list[Delivery]]], tuple[list[Delivery], int]]
    ) -> tuple[list[Delivery], int]:
        handoff: Handoff[list[Delivery]] = Handoff()
        try:
            return await asyncio.to_thread(step, handoff)
        except asyncio.CancelledError:
            stolen = handoff.cancel()
            if stolen:  # the thread finished, but its result never reached us
                asyncio.get_running_loop().run_in_executor(None, self._give_back, stolen)
            raise

    def _take_step(
        self, n: int, arm: bool, handoff: Handoff[list[Delivery]]
    ) -> tuple[list[Delivery], int]:
        """On a worker thread: take, and hand over (or give back if cancelled)."""
        got, due_in = self._take_now(n, arm)
        if got and not handoff.offer(got):
            self._give_back(got)
            return [], -1
        return got, due_in

    def _waiter(self, loop: asyncio.AbstractEventLoop) -> Waiter:
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
            assert isinstance(delivery, RedisDelivery)
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

    def _settle(self, delivery: RedisDelivery, action: list[Any]) -> bool:
        args = [
            action[0],
            delivery._level,
            delivery._sid,
            delivery._owner,
            delivery._count,
            *action[1:],
        ]
        return bool(self._run("settle", self._keys, args, action[0], op=True))

    def _ack(self, delivery: Delivery) -> None:
        """Cost: one script call, O(log n) in Redis."""
        assert isinstance(delivery, RedisDelivery)
        if delivery._settled is None:
            args = [delivery._level, delivery._sid, delivery._owner, delivery._count]
            if self._run("ack", [self._base], args, "ack", op=True):
                delivery._settled = "acked"
                return
        settle_failed(delivery, "ack")

    def _nack(self, delivery: Delivery, delay: float, reason: str | None) -> None:
        """Cost: one script call, O(log n) in Redis."""
        assert isinstance(delivery, RedisDelivery)
        if delivery._settled is None:
            if self._exhausted(delivery.attempt):
                why = nack_reason(reason, delivery.attempt)
                action: list[Any] = ["bury", why, self.name, delivery.attempt, 0]
            elif delay > 0:
                action = ["delay", ms(delay)]
            else:
                action = ["park"]
            if self._settle(delivery, action):
                delivery._settled = "nacked"
                if action[0] == "bury":
                    self._log_dead_letter(delivery.id, action[1], delivery.attempt)
                return
        settle_failed(delivery, "nack")

    def _reject(self, delivery: Delivery, reason: str) -> None:
        """Cost: one script call, O(log n) in Redis."""
        assert isinstance(delivery, RedisDelivery)
        if delivery._settled is None:
            if self._dead_letters is None:  # a dead-letter queue: rejecting deletes
                action: list[Any] = ["drop"]
            else:
                action = ["bury", reason, self.name, delivery.attempt, 0]
            if self._settle(delivery, action):
                delivery._settled = "rejected"
                if action[0] == "bury":
                    self._log_dead_letter(delivery.id, reason, delivery.attempt)
                return
        settle_failed(delivery, "reject")

    def _extend(self, delivery: Delivery, seconds: float) -> None:
        """Cost: one script call, O(log n) in Redis."""
        assert isinstance(delivery, RedisDelivery)
        if delivery._settled is None and self._settle(
            delivery, ["extend", ms(seconds), self._vt_ms]
        ):
            delivery._deadline = self._clock() + seconds
            return
        settle_failed(delivery, "extend")

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
                if isinstance(queue, RedisQueue) and queue._pid == os.getpid():
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
        (ready, delayed, in_flight, dead, oldest, now, *counters, expired) = self._run(
            "stats", self._keys, [self._vt_ms, self._max_deliveries, self.name], "stats"
        )
        self._log_expired(expired)
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
        purged: int = self._run("purge", [self._base], [self._vt_ms], "purge", op=True)
        return purged

    def redrive(self, limit: int | None = None) -> int:
        """Cost: one script call per 1,000 messages, O(m) in Redis for m moved."""
        dead = self._redrive_from(limit)
        moved = 0
        while limit is None or moved < limit:
            batch = _REDRIVE_BATCH if limit is None else min(_REDRIVE_BATCH, limit - moved)
            done: int = self._run(
                "redrive",
                [self._base, dead._base],
                [batch, dead._vt_ms, self.maxsize or 0],
                "redrive",
                op=True,
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
            for key in client.scan_iter(match=glob(self._base) + ":s:*", count=1000)
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
        if self.maxsize is not None:  # counted as mq_put.lua counts it
            size = client.zcard(self._base + ":delayed")
            size += sum(client.xlen(f"{self._base}:s:{level}") for level in levels)
            assert size <= self.maxsize, f"{size} > maxsize {self.maxsize}"


def _int_or(data: bytes | None, default: int) -> int:
    try:
        return int(data) if data is not None else default
    except ValueError:
        return default
