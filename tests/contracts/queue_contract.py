"""The contract every scalekit.mq backend meets, whatever stores the messages.

Subclass :class:`QueueContract` in a test module that provides an ``env`` fixture
(a :class:`QueueEnv`); see tests/mq/test_contract.py. Time-dependent tests call
``env.advance(seconds)``: a FakeClock moves on backends that take the broker's
clock, real time passes on those that cannot (Redis keeps its own time), so every
timing here is short.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from scalekit.errors import (
    ArgumentTypeError,
    ClosedError,
    ConfigurationError,
    DeliveryExpired,
    QueueFull,
    ScalekitError,
)
from scalekit.mq import (
    DEAD_LETTER_ATTEMPTS,
    DEAD_LETTER_QUEUE,
    AsyncQueue,
    Backend,
    Backoff,
    Broker,
    Consumer,
    Delivery,
    Queue,
)
from scalekit.testing import QUEUE_CHECKS
from scalekit.testing._queue import run_queue_check

__all__ = ["QueueContract", "QueueEnv"]

VT = 0.5  # visibility timeout of the timing tests, seconds


@dataclass
class QueueEnv:
    """One backend under test: a broker on a fresh, empty store."""

    broker: Broker
    advance: Callable[[float], None]
    fake_time: bool
    make_backend: Callable[[], Backend] | None = None
    """A fresh, empty backend of the same kind, for scalekit.testing.check_queue_backend."""

    def queue(self, name: str = "q", **options: Any) -> Queue:
        return self.broker.queue(name, **options)


def drain(queue: Queue) -> list[Delivery]:
    out = []
    while (delivery := queue.get(timeout=0)) is not None:
        out.append(delivery)
    return out


class QueueContract:
    """Every test, run once per backend by the ``env`` fixture of the subclass."""

    # -- the shipped contract: scalekit.testing.check_queue_backend ---------------

    @pytest.mark.parametrize("check", sorted(QUEUE_CHECKS))
    def test_shipped_contract(self, env: QueueEnv, check: str) -> None:
        """Each check of the public check_queue_backend, on this backend."""
        assert env.make_backend is not None
        run_queue_check(QUEUE_CHECKS[check], env.make_backend, broker_clock=env.fake_time)

    # -- put, get, ack --------------------------------------------------------

    def test_put_get_ack(self, env: QueueEnv) -> None:
        queue = env.queue()
        message_id = queue.put(b"hello")
        delivery = queue.get(timeout=0)
        assert delivery is not None
        assert (delivery.id, delivery.body, delivery.attempt) == (message_id, b"hello", 1)
        assert delivery.queue is queue
        assert queue.stats().in_flight == 1
        delivery.ack()
        stats = queue.stats()
        assert (stats.ready, stats.in_flight, stats.delayed, stats.total) == (0, 0, 0, 0)
        assert (stats.delivered, stats.acked) == (1, 1)
        assert queue.get(timeout=0) is None

    @pytest.mark.parametrize(
        "body",
        [
            b"",
            b"\x00\xffbinary",
            "",
            "text é 漢字 🎉",
            0,
            -3,
            2.5,
            True,
            None,
            [],
            {},
            {"to": "ada@example.com", "tags": ["a", "b"], "n": 1, "ok": False, "x": None},
            [1, [2, [3, {"deep": "yes"}]]],
        ],
    )
    def test_bodies_come_back_as_they_went_in(self, env: QueueEnv, body: Any) -> None:
        queue = env.queue()
        queue.put(body)
        delivery = queue.get(timeout=0)
        assert delivery is not None
        assert delivery.body == body
        assert type(delivery.body) is type(body)

    def test_a_json_body_is_a_copy(self, env: QueueEnv) -> None:
        queue = env.queue()
        body = {"items": [1, 2]}
        queue.put(body)
        body["items"].append(3)  # the producer's object changes after the put
        delivery = queue.get(timeout=0)
        assert delivery is not None
        assert delivery.body == {"items": [1, 2]}
        delivery.body["items"].append(4)
        assert delivery.body == {"items": [1, 2]}

    @pytest.mark.parametrize("body", [object(), {1, 2}, {"x": object()}, float("nan")])
    def test_a_body_that_is_not_json_is_refused(self, env: QueueEnv, body: Any) -> None:
        queue = env.queue()
        with pytest.raises(TypeError, match="bytes, str or a JSON value"):
            queue.put(body)
        assert queue.stats().total == 0

    def test_headers_come_back(self, env: QueueEnv) -> None:
        queue = env.queue()
        queue.put("x", headers={"trace-id": "abc", "kind": "email"})
        queue.put("y")
        first, second = drain(queue)
        assert first.headers == {"trace-id": "abc", "kind": "email"}
        assert second.headers == {}
        first.headers["trace-id"] = "changed"
        assert first.headers["trace-id"] == "abc"

    @pytest.mark.parametrize(
        ("kwargs", "error"),
        [
            ({"headers": {"a": 1}}, TypeError),
            ({"headers": {1: "a"}}, TypeError),
            ({"headers": "a=b"}, TypeError),
            ({"delay": -1}, ValueError),
            ({"delay": float("inf")}, ValueError),
            ({"delay": "5"}, TypeError),
            ({"priority": 1.5}, TypeError),
            ({"priority": True}, TypeError),
            ({"timeout": -1}, ValueError),
            ({"dedup_key": 5}, TypeError),
        ],
    )
    def test_bad_put_arguments_are_refused(
        self, env: QueueEnv, kwargs: dict[str, Any], error: type[Exception]
    ) -> None:
        queue = env.queue()
        with pytest.raises(error):
            queue.put("x", **kwargs)
        assert queue.stats().total == 0

    def test_bad_get_arguments_are_refused(self, env: QueueEnv) -> None:
        queue = env.queue()
        queue.put("x")
        for timeout in (-1, float("nan"), 10**400, 1e308, "1"):
            with pytest.raises(ScalekitError, match="timeout"):
                queue.get(timeout=timeout)  # type: ignore[arg-type]
        for n in (0, -1, 10**400):
            with pytest.raises(ConfigurationError, match="n must"):
                queue.get_many(n)
        for n in (1.5, True, None, "3"):
            with pytest.raises(ArgumentTypeError, match="n must"):
                queue.get_many(n)  # type: ignore[arg-type]
        assert queue.stats().ready == 1  # the refused calls took nothing

    @pytest.mark.parametrize(
        ("kwargs", "error", "names"),
        [
            ({"delay": float("nan")}, ConfigurationError, "delay"),
            ({"delay": 10**400}, ConfigurationError, "delay"),
            ({"delay": 1e308}, ConfigurationError, "delay"),
            ({"delay": True}, ArgumentTypeError, "delay"),
            ({"delay": None}, ArgumentTypeError, "delay"),
            ({"priority": 10**400}, ConfigurationError, "priority"),
            ({"priority": 2**53 + 1}, ConfigurationError, "priority"),
            ({"priority": None}, ArgumentTypeError, "priority"),
            ({"timeout": float("nan")}, ConfigurationError, "timeout"),
            ({"timeout": 10**400}, ConfigurationError, "timeout"),
            ({"timeout": True}, ArgumentTypeError, "timeout"),
            ({"dedup_key": ""}, ConfigurationError, "dedup_key"),
            ({"dedup_key": "\ud800"}, ConfigurationError, "dedup_key"),
            ({"headers": {"a": "\ud800"}}, ConfigurationError, "header"),
            ({"headers": {"\ud800": "a"}}, ConfigurationError, "header"),
            ({"headers": {"": "a"}}, ConfigurationError, "header"),
        ],
    )
    def test_hostile_put_arguments_are_refused_alike(
        self, env: QueueEnv, kwargs: dict[str, Any], error: type[Exception], names: str
    ) -> None:
        """Every backend refuses the same values, with a scalekit error naming the
        argument, and stores nothing (issue 13, items 12 and 13)."""
        queue = env.queue()
        with pytest.raises(error, match=names):
            queue.put("x", **kwargs)
        if "dedup_key" not in kwargs:  # put_many takes no dedup_key
            with pytest.raises(error, match=names):
                queue.put_many(["x", "y"], **kwargs)
        assert queue.stats().total == 0

    @pytest.mark.parametrize(
        "body", ["\ud800", "ok \udcff", {"k": "\ud800"}, {"\ud800": 1}, ["a", "\udfff"]]
    )
    def test_a_lone_surrogate_body_is_refused_everywhere(self, env: QueueEnv, body: Any) -> None:
        queue = env.queue()
        with pytest.raises(ConfigurationError, match="body"):
            queue.put(body)
        with pytest.raises(ConfigurationError, match="body"):
            queue.put_many(["fine", body])
        assert queue.stats().total == 0

    def test_valid_text_everywhere_comes_back(self, env: QueueEnv) -> None:
        queue = env.queue()
        body = {"emoji": "\U0001f600", "nul": "a\x00b", "big": 2**70, "none": None}
        queue.put(body, headers={"h\u00e9": "\U0001f600", "empty": ""})
        queue.put("\U0001f600\x00")
        first, second = drain(queue)
        assert first.body == body
        assert first.headers == {"h\u00e9": "\U0001f600", "empty": ""}
        assert second.body == "\U0001f600\x00"

    def test_an_infinite_timeout_waits(self, env: QueueEnv) -> None:
        """``timeout=float("inf")`` means no limit: a full bounded queue waits for
        room (it raised OverflowError), a get waits for a message."""
        queue = env.queue("bounded", maxsize=1)
        queue.put("first")
        delivery = queue.get(timeout=float("inf"))
        assert delivery is not None
        assert delivery.body == "first"
        threading.Timer(0.2, delivery.ack).start()
        queue.put("second", timeout=float("inf"))  # waits until the ack makes room
        got = queue.get(timeout=float("inf"))
        assert got is not None
        assert got.body == "second"

    @pytest.mark.parametrize(
        ("kwargs", "error"),
        [
            ({"reason": "\ud800"}, ConfigurationError),
            ({"reason": 5}, ArgumentTypeError),
            ({"delay": float("nan")}, ConfigurationError),
            ({"delay": 10**400}, ConfigurationError),
        ],
    )
    def test_hostile_nack_arguments_change_nothing(
        self, env: QueueEnv, kwargs: dict[str, Any], error: type[Exception]
    ) -> None:
        queue = env.queue()
        queue.put("x")
        delivery = queue.get(timeout=0)
        assert delivery is not None
        with pytest.raises(error):
            delivery.nack(**kwargs)
        with pytest.raises(ScalekitError):
            delivery.reject(kwargs.get("reason"))  # type: ignore[arg-type]
        for seconds in (float("nan"), 10**400, True):
            with pytest.raises(ScalekitError, match="seconds"):
                delivery.extend(seconds)  # type: ignore[arg-type]
        assert queue.stats().in_flight == 1
        delivery.ack()
        assert queue.stats().total == 0

    @pytest.mark.parametrize("limit", [-1, 10**400, 1.5, True, "1"])
    def test_a_hostile_redrive_limit_is_refused(self, env: QueueEnv, limit: Any) -> None:
        queue = env.queue()
        queue.put("x")
        delivery = queue.get(timeout=0)
        assert delivery is not None
        delivery.reject("poison")
        with pytest.raises(ScalekitError, match="limit"):
            queue.redrive(limit)
        assert queue.stats().dead_letters == 1

    @pytest.mark.parametrize(
        "options",
        [
            {"visibility_timeout": 0},
            {"visibility_timeout": -1},
            {"max_deliveries": 0},
            {"max_deliveries": 1.5},
            {"maxsize": 0},
            {"dedup_window": -1},
            {"visibility_timeout": float("nan")},
            {"visibility_timeout": float("inf")},
            {"visibility_timeout": 10**400},
            {"visibility_timeout": True},
            {"max_deliveries": True},
            {"maxsize": 10**400},
            {"dedup_window": float("nan")},
        ],
    )
    def test_bad_queue_options_are_refused(self, env: QueueEnv, options: dict[str, Any]) -> None:
        with pytest.raises((ConfigurationError, ArgumentTypeError), match=next(iter(options))):
            env.queue("bad", **options)

    @pytest.mark.parametrize("name", ["", " q", "a\nb", "x" * 201, "q.dlq", "\ud800"])
    def test_bad_queue_names_are_refused(self, env: QueueEnv, name: str) -> None:
        with pytest.raises(ConfigurationError):
            env.queue(name)
        with pytest.raises(ArgumentTypeError):
            env.queue(None)  # type: ignore[arg-type]

    def test_topic_and_queue_names_never_collide(self, env: QueueEnv) -> None:
        """Topic "q" group "x/y" would be stored as queue "q/x/y": '/' is refused in
        topic and group names, so a group's queue "t/g" has one meaning."""
        with pytest.raises(ConfigurationError, match="/"):
            env.broker.topic("q").subscribe("x/y")
        with pytest.raises(ConfigurationError, match="/"):
            env.broker.topic("q/x").subscribe("y")
        plain = env.queue("q/x/y")
        group = env.broker.topic("q").subscribe("x")
        env.broker.topic("q").publish("to the group")
        assert plain.get(timeout=0) is None
        got = group.get(timeout=0)
        assert got is not None
        assert got.body == "to the group"

    def test_ids_are_unique(self, env: QueueEnv) -> None:
        queue = env.queue()
        ids = [queue.put(i) for i in range(50)] + queue.put_many(range(50))
        assert len(set(ids)) == 100
        assert sorted(d.id for d in drain(queue)) == sorted(ids)

    def test_queues_are_independent(self, env: QueueEnv) -> None:
        a, b = env.queue("a"), env.queue("b")
        a.put("for a")
        assert b.get(timeout=0) is None
        delivery = a.get(timeout=0)
        assert delivery is not None
        assert delivery.body == "for a"

    # -- order ------------------------------------------------------------------

    def test_first_in_first_out(self, env: QueueEnv) -> None:
        queue = env.queue()
        for i in range(20):
            queue.put(i)
        assert [d.body for d in drain(queue)] == list(range(20))

    def test_higher_priority_first_then_in_order(self, env: QueueEnv) -> None:
        queue = env.queue()
        queue.put("low-1", priority=-1)
        queue.put("normal-1")
        queue.put("high-1", priority=5)
        queue.put("normal-2")
        queue.put("urgent", priority=9)
        queue.put("high-2", priority=5)
        queue.put("low-2", priority=-1)
        assert [d.body for d in drain(queue)] == [
            "urgent",
            "high-1",
            "high-2",
            "normal-1",
            "normal-2",
            "low-1",
            "low-2",
        ]

    def test_get_many(self, env: QueueEnv) -> None:
        queue = env.queue()
        queue.put_many([f"m{i}" for i in range(7)])
        first = queue.get_many(5, timeout=0)
        assert [d.body for d in first] == [f"m{i}" for i in range(5)]
        assert [d.body for d in queue.get_many(5, timeout=0)] == ["m5", "m6"]
        assert queue.get_many(5, timeout=0) == []
        for delivery in first:
            delivery.ack()
        assert queue.stats().in_flight == 2

    # -- settling ---------------------------------------------------------------

    def test_ack_twice_is_a_no_op_but_nack_after_ack_is_refused(self, env: QueueEnv) -> None:
        queue = env.queue()
        queue.put("x")
        delivery = queue.get(timeout=0)
        assert delivery is not None
        delivery.ack()
        delivery.ack()
        with pytest.raises(DeliveryExpired):
            delivery.nack()
        with pytest.raises(DeliveryExpired):
            delivery.extend(10)
        assert queue.stats().acked == 1

    def test_nack_delivers_again_with_the_next_attempt(self, env: QueueEnv) -> None:
        queue = env.queue()
        queue.put("x", headers={"h": "1"}, priority=2)
        first = queue.get(timeout=0)
        assert first is not None
        first.nack()
        with pytest.raises(DeliveryExpired):
            first.ack()
        again = queue.get(timeout=0)
        assert again is not None
        assert (again.id, again.body, again.attempt, again.headers, again.priority) == (
            first.id,
            "x",
            2,
            {"h": "1"},
            2,
        )
        assert queue.stats().redelivered == 1

    def test_nack_with_a_delay(self, env: QueueEnv) -> None:
        queue = env.queue()
        queue.put("x")
        delivery = queue.get(timeout=0)
        assert delivery is not None
        delivery.nack(delay=0.3)
        assert queue.get(timeout=0) is None
        stats = queue.stats()
        assert (stats.delayed, stats.in_flight, stats.ready) == (1, 0, 0)
        env.advance(0.5)
        again = queue.get(timeout=0)
        assert again is not None
        assert again.attempt == 2

    def test_reject_dead_letters_at_once(self, env: QueueEnv) -> None:
        queue = env.queue()
        queue.put({"bad": True}, headers={"h": "v"})
        delivery = queue.get(timeout=0)
        assert delivery is not None
        delivery.reject("unparseable")
        assert queue.get(timeout=0) is None
        dead = queue.dead_letters.get(timeout=0)
        assert dead is not None
        assert dead.body == {"bad": True}
        assert dead.id == delivery.id
        assert dead.dead_letter_reason == "unparseable"
        assert dead.headers["h"] == "v"
        assert dead.headers[DEAD_LETTER_QUEUE] == "q"
        assert dead.headers[DEAD_LETTER_ATTEMPTS] == "1"
        stats = queue.stats()
        assert (stats.dead_letters, stats.dead_lettered, stats.total) == (1, 1, 0)

    def test_the_last_nack_dead_letters(self, env: QueueEnv) -> None:
        queue = env.queue(max_deliveries=3)
        queue.put("poison")
        for attempt in (1, 2, 3):
            delivery = queue.get(timeout=0)
            assert delivery is not None
            assert delivery.attempt == attempt
            delivery.nack(reason="ValueError: boom")
        assert queue.get(timeout=0) is None
        dead = queue.dead_letters.get(timeout=0)
        assert dead is not None
        assert dead.dead_letter_reason is not None
        assert "nacked" in dead.dead_letter_reason
        assert "ValueError: boom" in dead.dead_letter_reason
        assert dead.headers[DEAD_LETTER_ATTEMPTS] == "3"

    def test_a_dead_letter_queue_has_none_of_its_own(self, env: QueueEnv) -> None:
        queue = env.queue()
        with pytest.raises(AttributeError):
            queue.dead_letters.dead_letters  # noqa: B018

    # -- time: visibility, delays --------------------------------------------

    def test_an_unsettled_delivery_comes_back_after_the_visibility_timeout(
        self, env: QueueEnv
    ) -> None:
        queue = env.queue(visibility_timeout=VT)
        queue.put("x")
        first = queue.get(timeout=0)
        assert first is not None
        assert queue.get(timeout=0) is None  # invisible meanwhile
        env.advance(VT + 0.3)
        again = queue.get(timeout=0)
        assert again is not None
        assert (again.id, again.attempt) == (first.id, 2)
        with pytest.raises(DeliveryExpired):
            first.ack()  # too late: someone else has it now
        again.ack()
        stats = queue.stats()
        assert (stats.total, stats.delivered, stats.redelivered, stats.acked) == (0, 2, 1, 1)

    def test_max_deliveries_then_dead_letters_with_the_reason(self, env: QueueEnv) -> None:
        queue = env.queue(visibility_timeout=VT, max_deliveries=2)
        queue.put("slow")
        for attempt in (1, 2):
            delivery = queue.get(timeout=0)
            assert delivery is not None
            assert delivery.attempt == attempt
            env.advance(VT + 0.3)
        assert queue.get(timeout=0) is None
        dead = queue.dead_letters.get(timeout=0)
        assert dead is not None
        assert dead.body == "slow"
        assert dead.dead_letter_reason is not None
        assert "visibility timeout" in dead.dead_letter_reason
        assert queue.stats().dead_lettered == 1

    def test_no_limit_on_deliveries(self, env: QueueEnv) -> None:
        queue = env.queue(visibility_timeout=VT, max_deliveries=None)
        queue.put("x")
        for attempt in range(1, 7):
            delivery = queue.get(timeout=0)
            assert delivery is not None
            assert delivery.attempt == attempt
            delivery.nack()
        assert queue.stats().dead_letters == 0

    def test_extend_keeps_a_delivery_invisible(self, env: QueueEnv) -> None:
        queue = env.queue(visibility_timeout=VT)
        queue.put("long job")
        delivery = queue.get(timeout=0)
        assert delivery is not None
        env.advance(VT * 0.6)
        delivery.extend(VT)  # invisible for VT from now
        env.advance(VT * 0.6)  # past the first deadline
        assert queue.get(timeout=0) is None
        delivery.ack()
        env.advance(VT)
        assert queue.get(timeout=0) is None
        assert queue.stats().total == 0

    def test_extend_after_the_deadline_is_refused(self, env: QueueEnv) -> None:
        queue = env.queue(visibility_timeout=VT)
        queue.put("x")
        delivery = queue.get(timeout=0)
        assert delivery is not None
        env.advance(VT + 0.3)
        assert queue.get(timeout=0) is not None  # redelivered
        with pytest.raises(DeliveryExpired):
            delivery.extend(VT)

    def test_a_delayed_message_waits(self, env: QueueEnv) -> None:
        queue = env.queue()
        queue.put("later", delay=0.4)
        queue.put("now")
        assert [d.body for d in drain(queue)] == ["now"]
        stats = queue.stats()
        assert (stats.delayed, stats.ready) == (1, 0)
        env.advance(0.6)
        delivery = queue.get(timeout=0)
        assert delivery is not None
        assert delivery.body == "later"

    def test_oldest_age(self, env: QueueEnv) -> None:
        queue = env.queue()
        assert queue.stats().oldest_age is None
        queue.put("old")
        env.advance(0.4)
        queue.put("new")
        age = queue.stats().oldest_age
        assert age is not None
        assert 0.35 <= age < 5

    # -- dedup, bounds --------------------------------------------------------

    def test_dedup_key_stores_a_message_once(self, env: QueueEnv) -> None:
        queue = env.queue(dedup_window=0.5)
        first = queue.put("charge order 7", dedup_key="order-7")
        assert queue.put("charge order 7", dedup_key="order-7") == first
        assert queue.put("charge order 8", dedup_key="order-8") != first
        assert queue.stats().ready == 2
        env.advance(0.7)
        assert queue.put("charge order 7", dedup_key="order-7") != first
        assert queue.stats().ready == 3

    def test_a_full_queue_refuses_puts(self, env: QueueEnv) -> None:
        queue = env.queue(maxsize=3)
        queue.put_many(["a", "b"])
        delivery = queue.get(timeout=0)  # in flight counts too
        queue.put("c")
        with pytest.raises(QueueFull):
            queue.put("d", timeout=0)
        with pytest.raises(QueueFull):
            queue.put("d", timeout=0.05)
        with pytest.raises(QueueFull):
            queue.put_many(["d", "e"], timeout=0)
        with pytest.raises(QueueFull):
            queue.put_many(["1", "2", "3", "4"])  # can never fit
        assert queue.stats().total == 3
        assert delivery is not None
        delivery.ack()
        queue.put("d", timeout=0)
        assert queue.stats().total == 3

    def test_a_blocked_put_goes_through_when_room_is_made(self, env: QueueEnv) -> None:
        queue = env.queue(maxsize=1)
        queue.put("first")
        done = threading.Event()

        def producer() -> None:
            queue.put("second", timeout=10)
            done.set()

        thread = threading.Thread(target=producer)
        thread.start()
        assert not done.wait(0.1)
        delivery = queue.get(timeout=0)
        assert delivery is not None
        delivery.ack()
        assert done.wait(5)
        thread.join()
        second = queue.get(timeout=0)
        assert second is not None
        assert second.body == "second"

    # -- waiting and closing ------------------------------------------------

    def test_a_blocked_get_wakes_on_a_put(self, env: QueueEnv) -> None:
        queue = env.queue()
        got: list[Any] = []

        def consumer() -> None:
            got.append(queue.get(timeout=10))

        thread = threading.Thread(target=consumer)
        thread.start()
        time.sleep(0.05)
        started = time.monotonic()
        queue.put("wake up")
        thread.join(10)
        assert time.monotonic() - started < 2
        assert got[0] is not None
        assert got[0].body == "wake up"

    def test_get_times_out_with_none(self, env: QueueEnv) -> None:
        queue = env.queue()
        started = time.monotonic()
        assert queue.get(timeout=0.1) is None
        assert 0.09 <= time.monotonic() - started < 2
        assert queue.get_many(3, timeout=0.05) == []

    def test_close_refuses_puts_and_lets_consumers_drain(self, env: QueueEnv) -> None:
        queue = env.queue()
        queue.put_many(["a", "b"])
        queue.close()
        assert queue.closed
        with pytest.raises(ClosedError):
            queue.put("c")
        assert [d.body for d in queue] == ["a", "b"]  # iterating ends once drained
        started = time.monotonic()
        assert queue.get() is None  # no waiting on a closed, empty queue
        assert time.monotonic() - started < 1
        queue.close()  # idempotent

    def test_close_wakes_a_blocked_getter(self, env: QueueEnv) -> None:
        queue = env.queue()
        got: list[Any] = ["not yet"]

        def consumer() -> None:
            got[0] = queue.get()

        thread = threading.Thread(target=consumer)
        thread.start()
        time.sleep(0.05)
        queue.close()
        thread.join(5)
        assert not thread.is_alive()
        assert got == [None]

    # -- housekeeping -------------------------------------------------------------

    def test_purge_deletes_what_waits_not_what_is_in_flight(self, env: QueueEnv) -> None:
        queue = env.queue()
        queue.put_many(["a", "b", "c"])
        queue.put("d", delay=60)
        delivery = queue.get(timeout=0)
        assert queue.purge() == 3
        stats = queue.stats()
        assert (stats.ready, stats.delayed, stats.in_flight) == (0, 0, 1)
        assert delivery is not None
        delivery.ack()

    def test_redrive_moves_dead_letters_back(self, env: QueueEnv) -> None:
        queue = env.queue()
        queue.put_many(["a", "b", "c"], headers={"keep": "me"})
        for delivery in drain(queue):
            delivery.reject("downstream was down")
        assert queue.stats().dead_letters == 3
        assert queue.redrive(limit=2) == 2
        assert queue.stats().dead_letters == 1
        back = drain(queue)
        assert [d.body for d in back] == ["a", "b"]
        assert all(d.attempt == 1 and d.headers == {"keep": "me"} for d in back)
        assert queue.redrive() == 1
        assert queue.redrive() == 0
        assert [d.body for d in drain(queue)] == ["c"]

    def test_redrive_into_a_bounded_queue_moves_only_the_room(self, env: QueueEnv) -> None:
        """A bounded queue never holds more than maxsize, redriven messages included:
        redrive moves min(limit, room) oldest first, never waits, and leaves the
        rest dead-lettered; ready, delayed and in-flight messages all take room."""
        queue = env.queue("bounded", maxsize=3)
        queue.put_many(["a", "b", "c"])
        for delivery in drain(queue):
            delivery.reject("downstream was down")
        queue.put("d")
        queue.put("e", delay=60)
        checked = getattr(queue, "_check", lambda: None)

        def held() -> tuple[int, int]:
            checked()
            stats = queue.stats()
            return stats.total, stats.dead_letters

        assert queue.redrive(limit=1) == 1  # room 1 of 3: the oldest, a
        assert held() == (3, 2)
        started = time.monotonic()
        assert queue.redrive() == 0  # room 0: nothing moves, and no waiting
        assert queue.redrive(limit=2) == 0
        assert time.monotonic() - started < 1
        assert held() == (3, 2)
        first = queue.get(timeout=0)
        assert first is not None
        assert first.body == "d"
        assert queue.redrive() == 0  # in flight still takes room
        first.ack()
        assert held() == (2, 2)
        assert queue.redrive() == 1  # room 1 again: the next oldest, b
        assert held() == (3, 1)
        assert queue.purge() == 3  # a, b and the delayed e
        assert queue.redrive(limit=5) == 1  # room 3, one dead letter left: c
        assert held() == (1, 0)
        assert [d.body for d in drain(queue)] == ["c"]

    def test_stats_snapshot(self, env: QueueEnv) -> None:
        queue = env.queue()
        queue.put_many(["a", "b", "c"])
        queue.put("d", delay=60)
        queue.get(timeout=0)
        stats = queue.stats()
        assert stats.name == "q"
        assert (stats.ready, stats.depth, stats.delayed, stats.in_flight, stats.total) == (
            2,
            2,
            1,
            1,
            4,
        )

    def test_errors_are_scalekit_errors(self, env: QueueEnv) -> None:
        assert issubclass(QueueFull, ScalekitError)
        assert issubclass(DeliveryExpired, ScalekitError)

    # -- topics ---------------------------------------------------------------

    def test_topic_fans_out_to_every_group(self, env: QueueEnv) -> None:
        topic = env.broker.topic("orders")
        assert topic.publish("before anyone listens") == {}
        billing = topic.subscribe("billing")
        shipping = topic.subscribe("shipping")
        assert topic.subscribe("billing") is billing  # idempotent
        assert topic.subscribers == ["billing", "shipping"]
        ids = topic.publish({"order": 7}, headers={"source": "web"})
        assert set(ids) == {"billing", "shipping"}
        for queue in (billing, shipping):
            delivery = queue.get(timeout=0)
            assert delivery is not None
            assert delivery.body == {"order": 7}
            assert delivery.headers == {"source": "web"}
            delivery.ack()
        topic.unsubscribe("shipping")
        topic.publish({"order": 8})
        assert shipping.get(timeout=0) is None
        delivery = billing.get(timeout=0)
        assert delivery is not None
        assert delivery.body == {"order": 8}

    def test_consumers_of_one_group_compete(self, env: QueueEnv) -> None:
        topic = env.broker.topic("events")
        queue = topic.subscribe("workers")
        for i in range(10):
            topic.publish(i)
        first, second = queue.get_many(4, timeout=0), queue.get_many(10, timeout=0)
        assert sorted(d.body for d in first + second) == list(range(10))

    # -- consumers --------------------------------------------------------------

    def test_consumer_acks_what_the_handler_returns_from(self, env: QueueEnv) -> None:
        queue = env.queue()
        seen: list[Any] = []
        lock = threading.Lock()

        def handler(body: Any) -> None:
            with lock:
                seen.append(body)

        queue.put_many(range(50))
        consumer = Consumer(queue, handler, concurrency=4).start()
        queue.close()
        assert consumer.join(timeout=10)
        assert sorted(seen) == list(range(50))
        assert consumer.handled == 50
        assert queue.stats().total == 0

    def test_consumer_nacks_a_failing_handler_until_dead_letters(self, env: QueueEnv) -> None:
        queue = env.queue(max_deliveries=3)
        calls: Counter[Any] = Counter()

        def handler(body: Any) -> None:
            calls[body] += 1
            if body == "poison":
                raise ValueError("cannot handle this")

        queue.put_many(["ok", "poison"])
        consumer = Consumer(queue, handler, concurrency=2, retry_backoff=lambda attempt: 0.0)
        consumer.start()
        deadline = time.monotonic() + 10
        while queue.stats().dead_letters == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert consumer.stop(timeout=5)
        assert calls == {"ok": 1, "poison": 3}
        assert (consumer.handled, consumer.failed) == (1, 3)
        dead = queue.dead_letters.get(timeout=0)
        assert dead is not None
        assert dead.body == "poison"
        assert "ValueError: cannot handle this" in (dead.dead_letter_reason or "")

    def test_consumer_stop_is_graceful(self, env: QueueEnv) -> None:
        queue = env.queue()
        started, release = threading.Event(), threading.Event()
        finished: list[Any] = []

        def handler(body: Any) -> None:
            started.set()
            release.wait(5)
            finished.append(body)

        queue.put_many(["a", "b", "c"])
        consumer = Consumer(queue, handler, concurrency=1).start()
        assert started.wait(5)
        stopper = threading.Thread(target=consumer.stop)
        stopper.start()
        time.sleep(0.05)
        release.set()
        stopper.join(5)
        assert not consumer.running
        assert finished == ["a"]  # the running handler finished, no new one started
        assert queue.stats().ready == 2

    def test_backoff_grows_and_jitters(self) -> None:
        backoff = Backoff(base=1.0, factor=2.0, cap=10.0)
        rng = random.Random(1)
        for attempt, full in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 10.0), (9, 10.0)]:
            delays = [backoff(attempt, rng) for _ in range(50)]
            assert all(full / 2 <= d <= full for d in delays)
            assert len(set(delays)) > 1
        assert Backoff(base=1, jitter=False)(3) == 4.0
        with pytest.raises(ConfigurationError):
            Backoff(base=10, cap=1)

    # -- asyncio --------------------------------------------------------------

    def test_async_put_get_ack(self, env: QueueEnv) -> None:
        queue = AsyncQueue(env.queue())

        async def main() -> list[Any]:
            await queue.put({"n": 1})
            await queue.put_many([2, 3])
            first = await queue.get(timeout=0)
            assert first is not None
            await queue.ack(first)
            rest = await queue.get_many(5, timeout=0)
            for delivery in rest:
                await queue.nack(delivery)
            again = await queue.get_many(5, timeout=0)
            for delivery in again:
                await queue.ack(delivery)
            return [first.body, *(d.body for d in rest), *(d.attempt for d in again)]

        assert asyncio.run(main()) == [{"n": 1}, 2, 3, 2, 2]
        assert queue.queue.stats().total == 0

    def test_async_get_wakes_on_a_put_from_a_thread(self, env: QueueEnv) -> None:
        queue = env.queue()
        aqueue = AsyncQueue(queue)

        async def main() -> tuple[Any, float]:
            threading.Timer(0.1, queue.put, args=("from a thread",)).start()
            started = time.monotonic()
            delivery = await aqueue.get(timeout=10)
            return delivery, time.monotonic() - started

        delivery, waited = asyncio.run(main())
        assert delivery is not None
        assert delivery.body == "from a thread"
        assert waited < 2

    def test_async_for_until_closed(self, env: QueueEnv) -> None:
        queue = env.queue()
        aqueue = AsyncQueue(queue)

        async def main() -> list[Any]:
            async def producer() -> None:
                for i in range(5):
                    await aqueue.put(i)
                    await asyncio.sleep(0.01)
                aqueue.close()

            task = asyncio.create_task(producer())
            seen = []
            async for delivery in aqueue:
                seen.append(delivery.body)
                await aqueue.ack(delivery)
            await task
            return seen

        assert asyncio.run(main()) == [0, 1, 2, 3, 4]

    def test_async_get_times_out_and_can_be_cancelled(self, env: QueueEnv) -> None:
        queue = env.queue()
        aqueue = AsyncQueue(queue)

        async def main() -> Any:
            assert await aqueue.get(timeout=0.05) is None
            task = asyncio.create_task(aqueue.get())
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await aqueue.put("after the cancel")
            return await aqueue.get(timeout=5)

        delivery = asyncio.run(main())
        assert delivery is not None
        assert delivery.body == "after the cancel"

    # -- no message is lost ---------------------------------------------------

    def test_no_message_is_lost_with_crashing_and_nacking_consumers(self, env: QueueEnv) -> None:
        """Consumers that randomly crash (never settle), nack or ack: every message
        ends acked or dead-lettered, none twice acked by a live delivery."""
        n = 300
        queue = env.queue(visibility_timeout=VT, max_deliveries=4)
        queue.put_many(range(n))
        rng = random.Random(7)
        acked: Counter[int] = Counter()
        for _ in range(200):
            for delivery in queue.get_many(50, timeout=0):
                roll = rng.random()
                if roll < 0.2:
                    continue  # the consumer crashed holding it
                if roll < 0.4:
                    delivery.nack()
                else:
                    delivery.ack()
                    acked[delivery.body] += 1
            stats = queue.stats()
            if stats.total == 0:
                break
            if stats.ready == 0:
                env.advance(VT + 0.1)
        dead = [d.body for d in drain(queue.dead_letters)]
        assert queue.stats().total == 0
        assert set(acked) | set(dead) == set(range(n))
        assert not set(acked) & set(dead)
        assert all(count == 1 for count in acked.values())

    # -- concurrency ----------------------------------------------------------

    def test_threads_produce_and_consume_each_message_once(self, env: QueueEnv) -> None:
        queue = env.queue(maxsize=200)
        producers, consumers, per_producer = 4, 4, 500
        total = producers * per_producer
        acked: Counter[int] = Counter()
        lock = threading.Lock()
        errors: list[BaseException] = []
        largest = 0

        def produce(p: int) -> None:
            try:
                for i in range(per_producer):
                    queue.put(p * per_producer + i, timeout=30)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        def consume() -> None:
            nonlocal largest
            try:
                while True:
                    batch = queue.get_many(10, timeout=2)
                    if not batch:
                        return
                    for delivery in batch:
                        delivery.ack()
                        with lock:
                            acked[delivery.body] += 1
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        def watch(stop: threading.Event) -> None:
            nonlocal largest
            while not stop.is_set():
                largest = max(largest, queue.stats().total)
                time.sleep(0.005)

        stop = threading.Event()
        watcher = threading.Thread(target=watch, args=(stop,))
        threads = [threading.Thread(target=produce, args=(p,)) for p in range(producers)]
        threads += [threading.Thread(target=consume) for _ in range(consumers)]
        watcher.start()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        stop.set()
        watcher.join()
        assert errors == []
        assert acked == Counter(range(total))  # every message, exactly once
        assert largest <= 200  # the bound held throughout
        stats = queue.stats()
        assert (stats.total, stats.acked, stats.delivered) == (0, total, total)

    def test_a_thousand_tasks_each_get_one_message(self, env: QueueEnv) -> None:
        queue = env.queue()
        aqueue = AsyncQueue(queue)
        n = 1000

        async def worker() -> Any:
            delivery = await aqueue.get(timeout=30)
            assert delivery is not None
            await aqueue.ack(delivery)
            return delivery.body

        async def main() -> list[Any]:
            tasks = [asyncio.create_task(worker()) for _ in range(n)]
            await asyncio.sleep(0.05)  # most of them are waiting now
            producer = threading.Thread(target=lambda: queue.put_many(range(n)))
            producer.start()
            bodies = await asyncio.gather(*tasks)
            producer.join()
            return bodies

        assert sorted(asyncio.run(main())) == list(range(n))
        assert queue.stats().total == 0
