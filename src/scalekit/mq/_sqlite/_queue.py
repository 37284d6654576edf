"""A queue of the SQLite backend: rows of one table, one index; and its deliveries."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from scalekit._waiting import Handoff, Wakeups
from scalekit.errors import BackendError, ClosedError, DeliveryExpired, QueueFull
from scalekit.mq._body import (
    Stored,
    UndecodableBody,
    dumps_headers,
    from_stored,
    loads_headers,
    to_stored,
)
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
    expiry_reason,
    nack_reason,
    settle_failed,
)
from scalekit.protocols import Clock

if TYPE_CHECKING:
    from scalekit.mq._sqlite._backend import SqliteBackend

__all__ = ["SqliteQueue", "next_ids", "scalar"]

log = logging.getLogger("scalekit.mq")

_READY, _DELAYED, _IN_FLIGHT = 0, 1, 2

_SELECT_READY = (
    "SELECT id, kind, body, headers, priority, enqueued_at, attempts FROM mq_messages "
    "WHERE queue = ? AND state = 0 ORDER BY rank, seq LIMIT ?"
)
# Delayed messages come due by (due time, id); expired deliveries are handled in
# the memory backend's order: those never extended by (deadline, receipt), then
# the extended ones by (deadline, order of the extension).
_SELECT_DUE = (
    "SELECT state, id, priority, attempts, headers FROM mq_messages "
    "WHERE queue = ? AND state IN (1, 2) AND rank <= ? "
    "ORDER BY state, turn IS NOT NULL, rank, coalesce(turn, seq)"
)
_DELIVER = (
    "UPDATE mq_messages SET state = 2, rank = ?, seq = ?, turn = NULL, "
    "attempts = attempts + 1 WHERE id = ?"
)
_COUNT_DELIVERIES = (
    "UPDATE mq_queues SET delivered = delivered + ?, redelivered = redelivered + ? WHERE id = ?"
)
_ACK = "DELETE FROM mq_messages WHERE id = ? AND queue = ? AND state = 2 AND seq = ?"
_COUNT_ACKS = "UPDATE mq_queues SET acked = acked + ?, size = size - ? WHERE id = ?"
_HELD = (
    "SELECT priority, headers FROM mq_messages WHERE id = ? AND queue = ? AND state = 2 AND seq = ?"
)
# Redrive takes dead letters oldest first, as the memory backend does: the ready
# ones of priority 0 in their line's order, then the others (other priorities, and
# delayed ones) by id.
_SELECT_DEAD = (
    "SELECT id, priority, headers FROM mq_messages WHERE queue = ? AND state IN (0, 1) "
    "ORDER BY NOT (state = 0 AND priority = 0), "
    "CASE WHEN state = 0 AND priority = 0 THEN seq ELSE id END LIMIT ?"
)
_INSERT = (
    "INSERT INTO mq_messages "
    "(id, queue, state, rank, seq, priority, attempts, enqueued_at, kind, body, headers) "
    "VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?)"
)


def scalar(conn: sqlite3.Connection, sql: str, *params: Any) -> Any:
    """The one value of a query that returns one row."""
    return conn.execute(sql, params).fetchone()[0]


def next_ids(conn: sqlite3.Connection, n: int) -> int:
    """Take ``n`` fresh ids (also places at the back of a line); return the first."""
    last: int = scalar(conn, "SELECT last FROM mq_sequence WHERE id = 1")
    conn.execute("UPDATE mq_sequence SET last = ? WHERE id = 1", (last + n,))
    return last + 1


_dumps_headers = dumps_headers


def _loads_headers(text: str | None) -> dict[str, str] | None:
    """Headers of a row; None if they are damaged (a dead letter keeps its reason)."""
    try:
        return loads_headers(text)
    except UndecodableBody:
        return None


def _decoded(row: Sequence[Any]) -> tuple[Stored, dict[str, str] | None]:
    """The body and headers of a selected row; :class:`UndecodableBody` if damaged."""
    return from_stored(row[1], row[2]), loads_headers(row[3])


class _SqliteDelivery(Delivery):
    __slots__ = ("_receipt",)

    def __init__(
        self,
        queue: SqliteQueue,
        row: Sequence[Any],
        decoded: tuple[Stored, dict[str, str] | None],
        receipt: int,
    ) -> None:
        message_id, _, _, _, priority, enqueued_at, attempts = row
        super().__init__(
            queue, message_id, decoded[0], decoded[1], priority, enqueued_at, attempts + 1
        )
        self._receipt = receipt


@dataclass
class _Moved:
    """What a transaction's housekeeping moved, to wake the right waiters after it."""

    readied: bool = False  # messages became ready in this queue
    left: bool = False  # messages left this queue (room for blocked putters)
    buried: bool = False  # messages went to the dead letters


class SqliteQueue(Queue):
    """One queue of a :class:`SqliteBackend`: rows of one table, one index.

    Each operation is one transaction (shared with other threads' operations by
    group commit). Runtime complexity: put, get and every settlement O(log n)
    (index lookups), plus O(k log n) for the k delayed messages that became due
    or deliveries that timed out since the last look (released lazily, inside
    gets and stats); ``put_many``/``get_many`` of k messages O(k log n) in one
    transaction; ``stats`` and ``purge`` O(n).
    """

    _blocking_io = True

    def __init__(
        self,
        backend: SqliteBackend,
        name: str,
        queue_id: int,
        options: QueueOptions,
        clock: Clock,
        dead_letters: SqliteQueue | None,
    ) -> None:
        super().__init__(name, options, clock, dead_letters)
        self._backend = backend
        self._store = backend._store
        self._qid = queue_id
        self._dead_id = dead_letters._qid if dead_letters is not None else None
        self._lock = threading.Lock()
        self._getters = Wakeups(self._lock)
        self._putters = Wakeups(self._lock)
        self._events = 0  # bumped before every wake-up of getters (see _take_async)

    # -- producing ------------------------------------------------------------

    def _put(
        self, outgoing: list[Outgoing], dedup_key: str | None, timeout: float | None
    ) -> list[MessageId]:
        self._check_open()
        store = self._put_now(outgoing, dedup_key)
        ids = store()
        if ids is None and timeout != 0:
            ids = self._putters.wait(
                lambda: None if self._closed else store(),
                timeout,
                self._poll_wait,
                give_up=lambda: self._closed,
            )
        if ids is None:
            self._check_open()
            raise QueueFull(
                f"queue {self.name!r} is full ({self.maxsize} messages ready, delayed "
                f"or in flight) and stayed full for {timeout or 0:g} s"
            )
        self._wake_getters()
        return ids

    def _put_now(
        self, outgoing: list[Outgoing], dedup_key: str | None
    ) -> Callable[[], list[MessageId] | None]:
        qid, maxsize, window = self._qid, self.maxsize, self.options.dedup_window
        clock = self._clock
        rows = []
        for stored, headers, priority, delay in outgoing:
            kind, data = to_stored(stored)
            rows.append((kind, data, _dumps_headers(headers), priority, delay))

        def job(conn: sqlite3.Connection) -> list[MessageId] | None:
            self._check_open()  # in the order of the transactions: see close()
            now = clock()
            if maxsize is not None:
                size = conn.execute("SELECT size FROM mq_queues WHERE id = ?", (qid,)).fetchone()
                if size[0] + len(rows) > maxsize:
                    return None
            if dedup_key is not None:
                conn.execute("DELETE FROM mq_dedup WHERE queue = ? AND expires <= ?", (qid, now))
                seen = conn.execute(
                    "SELECT message FROM mq_dedup WHERE queue = ? AND key = ?", (qid, dedup_key)
                ).fetchone()
                if seen is not None:
                    return [seen[0]]
            first = next_ids(conn, len(rows))
            inserted = [
                (
                    first + i,
                    qid,
                    _DELAYED if delay > 0 else _READY,
                    now + delay if delay > 0 else -priority,
                    first + i,
                    priority,
                    now,
                    kind,
                    data,
                    headers,
                )
                for i, (kind, data, headers, priority, delay) in enumerate(rows)
            ]
            if len(inserted) == 1:
                conn.execute(_INSERT, inserted[0])
            else:
                conn.executemany(_INSERT, inserted)
            conn.execute("UPDATE mq_queues SET size = size + ? WHERE id = ?", (len(rows), qid))
            if dedup_key is not None and window > 0:
                conn.execute(
                    "INSERT OR REPLACE INTO mq_dedup VALUES (?, ?, ?, ?)",
                    (qid, dedup_key, first, now + window),
                )
            return list(range(first, first + len(rows)))

        return lambda: self._store.run(job)

    # -- consuming ------------------------------------------------------------

    def _take(
        self, n: int, timeout: float | None, stop: Callable[[], bool] | None = None
    ) -> list[Delivery]:
        if timeout == 0:
            return self._take_now(n)[0]
        give_up = self._gave_up if stop is None else lambda: self._closed or stop()
        due: list[float | None] = [None]

        def attempt() -> list[Delivery] | None:
            got, due[0] = self._take_now(n)
            return got or None

        return self._getters.wait(attempt, timeout, lambda: self._wait_for(due[0]), give_up) or []

    async def _take_async(self, n: int, timeout: float | None) -> list[Delivery]:
        """Each attempt runs on a worker thread; between attempts the task sleeps
        on :meth:`Wakeups.wait_async` (a put in this process wakes it at once)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            events, closed = self._events, self._closed
            got, due = await _TakeOffLoop(self, n).run(loop)
            if got or timeout == 0 or closed:
                return got
            if self._closed:
                continue  # closed meanwhile: one last look drains what came before
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                return []
            await self._sleep_async(events, left, due)

    async def _sleep_async(self, events: int, timeout: float | None, due: float | None) -> None:
        """Sleep until a wake-up, ``timeout``, ``due`` or the poll interval; at once
        if getters were woken since ``events`` was read (no lost wake-up: the
        task counts itself among the sleepers before it compares)."""
        tries = 0

        def woken() -> bool | None:
            nonlocal tries
            tries += 1
            return True if tries > 1 or self._events != events else None

        await self._getters.wait_async(woken, timeout, lambda: self._wait_for(due), self._gave_up)

    def _gave_up(self) -> bool:
        return self._closed

    def _wait_for(self, due: float | None) -> float:
        """Seconds to sleep before looking again: until something is due, at most
        the backend's ``poll_interval`` (for puts by other processes)."""
        poll = self._backend.poll_interval
        if due is None:
            return poll
        return min(poll, due - self._clock())

    def _poll_wait(self) -> float:
        return self._backend.poll_interval

    def _take_now(self, n: int) -> tuple[list[Delivery], float | None]:
        """Deliver up to ``n`` ready messages now; with none, also say when the
        next delayed message or deadline is due (clock time, None: nothing)."""
        if self._store.closed:
            return [], None
        qid, vt, clock = self._qid, self.visibility_timeout, self._clock

        def job(conn: sqlite3.Connection) -> tuple[list[Any], int, float, _Moved, float | None]:
            now = clock()
            moved = self._maintain(conn, now)
            rows: list[tuple[Sequence[Any], Any]] = []
            deadline = now + vt
            last = -1
            while len(rows) < n:
                # decoded before the commit: a damaged row goes to the dead letters
                # with its reason, and is never counted as delivered to anyone
                want = n - len(rows)
                selected = conn.execute(_SELECT_READY, (qid, want)).fetchall()
                if not selected:
                    break
                if last < 0:
                    last = scalar(conn, "SELECT delivered FROM mq_queues WHERE id = ?", qid)
                good: list[tuple[Sequence[Any], Any]] = []
                for row in selected:
                    try:
                        good.append((row, _decoded(row)))
                    except UndecodableBody as exc:
                        fixed = self._bury_damaged(conn, row, str(exc))
                        if fixed is not None:
                            good.append(fixed)
                        else:
                            moved.left = moved.buried = True
                start = last + len(rows)
                delivering = [(deadline, start + i, row[0]) for i, (row, _) in enumerate(good, 1)]
                if len(delivering) == 1:
                    conn.execute(_DELIVER, delivering[0])
                else:
                    conn.executemany(_DELIVER, delivering)
                rows += good
                if len(selected) < want:
                    break
            if not rows:
                return rows, 0, 0.0, moved, self._next_due(conn)
            again = sum(1 for row, _ in rows if row[6])
            conn.execute(_COUNT_DELIVERIES, (len(rows), again, qid))
            return rows, last, deadline, moved, None

        try:  # a receive need not survive a power cut: a lost one only redelivers
            rows, last, deadline, moved, due = self._store.run(job, durable=False)
        except ClosedError:
            return [], None
        self._after(moved)
        taken: list[Delivery] = []
        for i, (row, decoded) in enumerate(rows, 1):
            delivery = _SqliteDelivery(self, row, decoded, last + i)
            delivery._deadline = deadline
            taken.append(delivery)
        return taken, due

    def _bury_damaged(
        self, conn: sqlite3.Connection, row: Sequence[Any], why: str
    ) -> tuple[Sequence[Any], Any] | None:
        """Under the transaction: a ready row that cannot be decoded. Its data is kept
        as a bytes body (so an operator can read it), its headers if they are whole,
        and the reason in the dead-letter headers. In a queue, it moves to the dead
        letters (None); in a dead-letter queue, it is delivered so (the row and its
        decoding)."""
        message_id, _, data, headers_text, priority, _, attempts = row
        reason = f"undecodable message: {why}"
        log.error("%r: message %r cannot be decoded (%s)", self, message_id, why)
        conn.execute("UPDATE mq_messages SET kind = 'b' WHERE id = ?", (message_id,))
        if self._dead_id is not None:
            self._bury(conn, message_id, priority, headers_text, reason, attempts)
            return None
        headers = self._dead_letter_headers(_loads_headers(headers_text), reason, attempts)
        conn.execute(
            "UPDATE mq_messages SET headers = ? WHERE id = ?", (_dumps_headers(headers), message_id)
        )
        fixed = (message_id, "b", data, _dumps_headers(headers), priority, row[5], attempts)
        return fixed, (bytes(data), headers)

    def _next_due(self, conn: sqlite3.Connection) -> float | None:
        """Under the transaction: the earliest due time or deadline, None if none."""
        due = None
        for state in (_DELAYED, _IN_FLIGHT):
            row = conn.execute(
                "SELECT rank FROM mq_messages WHERE queue = ? AND state = ? ORDER BY rank LIMIT 1",
                (self._qid, state),
            ).fetchone()
            if row is not None and (due is None or row[0] < due):
                due = row[0]
        return due

    def _maintain(self, conn: sqlite3.Connection, now: float) -> _Moved:
        """Under the transaction: release due delayed messages (to the back of the
        line), and time out expired deliveries (to the front, or the dead letters)."""
        moved = _Moved()
        due = conn.execute(_SELECT_DUE, (self._qid, now)).fetchall()
        if not due:
            return moved
        released = [row for row in due if row[0] == _DELAYED]
        if released:
            back = next_ids(conn, len(released))
            conn.executemany(
                "UPDATE mq_messages SET state = 0, rank = ?, seq = ? WHERE id = ?",
                [
                    (-priority, message_id if priority else back + i, message_id)
                    for i, (_, message_id, priority, _, _) in enumerate(released)
                ],
            )
            moved.readied = True
        for _, message_id, priority, attempts, headers in due[len(released) :]:
            if self._exhausted(attempts):
                self._bury(conn, message_id, priority, headers, expiry_reason(attempts), attempts)
                moved.left = moved.buried = True
            else:
                self._to_front(conn, message_id, priority)
                moved.readied = True
        return moved

    def _to_front(self, conn: sqlite3.Connection, message_id: int, priority: int) -> None:
        """Under the transaction: make an in-flight message ready at the front of the
        line (priority messages keep their place by id, as on the memory backend)."""
        seq = message_id
        if not priority:
            conn.execute("UPDATE mq_queues SET head = head - 1 WHERE id = ?", (self._qid,))
            seq = scalar(conn, "SELECT head FROM mq_queues WHERE id = ?", self._qid)
        conn.execute(
            "UPDATE mq_messages SET state = 0, rank = ?, seq = ?, turn = NULL WHERE id = ?",
            (-priority, seq, message_id),
        )

    def _bury(
        self,
        conn: sqlite3.Connection,
        message_id: int,
        priority: int,
        headers: str | None,
        reason: str,
        attempts: int,
    ) -> None:
        """Under the transaction: move a message to the back of the dead letters."""
        dead = self._dead_id
        assert dead is not None
        marked = self._dead_letter_headers(_loads_headers(headers), reason, attempts)
        seq = message_id if priority else next_ids(conn, 1)
        conn.execute(
            "UPDATE mq_messages SET queue = ?, state = 0, rank = ?, seq = ?, turn = NULL, "
            "attempts = 0, headers = ? WHERE id = ?",
            (dead, -priority, seq, _dumps_headers(marked), message_id),
        )
        conn.execute(
            "UPDATE mq_queues SET size = size - 1, dead_lettered = dead_lettered + 1 WHERE id = ?",
            (self._qid,),
        )
        conn.execute("UPDATE mq_queues SET size = size + 1 WHERE id = ?", (dead,))
        self._log_dead_letter(message_id, reason, attempts)

    def _after(self, moved: _Moved) -> None:
        """Wake who a transaction's moves concern (no lock held); everyone, as
        one transaction may have moved several messages."""
        if moved.readied:
            self._wake_getters(everyone=True)
        if moved.buried and isinstance(self._dead_letters, SqliteQueue):
            self._dead_letters._wake_getters(everyone=True)
        if moved.left and self._putters.sleepers:
            self._putters.wake(everyone=True)

    def _wake_getters(self, everyone: bool = False) -> None:
        self._events += 1
        if self._getters.sleepers:
            self._getters.wake(everyone)

    # -- settling -------------------------------------------------------------

    def _settle(
        self,
        delivery: Delivery,
        action: str,
        settled: str,
        work: Callable[[sqlite3.Connection, tuple[int, int, int]], bool],
    ) -> bool:
        """Run ``work(conn, key)`` (False: the store no longer holds the delivery)
        and mark the delivery ``settled`` in the same transaction, so that of two
        threads settling one delivery at once, the loser sees why it lost (a second
        ack is a no-op). False (after raising for all but ack twice) if it lost."""
        assert isinstance(delivery, _SqliteDelivery)
        if delivery._settled is not None:
            settle_failed(delivery, action)
            return False
        key = (int(delivery.id), self._qid, delivery._receipt)
        marked = False

        def job(conn: sqlite3.Connection) -> bool:
            nonlocal marked
            if delivery._settled is not None or not work(conn, key):
                return False
            delivery._settled = settled
            marked = True
            return True

        try:
            done = self._store.run(job)
        except BaseException:
            if marked:  # the commit failed: it is not settled
                delivery._settled = None
            raise
        if not done:
            if delivery._settled is None:  # timed out, delivered again or dead-lettered
                delivery._settled = "timed out"
            settle_failed(delivery, action)
        return done

    def _ack(self, delivery: Delivery) -> None:
        qid = self._qid

        def work(conn: sqlite3.Connection, key: tuple[int, int, int]) -> bool:
            if conn.execute(_ACK, key).rowcount != 1:
                return False
            conn.execute(_COUNT_ACKS, (1, 1, qid))
            return True

        if self._settle(delivery, "ack", "acked", work) and self._putters.sleepers:
            self._putters.wake(everyone=True)  # one of them may need more room

    def _ack_many(self, batch: list[Delivery]) -> None:
        qid = self._qid
        acked: list[_SqliteDelivery] = []
        lost: list[_SqliteDelivery] = []

        def job(conn: sqlite3.Connection) -> None:
            acked.clear()
            lost.clear()
            held: dict[tuple[int, int, int], _SqliteDelivery] = {}
            for delivery in batch:
                assert isinstance(delivery, _SqliteDelivery)
                key = (int(delivery.id), qid, delivery._receipt)
                if delivery._settled is None and key not in held:
                    held[key] = delivery
                else:
                    lost.append(delivery)
            # One statement for the whole batch; each key deletes at most one row,
            # so a full count means every one was still held. Otherwise undo it and
            # find the ones that were not, one by one.
            conn.execute("SAVEPOINT ack_many")
            if conn.executemany(_ACK, held).rowcount == len(held):
                acked.extend(held.values())
            else:
                conn.execute("ROLLBACK TO ack_many")
                for key, delivery in held.items():
                    (acked if conn.execute(_ACK, key).rowcount == 1 else lost).append(delivery)
            conn.execute("RELEASE ack_many")
            for delivery in acked:
                delivery._settled = "acked"  # in the transaction, as _settle does
            if acked:
                conn.execute(_COUNT_ACKS, (len(acked), len(acked), qid))

        try:
            self._store.run(job)
        except BaseException:
            for delivery in acked:  # the commit failed: none is settled
                delivery._settled = None
            raise
        if acked and self._putters.sleepers:
            self._putters.wake(everyone=True)
        failure: DeliveryExpired | None = None
        for delivery in lost:
            if delivery._settled is None:  # timed out, delivered again or dead-lettered
                delivery._settled = "timed out"
            try:
                settle_failed(delivery, "ack")
            except DeliveryExpired as exc:
                failure = failure or exc
        if failure is not None:
            raise failure

    def _nack(self, delivery: Delivery, delay: float, reason: str | None) -> None:
        attempts = delivery.attempt
        exhausted = self._exhausted(attempts)
        clock = self._clock

        def work(conn: sqlite3.Connection, key: tuple[int, int, int]) -> bool:
            held = conn.execute(_HELD, key).fetchone()
            if held is None:
                return False
            priority, headers = held
            if exhausted:
                self._bury(conn, key[0], priority, headers, nack_reason(reason, attempts), attempts)
            elif delay > 0:
                conn.execute(
                    "UPDATE mq_messages SET state = 1, rank = ?, seq = ?, turn = NULL WHERE id = ?",
                    (clock() + delay, key[0], key[0]),
                )
            else:
                self._to_front(conn, key[0], priority)
            return True

        if self._settle(delivery, "nack", "nacked", work):
            self._after(_Moved(readied=not exhausted, left=exhausted, buried=exhausted))

    def _reject(self, delivery: Delivery, reason: str) -> None:
        attempts = delivery.attempt
        qid, is_dead_letters = self._qid, self._dead_id is None

        def work(conn: sqlite3.Connection, key: tuple[int, int, int]) -> bool:
            held = conn.execute(_HELD, key).fetchone()
            if held is None:
                return False
            if is_dead_letters:  # rejecting a dead letter deletes it
                conn.execute("DELETE FROM mq_messages WHERE id = ?", (key[0],))
                conn.execute("UPDATE mq_queues SET size = size - 1 WHERE id = ?", (qid,))
            else:
                self._bury(conn, key[0], held[0], held[1], reason, attempts)
            return True

        if self._settle(delivery, "reject", "rejected", work):
            self._wake_getters()
            self._after(_Moved(left=True, buried=not is_dead_letters))

    def _extend(self, delivery: Delivery, seconds: float) -> None:
        assert isinstance(delivery, _SqliteDelivery)
        if delivery._settled is not None:
            settle_failed(delivery, "extend")
            return
        key = (int(delivery.id), self._qid, delivery._receipt)
        clock = self._clock

        def job(conn: sqlite3.Connection) -> float | None:
            deadline = clock() + seconds
            held = conn.execute(_HELD, key).fetchone()
            if held is None:
                return None
            conn.execute(
                "UPDATE mq_messages SET rank = ?, turn = ? WHERE id = ?",
                (deadline, next_ids(conn, 1), key[0]),
            )
            return deadline

        deadline = self._store.run(job)
        if deadline is None:
            if delivery._settled is None:
                delivery._settled = "timed out"
            settle_failed(delivery, "extend")
            return
        delivery._deadline = deadline

    def _give_back(self, deliveries: list[Delivery]) -> None:
        """Undo a take nobody received (its asyncio task was cancelled): the
        messages go back to the front of the line, their attempt uncounted."""
        qid = self._qid
        held = [d for d in deliveries if isinstance(d, _SqliteDelivery)]

        def job(conn: sqlite3.Connection) -> int:
            back = 0
            for delivery in reversed(held):
                row = conn.execute(
                    "SELECT priority FROM mq_messages "
                    "WHERE id = ? AND queue = ? AND state = 2 AND seq = ?",
                    (delivery.id, qid, delivery._receipt),
                ).fetchone()
                if row is None:
                    continue
                self._to_front(conn, int(delivery.id), row[0])
                conn.execute(
                    "UPDATE mq_messages SET attempts = attempts - 1 WHERE id = ?", (delivery.id,)
                )
                conn.execute(_COUNT_DELIVERIES, (-1, -1 if delivery.attempt > 1 else 0, qid))
                back += 1
            return back

        try:
            self._store.run(job)
        except ClosedError:
            return
        for delivery in held:
            delivery._settled = "given back"
        self._wake_getters(everyone=True)

    def close(self) -> None:
        """As :meth:`Queue.close`; the flag is set in the order of this backend's
        transactions, so a put either commits before it (and is drained by the
        getters' last look) or is refused."""
        if self._closed:
            return

        def job(conn: sqlite3.Connection) -> None:
            self._closed = True

        with contextlib.suppress(ClosedError, BackendError):  # the backend is gone
            self._store.run(job)
        self._closed = True
        self._wake_all()

    def _wake_all(self) -> None:
        self._wake_getters(everyone=True)
        self._putters.wake(everyone=True)

    # -- housekeeping -----------------------------------------------------------

    def stats(self) -> QueueStats:
        qid, dead, clock = self._qid, self._dead_id, self._clock

        def job(conn: sqlite3.Connection) -> tuple[float, _Moved, list[Any], Any, int]:
            now = clock()
            moved = self._maintain(conn, now)
            states = conn.execute(
                "SELECT state, count(*), min(enqueued_at) FROM mq_messages "
                "WHERE queue = ? GROUP BY state",
                (qid,),
            ).fetchall()
            counters = conn.execute(
                "SELECT delivered, redelivered, acked, dead_lettered FROM mq_queues WHERE id = ?",
                (qid,),
            ).fetchone()
            dead_letters = 0
            if dead is not None:
                dead_letters = scalar(conn, "SELECT size FROM mq_queues WHERE id = ?", dead)
            return now, moved, states, counters, dead_letters

        now, moved, states, counters, dead_letters = self._store.run(job)
        self._after(moved)
        counts = {state: count for state, count, _ in states}
        oldest = min((first for _, _, first in states), default=None)
        return QueueStats(
            name=self.name,
            ready=counts.get(_READY, 0),
            delayed=counts.get(_DELAYED, 0),
            in_flight=counts.get(_IN_FLIGHT, 0),
            dead_letters=dead_letters,
            oldest_age=None if oldest is None else max(0.0, now - oldest),
            delivered=counters[0],
            redelivered=counters[1],
            acked=counters[2],
            dead_lettered=counters[3],
        )

    def purge(self) -> int:
        qid, clock = self._qid, self._clock

        def job(conn: sqlite3.Connection) -> tuple[int, _Moved]:
            purged = conn.execute(
                "DELETE FROM mq_messages WHERE queue = ? AND state IN (0, 1)", (qid,)
            ).rowcount
            conn.execute("UPDATE mq_queues SET size = size - ? WHERE id = ?", (purged, qid))
            return purged, self._maintain(conn, clock())

        purged, moved = self._store.run(job)
        moved.left = True
        self._after(moved)
        self._wake_getters()
        return purged

    def redrive(self, limit: int | None = None) -> int:
        dead = self._redrive_from(limit)
        qid, dead_id, clock, maxsize = self._qid, dead._qid, self._clock, self.maxsize

        def job(conn: sqlite3.Connection) -> tuple[int, _Moved]:
            now = clock()
            wanted, moved = limit, _Moved()
            if maxsize is not None:  # the room now, in this transaction, counted as a put counts it
                moved = self._maintain(conn, now)
                size = scalar(conn, "SELECT size FROM mq_queues WHERE id = ?", qid)
                room = max(0, maxsize - size)
                wanted = room if wanted is None else min(wanted, room)
                if wanted == 0:
                    return 0, moved
            dead._maintain(conn, now)
            rows = conn.execute(
                _SELECT_DEAD, (dead_id, -1 if wanted is None else wanted)
            ).fetchall()
            if not rows:
                return 0, moved
            back = next_ids(conn, len(rows))
            moving = []
            for i, (message_id, priority, headers) in enumerate(rows):
                kept = {
                    k: v
                    for k, v in (_loads_headers(headers) or {}).items()
                    if k not in (DEAD_LETTER_REASON, DEAD_LETTER_QUEUE, DEAD_LETTER_ATTEMPTS)
                }
                moving.append(
                    (
                        qid,
                        -priority,
                        message_id if priority else back + i,
                        _dumps_headers(kept),
                        message_id,
                    )
                )
            conn.executemany(
                "UPDATE mq_messages SET queue = ?, state = 0, rank = ?, seq = ?, attempts = 0, "
                "headers = ? WHERE id = ?",
                moving,
            )
            conn.execute("UPDATE mq_queues SET size = size - ? WHERE id = ?", (len(rows), dead_id))
            conn.execute("UPDATE mq_queues SET size = size + ? WHERE id = ?", (len(rows), qid))
            return len(rows), moved

        count, moved = self._store.run(job)
        self._after(moved)
        if count:
            self._wake_getters(everyone=True)
            dead._after(_Moved(left=True))
        return count

    def _check(self) -> None:
        """Assert the store's invariants for this queue; for tests. Runtime complexity: O(n)."""

        def job(conn: sqlite3.Connection) -> None:
            for queue_id in (self._qid, self._dead_id):
                if queue_id is None:
                    continue
                size, delivered = conn.execute(
                    "SELECT size, delivered FROM mq_queues WHERE id = ?", (queue_id,)
                ).fetchone()
                count = scalar(conn, "SELECT count(*) FROM mq_messages WHERE queue = ?", queue_id)
                assert size == count, f"size {size} != {count} rows"
                if queue_id == self._qid and self.maxsize is not None:
                    assert count <= self.maxsize, f"{count} > maxsize {self.maxsize}"
                bad = scalar(
                    conn,
                    "SELECT count(*) FROM mq_messages WHERE queue = ? AND ("
                    "state NOT IN (0, 1, 2) OR (state = 2 AND (seq < 1 OR seq > ?)) "
                    "OR (state = 0 AND rank != -priority) OR (state = 1 AND seq != id) "
                    "OR (state != 2 AND turn IS NOT NULL))",
                    queue_id,
                    delivered,
                )
                assert bad == 0, f"{bad} rows in an impossible state"
            last = scalar(conn, "SELECT last FROM mq_sequence")
            top = scalar(conn, "SELECT max(id) FROM mq_messages")
            assert top is None or top <= last, "an id above the sequence"

        self._store.run(job)


class _TakeOffLoop:
    """One take, run on a worker thread for a task. If the task is cancelled, what
    the thread took (or will take) is given back, so no message waits out its
    visibility timeout for a delivery nobody received (a :class:`Handoff`)."""

    def __init__(self, queue: SqliteQueue, n: int) -> None:
        self._queue = queue
        self._n = n
        self._handoff: Handoff[list[Delivery]] = Handoff()

    async def run(self, loop: asyncio.AbstractEventLoop) -> tuple[list[Delivery], float | None]:
        try:
            return await loop.run_in_executor(None, self._work)
        except asyncio.CancelledError:
            got = self._handoff.cancel()
            if got:
                threading.Thread(target=self._queue._give_back, args=(got,)).start()
            raise

    def _work(self) -> tuple[list[Delivery], float | None]:
        got, due = self._queue._take_now(self._n)
        if self._handoff.offer(got):
            return got, due
        if got:
            self._queue._give_back(got)
        return [], due
