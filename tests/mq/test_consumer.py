"""Consumer: a handler that ends otherwise than by returning or raising an Exception."""

from __future__ import annotations

import asyncio
import threading

from scalekit.mq import Broker, Consumer


def test_a_handler_cancelled_inside_is_a_failure_and_the_worker_goes_on() -> None:
    queue = Broker().queue("jobs", visibility_timeout=60)
    calls: list[str] = []

    def handler(body: str) -> None:
        calls.append(body)
        if len(calls) == 1:
            raise asyncio.CancelledError  # a task the handler ran was cancelled

    consumer = Consumer(queue, handler, concurrency=1, retry_backoff=lambda attempt: 0.0).start()
    try:
        queue.put("job")
        queue.put("next")
        queue.close()
        assert consumer.join(timeout=5)
    finally:
        consumer.stop(timeout=5)
    assert sorted(calls) == ["job", "job", "next"]
    assert (consumer.failed, consumer.handled) == (1, 2)
    assert queue.stats().total == 0


def test_a_handler_that_exits_gives_its_message_back_at_once() -> None:
    queue = Broker().queue("jobs", visibility_timeout=60)
    exited = threading.Event()

    def handler(body: str) -> None:
        exited.set()
        raise SystemExit

    consumer = Consumer(queue, handler, concurrency=1).start()
    queue.put("job")
    assert exited.wait(5)
    assert consumer.join(timeout=5)  # the worker ended, as the handler asked
    delivery = queue.get(timeout=0)  # back now, not after 60 s
    assert delivery is not None
    assert (delivery.body, delivery.attempt) == ("job", 2)
    assert consumer.failed == 1
