"""Hostile arguments to the mq constructors and helpers: a scalekit error naming the
argument, never AttributeError or OverflowError (issue 13, item 12)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from scalekit.errors import ArgumentTypeError, ConfigurationError, ScalekitError
from scalekit.mq import AsyncQueue, Backoff, Broker, Consumer, SqliteBackend

HOSTILE_SECONDS = [float("nan"), float("inf"), -1, 10**400, 1e308, True, None, "1"]


def test_backoff_never_overflows() -> None:
    backoff = Backoff(jitter=False)
    assert [backoff(n) for n in (1, 2, 3, 9, 10)] == [1.0, 2.0, 4.0, 256.0, 300.0]
    for attempt in (1025, 10**6, 2**62):
        assert backoff(attempt) == 300.0
        assert 150.0 <= Backoff()(attempt, random.Random(attempt)) <= 300.0
    assert Backoff(base=0, jitter=False)(10**9) == 0.0
    assert Backoff(base=2, factor=1, jitter=False)(10**9) == 2.0
    assert Backoff(base=1e-300, factor=1e6, cap=1e9, jitter=False)(60) == 1e9


@pytest.mark.parametrize("attempt", [True, 1.5, None, "3"])
def test_backoff_refuses_a_hostile_attempt(attempt: Any) -> None:
    with pytest.raises(ArgumentTypeError, match="attempt"):
        Backoff()(attempt)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        *[({"base": value}, "base") for value in HOSTILE_SECONDS if value != float("inf")],
        *[({"cap": value}, "cap") for value in HOSTILE_SECONDS if value != float("inf")],
        ({"factor": float("nan")}, "factor"),
        ({"factor": 0.5}, "factor"),
        ({"factor": 10**400}, "factor"),
        ({"factor": True}, "factor"),
        ({"jitter": "yes"}, "jitter"),
        ({"base": 10, "cap": 5}, "base"),
    ],
)
def test_backoff_refuses_hostile_settings(kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises(ScalekitError, match=name):
        Backoff(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"concurrency": 0}, ConfigurationError, "concurrency"),
        ({"concurrency": True}, ArgumentTypeError, "concurrency"),
        ({"concurrency": 10**400}, ConfigurationError, "concurrency"),
        ({"retry_backoff": 5}, ArgumentTypeError, "retry_backoff"),
        ({"name": ""}, ConfigurationError, "name"),
        ({"name": "\ud800"}, ConfigurationError, "name"),
    ],
)
def test_consumer_refuses_hostile_settings(
    kwargs: dict[str, Any], error: type[Exception], name: str
) -> None:
    queue = Broker().queue("jobs")
    with pytest.raises(error, match=name):
        Consumer(queue, print, **kwargs)


def test_consumer_and_async_queue_refuse_what_is_not_a_queue() -> None:
    with pytest.raises(ArgumentTypeError, match="handler"):
        Consumer(Broker().queue("jobs"), None)  # type: ignore[arg-type]
    for not_a_queue in (None, "jobs", object()):
        with pytest.raises(ArgumentTypeError, match="queue"):
            Consumer(not_a_queue, print)  # type: ignore[arg-type]
        with pytest.raises(ArgumentTypeError, match="queue"):
            AsyncQueue(not_a_queue)  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", ["memory", 5, object()])
def test_broker_refuses_what_is_not_a_backend(backend: Any) -> None:
    with pytest.raises(ArgumentTypeError, match="backend"):
        Broker(backend)
    with pytest.raises(ArgumentTypeError, match="clock"):
        Broker(clock=5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        *[
            ({"poll_interval": value}, ScalekitError, "poll_interval")
            for value in [*HOSTILE_SECONDS, 0]
            if value is not None
        ],
        ({"synchronous": "OFF"}, ConfigurationError, "synchronous"),
    ],
)
def test_sqlite_backend_refuses_hostile_settings(
    tmp_path: Path, kwargs: dict[str, Any], error: type[Exception], name: str
) -> None:
    with pytest.raises(error, match=name):
        SqliteBackend(tmp_path / "q.db", **kwargs)
    assert not (tmp_path / "q.db").exists()


@pytest.mark.parametrize("path", [None, 5, b"q.db", "\ud800.db"])
def test_sqlite_backend_refuses_a_hostile_path(path: Any) -> None:
    with pytest.raises(ScalekitError, match="path"):
        SqliteBackend(path)


@pytest.mark.parametrize("client", [None, "redis://localhost", 5])
def test_redis_backend_refuses_what_is_not_a_client(client: Any) -> None:
    pytest.importorskip("redis")
    from scalekit.mq._redis import RedisStreamsBackend

    with pytest.raises(ArgumentTypeError, match="client"):
        RedisStreamsBackend(client)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"block": float("nan")}, "block"),
        ({"block": 0}, "block"),
        ({"block": 61}, "block"),
        ({"block": True}, "block"),
        ({"prefix": ""}, "prefix"),
        ({"prefix": "\ud800"}, "prefix"),
        ({"prefix": None}, "prefix"),
    ],
)
def test_redis_backend_refuses_hostile_settings(kwargs: dict[str, Any], name: str) -> None:
    redis = pytest.importorskip("redis")
    from scalekit.mq._redis import RedisStreamsBackend

    with pytest.raises(ScalekitError, match=name):
        RedisStreamsBackend(redis.Redis(), **kwargs)


@pytest.mark.parametrize("timeout", [float("nan"), -1, 10**400, True])
def test_consumer_stop_and_join_refuse_a_hostile_timeout(timeout: Any) -> None:
    consumer = Consumer(Broker().queue("jobs"), print, concurrency=1).start()
    with pytest.raises(ScalekitError, match="timeout"):
        consumer.stop(timeout)
    with pytest.raises(ScalekitError, match="timeout"):
        consumer.join(timeout)
    assert consumer.running  # the refused stop stopped nothing
    assert consumer.stop(timeout=5)
