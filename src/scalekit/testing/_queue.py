"""check_queue_backend: the contract every scalekit.mq backend meets.

Run it on your own backend the way trio's ``check_two_way_stream`` runs on a stream::

    from scalekit.testing import check_queue_backend

    def test_my_backend(tmp_path):
        check_queue_backend(lambda: MyBackend(tmp_path / f"{uuid4()}"))

It needs no test framework (but not ``python -O``, which strips asserts): each
check raises :class:`AssertionError` naming the check and the broken promise.
``factory()`` returns a fresh, empty backend (called once per check; the check
closes it). ``broker_clock``: whether the backend keeps
time with the broker's ``clock`` (memory, SQLite: the checks move a
:class:`FakeClock`) or its own (Redis: the checks sleep, briefly). Each check is
also an entry of :data:`QUEUE_CHECKS`, so a pytest suite can report them one by
one (as scalekit's ``tests/contracts/queue_contract.py`` does).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from scalekit.errors import (
    ArgumentTypeError,
    ClosedError,
    ConfigurationError,
    DeliveryExpired,
    QueueFull,
    ScalekitError,
)
from scalekit.testing._clock import FakeClock
from scalekit.testing._raising import raises as _raises

__all__ = ["QUEUE_CHECKS", "QueueCheck", "QueueCheckEnv", "check_queue_backend"]

VT = 0.4
"""The visibility timeout of the timing checks, seconds (short: real time may pass)."""


@dataclass
class QueueCheckEnv:
    """What a check gets: a broker on a fresh backend, and a way to let time pass."""

    broker: Any
    advance: Callable[[float], object]

    def queue(self, name: str = "q", **options: Any) -> Any:
        return self.broker.queue(name, **options)


QueueCheck = Callable[[QueueCheckEnv], None]


def _drain(queue: Any) -> list[Any]:
    out = []
    while (delivery := queue.get(timeout=0)) is not None:
        out.append(delivery)
    return out


def _checked(queue: Any) -> None:
    check = getattr(queue, "_check", None)
    if check is not None:
        check()


def _total(queue: Any) -> int:
    return int(queue.stats().total)


# -- the checks ----------------------------------------------------------------------


def check_round_trip(env: QueueCheckEnv) -> None:
    """put, get, ack of bytes, str and JSON bodies; unique ids; headers come back."""
    queue = env.queue()
    bodies: list[Any] = [b"\x00bytes", "text \U0001f600", {"n": [1, 2.5, None, True]}, 7, 2**70]
    ids = [queue.put(body, headers={"h": "v"}) for body in bodies]
    assert len(set(ids)) == len(ids), f"ids are not unique: {ids}"
    got = _drain(queue)
    assert [d.id for d in got] == ids, f"not in put order: {[d.id for d in got]} != {ids}"
    for delivery, body in zip(got, bodies, strict=True):
        assert delivery.body == body, delivery.body
        assert type(delivery.body) is type(body), delivery.body
        assert delivery.headers == {"h": "v"}, delivery.headers
        assert delivery.attempt == 1
    assert queue.stats().in_flight == len(bodies)
    for delivery in got:
        delivery.ack()
        delivery.ack()  # a second ack is a no-op
    stats = queue.stats()
    assert (stats.total, stats.acked, stats.delivered) == (0, len(bodies), len(bodies)), stats


def check_json_bodies_are_copies(env: QueueCheckEnv) -> None:
    """A JSON body comes back as a fresh copy, not the producer's object."""
    queue = env.queue()
    body = {"items": [1, 2]}
    queue.put(body)
    body["items"].append(3)
    delivery = queue.get(timeout=0)
    assert delivery is not None
    assert delivery.body == {"items": [1, 2]}, delivery.body
    delivery.body["items"].append(4)
    assert delivery.body == {"items": [1, 2]}
    delivery.ack()


def check_nack_redelivers(env: QueueCheckEnv) -> None:
    """A nacked message comes back with the next attempt number; with a delay, later."""
    queue = env.queue(max_deliveries=5, visibility_timeout=30)
    queue.put("again")
    first = queue.get(timeout=0)
    assert first is not None
    first.nack()
    second = queue.get(timeout=0)
    assert second is not None
    assert (second.body, second.attempt) == ("again", 2), second
    second.nack(delay=VT)
    assert queue.get(timeout=0) is None, "a message nacked with a delay came back at once"
    assert queue.stats().delayed == 1
    env.advance(VT * 1.5)
    third = queue.get(timeout=VT * 4)
    assert third is not None
    assert third.attempt == 3, third
    _raises(DeliveryExpired, first.ack, "acking a delivery that was nacked")
    third.ack()
    assert _total(queue) == 0


def check_dead_letters_and_redrive(env: QueueCheckEnv) -> None:
    """reject sends to the dead letters with the reason; max_deliveries too;
    redrive brings them back with a fresh count of attempts."""
    queue = env.queue(max_deliveries=2, visibility_timeout=30)
    queue.put("poison", headers={"keep": "me"})
    queue.put("flaky")
    poison, flaky = queue.get(timeout=0), queue.get(timeout=0)
    assert poison is not None
    assert flaky is not None
    poison.reject("bad input")
    flaky.nack(reason="first")
    flaky = queue.get(timeout=0)
    assert flaky is not None
    assert flaky.attempt == 2
    flaky.nack(reason="second")  # its last allowed attempt
    assert queue.get(timeout=0) is None
    stats = queue.stats()
    assert (stats.total, stats.dead_letters, stats.dead_lettered) == (0, 2, 2), stats
    dead = {d.body: d for d in _drain(queue.dead_letters)}
    assert set(dead) == {"poison", "flaky"}, dead
    assert dead["poison"].dead_letter_reason == "bad input"
    assert dead["poison"].headers["keep"] == "me"
    assert "second" in (dead["flaky"].dead_letter_reason or "")
    for delivery in dead.values():
        delivery.nack()  # back into the dead letters
    assert queue.redrive(limit=1) == 1
    assert queue.redrive() == 1
    back = _drain(queue)
    assert sorted(d.body for d in back) == ["flaky", "poison"], back
    assert all(d.attempt == 1 and d.dead_letter_reason is None for d in back)
    for delivery in back:
        delivery.ack()
    assert queue.stats().dead_letters == 0


def check_visibility_timeout(env: QueueCheckEnv) -> None:
    """An unsettled delivery comes back after the visibility timeout; the stale
    delivery can no longer settle it; extend keeps it invisible."""
    queue = env.queue(visibility_timeout=VT, max_deliveries=5)
    queue.put("slow")
    queue.put("long")
    slow, long = queue.get(timeout=0), queue.get(timeout=0)
    assert slow is not None
    assert long is not None
    long.extend(VT * 20)
    env.advance(VT * 1.5)
    again = queue.get(timeout=VT * 4)
    assert again is not None
    assert (again.body, again.attempt) == ("slow", 2), again
    assert queue.get(timeout=0) is None, "an extended delivery came back"
    _raises(DeliveryExpired, slow.ack, "acking a delivery that timed out")
    again.ack()
    long.ack()
    assert _total(queue) == 0


def check_ack_many(env: QueueCheckEnv) -> None:
    """ack_many acks every delivery still held, then raises DeliveryExpired for
    one that timed out; a bad list is refused before anything is acked."""
    queue = env.queue(visibility_timeout=VT, max_deliveries=5)
    other = env.queue("other")
    other.put("elsewhere")
    stranger = other.get(timeout=0)
    assert stranger is not None
    queue.put_many(["a", "b", "c", "slow"])
    got = queue.get_many(4, timeout=0)
    assert len(got) == 4, got
    a, b, c, slow = got
    bad_lists: list[Any] = [[a, stranger], [a, "b"], "ab", None]
    for bad in bad_lists:
        _raises(ArgumentTypeError, functools.partial(queue.ack_many, bad), f"ack_many({bad!r})")
    assert queue.stats().acked == 0, "a refused ack_many acked something"
    queue.ack_many([])
    queue.ack_many([a, b, a])  # twice in one list, as two acks: fine
    assert queue.stats().acked == 2, queue.stats()
    env.advance(VT * 1.5)  # c and slow time out; one comes back first
    again = queue.get(timeout=VT * 4)
    assert again is not None
    assert again.body in ("c", "slow"), again.body
    assert again.attempt == 2, again
    stale, waiting = (c, slow) if again.body == "c" else (slow, c)
    _raises(DeliveryExpired, lambda: queue.ack_many([stale, again, b]), "acking a lost one")
    stats = queue.stats()
    assert (stats.acked, stats.total) == (3, 1), stats  # again acked; the other is back
    last = queue.get(timeout=VT * 4)
    assert last is not None
    assert last.body == waiting.body, last.body
    queue.ack_many(iter([last]))
    assert _total(queue) == 0
    stranger.ack()


def check_priorities_and_delays(env: QueueCheckEnv) -> None:
    """Higher priorities first, equal ones in put order; delayed ones wait."""
    queue = env.queue()
    queue.put("later", delay=VT)
    for body, priority in [("low", -1), ("a", 0), ("urgent", 9), ("b", 0), ("high", 5)]:
        queue.put(body, priority=priority)
    got = _drain(queue)
    assert [d.body for d in got] == ["urgent", "high", "a", "b", "low"], [d.body for d in got]
    assert queue.stats().delayed == 1
    env.advance(VT * 1.5)
    later = queue.get(timeout=VT * 4)
    assert later is not None
    assert later.body == "later", later
    for delivery in [*got, later]:
        delivery.ack()


def check_dedup(env: QueueCheckEnv) -> None:
    """A second put with the same dedup_key in the window stores nothing."""
    queue = env.queue(dedup_window=60)
    first = queue.put("once", dedup_key="k")
    assert queue.put("twice", dedup_key="k") == first
    other = queue.put("other", dedup_key="k2")
    assert other != first
    assert [d.body for d in _drain(queue)] == ["once", "other"]


def check_bounded_queue(env: QueueCheckEnv) -> None:
    """A full bounded queue refuses puts (QueueFull) once its timeout passes; a
    put_many that cannot fit stores none; an ack makes room."""
    queue = env.queue("bounded", maxsize=2)
    queue.put_many(["a", "b"])
    _raises(QueueFull, lambda: queue.put("c", timeout=0), "a put on a full queue")
    _raises(QueueFull, lambda: queue.put_many(["c"], timeout=0), "a put_many on a full queue")
    _raises(QueueFull, lambda: queue.put_many(["x", "y", "z"]), "a put_many that never fits")
    assert queue.stats().total == 2
    delivery = queue.get(timeout=0)
    assert delivery is not None
    delivery.ack()
    queue.put("c", timeout=0)
    assert [d.body for d in _drain(queue)] == ["b", "c"]


def check_redrive_into_a_bounded_queue(env: QueueCheckEnv) -> None:
    """redrive into a bounded queue moves at most the room there is (maxsize less
    what it holds), oldest first, without waiting; the rest stay dead letters."""
    queue = env.queue("bounded", maxsize=2)
    queue.put_many(["a", "b"])
    for delivery in _drain(queue):
        delivery.reject("bad input")
    queue.put_many(["c", "d"])
    moved = queue.redrive()
    _checked(queue)
    assert moved == 0, f"redrive moved {moved} into a full queue of maxsize 2"
    stats = queue.stats()
    assert (stats.total, stats.dead_letters) == (2, 2), stats
    taken = queue.get(timeout=0)
    assert taken is not None
    taken.ack()
    assert queue.redrive() == 1, "redrive with room for one did not move one"
    _checked(queue)
    stats = queue.stats()
    assert (stats.total, stats.dead_letters) == (2, 1), stats
    taken = queue.get(timeout=0)
    assert taken is not None
    taken.ack()
    assert queue.redrive(limit=5) == 1
    _checked(queue)
    got = [d.body for d in _drain(queue)]
    assert got == ["a", "b"], f"redrive did not move the oldest dead letters first: {got}"
    assert queue.stats().dead_letters == 0


HOSTILE_PUTS: tuple[tuple[dict[str, Any], type[Exception]], ...] = (
    ({"delay": float("nan")}, ConfigurationError),
    ({"delay": -1}, ConfigurationError),
    ({"delay": 10**400}, ConfigurationError),
    ({"delay": True}, ArgumentTypeError),
    ({"priority": 2**53 + 1}, ConfigurationError),
    ({"priority": 1.5}, ArgumentTypeError),
    ({"timeout": float("nan")}, ConfigurationError),
    ({"timeout": -1}, ConfigurationError),
    ({"timeout": True}, ArgumentTypeError),
    ({"dedup_key": 5}, ArgumentTypeError),
    ({"dedup_key": "\ud800"}, ConfigurationError),
    ({"headers": {"a": 1}}, ArgumentTypeError),
    ({"headers": "a=b"}, ArgumentTypeError),
    ({"headers": {"a": "\ud800"}}, ConfigurationError),
)
HOSTILE_BODIES: tuple[tuple[Any, type[Exception]], ...] = (
    ("\ud800", ConfigurationError),
    ({"k": "\udcff"}, ConfigurationError),
    (float("nan"), ArgumentTypeError),
    ({1, 2}, ArgumentTypeError),
    (object(), ArgumentTypeError),
)


def check_hostile_arguments(env: QueueCheckEnv) -> None:
    """Every backend refuses the same values with a scalekit error (which is also
    the builtin TypeError or ValueError), and a refused call changes nothing."""
    queue = env.queue()
    for kwargs, error in HOSTILE_PUTS:
        _raises(error, functools.partial(queue.put, "x", **kwargs), f"put(**{kwargs!r})")
    for body, error in HOSTILE_BODIES:
        _raises(error, functools.partial(queue.put, body), f"put({body!r})")
        _raises(error, functools.partial(queue.put_many, ["ok", body]), f"put_many([{body!r}])")
    for n in (0, -1, 1.5, True, 10**400):
        _raises(ScalekitError, functools.partial(queue.get_many, n), f"get_many({n!r})")
    for timeout in (-1, float("nan"), 1e308, "1"):
        get = functools.partial(queue.get, timeout=timeout)
        _raises(ScalekitError, get, f"get(timeout={timeout!r})")
    assert queue.stats().total == 0, "a refused call stored something"
    queue.put("x")
    delivery = queue.get(timeout=0)
    assert delivery is not None
    for call, what in [
        (lambda: delivery.nack(float("nan")), "nack(nan)"),
        (lambda: delivery.nack(reason="\ud800"), "nack(reason=lone surrogate)"),
        (lambda: delivery.reject(None), "reject(None)"),
        (lambda: delivery.extend(10**400), "extend(10**400)"),
    ]:
        _raises(ScalekitError, call, what)
    assert queue.stats().in_flight == 1, "a refused settlement changed the delivery"
    delivery.ack()
    for options in ({"visibility_timeout": 0}, {"max_deliveries": 0}, {"maxsize": True}):
        _raises(ScalekitError, functools.partial(env.queue, "bad", **options), f"{options}")
    names: tuple[Any, ...] = ("", "q.dlq", "\ud800", None)
    for name in names:
        _raises(ScalekitError, functools.partial(env.queue, name), f"queue({name!r})")


def check_close(env: QueueCheckEnv) -> None:
    """A closed queue refuses puts; getters take what is ready, then get None."""
    queue = env.queue()
    queue.put("last")
    queue.close()
    _raises(ClosedError, lambda: queue.put("x"), "a put on a closed queue")
    delivery = queue.get(timeout=None)
    assert delivery is not None
    assert delivery.body == "last"
    delivery.ack()
    assert queue.get(timeout=None) is None, "a get on a closed, drained queue waited"


def check_topics(env: QueueCheckEnv) -> None:
    """Every subscribed group gets a copy; groups compete within, not between;
    topic and group names cannot collide with each other or with queues."""
    topic = env.broker.topic("orders")
    billing, shipping = topic.subscribe("billing"), topic.subscribe("shipping")
    assert topic.subscribers == ["billing", "shipping"]
    ids = topic.publish({"order": 7})
    assert sorted(ids) == ["billing", "shipping"], ids
    for queue in (billing, shipping):
        delivery = queue.get(timeout=0)
        assert delivery is not None
        assert delivery.body == {"order": 7}
        delivery.ack()
    topic.unsubscribe("shipping")
    topic.publish("only billing")
    assert shipping.get(timeout=0) is None
    _raises(ConfigurationError, lambda: env.broker.topic("q").subscribe("x/y"), "group 'x/y'")
    _raises(ConfigurationError, lambda: env.broker.topic("q/x").subscribe("y"), "topic 'q/x'")


QUEUE_CHECKS: dict[str, QueueCheck] = {
    check.__name__: check
    for check in (
        check_round_trip,
        check_json_bodies_are_copies,
        check_nack_redelivers,
        check_dead_letters_and_redrive,
        check_visibility_timeout,
        check_ack_many,
        check_priorities_and_delays,
        check_dedup,
        check_bounded_queue,
        check_redrive_into_a_bounded_queue,
        check_hostile_arguments,
        check_close,
        check_topics,
    )
}
"""Every check, by name."""


def run_queue_check(
    check: QueueCheck, factory: Callable[[], Any], *, broker_clock: bool = True
) -> None:
    """Run one check of :data:`QUEUE_CHECKS` on a fresh backend from ``factory``,
    then ``_check()`` its queues if they have one; close the broker."""
    from scalekit.mq import Broker

    if broker_clock:
        clock = FakeClock(1_700_000_000.0)
        broker = Broker(factory(), clock=clock)
        advance: Callable[[float], object] = clock.advance
    else:
        broker = Broker(factory())
        advance = time.sleep
    try:
        try:
            check(QueueCheckEnv(broker, advance))
            for queue in list(broker._queues.values()):
                _checked(queue)
        except AssertionError as exc:
            raise AssertionError(f"{check.__name__}: {exc}") from exc
    finally:
        broker.close()


def check_queue_backend(factory: Callable[[], Any], *, broker_clock: bool = True) -> None:
    """Run every check of :data:`QUEUE_CHECKS` on backends made by ``factory``
    (a fresh, empty backend per check). Raises :class:`AssertionError` naming the
    first broken promise.

    ``broker_clock``: True if the backend keeps time with the broker's clock (the
    checks then move a :class:`FakeClock`); False if it keeps its own (the checks
    sleep, at most a few seconds in all).
    """
    for check in QUEUE_CHECKS.values():
        run_queue_check(check, factory, broker_clock=broker_clock)
