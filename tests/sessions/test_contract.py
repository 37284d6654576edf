"""The session store contract (tests/contracts/session_contract.py) over every store
in tests/sessions/conftest.py."""

from __future__ import annotations

from tests.contracts.session_contract import AsyncSessionStoreContract, SessionStoreContract


class TestSessionStoreContract(SessionStoreContract):
    """Every sync contract test, once per store (the ``stores`` fixture)."""


class TestAsyncSessionStoreContract(AsyncSessionStoreContract):
    """Every async contract test, once per async store (the ``astores`` fixture)."""
