"""HealthChecker: every check on its own under a timeout (issue 13, item 7).

A check that hangs (an Event never set) must cost its own backend a failed check
per round and nothing else: the other backends are checked on time, a round ends
within the timeout, stop() returns at once, and one hanging check holds one thread.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from scalekit.balancing import HealthChecker, LeastConnections, RoundRobin
from scalekit.errors import ArgumentTypeError, ConfigurationError


@pytest.fixture
def hang() -> Iterator[threading.Event]:
    """An event the hanging checks wait on; set at the end so their threads exit."""
    event = threading.Event()
    yield event
    event.set()


def wait_for(condition: Any, seconds: float = 3.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return bool(condition())


# -- threads --------------------------------------------------------------------


def test_a_hanging_check_does_not_stop_the_checking_of_the_others(hang: threading.Event) -> None:
    balancer = RoundRobin(["stuck", "dead", "fine"], panic_threshold=0)
    calls: Counter[str] = Counter()

    def check(backend: str) -> bool:
        calls[backend] += 1
        if backend == "stuck":
            hang.wait()  # never set while the test runs
        return backend == "fine"

    checker = HealthChecker(balancer, check, interval=0.05, fall=2).start()
    try:
        # "dead" is checked every round although "stuck" never answers
        assert wait_for(lambda: calls["dead"] >= 10)
        assert wait_for(lambda: balancer.healthy() == ("fine",))
        assert calls["stuck"] == 1  # still running: never started twice
        assert isinstance(checker.last_error["stuck"], TimeoutError)
        began = time.monotonic()
        checker.stop()
        assert time.monotonic() - began < 0.5
        assert not checker.running
        time.sleep(0.1)  # a check launched just before the stop may still count its call
        stopped = calls["dead"]
        time.sleep(0.3)
        assert calls["dead"] == stopped  # stopped for good
    finally:
        hang.set()
        checker.stop()


def test_check_all_returns_within_the_timeout(hang: threading.Event) -> None:
    balancer = RoundRobin(["stuck", "fine"], panic_threshold=0)

    def check(backend: str) -> bool:
        if backend == "stuck":
            hang.wait()
        return True

    checker = HealthChecker(balancer, check, interval=1.0, timeout=0.1, fall=1)
    began = time.monotonic()
    assert checker.check_all() == {"stuck": False, "fine": True}
    assert 0.09 < time.monotonic() - began < 1.0
    assert balancer.healthy() == ("fine",)  # a timeout is a failed check
    assert "0.1 s" in str(checker.last_error["stuck"])


def test_a_check_still_running_fails_every_round_then_recovers(hang: threading.Event) -> None:
    balancer = RoundRobin(["slow", "fine"], panic_threshold=0)
    calls: Counter[str] = Counter()

    def check(backend: str) -> bool:
        calls[backend] += 1
        if backend == "slow" and calls[backend] == 1:
            hang.wait()  # the first check hangs until released
        return True

    checker = HealthChecker(balancer, check, timeout=0.02, rise=2, fall=3)
    for _ in range(3):
        assert checker.check_all() == {"slow": False, "fine": True}
    assert calls == {"slow": 1, "fine": 3}
    assert balancer.healthy() == ("fine",)
    hang.set()  # the hung check returns, late: its answer is not this round's
    assert wait_for(lambda: "slow" not in checker._running)
    assert checker.check_all() == {"slow": True, "fine": True}
    assert balancer.healthy() == ("fine",)  # one pass of the two rise needs
    assert checker.check_all() == {"slow": True, "fine": True}
    assert balancer.healthy() == ("slow", "fine")
    assert calls == {"slow": 3, "fine": 5}
    checker._check()


def test_stop_returns_at_once_while_a_check_hangs(hang: threading.Event) -> None:
    balancer = RoundRobin(["stuck"])
    started = threading.Event()

    def check(backend: str) -> bool:
        started.set()
        hang.wait()
        return True

    checker = HealthChecker(balancer, check, interval=10.0, timeout=5.0).start()
    assert started.wait(5)
    began = time.monotonic()
    checker.stop()  # mid-round: the round waits for the check no longer
    assert time.monotonic() - began < 0.5
    assert not checker.running


def test_start_returns_the_checker_and_refuses_a_second_start() -> None:
    balancer = RoundRobin(["a"], panic_threshold=0)
    checker = HealthChecker(balancer, lambda backend: False, interval=0.01, fall=1)
    assert checker.start() is checker
    try:
        with pytest.raises(ConfigurationError, match="already running"):
            checker.start()
        assert wait_for(lambda: balancer.healthy() == ())
    finally:
        checker.stop()
    assert checker.start() is checker  # after stop, it starts again
    checker.stop()


def test_an_async_check_is_refused_by_the_sync_runners() -> None:
    async def check(backend: str) -> bool:
        return True

    balancer = RoundRobin(["a"])
    checker = HealthChecker(balancer, check)
    with pytest.raises(ConfigurationError, match="start_async"):
        checker.check_all()
    with pytest.raises(ConfigurationError, match="start_async"):
        checker.start()
    assert balancer.healthy() == ("a",)  # nothing marked down for it
    assert not checker.running


# -- asyncio ----------------------------------------------------------------------


def test_a_hanging_async_check_does_not_stop_the_others() -> None:
    balancer = LeastConnections(["stuck", "dead", "fine"], panic_threshold=0)
    calls: Counter[str] = Counter()
    cancelled: list[str] = []

    async def check(backend: str) -> bool:
        calls[backend] += 1
        if backend == "stuck":
            try:
                await asyncio.Event().wait()  # never set
            except asyncio.CancelledError:
                cancelled.append(backend)
                raise
        return backend == "fine"

    async def scenario() -> None:
        checker = HealthChecker(balancer, check, interval=0.05, fall=2)
        task = checker.start_async()
        deadline = time.monotonic() + 3
        while calls["dead"] < 10 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert calls["dead"] >= 10
        assert balancer.healthy() == ("fine",)
        assert isinstance(checker.last_error["stuck"], TimeoutError)
        assert calls["stuck"] >= 2  # cancelled at each timeout, started again
        assert cancelled
        checker.stop()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not checker.running

    asyncio.run(asyncio.wait_for(scenario(), 10))


def test_check_all_async_returns_within_the_timeout() -> None:
    balancer = RoundRobin(["stuck", "fine"], panic_threshold=0)

    async def check(backend: str) -> bool:
        if backend == "stuck":
            await asyncio.Event().wait()
        return True

    async def scenario() -> dict[str, bool]:
        checker = HealthChecker(balancer, check, timeout=0.05, fall=1)
        return await checker.check_all_async()

    began = time.monotonic()
    assert asyncio.run(asyncio.wait_for(scenario(), 5)) == {"stuck": False, "fine": True}
    assert time.monotonic() - began < 1.0
    assert balancer.healthy() == ("fine",)


def test_a_hanging_sync_check_under_asyncio_blocks_neither_the_loop_nor_the_others(
    hang: threading.Event,
) -> None:
    balancer = RoundRobin(["stuck", "fine"], panic_threshold=0)

    def check(backend: str) -> bool:
        if backend == "stuck":
            hang.wait()
        return True

    async def scenario() -> tuple[dict[str, bool], int]:
        checker = HealthChecker(balancer, check, timeout=0.05, fall=1)
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.005)

        ticking = asyncio.ensure_future(ticker())
        results = await checker.check_all_async()
        ticking.cancel()
        return results, ticks

    results, ticks = asyncio.run(asyncio.wait_for(scenario(), 5))
    assert results == {"stuck": False, "fine": True}
    # the loop ran again while the check hung on its thread (a check run on the loop
    # would have hung it for good); on a loaded machine 50 ms may hold only 2 ticks
    assert ticks >= 2


# -- arguments ---------------------------------------------------------------------


def test_a_missing_check_is_refused_and_marks_nothing_down() -> None:
    balancer = RoundRobin(["a", "b"])
    with pytest.raises(ArgumentTypeError, match="check"):
        HealthChecker(balancer, None)  # type: ignore[arg-type]
    with pytest.raises(ArgumentTypeError, match="check"):
        HealthChecker(balancer, "ping")  # type: ignore[arg-type]
    assert balancer.healthy() == ("a", "b")


@pytest.mark.parametrize("balancer", [None, object(), ["a", "b"]])
def test_something_that_is_not_a_balancer_is_refused(balancer: Any) -> None:
    with pytest.raises(ArgumentTypeError, match="balancer"):
        HealthChecker(balancer, lambda backend: True)


BAD_SECONDS = [
    (math.nan, ConfigurationError),
    (math.inf, ConfigurationError),
    (-math.inf, ConfigurationError),
    pytest.param(10**400, ConfigurationError, id="10**400"),
    (1e308, ConfigurationError),
    (0, ConfigurationError),
    (-1, ConfigurationError),
    (True, ArgumentTypeError),
    ("5", ArgumentTypeError),
    (None, ArgumentTypeError),
]


@pytest.mark.parametrize(("value", "error"), BAD_SECONDS)
def test_bad_intervals_and_timeouts_are_refused(value: Any, error: type[Exception]) -> None:
    balancer = RoundRobin(["a"])
    with pytest.raises(error, match="interval"):
        HealthChecker(balancer, lambda backend: True, value)
    if value is not None:  # timeout=None means half the interval
        with pytest.raises(error, match="timeout"):
            HealthChecker(balancer, lambda backend: True, timeout=value)


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (0, ConfigurationError),
        (-1, ConfigurationError),
        pytest.param(10**400, ConfigurationError, id="10**400"),
        (True, ArgumentTypeError),
        (1.5, ArgumentTypeError),
        (math.nan, ArgumentTypeError),
        (None, ArgumentTypeError),
    ],
)
def test_bad_thresholds_are_refused(value: Any, error: type[Exception]) -> None:
    balancer = RoundRobin(["a"])
    for name in ("rise", "fall"):
        with pytest.raises(error, match=name):
            HealthChecker(balancer, lambda backend: True, **{name: value})


def test_the_timeout_defaults_to_half_the_interval() -> None:
    checker = HealthChecker(RoundRobin(["a"]), lambda backend: True, interval=3)
    assert (checker.interval, checker.timeout) == (3.0, 1.5)
    checker = HealthChecker(RoundRobin(["a"]), lambda backend: True, 3, timeout=2)
    assert checker.timeout == 2.0


def test_stopping_mid_round_marks_nothing_down(hang: threading.Event) -> None:
    balancer = RoundRobin(["stuck", "fine"], panic_threshold=0)
    started = threading.Event()

    def check(backend: str) -> bool:
        if backend == "stuck":
            started.set()
            hang.wait()
        return True

    checker = HealthChecker(balancer, check, interval=10.0, timeout=5.0, fall=1).start()
    assert started.wait(5)
    checker.stop()  # the round is abandoned: "stuck" did not time out, it was not waited for
    time.sleep(0.05)
    assert balancer.healthy() == ("stuck", "fine")
    assert "stuck" not in checker.last_error


def test_stop_is_bounded_even_while_the_balancer_blocks_a_mark(hang: threading.Event) -> None:
    class SlowMarks(RoundRobin[str]):
        entered = threading.Event()

        def mark_down(self, backend: str) -> None:
            self.entered.set()
            hang.wait()  # a balancer whose mark_down never returns
            super().mark_down(backend)

    balancer = SlowMarks(["a"], panic_threshold=0)
    checker = HealthChecker(balancer, lambda backend: False, interval=0.05, timeout=0.1, fall=1)
    checker.start()
    assert SlowMarks.entered.wait(5)
    began = time.monotonic()
    checker.stop()
    assert time.monotonic() - began < 0.1 + 1.0 + 0.5  # timeout + 1 s, and slack
    assert not checker.running


# -- backends that come and go ---------------------------------------------------


def test_a_backend_removed_while_down_and_added_again_is_taken_down_again() -> None:
    balancer = RoundRobin(["a", "b"], panic_threshold=0)
    failing = {"b"}
    checker = HealthChecker(balancer, lambda backend: backend not in failing, fall=2, rise=2)
    checker.check_all()
    checker.check_all()
    assert balancer.healthy() == ("a",)
    balancer.remove("b")
    checker.check_all()  # sees it gone
    balancer.add("b")  # a new instance under the old name, failing too
    checker.check_all()
    checker.check_all()
    assert balancer.healthy() == ("a",)
    checker._check()


def test_a_backend_added_again_between_two_rounds_is_taken_down_again() -> None:
    balancer = RoundRobin(["a", "b"], panic_threshold=0)
    checker = HealthChecker(balancer, lambda backend: backend == "a", fall=2, rise=2)
    checker.check_all()
    checker.check_all()
    assert balancer.healthy() == ("a",)
    balancer.remove("b")
    balancer.add("b")  # the checker never sees it gone
    checker.check_all()
    checker.check_all()
    assert balancer.healthy() == ("a",)
    balancer.mark_up("b")  # by hand, while it still fails: down again after fall rounds
    checker.check_all()
    assert balancer.healthy() == ("a", "b")
    checker.check_all()
    assert balancer.healthy() == ("a",)
    checker._check()


def test_the_checker_forgets_the_backends_removed_from_the_balancer() -> None:
    balancer = RoundRobin(["a"], panic_threshold=0)
    checker = HealthChecker(balancer, lambda backend: backend == "a", fall=1)
    for i in range(50):
        balancer.add(f"gone-{i}")
        checker.check_all()
        balancer.remove(f"gone-{i}")
    checker.check_all()
    assert set(checker._streaks) == {"a"}
    assert not checker._took_down
    assert not checker.last_error
