"""The memory backend: queues in this process, the fastest, gone when it exits."""

from __future__ import annotations

import heapq
import math
import sys
import threading
from collections import deque
from collections.abc import Callable, Mapping
from itertools import count
from typing import Any

from scalekit._waiting import Wakeups
from scalekit.errors import QueueFull
from scalekit.mq._body import JSON_OPTIONS, Body, Stored, encode, orjson_dumps
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
    check_timeout,
    close_all,
    expiry_reason,
    nack_reason,
    open_handle,
    settle_failed,
)
from scalekit.protocols import Clock

__all__ = ["MemoryBackend"]

_MISSING: Any = object()
_FREE_THREADED = not getattr(sys, "_is_gil_enabled", lambda: True)()
_dumps = orjson_dumps
_NO_DELAY = 0.0
_NO_PRIORITY = 0
_PRUNE_SLACK = 256
"""Settled deliveries the deadline deque may keep before it is pruned (beyond twice
those in flight). Small: each one holds its message, and a few hundred stay in the
CPU's caches where thousands do not (measured with a small dict body: put + get +
ack 2.9 us with 256, 5.3 us with 4,096; pruning stays O(1) per message)."""


def _peek(counter: count[int]) -> int:
    """The next value ``counter`` would give, without taking it."""
    return int(repr(counter)[6:-1])  # "count(N)"; copying a count is gone in 3.14


def _settle_failed(delivery: Delivery, action: str) -> None:
    """``action`` found ``delivery`` no longer in flight: say why (ack twice is fine)."""
    state = delivery._settled
    if state is None:
        # Time-outs, nacks and rejects set the state under the lock; only a lock-free
        # ack in another thread takes a delivery out of flight before saying so.
        with delivery._queue._lock:  # type: ignore[attr-defined]
            state = delivery._settled or "acked"
    settle_failed(delivery, action, state)


class _MemoryDelivery(Delivery):
    __slots__ = ()

    def ack(self) -> None:
        queue: _MemoryQueue = self._queue  # type: ignore[assignment]
        if queue._inflight.pop(self, _MISSING) is _MISSING:
            _settle_failed(self, "ack")
            return
        self._settled = "acked"
        next(queue._acked)
        if queue._putters.sleepers:
            queue._putters.wake(everyone=True)  # one of them may need more room


class _MemoryQueue(Queue):
    """One queue of a :class:`MemoryBackend`.

    Ready messages of priority 0 wait in a deque; other priorities in a heap;
    delayed ones in a heap by due time. In-flight deliveries are a dict (a
    delivery object is its own receipt: acking pops exactly it, atomically, so
    the common put/get/ack path needs no lock). Deadlines are a deque in delivery
    order, plus a heap for extended ones. The lock-free paths only ever append to
    or pop from these structures (never replace them).

    ``_due`` is when the locked maintenance must next run: the earliest delayed
    message, extended deadline or oldest deadline, and at the latest one
    visibility timeout after the last maintenance, since a lock-free get cannot
    create a deadline earlier than that. It is written under the lock only.
    """

    def __init__(
        self,
        name: str,
        options: QueueOptions,
        clock: Clock,
        dead_letters: _MemoryQueue | None,
        ids: count[int],
    ) -> None:
        super().__init__(name, options, clock, dead_letters)
        self._lock = threading.Lock()
        self._getters = Wakeups(self._lock)
        self._putters = Wakeups(self._lock)
        self._ids = ids
        self._vt = options.visibility_timeout
        # A bounded queue counts in flight exactly, and free-threaded CPython gives no
        # ordering between threads for the lock-free paths: both take the lock always.
        self._bounded = options.maxsize is not None or _FREE_THREADED
        self._fast_puts = not self._bounded  # and not closed: the lock-free put may run
        self._ready: deque[_MemoryDelivery] = deque()
        self._ranked: list[tuple[int, MessageId, _MemoryDelivery]] = []  # (-priority, id, d)
        self._delayed: list[tuple[float, MessageId, _MemoryDelivery]] = []
        self._inflight: dict[_MemoryDelivery, None] = {}
        self._expiry: deque[tuple[float, _MemoryDelivery]] = deque()
        self._late: list[tuple[float, int, _MemoryDelivery]] = []  # extended deadlines
        self._late_order = count()
        self._due = -math.inf  # when the locked maintenance must next run: now
        self._due_lowered = False  # set under the lock: wake every getter to re-plan
        self._prune_at = _PRUNE_SLACK
        self._dedup: dict[str, tuple[MessageId, float]] = {}
        self._dedup_order: deque[tuple[float, str]] = deque()
        self._delivered = count()
        self._redelivered = count()
        self._acked = count()
        self._dead_lettered = 0

    # -- producing ------------------------------------------------------------

    def put(
        self,
        body: Body,
        *,
        delay: float = _NO_DELAY,
        priority: int = _NO_PRIORITY,
        dedup_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> MessageId:
        if (  # identity with the defaults (any int 0 too): other values take the checked path
            delay is _NO_DELAY
            and priority is _NO_PRIORITY
            and headers is None
            and dedup_key is None
            and timeout is None
            and self._fast_puts
        ):  # the common put: no option to check, nothing but the body to encode
            kind = body.__class__
            if kind is bytes:
                stored: Stored = body
            elif kind is dict and _dumps is not None:  # encode_json, inlined: the usual body
                try:
                    data = _dumps(body, option=JSON_OPTIONS)
                except TypeError:
                    stored = encode(body)
                else:
                    stored = (data,) if data.find(b"null") < 0 else encode(body)
            else:
                stored = encode(body)
            message_id = next(self._ids)
            delivery = _MemoryDelivery(self, message_id, stored, None, 0, self._clock(), 1)
            self._ready.append(delivery)
            if self._closed:  # another thread closed it meanwhile
                self._withdraw(delivery)
            if self._getters.sleepers:
                self._getters.wake()
            return message_id
        return super().put(
            body,
            delay=delay,
            priority=priority,
            dedup_key=dedup_key,
            headers=headers,
            timeout=timeout,
        )

    def _withdraw(self, delivery: _MemoryDelivery) -> None:
        """Take back a message put while the queue was being closed."""
        with self._lock:
            try:
                self._ready.remove(delivery)
            except ValueError:
                return  # a consumer has it already: the put went through
        self._check_open()

    def _put(
        self, outgoing: list[Outgoing], dedup_key: str | None, timeout: float | None
    ) -> list[MessageId]:
        self._check_open()
        if not self._bounded:
            ids = self._store(outgoing, dedup_key)
        else:
            got = self._store_if_room(outgoing, dedup_key)
            if got is None and timeout != 0:
                got = self._putters.wait(
                    lambda: self._store_if_room(outgoing, dedup_key),
                    timeout,
                    lambda: None,
                    give_up=lambda: self._closed,
                )
            if got is None:
                self._check_open()
                raise QueueFull(
                    f"queue {self.name!r} is full ({self.maxsize} messages ready, delayed "
                    f"or in flight) and stayed full for {timeout or 0:g} s"
                )
            ids = got
        self._getters.wake(everyone=len(outgoing) > 1 or self._take_due_lowered())
        return ids

    def _take_due_lowered(self) -> bool:
        """Whether a locked path moved ``_due`` earlier since the last call (then every
        sleeping getter must re-plan its wait)."""
        if not self._due_lowered:
            return False
        with self._lock:
            lowered, self._due_lowered = self._due_lowered, False
        return lowered

    def _store_if_room(
        self, outgoing: list[Outgoing], dedup_key: str | None
    ) -> list[MessageId] | None:
        if self._closed:
            return None
        with self._lock:
            size = len(self._ready) + len(self._ranked) + len(self._delayed) + len(self._inflight)
            assert self.maxsize is not None
            if size + len(outgoing) > self.maxsize:
                return None
            return self._store_locked(outgoing, dedup_key)

    def _store(self, outgoing: list[Outgoing], dedup_key: str | None) -> list[MessageId]:
        with self._lock:
            return self._store_locked(outgoing, dedup_key)

    def _store_locked(self, outgoing: list[Outgoing], dedup_key: str | None) -> list[MessageId]:
        # close() sets the flag under the lock too: a store either lands before it
        # (and consumers, which look once more after seeing the close, drain it) or fails.
        self._check_open()
        now = self._clock()
        if dedup_key is not None:
            order = self._dedup_order
            while order and order[0][0] <= now:
                _, old = order.popleft()
                if self._dedup.get(old, (None, math.inf))[1] <= now:
                    del self._dedup[old]
            seen = self._dedup.get(dedup_key)
            if seen is not None:
                return [seen[0]]
        ids: list[MessageId] = []
        for stored, headers, priority, delay in outgoing:
            message_id = next(self._ids)
            ids.append(message_id)
            delivery = _MemoryDelivery(self, message_id, stored, headers, priority, now, 1)
            if delay > 0:
                self._delay(delivery, now + delay)
            else:
                self._make_ready(delivery, front=False)
        if dedup_key is not None and self.options.dedup_window > 0:
            expires = now + self.options.dedup_window
            self._dedup[dedup_key] = (ids[0], expires)
            self._dedup_order.append((expires, dedup_key))
        return ids

    def _make_ready(self, delivery: _MemoryDelivery, *, front: bool) -> None:
        if delivery.priority:
            heapq.heappush(self._ranked, (-delivery.priority, delivery.id, delivery))
        elif front:
            self._ready.appendleft(delivery)
        else:
            self._ready.append(delivery)

    def _delay(self, delivery: _MemoryDelivery, when: float) -> None:
        heapq.heappush(self._delayed, (when, delivery.id, delivery))
        self._lower_due(when)

    def _lower_due(self, when: float) -> None:
        """Under the lock: something happens at ``when``."""
        if when < self._due:
            self._due = when
            self._due_lowered = True

    # -- consuming ------------------------------------------------------------

    def get(self, timeout: float | None = None) -> Delivery | None:
        if timeout is not None and timeout != 0:
            check_timeout(timeout)
        now = self._clock()
        expiry = self._expiry
        if (
            self._bounded  # a bounded queue counts in flight exactly: the locked path
            or self._ranked
            or now >= self._due
            or len(expiry) > self._prune_at
        ):
            got = self._take_now(1, now)
            delivery = got[0] if got else None
        else:
            try:
                delivery = self._ready.popleft()
            except IndexError:
                delivery = None
            else:
                deadline = delivery._deadline = now + self._vt
                self._inflight[delivery] = None
                expiry.append((deadline, delivery))
                next(self._delivered)
                if delivery.attempt != 1:
                    next(self._redelivered)
                return delivery
        if delivery is not None or timeout == 0:
            return delivery
        return super().get(timeout)

    def _take(
        self, n: int, timeout: float | None, stop: Callable[[], bool] | None = None
    ) -> list[Delivery]:
        got = self._take_now(n, self._clock())
        if got or timeout == 0:
            return got
        give_up = self._gave_up if stop is None else lambda: self._closed or stop()
        return self._getters.wait(self._attempt(n), timeout, self._due_in, give_up) or []

    async def _take_async(self, n: int, timeout: float | None) -> list[Delivery]:
        got = self._take_now(n, self._clock())
        if got or timeout == 0:
            return got
        waited = await self._getters.wait_async(
            self._attempt(n), timeout, self._due_in, self._gave_up
        )
        return waited or []

    def _attempt(self, n: int) -> Any:
        return lambda: self._take_now(n, self._clock()) or None

    def _gave_up(self) -> bool:
        return self._closed

    def _due_in(self) -> float | None:
        """Seconds a getter with nothing to take may sleep: until the maintenance is
        due (a delayed message, a deadline, or one visibility timeout); None: no limit."""
        due = self._due
        return None if due == math.inf else due - self._clock()

    def _take_now(self, n: int, now: float) -> list[Delivery]:
        with self._lock:
            expiry = self._expiry
            left = False
            if now >= self._due or len(expiry) > self._prune_at:
                left = self._maintain(now)
            taken: list[Delivery] = []
            ready, ranked = self._ready, self._ranked
            while len(taken) < n:
                if ranked and (ranked[0][0] < 0 or not ready):
                    delivery = heapq.heappop(ranked)[2]
                else:
                    try:
                        delivery = ready.popleft()
                    except IndexError:  # empty, or emptied by a lock-free get
                        if not ranked:
                            break
                        delivery = heapq.heappop(ranked)[2]
                deadline = delivery._deadline = now + self._vt
                self._inflight[delivery] = None
                expiry.append((deadline, delivery))
                next(self._delivered)
                if delivery.attempt != 1:
                    next(self._redelivered)
                taken.append(delivery)
        self._wake_after(left)
        return taken

    def _maintain(self, now: float) -> bool:
        """Under the lock: release due delayed messages, time out expired deliveries,
        drop settled ones from the deadline queue, recompute ``_due``. Returns
        whether messages left the queue (room for blocked putters).

        Lock-free gets may append to the deadline deque meanwhile: it is only
        popped from and appended to here, never replaced."""
        left = False
        delayed = self._delayed
        while delayed and delayed[0][0] <= now:
            self._make_ready(heapq.heappop(delayed)[2], front=False)
        expiry, late = self._expiry, self._late
        while expiry and expiry[0][0] <= now:
            deadline, delivery = expiry.popleft()
            if delivery._deadline == deadline:
                left |= self._time_out(delivery)
        while late and late[0][0] <= now:
            deadline, _, delivery = heapq.heappop(late)
            if delivery._deadline == deadline:
                left |= self._time_out(delivery)
        if len(expiry) > self._prune_at:
            self._prune()
        try:
            oldest = expiry[0][0]
        except IndexError:
            oldest = math.inf
        self._due = min(
            delayed[0][0] if delayed else math.inf,
            late[0][0] if late else math.inf,
            oldest,
            now + self._vt,  # no lock-free get can create an earlier deadline
        )
        return left

    def _prune(self) -> None:
        """Under the lock: drop settled deliveries from the deadline deque, in place
        (lock-free gets may append to it meanwhile), keeping deadline order."""
        expiry, inflight = self._expiry, self._inflight
        kept = []
        for _ in range(len(expiry)):  # the entries there now; gets may append more
            entry = expiry.popleft()
            if entry[1] in inflight and entry[1]._deadline == entry[0]:
                kept.append(entry)
        expiry.extendleft(reversed(kept))  # back in front of any appended meanwhile, in order
        self._prune_at = 2 * len(expiry) + _PRUNE_SLACK

    def _time_out(self, delivery: _MemoryDelivery) -> bool:
        """Under the lock: the delivery's deadline passed; deliver it again or bury it."""
        if self._inflight.pop(delivery, _MISSING) is _MISSING:
            return False  # acked (lock-free) meanwhile
        delivery._settled = "timed out"
        if self._exhausted(delivery.attempt):
            self._bury(delivery, expiry_reason(delivery.attempt))
            return True
        self._make_ready(self._again(delivery), front=True)
        return False

    def _again(self, delivery: _MemoryDelivery) -> _MemoryDelivery:
        return _MemoryDelivery(
            self,
            delivery.id,
            delivery._stored,
            delivery._headers,
            delivery.priority,
            delivery.enqueued_at,
            delivery.attempt + 1,
        )

    def _bury(self, delivery: _MemoryDelivery, reason: str) -> None:
        """Under the lock: move the message to the dead letters."""
        dead = self._dead_letters
        assert isinstance(dead, _MemoryQueue)
        headers = self._dead_letter_headers(delivery._headers, reason, delivery.attempt)
        buried = _MemoryDelivery(
            dead, delivery.id, delivery._stored, headers, delivery.priority, delivery.enqueued_at, 1
        )
        with dead._lock:
            dead._make_ready(buried, front=False)
        self._dead_lettered += 1
        self._log_dead_letter(delivery.id, reason, delivery.attempt)
        dead._getters_to_wake = True  # woken by _wake_after, once the locks are released

    # -- settling -------------------------------------------------------------

    def _ack(self, delivery: Delivery) -> None:  # pragma: no cover - _MemoryDelivery.ack
        delivery.ack()

    def _settle(self, delivery: Delivery, action: str) -> bool:
        """Under the lock: take ``delivery`` out of flight; False if it was not in it."""
        if self._inflight.pop(delivery, _MISSING) is _MISSING:  # type: ignore[call-overload]
            return False
        delivery._settled = action
        return True

    def _nack(self, delivery: Delivery, delay: float, reason: str | None) -> None:
        assert isinstance(delivery, _MemoryDelivery)
        with self._lock:
            settled = self._settle(delivery, "nacked")
            if settled:
                if self._exhausted(delivery.attempt):
                    self._bury(delivery, nack_reason(reason, delivery.attempt))
                    buried = True
                else:
                    buried = False
                    again = self._again(delivery)
                    if delay > 0:
                        self._delay(again, self._clock() + delay)
                    else:
                        self._make_ready(again, front=True)
        if not settled:
            _settle_failed(delivery, "nack")
            return
        self._after_move(buried)

    def _reject(self, delivery: Delivery, reason: str) -> None:
        assert isinstance(delivery, _MemoryDelivery)
        with self._lock:
            settled = self._settle(delivery, "rejected")
            if settled:
                if self._dead_letters is None:
                    pass  # a dead-letter queue: rejecting from it deletes
                else:
                    self._bury(delivery, reason)
        if not settled:
            _settle_failed(delivery, "reject")
            return
        self._after_move(True)

    def _after_move(self, left: bool) -> None:
        """A message went back to ready or left: wake getters, and more (no lock held)."""
        self._getters.wake()
        self._wake_after(left)

    _getters_to_wake = False

    def _wake_after(self, left: bool) -> None:
        """Wake the dead letters' getters if messages were buried, and blocked putters
        if messages left the queue (call without holding a lock)."""
        dead = self._dead_letters
        if isinstance(dead, _MemoryQueue) and dead._getters_to_wake:
            dead._getters_to_wake = False
            dead._getters.wake(everyone=True)
        if left and self._putters.sleepers:
            self._putters.wake(everyone=True)
        if self._take_due_lowered():
            self._getters.wake(everyone=True)

    def _extend(self, delivery: Delivery, seconds: float) -> None:
        assert isinstance(delivery, _MemoryDelivery)
        with self._lock:
            extended = delivery in self._inflight
            if extended:
                deadline = delivery._deadline = self._clock() + seconds
                heapq.heappush(self._late, (deadline, next(self._late_order), delivery))
                self._lower_due(deadline)
        if not extended:
            _settle_failed(delivery, "extend")
            return
        self._wake_after(False)

    _blocking_io = False

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._fast_puts = False
        self._wake_all()

    def _wake_all(self) -> None:
        self._getters.wake(everyone=True)
        self._putters.wake(everyone=True)

    # -- housekeeping -----------------------------------------------------------

    def _counts(self) -> tuple[int, int, int, float | None]:
        """Under the lock: ready, delayed, in flight, oldest put time."""
        oldest = min(
            (
                d.enqueued_at
                for d in (
                    *self._ready,
                    *(entry[2] for entry in self._ranked),
                    *(entry[2] for entry in self._delayed),
                    *self._inflight,
                )
            ),
            default=None,
        )
        return (
            len(self._ready) + len(self._ranked),
            len(self._delayed),
            len(self._inflight),
            oldest,
        )

    def stats(self) -> QueueStats:
        now = self._clock()
        with self._lock:
            left = self._maintain(now)
            ready, delayed, in_flight, oldest = self._counts()
            counters = (
                _peek(self._delivered),
                _peek(self._redelivered),
                _peek(self._acked),
                self._dead_lettered,
            )
        self._wake_after(left)
        dead = 0
        if isinstance(self._dead_letters, _MemoryQueue):
            dlq = self._dead_letters
            with dlq._lock:
                dead = len(dlq._ready) + len(dlq._ranked) + len(dlq._delayed) + len(dlq._inflight)
        return QueueStats(
            name=self.name,
            ready=ready,
            delayed=delayed,
            in_flight=in_flight,
            dead_letters=dead,
            oldest_age=None if oldest is None else max(0.0, now - oldest),
            delivered=counters[0],
            redelivered=counters[1],
            acked=counters[2],
            dead_lettered=counters[3],
        )

    def purge(self) -> int:
        with self._lock:
            purged = len(self._ranked) + len(self._delayed)
            self._ranked.clear()
            self._delayed.clear()
            ready = self._ready
            while True:  # popped one by one: lock-free gets may pop too, and puts append
                try:
                    ready.popleft()
                except IndexError:
                    break
                purged += 1
            self._maintain(self._clock())
        self._wake_after(True)
        return purged

    def redrive(self, limit: int | None = None) -> int:
        dead = self._redrive_from(limit)
        wanted = math.inf if limit is None else limit
        moving: list[_MemoryDelivery] = []
        left = False
        with self._lock:  # this queue's lock, then its dead letters' (as _bury takes them)
            if self.maxsize is not None:  # the room now, counted as a put counts it
                left = self._maintain(self._clock())
                size = len(self._ready) + len(self._ranked) + len(self._delayed)
                wanted = min(wanted, max(0, self.maxsize - size - len(self._inflight)))
            with dead._lock:
                dead._maintain(dead._clock())
                while len(moving) < wanted:  # oldest first: the ready ones arrived in order
                    try:
                        moving.append(dead._ready.popleft())  # lock-free gets may pop too
                    except IndexError:
                        break
                budget = wanted - len(moving)
                if budget > 0:
                    rest = sorted(
                        [*(e[2] for e in dead._ranked), *(e[2] for e in dead._delayed)],
                        key=lambda d: d.id,
                    )
                    chosen = rest if budget >= len(rest) else rest[: int(budget)]
                    taken = {id(d) for d in chosen}
                    moving += chosen
                    dead._ranked = [e for e in dead._ranked if id(e[2]) not in taken]
                    heapq.heapify(dead._ranked)
                    dead._delayed = [e for e in dead._delayed if id(e[2]) not in taken]
                    heapq.heapify(dead._delayed)
            for d in moving:
                headers = {
                    k: v
                    for k, v in (d._headers or {}).items()
                    if k not in (DEAD_LETTER_REASON, DEAD_LETTER_QUEUE, DEAD_LETTER_ATTEMPTS)
                }
                again = _MemoryDelivery(
                    self, d.id, d._stored, headers or None, d.priority, d.enqueued_at, 1
                )
                self._make_ready(again, front=False)
        self._wake_after(left)
        if moving:
            self._getters.wake(everyone=True)
        return len(moving)

    def _check(self) -> None:
        """Assert the queue's invariants (and its dead letters'), for tests; call
        it when no other thread uses the queue. Runtime complexity: O(n).

        Every message is in exactly one place; ready priority-0 messages are in the
        line and others in the heap; the heaps are heaps; every delivery in flight
        has a live deadline entry and is unsettled; ``_due`` is no later than the
        earliest deadline or delay; a bounded queue holds at most ``maxsize``;
        the counters agree with each other."""
        with self._lock:
            places: dict[MessageId, str] = {}

            def place(delivery: _MemoryDelivery, where: str) -> None:
                assert delivery.id not in places, (
                    f"message {delivery.id!r} is {places[delivery.id]} and {where}"
                )
                assert delivery._queue is self, f"message {delivery.id!r} of another queue"
                places[delivery.id] = where

            for delivery in self._ready:
                assert not delivery.priority, f"priority {delivery.priority} in the line"
                assert delivery._settled is None
                place(delivery, "ready")
            for rank, message_id, delivery in self._ranked:
                assert (rank, message_id) == (-delivery.priority, delivery.id)
                assert rank
                place(delivery, "ranked")
            for _, message_id, delivery in self._delayed:
                assert message_id == delivery.id
                place(delivery, "delayed")
            live = {id(d) for deadline, d in self._expiry if d._deadline == deadline}
            live |= {id(d) for deadline, _, d in self._late if d._deadline == deadline}
            for delivery in self._inflight:
                assert delivery._settled is None, f"{delivery!r} is settled but in flight"
                assert id(delivery) in live, f"{delivery!r} has no deadline entry"
                place(delivery, "in flight")
            for heap in (self._ranked, self._delayed, self._late):
                for i in range(1, len(heap)):
                    assert heap[(i - 1) // 2][:2] <= heap[i][:2], "a heap out of order"
            # a lock-free get may have read the clock just before another thread's
            # maintenance: a deadline a little before ``_due`` is accepted
            due = [d._deadline for d in self._inflight] + [e[0] for e in self._delayed]
            assert not due or self._due <= min(due) + 1.0, f"_due {self._due} > {min(due)}"
            if self.maxsize is not None:
                assert len(places) <= self.maxsize, f"{len(places)} > maxsize {self.maxsize}"
            delivered, redelivered, acked = (
                _peek(self._delivered),
                _peek(self._redelivered),
                _peek(self._acked),
            )
            assert redelivered <= delivered, f"{redelivered} redelivered of {delivered}"
            assert acked <= delivered, f"{acked} acked of {delivered} delivered"
        if isinstance(self._dead_letters, _MemoryQueue):
            self._dead_letters._check()


class MemoryBackend:
    """Queues in this process's memory: the fastest backend, and the default.

    Messages are lost when the process exits; use :class:`SqliteBackend` to keep
    them. One backend holds any number of queues and topics; every thread and
    event loop of the process may use them.
    """

    name = "memory"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: dict[str, _MemoryQueue] = {}
        self._subscriptions: dict[str, list[str]] = {}

    def open_queue(self, name: str, options: QueueOptions | None, clock: Clock) -> Queue:
        """The queue ``name`` (created on first use) with its dead-letter queue."""
        with self._lock:
            queue = open_handle(self._queues.get(name), name, options, clock)
            if queue is not None:
                return queue
            options = options or QueueOptions()
            ids = count(1)
            dead = _MemoryQueue(
                f"{name}.dlq",
                QueueOptions(options.visibility_timeout, None, None, options.dedup_window),
                clock,
                None,
                ids,
            )
            queue = self._queues[name] = _MemoryQueue(name, options, clock, dead, ids)
            return queue

    def subscribe(self, topic: str, group: str) -> None:
        with self._lock:
            groups = self._subscriptions.setdefault(topic, [])
            if group not in groups:
                groups.append(group)

    def unsubscribe(self, topic: str, group: str) -> None:
        with self._lock:
            groups = self._subscriptions.get(topic, [])
            if group in groups:
                groups.remove(group)

    def subscribers(self, topic: str) -> list[str]:
        with self._lock:
            return list(self._subscriptions.get(topic, []))

    def close(self) -> None:
        """Close every queue and its dead letters (waking whoever waits on them)."""
        with self._lock:
            queues = list(self._queues.values())
        close_all(queues)
