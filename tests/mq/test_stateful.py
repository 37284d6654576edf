"""A queue against a reference model, driven by hypothesis through random
puts, gets, acks, nacks, rejects, extends, redrives and the passing of time;
unbounded, and bounded (where a redrive moves only the room there is)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
)

from scalekit.errors import DeliveryExpired, QueueFull
from scalekit.mq import Broker, Delivery, MemoryBackend
from scalekit.testing import FakeClock

VT = 10.0
MAX_DELIVERIES = 3


def memory_broker(clock: FakeClock) -> Broker:
    return Broker(MemoryBackend(), clock=clock)


def sqlite_broker(clock: FakeClock) -> Broker:
    from scalekit.mq import SqliteBackend

    path = Path(tempfile.mkdtemp()) / "queue.db"
    return Broker(SqliteBackend(path, synchronous="NORMAL"), clock=clock)


@dataclass
class Message:
    id: Any
    body: int
    priority: int
    state: str  # ready, delayed, in_flight, acked, dead
    attempts: int = 0
    due: float = 0.0  # delayed: when ready; in flight: the deadline
    current: Delivery | None = None  # the delivery that may settle it
    order: int = 0


@dataclass
class Model:
    messages: dict[Any, Message] = field(default_factory=dict)

    def in_state(self, state: str) -> list[Message]:
        return [m for m in self.messages.values() if m.state == state]

    def catch_up(self, now: float) -> None:
        for message in self.messages.values():
            if message.state == "delayed" and message.due <= now:
                message.state = "ready"
            elif message.state == "in_flight" and message.due <= now:
                message.current = None
                message.state = "dead" if message.attempts >= MAX_DELIVERIES else "ready"


class QueueMachine(RuleBasedStateMachine):
    make_broker: Callable[[FakeClock], Broker] = staticmethod(memory_broker)

    deliveries = Bundle("deliveries")

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock(1_700_000_000.0)
        self.broker = self.make_broker(self.clock)
        self.queue = self.broker.queue("q", visibility_timeout=VT, max_deliveries=MAX_DELIVERIES)
        self.model = Model()
        self.puts = 0

    def teardown(self) -> None:
        self.broker.close()

    @rule(
        body=st.integers(0, 1000),
        priority=st.sampled_from([0, 0, 0, 1, 5, -2]),
        delay=st.sampled_from([0.0, 0.0, 0.0, 3.0, 15.0]),
    )
    def put(self, body: int, priority: int, delay: float) -> None:
        message_id = self.queue.put(body, priority=priority, delay=delay)
        assert message_id not in self.model.messages
        self.puts += 1
        self.model.messages[message_id] = Message(
            message_id,
            body,
            priority,
            "delayed" if delay else "ready",
            due=self.clock() + delay,
            order=self.puts,
        )

    @rule(target=deliveries)
    def get(self) -> Delivery | None:
        self.model.catch_up(self.clock())
        ready = self.model.in_state("ready")
        delivery = self.queue.get(timeout=0)
        if not ready:
            assert delivery is None
            return None
        assert delivery is not None
        message = self.model.messages[delivery.id]
        assert message.state == "ready"
        assert message.priority == max(m.priority for m in ready)  # highest priority first
        assert delivery.body == message.body
        assert delivery.attempt == message.attempts + 1
        message.attempts += 1
        message.state = "in_flight"
        message.due = self.clock() + VT
        message.current = delivery
        return delivery

    def _live(self, delivery: Delivery | None) -> Message | None:
        """The model's message if ``delivery`` may still settle it, after catching up."""
        if delivery is None:
            return None
        self.model.catch_up(self.clock())
        message = self.model.messages[delivery.id]
        return message if message.current is delivery else None

    @rule(delivery=consumes(deliveries))
    def ack(self, delivery: Delivery | None) -> None:
        if delivery is None:
            return
        message = self._live(delivery)
        if message is None:
            if self.model.messages[delivery.id].state == "acked" and delivery._settled == "acked":
                delivery.ack()  # acking twice is a no-op
                return
            with pytest.raises(DeliveryExpired):
                delivery.ack()
            return
        delivery.ack()
        message.state, message.current = "acked", None

    @rule(delivery=consumes(deliveries), delay=st.sampled_from([0.0, 4.0]))
    def nack(self, delivery: Delivery | None, delay: float) -> None:
        if delivery is None:
            return
        message = self._live(delivery)
        if message is None:
            with pytest.raises(DeliveryExpired):
                delivery.nack(delay)
            return
        delivery.nack(delay)
        message.current = None
        if message.attempts >= MAX_DELIVERIES:
            message.state = "dead"
        elif delay:
            message.state, message.due = "delayed", self.clock() + delay
        else:
            message.state = "ready"

    @rule(delivery=consumes(deliveries))
    def reject(self, delivery: Delivery | None) -> None:
        if delivery is None:
            return
        message = self._live(delivery)
        if message is None:
            with pytest.raises(DeliveryExpired):
                delivery.reject("poison")
            return
        delivery.reject("poison")
        message.state, message.current = "dead", None

    @rule(delivery=deliveries, seconds=st.sampled_from([2.0, 20.0]))
    def extend(self, delivery: Delivery | None, seconds: float) -> None:
        if delivery is None:
            return
        message = self._live(delivery)
        if message is None:
            if delivery._settled != "acked":
                with pytest.raises(DeliveryExpired):
                    delivery.extend(seconds)
            return
        delivery.extend(seconds)
        message.due = self.clock() + seconds

    @rule(seconds=st.sampled_from([1.0, 5.0, 9.0, 11.0, 30.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @precondition(lambda self: self.model.in_state("dead"))
    @rule()
    def redrive(self) -> None:
        self.model.catch_up(self.clock())
        moved = self.queue.redrive()
        dead = self.model.in_state("dead")
        assert moved == len(dead)
        for message in dead:
            message.state, message.attempts, message.current = "ready", 0, None

    @invariant()
    def structure_holds(self) -> None:
        self.queue._check()  # type: ignore[attr-defined]

    @invariant()
    def counts_match(self) -> None:
        self.model.catch_up(self.clock())
        stats = self.queue.stats()
        model = self.model
        assert stats.ready == len(model.in_state("ready"))
        assert stats.delayed == len(model.in_state("delayed"))
        assert stats.in_flight == len(model.in_state("in_flight"))
        assert stats.dead_letters == len(model.in_state("dead"))
        assert stats.acked == len(model.in_state("acked"))


QueueMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
TestMemoryQueue = QueueMachine.TestCase


class SqliteQueueMachine(QueueMachine):
    make_broker = staticmethod(sqlite_broker)


SqliteQueueMachine.TestCase.settings = settings(
    max_examples=25, stateful_step_count=40, deadline=None
)
TestSqliteQueue = SqliteQueueMachine.TestCase


MAXSIZE = 4


def dead_letter_ids(queue: Any) -> set[Any]:
    """The ids of every message the dead-letter queue holds, read from the store."""
    from scalekit.mq._memory import _MemoryQueue
    from scalekit.mq._sqlite._queue import SqliteQueue

    dead = queue.dead_letters
    if isinstance(dead, _MemoryQueue):
        with dead._lock:
            held = [*dead._ready, *dead._inflight]
            held += [entry[2] for entry in (*dead._ranked, *dead._delayed)]
        return {delivery.id for delivery in held}
    assert isinstance(dead, SqliteQueue)
    rows = dead._store.run(
        lambda conn: conn.execute(
            "SELECT id FROM mq_messages WHERE queue = ?", (dead._qid,)
        ).fetchall()
    )
    return {row[0] for row in rows}


class BoundedQueueMachine(QueueMachine):
    """The machine on a queue of maxsize 4: a put refused with QueueFull when the
    model holds 4, and a redrive moving min(limit, room) dead letters, never more."""

    def __init__(self) -> None:
        super().__init__()
        self.queue = self.broker.queue(
            "bounded", visibility_timeout=VT, max_deliveries=MAX_DELIVERIES, maxsize=MAXSIZE
        )

    def held(self) -> int:
        self.model.catch_up(self.clock())
        return sum(len(self.model.in_state(s)) for s in ("ready", "delayed", "in_flight"))

    @rule(
        body=st.integers(0, 1000),
        priority=st.sampled_from([0, 0, 0, 1, 5, -2]),
        delay=st.sampled_from([0.0, 0.0, 0.0, 3.0, 15.0]),
    )
    def put(self, body: int, priority: int, delay: float) -> None:
        self.queue.stats()  # settles expired deliveries, as the model's catch_up does
        if self.held() >= MAXSIZE:
            with pytest.raises(QueueFull):
                self.queue.put(body, priority=priority, delay=delay, timeout=0)
            return
        super().put(body, priority, delay)

    @precondition(lambda self: self.model.in_state("dead"))
    @rule(limit=st.sampled_from([None, 1, 2, 10]))
    def redrive_some(self, limit: int | None) -> None:
        room = MAXSIZE - self.held()
        dead = {m.id for m in self.model.in_state("dead")}
        before = dead_letter_ids(self.queue)
        assert before == dead
        moved = self.queue.redrive(limit)
        assert moved == min(len(dead), room, len(dead) if limit is None else limit)
        back = before - dead_letter_ids(self.queue)
        assert len(back) == moved
        for message_id in back:
            message = self.model.messages[message_id]
            message.state, message.attempts, message.current = "ready", 0, None
        assert self.held() <= MAXSIZE

    @precondition(lambda self: False)
    @rule()
    def redrive(self) -> None:  # every redrive of a bounded queue is redrive_some's
        raise AssertionError("not a rule of the bounded machine")


BoundedQueueMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None
)
TestBoundedMemoryQueue = BoundedQueueMachine.TestCase


class BoundedSqliteQueueMachine(BoundedQueueMachine):
    make_broker = staticmethod(sqlite_broker)


BoundedSqliteQueueMachine.TestCase.settings = settings(
    max_examples=25, stateful_step_count=40, deadline=None
)
TestBoundedSqliteQueue = BoundedSqliteQueueMachine.TestCase
