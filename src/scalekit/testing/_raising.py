"""The assertion the contract checks share: a call must raise a given error."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def raises(
    error: type[BaseException] | tuple[type[BaseException], ...],
    call: Callable[[], Any],
    what: str,
    *,
    unexpected: type[BaseException] = BaseException,
) -> BaseException:
    """The error ``call()`` raised, if it is an ``error``; otherwise an
    ``AssertionError`` that starts with ``what`` (a check's promise). Another
    error is reported only if it is an ``unexpected`` one (``Exception``: an
    interrupt or a cancellation passes through)."""
    try:
        call()
    except error as exc:
        return exc
    except unexpected as exc:
        raise AssertionError(f"{what}: raised {type(exc).__name__}: {exc}, not {error}") from exc
    raise AssertionError(f"{what}: did not raise {error}")
