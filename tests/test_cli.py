from __future__ import annotations

import subprocess
import sys

import pytest

import scalekit
from scalekit.cli import main


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"scalekit {scalekit.__version__}"


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    assert "usage: scalekit" in capsys.readouterr().out


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["no-such-command"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_python_dash_m_runs_the_same_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "scalekit", "--version"], capture_output=True, text=True
    )
    assert result.returncode == 0
    assert result.stdout.strip() == f"scalekit {scalekit.__version__}"


def test_tour_runs_and_shows_the_cache_at_work(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tour"]) == 0
    out = capsys.readouterr().out
    assert "the database saw 1 query" in out
    assert "LFU kept ['home', 'pricing']" in out
    assert "every key at its new owner: True" in out
    assert "slot of '{user1000}.following': 3443" in out  # as Redis' CLUSTER KEYSLOT
    assert "hot key among 20,000 requests: user:celebrity" in out
    assert "weights 5, 1, 1: web-1 web-1 web-2 web-1 web-3 web-1 web-1" in out
    assert "healthy now: web-1, web-3" in out
    assert "4 of 10 eu backends down: traffic eu, us = 84%, 16%" in out
    assert "10 of 10 eu backends down: traffic eu, us = 0%, 100%" in out
    assert "sent: ada@example.com (attempt 2), grace@example.com (attempt 1)" in out
    assert "dead letter: poison@example.com: nacked on delivery 3: template error" in out
    assert "reads: replica-1 replica-2 replica-1 replica-2" in out
    assert "reads go to primary" in out
    assert "replica-2 replays it: reads go to replica-2, replica-2" in out
    assert "fresh reads go to replica-2 replica-2 replica-2 replica-2" in out
