"""The sharder contract (tests/contracts/sharder_contract.py) over every scheme.

A new scheme adds one line to SCHEMES.
"""

from __future__ import annotations

import pytest

from scalekit.sharding import (
    HashRing,
    JumpHash,
    KetamaRing,
    MaglevHash,
    RendezvousHash,
    SlotMap,
)
from tests.contracts.sharder_contract import SharderContract, SharderFactory, sharder_machine

SCHEMES = [
    pytest.param(SharderFactory(HashRing), id="HashRing"),
    pytest.param(SharderFactory(HashRing, kwargs={"vnodes": 16}), id="HashRing-16"),
    # Ketama is monotone with equal weights only (the contract's changes use weight 1).
    pytest.param(SharderFactory(KetamaRing), id="KetamaRing"),
    pytest.param(SharderFactory(SlotMap), id="SlotMap"),
    pytest.param(SharderFactory(SlotMap.redis_cluster), id="SlotMap-redis"),
    pytest.param(SharderFactory(JumpHash, weighted=False, removes_any=False), id="JumpHash"),
    pytest.param(SharderFactory(RendezvousHash), id="RendezvousHash"),
    pytest.param(SharderFactory(MaglevHash, monotone=False), id="MaglevHash"),
    pytest.param(
        SharderFactory(MaglevHash, monotone=False, kwargs={"table_size": 251}), id="Maglev-251"
    ),
]


@pytest.mark.parametrize("make", SCHEMES)
class TestSharderContract(SharderContract):
    """Every test of SharderContract, once per scheme."""


# One hypothesis state machine per scheme, its _check() called from an invariant
# (small structures: _check() rebuilds the structure, and a 65537-entry Maglev
# table or a 16384-slot map takes 100 s there instead of 2).
MACHINES = {
    "HashRing": SharderFactory(HashRing, kwargs={"vnodes": 16}),
    "KetamaRing": SharderFactory(KetamaRing),
    "SlotMap": SharderFactory(SlotMap, kwargs={"slots": 256}),
    "JumpHash": SharderFactory(JumpHash, weighted=False, removes_any=False),
    "RendezvousHash": SharderFactory(RendezvousHash),
    "MaglevHash": SharderFactory(MaglevHash, monotone=False, kwargs={"table_size": 251}),
}
for _id, _factory in MACHINES.items():
    _name = f"TestStateMachine{_id}"
    globals()[_name] = type(_name, (sharder_machine(_factory).TestCase,), {})
