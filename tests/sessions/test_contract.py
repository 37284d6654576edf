"""The session store contract (tests/contracts/session_contract.py) over every store
in tests/sessions/conftest.py."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from scalekit.errors import ConfigurationError
from scalekit.sessions import AsyncMemorySessionStore, MemorySessionStore, Record
from scalekit.testing import check_async_session_store, check_session_store
from tests.contracts.session_contract import AsyncSessionStoreContract, SessionStoreContract


class TestSessionStoreContract(SessionStoreContract):
    """Every sync contract test, once per store (the ``stores`` fixture)."""


class TestAsyncSessionStoreContract(AsyncSessionStoreContract):
    """Every async contract test, once per async store (the ``astores`` fixture)."""


class BlindStore(MemorySessionStore):
    """A broken store: its compare-and-set does not compare (last write wins)."""

    def _replace(
        self, session_id: str, record: Record, expires: float, expected: int, op: bytes
    ) -> bool:
        entry = self._records.get(session_id)
        if entry is None:
            return False
        self._records[session_id] = (record, expires)
        return True


class AsyncBlindStore(AsyncMemorySessionStore):
    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self._sync = BlindStore(**settings)


def test_the_contract_catches_a_store_that_loses_updates() -> None:
    check_session_store(MemorySessionStore, checks=["concurrent_changes_of_one_key_conflict"])
    with pytest.raises(AssertionError, match="concurrent_changes_of_one_key_conflict"):
        check_session_store(BlindStore, checks=["concurrent_changes_of_one_key_conflict"])
    with pytest.raises(AssertionError, match="increments_add_up"):
        asyncio.run(check_async_session_store(AsyncBlindStore, checks=["increments_add_up"]))


def test_the_whole_contract_passes_on_the_memory_stores_and_names_unknown_checks() -> None:
    check_session_store(MemorySessionStore)
    asyncio.run(check_async_session_store(AsyncMemorySessionStore))
    with pytest.raises(ConfigurationError, match="no_such_check"):
        check_session_store(MemorySessionStore, checks=["no_such_check"])
