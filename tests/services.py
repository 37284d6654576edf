"""Finding the real services tests run against, and deciding to skip or fail."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

REDIS_URL = os.environ.get("SCALEKIT_REDIS_URL", "redis://127.0.0.1:6379/15")
POSTGRES_DSN = os.environ.get("SCALEKIT_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")


def services_required() -> bool:
    """Whether a missing service must fail the run (CI) instead of skipping."""
    return os.environ.get("SCALEKIT_REQUIRE_SERVICES") == "1"


def require_service(name: str, address: str, probe: Callable[[str], None]) -> None:
    """Skip (or, when services are required, fail) unless ``probe(address)`` succeeds."""
    try:
        probe(address)
    except Exception as exc:
        reason = f"{name} is not reachable at {address}: {type(exc).__name__}: {exc}"
        if services_required():
            pytest.fail(f"{reason} (SCALEKIT_REQUIRE_SERVICES=1)", pytrace=False)
        pytest.skip(reason)


def probe_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
    finally:
        client.close()


def probe_postgres(dsn: str) -> None:
    import psycopg

    with psycopg.connect(dsn, connect_timeout=2) as connection:
        connection.execute("SELECT 1")
