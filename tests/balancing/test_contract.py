"""The balancer contract (tests/contracts/balancer_contract.py) over every balancer.

A new balancer adds one line to BALANCERS; the concurrency tests use the same list.
"""

from __future__ import annotations

import inspect
import math
import random
import time
from typing import Any

import pytest

import scalekit.balancing
from scalekit.balancing import (
    FailoverGroups,
    HealthChecker,
    LeastConnections,
    OutlierEjection,
    PeakEwma,
    RoundRobin,
)
from scalekit.errors import (
    ArgumentTypeError,
    ConfigurationError,
    NoBackendAvailable,
    NoNodeAvailable,
    ScalekitError,
)
from tests.contracts.balancer_contract import BalancerContract, BalancerFactory

BALANCERS = [
    pytest.param(BalancerFactory(RoundRobin), id="RoundRobin"),
    pytest.param(BalancerFactory(LeastConnections), id="LeastConnections"),
    pytest.param(
        BalancerFactory(
            LeastConnections,
            defaults=lambda: {"choices": 2, "rng": random.Random(20240611)},
            exact=False,
        ),
        id="LeastConnections-2",
    ),
    pytest.param(
        BalancerFactory(PeakEwma, defaults=lambda: {"rng": random.Random(20261125)}, exact=False),
        id="PeakEwma",
    ),
]


@pytest.mark.parametrize("make", BALANCERS)
class TestBalancerContract(BalancerContract):
    """Every test of BalancerContract, once per balancer."""


@pytest.mark.parametrize(
    "settings",
    [
        {"consecutive_failures": 0},
        {"consecutive_failures": -3},
        {"base_ejection": 0.0},
        {"base_ejection": -1.0},
        {"base_ejection": math.nan},
        {"base_ejection": 10.0, "max_ejection": 5.0},
        {"max_ejection": math.nan},
        {"max_ejection_percent": -1.0},
        {"max_ejection_percent": 100.5},
        {"max_ejection_percent": math.nan},
        {"max_ejection_percent": math.inf},
        {"consecutive_failures": 10**400},
        {"base_ejection": math.inf},
        {"base_ejection": 10**400},
        {"max_ejection": 1e308},
    ],
    ids=repr,
)
def test_outlier_ejection_refuses_bad_settings(settings: dict[str, float]) -> None:
    name = list(settings)[-1]
    with pytest.raises(ConfigurationError, match=name):
        OutlierEjection(**settings)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "settings",
    [
        {"consecutive_failures": True},
        {"consecutive_failures": 2.5},
        {"consecutive_failures": None},
        {"base_ejection": "30"},
        {"max_ejection": True},
        {"max_ejection_percent": None},
    ],
    ids=repr,
)
def test_outlier_ejection_refuses_settings_of_another_type(settings: dict[str, Any]) -> None:
    (name,) = settings
    with pytest.raises(ArgumentTypeError, match=name):
        OutlierEjection(**settings)


def test_outlier_ejection_defaults_and_limits() -> None:
    assert OutlierEjection() == OutlierEjection(5, 30.0, 300.0, 50.0)
    assert OutlierEjection(1, 1.0, 1.0, 0.0).max_ejection_percent == 0.0
    assert OutlierEjection(max_ejection_percent=100.0).max_ejection_percent == 100.0


def test_no_backend_available_is_a_lookup_error() -> None:
    assert issubclass(NoBackendAvailable, NoNodeAvailable)
    assert issubclass(NoBackendAvailable, LookupError)
    assert issubclass(NoBackendAvailable, ScalekitError)


def test_the_package_exports_what_it_documents() -> None:
    assert {"Balancer", "RoundRobin", "LeastConnections", "Lease"} <= set(
        scalekit.balancing.__all__
    )
    for name in scalekit.balancing.__all__:
        assert getattr(scalekit.balancing, name).__name__ == name


COMMON = {
    "backends": (),
    "weights": None,
    "clock": time.monotonic,
    "ejection": None,
    "panic_threshold": 50.0,
    "slow_start": 0.0,
}


@pytest.mark.parametrize(
    ("cls", "own"),
    [
        (RoundRobin, {}),
        (LeastConnections, {"choices": None, "rng": None}),
        (PeakEwma, {"decay": 10.0, "rng": None}),
        (FailoverGroups, {"groups": inspect.Parameter.empty, "overprovisioning": 1.4, "rng": None}),
        (
            HealthChecker,
            {
                "balancer": inspect.Parameter.empty,
                "check": inspect.Parameter.empty,
                "interval": 5.0,
                "timeout": None,
                "rise": 2,
                "fall": 3,
            },
        ),
    ],
)
def test_constructors_show_their_parameters(cls: type, own: dict[str, Any]) -> None:
    """No ``*args, **kwargs``: IDEs and inspect.signature see every parameter."""
    parameters = inspect.signature(cls).parameters
    kinds = {p.kind for p in parameters.values()}
    assert inspect.Parameter.VAR_POSITIONAL not in kinds
    assert inspect.Parameter.VAR_KEYWORD not in kinds
    expected = own if cls in (FailoverGroups, HealthChecker) else {**COMMON, **own}
    assert {name: p.default for name, p in parameters.items()} == expected
    for name, parameter in parameters.items():
        if name not in ("backends", "weights", "groups", "balancer", "check", "interval"):
            assert parameter.kind is inspect.Parameter.KEYWORD_ONLY, name
