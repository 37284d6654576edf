from __future__ import annotations

import math
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scalekit.errors import ConfigurationError
from scalekit.protocols import Clock
from scalekit.testing import FakeClock


def test_fake_clock_is_a_clock_that_stands_still() -> None:
    clock = FakeClock(10)
    assert isinstance(clock, Clock)
    assert clock() == clock() == clock.now == 10.0
    assert isinstance(clock(), float)


@given(st.lists(st.floats(min_value=0, max_value=1e6), max_size=20))
def test_advance_adds_up(steps: list[float]) -> None:
    clock = FakeClock()
    for step in steps:
        clock.advance(step)
    assert clock() == pytest.approx(math.fsum(steps), rel=1e-9, abs=1e-9)


def test_time_never_goes_backwards() -> None:
    clock = FakeClock(5)
    with pytest.raises(ConfigurationError):
        clock.advance(-1)
    with pytest.raises(ConfigurationError):
        clock.set(4.9)
    assert clock() == 5.0
    clock.set(7)
    assert clock() == 7.0


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_times_are_refused(bad: float) -> None:
    clock = FakeClock()
    with pytest.raises(ConfigurationError):
        clock.advance(bad)
    with pytest.raises(ConfigurationError):
        FakeClock(bad)
    assert clock() == 0.0


@pytest.mark.parametrize("bad", ["1", None, True])
def test_non_numbers_are_refused(bad: object) -> None:
    with pytest.raises(TypeError):
        FakeClock().advance(bad)  # type: ignore[arg-type]


def test_concurrent_advances_are_not_lost() -> None:
    clock = FakeClock()

    def work() -> None:
        for _ in range(1000):
            clock.advance(1)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert clock() == 8000.0
