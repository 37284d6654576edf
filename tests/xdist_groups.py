"""Which test files share this machine's Redis and PostgreSQL, for pytest-xdist.

The README's command runs the suite on 2 workers (``-n 2 --dist loadfile``): each
file's tests run on one worker, and every file that reaches the machine's Redis or
PostgreSQL runs on one and the same worker. Those files share databases that tests
empty (``FLUSHDB``), tables with fixed names, and Redis client tracking, whose
invalidations (and the flush messages of a ``FLUSHDB``) reach every database's
listeners: run at once, they would disturb each other.

The controller schedules by node id only (it collects nothing), so a file is
judged by its text: it names a service fixture or address, or imports a helper
module of ``tests`` (or sits beside a ``conftest.py``) that does. Judging too
many costs only parallelism.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

__all__ = ["SERVICES", "make_scheduler", "uses_services"]

SERVICES = "the machine's Redis and PostgreSQL"

_WORDS = re.compile(
    r"redis_url|redis_client|postgres_dsn|REDIS_URL|POSTGRES_DSN|require_service"
    r"|mark\.redis|mark\.postgres|:6379|:5432"
)
_IMPORTS = re.compile(
    r"^[ \t]*from (tests(?:\.\w+)*) import (?:\(([^)]*)\)|([\w ,]+))"
    r"|^[ \t]*import (tests(?:\.\w+)+)",
    re.M,
)
# defines the service fixtures and addresses: its importers are judged by their own text
_DEFINITIONS = frozenset(("tests.services",))


def _modules(text: str) -> list[str]:
    """The modules of ``tests`` that ``text`` imports (``from tests.x import y``
    may name a module ``tests.x.y``)."""
    found = []
    for match in _IMPORTS.finditer(text):
        if match.group(4):
            found.append(match.group(4))
            continue
        package, names = match.group(1), (match.group(2) or match.group(3))
        found.append(package)
        found += [f"{package}.{name.strip()}" for name in names.split(",") if name.strip()]
    return [module for module in found if module not in _DEFINITIONS]


@functools.cache
def _reaches(root: Path, path: Path) -> bool:
    """Whether the file at ``path`` names the services, or imports a module of
    ``tests`` that does (a cycle of imports counts as not reaching)."""
    if not path.is_file():
        return False
    text = path.read_text(encoding="utf-8")
    if _WORDS.search(text):
        return True
    for module in _modules(text):
        imported = root / (module.replace(".", "/") + ".py")
        if imported != path and _reaches(root, imported):
            return True
    return False


def uses_services(root: Path, file: str) -> bool:
    """Whether the test file ``file`` (relative to ``root``) may reach the services:
    by its text, its imports, or the ``conftest.py`` of its own folder (the root
    one defines the fixtures, whose users name them)."""
    path = root / file
    if _reaches(root, path):
        return True
    return path.parent != root / "tests" and _reaches(root, path.parent / "conftest.py")


def make_scheduler(config: Any, log: Any) -> Any:
    """xdist's file scheduling, with every file that uses the services in one unit."""
    from xdist.scheduler import LoadFileScheduling

    root = Path(config.rootpath)

    class ServicesTogether(LoadFileScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            file = nodeid.split("::", 1)[0]
            return SERVICES if uses_services(root, file) else file

    return ServicesTogether(config, log)
