"""Shared fixtures: hypothesis profiles and the real services some tests need.

Profiles: ``default`` is quick for local runs; ``ci`` (selected when
``SCALEKIT_REQUIRE_SERVICES=1`` or ``HYPOTHESIS_PROFILE=ci``) runs more examples with
no deadline, since CI machines are shared and slow; ``quick`` (15 examples) is for
CI's second pass on the oldest supported Python.

Service fixtures connect to Redis and PostgreSQL on this machine. Without the
server a test is skipped with the reason, unless ``SCALEKIT_REQUIRE_SERVICES=1``,
where it fails instead, so CI can never go green by skipping.

With pytest-xdist (the README's command: ``-n 2 --dist loadfile``), each file's
tests run on one worker, and every file that uses this machine's Redis or
PostgreSQL on one and the same worker (:mod:`tests.xdist_groups`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from tests.services import POSTGRES_DSN, REDIS_URL, probe_postgres, probe_redis, require_service

settings.register_profile("default", max_examples=60, deadline=None)
settings.register_profile(
    "ci",
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
# CI's second pass, on the oldest supported Python, is about the interpreter: the
# properties ran with the ci profile on the main pass.
settings.register_profile("quick", max_examples=15, deadline=None)
_ci = os.environ.get("SCALEKIT_REQUIRE_SERVICES") == "1"
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if _ci else "default"))


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadfile``: every file that uses the machine's Redis or PostgreSQL
    in one unit, on one worker (see :mod:`tests.xdist_groups`)."""
    if config.getvalue("dist") != "loadfile":
        return None
    from tests.xdist_groups import make_scheduler

    return make_scheduler(config, log)


_SERVICE_FIXTURES = frozenset(("redis_url", "redis_client", "postgres_dsn"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse to run a file that uses a service fixture but that
    :mod:`tests.xdist_groups` would let run beside the other users of the services."""
    from tests.xdist_groups import uses_services

    root = config.rootpath
    for item in items:
        uses = _SERVICE_FIXTURES.intersection(getattr(item, "fixturenames", ())) or any(
            item.get_closest_marker(name) for name in ("redis", "postgres")
        )
        if uses:
            file = item.path.relative_to(root).as_posix()
            if not uses_services(root, file):
                raise pytest.UsageError(
                    f"{item.nodeid} uses Redis or PostgreSQL, but tests/xdist_groups.py "
                    "cannot see it in the file's text: name the fixture in the file"
                )


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The URL of a reachable Redis server (skips or fails without one)."""
    require_service("Redis", REDIS_URL, probe_redis)
    return REDIS_URL


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[Any]:
    """A redis-py client on a database emptied before and after the test."""
    import redis

    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    try:
        yield client
    finally:
        client.flushdb()
        client.close()


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    """The DSN of a reachable PostgreSQL server (skips or fails without one)."""
    require_service("PostgreSQL", POSTGRES_DSN, probe_postgres)
    return POSTGRES_DSN
