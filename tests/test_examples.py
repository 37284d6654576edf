"""Every example in examples/ runs to completion and prints what it promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.services import probe_redis, require_service

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

EXPECTED = {
    "quickstart.py": "refused: time cannot go backwards",
    "cache_query.py": "100 concurrent requests for product 7: 1 query",
    "sharding_resharding.py": "every key sits at its new owner",
    "balancing_failover.py": "300 of 300 requests answered, 0 lost",
    "replication_sqlalchemy.py": "every read of the note found it: True",
    "mq_email_worker.py": "60 of 60 e-mails sent, 0 lost",
    "sessions_stateless.py": "logged in on app-1, still logged in on app-2: True",
    "sharded_redis.py": "every key read back after resharding: True",
    "near_cache.py": "app-2 serves the new price: True",
    "web_cache.py": "the new price is served: True",
    "metrics_prometheus.py": "every scraped value equals the blocks' stats: True",
}
NEEDS_REDIS = {"sharded_redis.py", "near_cache.py"}


def test_every_example_is_checked() -> None:
    assert sorted(path.name for path in EXAMPLES.glob("*.py")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs(name: str) -> None:
    if name in NEEDS_REDIS:
        require_service("Redis", "redis://127.0.0.1:6379/15", probe_redis)
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert EXPECTED[name] in result.stdout
