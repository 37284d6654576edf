"""The Lua scripts of the Redis backend, and the small helpers its modules share."""

from __future__ import annotations

import itertools
import math
import os
import secrets
from typing import Any

from scalekit._lua import lua_source, register_scripts
from scalekit.errors import BackendError

__all__ = [
    "GROUP",
    "SCRIPTS",
    "OperationIds",
    "backend_error",
    "glob",
    "load_scripts",
    "ms",
]

GROUP = "scalekit"
"""The consumer group of every stream."""

SCRIPTS = (
    "put",
    "take",
    "ack",
    "settle",
    "stats",
    "purge",
    "redrive",
    "wake",
    "cleanup",
    "subscribe",
)
"""The scripts, ``scalekit/_resources/lua/mq_<name>.lua``, each run after ``mq_prelude.lua``."""

_MAX_MS = 10**15  # ~31,000 years: longer delays are stored as this


class _WithPrelude:
    """A client whose ``register_script`` puts the shared helpers first."""

    def __init__(self, client: Any, prelude: str) -> None:
        self._client = client
        self._prelude = prelude

    def register_script(self, source: str) -> Any:
        return self._client.register_script(self._prelude + source)


def load_scripts(client: Any) -> dict[str, Any]:
    """``{name: Script}`` for every script of :data:`SCRIPTS`, bound to ``client``
    (by :func:`scalekit._lua.register_scripts`; no round trip)."""
    bound = register_scripts(
        _WithPrelude(client, lua_source("mq_prelude")), [f"mq_{name}" for name in SCRIPTS]
    )
    return {name: bound[f"mq_{name}"] for name in SCRIPTS}


class OperationIds:
    """Ids for the operations of one handle, unique across processes and forks:
    a random prefix (a new one in a forked child) and a counter. Runtime: O(1)."""

    def __init__(self) -> None:
        self._pid = -1
        self._prefix = ""
        self._count = itertools.count(1)

    def __call__(self) -> str:
        pid = os.getpid()
        if pid != self._pid:
            self._prefix = secrets.token_hex(6)
            self._pid = pid
        return f"{self._prefix}{next(self._count):x}"


def ms(seconds: float) -> int:
    """Whole milliseconds, rounded up (a positive delay never becomes 0)."""
    if seconds <= 0:
        return 0
    return min(_MAX_MS, math.ceil(seconds * 1000))


def backend_error(what: str, name: str, exc: Exception) -> BackendError:
    return BackendError(
        f"redis: {what} on queue {name!r} failed: {type(exc).__name__}: {exc}", backend="redis"
    )


def glob(text: str) -> str:
    """``text`` with the glob characters of SCAN MATCH escaped."""
    for char in "\\*?[]":
        text = text.replace(char, "\\" + char)
    return text
