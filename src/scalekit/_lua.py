"""The one loader of the Lua scripts that Redis-backed blocks run.

Scripts live as ``.lua`` files in ``scalekit/_resources/lua/`` (package data), named
``<block>_<operation>.lua``. :func:`lua_source` reads one once per process;
:func:`register_scripts` binds several to a redis-py client (sync or asyncio) with
``register_script``, whose scripts run by ``EVALSHA`` and load themselves on the
server's ``NOSCRIPT`` answer, pipelines included.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from importlib import resources
from typing import Any

__all__ = ["lua_source", "register_scripts"]


@functools.cache
def lua_source(name: str) -> str:
    """The text of ``scalekit/_resources/lua/<name>.lua``.

    Runtime complexity: O(size of the file), once per name and process.
    """
    return (resources.files("scalekit._resources") / "lua" / f"{name}.lua").read_text("utf-8")


def register_scripts(client: Any, names: Iterable[str]) -> dict[str, Any]:
    """``{name: client.register_script(lua_source(name))}`` for each name.

    Runtime complexity: O(len(names)); no round trip (scripts load on first use).
    """
    return {name: client.register_script(lua_source(name)) for name in names}
