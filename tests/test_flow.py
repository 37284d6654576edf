"""scalekit._flow: the drivers hand ``args`` to ``perform``, and ``drive_async``
makes the steps its ``now`` takes without awaiting ``perform``."""

from __future__ import annotations

import asyncio
from collections.abc import Generator
from typing import Any

import pytest

from scalekit._flow import LATER, drive, drive_async


def _flow() -> Generator[tuple[str, str], Any, list[Any]]:
    got = [(yield ("get", "a")), (yield ("wait", "b"))]
    try:
        yield ("get", "missing")
    except KeyError as exc:
        got.append(f"caught {exc.args[0]}")
    return got


def test_drive_passes_args_after_each_step() -> None:
    seen: list[tuple[Any, ...]] = []

    def perform(step: tuple[str, str], *context: Any) -> Any:
        seen.append((step, *context))
        if step[1] == "missing":
            raise KeyError("missing")
        return step[1].upper()

    assert drive(_flow(), perform, KeyError, ("req", 7)) == ["A", "B", "caught missing"]
    assert seen == [
        (("get", "a"), "req", 7),
        (("wait", "b"), "req", 7),
        (("get", "missing"), "req", 7),
    ]


def test_drive_async_takes_now_first_and_awaits_perform_for_later() -> None:
    awaited: list[tuple[Any, ...]] = []

    def now(step: tuple[str, str]) -> Any:
        if step[0] != "get":
            return LATER
        if step[1] == "missing":
            raise KeyError("missing")  # thrown into the flow as perform's would be
        return f"now {step[1]}"

    async def perform(step: tuple[str, str], *context: Any) -> Any:
        awaited.append((step, *context))
        await asyncio.sleep(0)
        return f"later {step[1]}"

    result = asyncio.run(drive_async(_flow(), perform, KeyError, ("ctx",), now))
    assert result == ["now a", "later b", "caught missing"]
    assert awaited == [(("wait", "b"), "ctx")]


def test_drive_async_without_now_awaits_every_step() -> None:
    async def perform(step: tuple[str, str]) -> Any:
        if step[1] == "missing":
            raise KeyError("missing")
        return step[1]

    assert asyncio.run(drive_async(_flow(), perform, KeyError)) == ["a", "b", "caught missing"]


def test_an_error_outside_catch_ends_the_flow_and_propagates() -> None:
    def now(step: tuple[str, str]) -> Any:
        raise ValueError(step[1])

    async def perform(step: tuple[str, str]) -> Any:  # pragma: no cover - never reached
        return None

    with pytest.raises(ValueError, match="a"):
        asyncio.run(drive_async(_flow(), perform, KeyError, (), now))
    assert repr(LATER) == "LATER"
