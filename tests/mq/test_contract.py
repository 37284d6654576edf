"""The queue contract (tests/contracts/queue_contract.py) over every backend in
tests/mq/conftest.py's BACKENDS."""

from __future__ import annotations

from tests.contracts.queue_contract import QueueContract


class TestQueueContract(QueueContract):
    """Every test of QueueContract, once per backend (the ``env`` fixture)."""
