"""The session store contract over every store: scalekit.testing's checks, one
test per check and store.

A test module provides ``stores`` (sync) and ``astores`` (async) fixtures: a
:class:`StoreEnv` whose ``make(**settings)`` builds a store on a fresh, empty
backend (see tests/sessions/conftest.py), and subclasses the classes below.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from scalekit.testing import (
    SESSION_STORE_CHECKS,
    check_async_session_store,
    check_session_store,
)

__all__ = ["AsyncSessionStoreContract", "SessionStoreContract", "StoreEnv"]


@dataclass
class StoreEnv:
    """Builds stores of one backend: ``make(**settings)`` (``clock=`` included)."""

    make: Callable[..., Any]


class SessionStoreContract:
    """Every check, once per sync store (the ``stores`` fixture)."""

    @pytest.mark.parametrize("check", SESSION_STORE_CHECKS)
    def test_contract(self, stores: StoreEnv, check: str) -> None:
        check_session_store(stores.make, checks=[check])


class AsyncSessionStoreContract:
    """Every check, once per async store (the ``astores`` fixture)."""

    @pytest.mark.parametrize("check", SESSION_STORE_CHECKS)
    def test_contract(self, astores: StoreEnv, check: str) -> None:
        asyncio.run(check_async_session_store(astores.make, checks=[check]))
