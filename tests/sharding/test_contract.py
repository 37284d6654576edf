"""The sharder contract (tests/contracts/sharder_contract.py) over every scheme.

A new scheme adds one line to SCHEMES.
"""

from __future__ import annotations

import pytest

from scalekit.sharding import HashRing
from tests.contracts.sharder_contract import SharderContract, SharderFactory

SCHEMES = [
    pytest.param(SharderFactory(HashRing), id="HashRing"),
    pytest.param(SharderFactory(HashRing, kwargs={"vnodes": 16}), id="HashRing-16"),
]


@pytest.mark.parametrize("make", SCHEMES)
class TestSharderContract(SharderContract):
    """Every test of SharderContract, once per scheme."""
