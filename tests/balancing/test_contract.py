"""The balancer contract (tests/contracts/balancer_contract.py) over every balancer.

A new balancer adds one line to BALANCERS; the concurrency tests use the same list.
"""

from __future__ import annotations

import math
import random

import pytest

import scalekit.balancing
from scalekit.balancing import LeastConnections, OutlierEjection, PeakEwma, RoundRobin
from scalekit.errors import (
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
    ],
)
def test_outlier_ejection_refuses_bad_settings(settings: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        OutlierEjection(**settings)  # type: ignore[arg-type]


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
