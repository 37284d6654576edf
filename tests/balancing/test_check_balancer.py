"""scalekit.testing.check_balancer passes a correct balancer and names what a
broken one breaks."""

from __future__ import annotations

import random
import threading
from typing import Any

import pytest

from scalekit._validate import check_node
from scalekit.balancing import FailoverGroups, RoundRobin
from scalekit.errors import DuplicateNode, NoBackendAvailable, UnknownNode
from scalekit.testing._balancer import BALANCER_CHECKS, check_balancer


class RandomBalancer:
    """What a user might write: a uniform random pick among the backends up."""

    def __init__(self, backends: list[str]) -> None:
        self._up: dict[str, bool] = {}
        for backend in backends:
            check_node(backend, "backend")
            if backend in self._up:
                raise DuplicateNode(backend)
            self._up[backend] = True
        self._lock = threading.Lock()
        self._rng = random.Random(7)

    def pick(self, key: object = None) -> str:
        with self._lock:
            healthy = [b for b, up in self._up.items() if up]
            if not healthy:
                raise NoBackendAvailable("all down")
            return self._rng.choice(healthy)

    def mark_down(self, backend: str) -> None:
        self._set(backend, False)

    def mark_up(self, backend: str) -> None:
        self._set(backend, True)

    def _set(self, backend: str, up: bool) -> None:
        with self._lock:
            if backend not in self._up:
                raise UnknownNode(backend)
            self._up[backend] = up


class PrimaryFirst(RandomBalancer):
    """Everything to the first backend up: it does not spread."""

    def pick(self, key: object = None) -> str:
        with self._lock:
            for backend, up in self._up.items():
                if up:
                    return backend
            raise NoBackendAvailable("all down")


class IgnoresMarks(RandomBalancer):
    def pick(self, key: object = None) -> str:
        return self._rng.choice(list(self._up))


class RaisesIndexError(RandomBalancer):
    def pick(self, key: object = None) -> str:
        healthy = [b for b, up in self._up.items() if up]
        return healthy[self._rng.randrange(len(healthy))] if healthy else healthy[0]


class AcceptsNone(RandomBalancer):
    def __init__(self, backends: list[Any]) -> None:
        super().__init__([b for b in backends if b is not None and b == b])


class ForgivesUnknown(RandomBalancer):
    def _set(self, backend: str, up: bool) -> None:
        if backend in self._up:
            self._up[backend] = up


class BrokenInvariant(RandomBalancer):
    def _check(self) -> None:
        raise AssertionError("in-flight count below zero")


def test_a_correct_user_balancer_passes() -> None:
    check_balancer(RandomBalancer)


def test_scalekit_balancers_pass() -> None:
    check_balancer(RoundRobin)
    check_balancer(lambda backends: FailoverGroups([RoundRobin(backends), RoundRobin()]))


def test_a_balancer_that_does_not_spread_passes_with_spreads_false() -> None:
    with pytest.raises(AssertionError, match="check_every_backend_gets_picks"):
        check_balancer(PrimaryFirst)
    check_balancer(PrimaryFirst, spreads=False)


@pytest.mark.parametrize(
    ("broken", "check"),
    [
        (IgnoresMarks, "check_mark_down_and_up"),
        (RaisesIndexError, "check_all_down_raises"),
        (AcceptsNone, "check_hostile_backends_are_refused"),
        (ForgivesUnknown, "check_unknown_backends_are_refused"),
        (BrokenInvariant, "check_is_a_balancer"),
    ],
)
def test_a_broken_balancer_fails_the_check_that_names_its_defect(broken: type, check: str) -> None:
    with pytest.raises(AssertionError, match=check):
        check_balancer(broken)
    with pytest.raises(AssertionError):
        BALANCER_CHECKS[check](broken, spreads=True)


def test_something_that_is_not_a_balancer_fails() -> None:
    with pytest.raises(AssertionError, match="check_is_a_balancer"):
        check_balancer(lambda backends: list(backends))
