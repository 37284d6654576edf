"""The lost-update proof (tests/sessions/stress.py) on the memory stores; the SQL
and Redis stores run it in their own test modules, against the real servers."""

from __future__ import annotations

import asyncio

import pytest

from scalekit.sessions import AsyncMemorySessionStore, MemorySessionStore
from tests.sessions.stress import check, hammer, hammer_async


@pytest.mark.slow
def test_32_threads_lose_no_update() -> None:
    check(*hammer(MemorySessionStore()))


@pytest.mark.slow
def test_32_tasks_lose_no_update() -> None:
    check(*asyncio.run(hammer_async(AsyncMemorySessionStore())))
