"""The service fixtures: they reach the real servers, and skip or fail by policy."""

from __future__ import annotations

from typing import Any

import pytest

from tests import services


def _down(address: str) -> None:
    raise ConnectionRefusedError(f"nothing listens at {address}")


def test_missing_service_skips_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SCALEKIT_REQUIRE_SERVICES", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"Redis is not reachable at x:1"):
        services.require_service("Redis", "x:1", _down)


def test_missing_service_fails_when_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCALEKIT_REQUIRE_SERVICES", "1")
    with pytest.raises(pytest.fail.Exception, match=r"SCALEKIT_REQUIRE_SERVICES=1"):
        services.require_service("Redis", "x:1", _down)


def test_reachable_service_neither_skips_nor_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCALEKIT_REQUIRE_SERVICES", "1")
    calls: list[str] = []
    services.require_service("Redis", "x:1", calls.append)
    assert calls == ["x:1"]


@pytest.mark.redis
def test_redis_round_trip(redis_client: Any) -> None:
    redis_client.set("scalekit:probe", b"ok")
    assert redis_client.get("scalekit:probe") == b"ok"


@pytest.mark.postgres
def test_postgres_round_trip(postgres_dsn: str) -> None:
    import psycopg

    with psycopg.connect(postgres_dsn) as connection:
        row = connection.execute("SELECT %s::int + 1", (41,)).fetchone()
    assert row == (42,)
