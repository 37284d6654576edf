"""``scalekit demo``: the composed service runs in real processes, survives the
failures it injects, and leaves nothing behind; ``scalekit tour`` still runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import scalekit
from scalekit.cli import main

SRC = str(Path(scalekit.__file__).resolve().parent.parent)


def _env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": SRC if not path else f"{SRC}{os.pathsep}{path}"}


def _gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (a zombie waiting for init counts as ended)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


@pytest.mark.slow
def test_demo_keeps_every_invariant_through_the_failures_it_injects(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, "-m", "scalekit", "demo", "--duration", "12", "--json", str(report_path)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(report_path.read_text())
    try:
        _check(report, result.stdout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{result.stdout}") from exc


def _check(report: dict[str, Any], stdout: str) -> None:
    assert report["ok"]
    assert report["broken"] == []
    requests = report["requests"]
    assert requests["served"] > 500
    assert requests["failed"] == 0
    assert requests["bad_answers"] == 0
    assert requests["retried"] > 0  # the killed server's requests went elsewhere
    assert report["stale_reads"] == 0
    sessions = report["sessions"]
    assert sessions["users"] > 20
    assert sessions["lost"] == 0
    assert sessions["kept"] == sessions["users"]
    assert sessions["seen_on_another_server"] > 0
    jobs = report["jobs"]
    assert jobs["lost"] == 0
    assert jobs["processed"] >= jobs["sent"] - jobs["poison_sent"] > 0
    assert jobs["redelivered"] >= 1
    assert jobs["dead_lettered"] == jobs["poison_sent"] == 1
    shards = report["shards"]
    assert shards["keys_lost"] == 0
    assert shards["keys_misplaced"] == 0
    assert shards["values_behind_last_write"] == 0
    assert shards["keys_moved"] > 0
    assert shards["keys"]["shard-3"] >= shards["keys_moved"]
    assert 0.8 < shards["keys_moved"] / shards["keys_moved_ideal"] < 1.2
    injected = report["injected"]
    for name in ("server_killed", "replica_lagged", "replica_back", "worker_killed"):
        assert injected[name] is True, name
    assert injected["server_back"] is True
    assert injected["resharded"] is True
    ratios = report["cache_hit_ratios"]
    assert ratios["web (pages and static assets)"] > 0.3
    assert ratios["query shared tier (all servers)"] > 0  # another server's miss filled it
    assert ratios["query near tier (per process)"] > 0
    assert "== report ==" in stdout
    assert "every invariant held" in stdout
    logged = "\n".join(report["logged"])  # every process's scalekit.* events, shown live
    assert "scalekit.balancing: backend" in logged
    assert "marked down" in logged
    assert "re-admitted" in logged
    assert "scalekit.replication: replica 'shard-1.replica' taken out of reads" in logged
    assert "dead-lettered" in logged
    metrics = report["metrics"]
    if metrics["endpoints"]:  # with prometheus-client: each process served its own
        scraped = metrics["scraped_at_the_end"]
        assert set(scraped) == {"app-1", "app-2", "app-3", "worker-1", "worker-2", "load generator"}
        for server in ("app-1", "app-2", "app-3"):
            for name in (
                "scalekit_web_cache_hits_total",
                "scalekit_replica_lag_seconds",
                "scalekit_mq_depth",
                "scalekit_sessions_loaded_total",
            ):
                assert name in scraped[server], (server, name)
        assert "scalekit_balancer_in_flight" in scraped["load generator"]
    assert len(report["pids"]) == 7  # 3 servers, 2 workers, a restarted server and worker
    assert all(_gone(pid) for pid in report["pids"])
    assert not Path(report["folder"]).exists()


@pytest.mark.slow
def test_an_interrupted_demo_stops_its_processes_and_removes_its_files() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "scalekit", "demo", "--duration", "30"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        folder = Path(first.rsplit(" ", 1)[1].strip())
        assert folder.exists()
        assert "3 app servers on" in process.stdout.readline()
        children = _children(process.pid)
        assert len(children) >= 5  # 3 servers and 2 workers (and multiprocessing's helper)
        time.sleep(1)  # traffic flows
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130
    assert "interrupted" in out
    assert not folder.exists()
    deadline = time.monotonic() + 5
    while not all(_gone(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(_gone(pid) for pid in children)


@pytest.mark.slow
@pytest.mark.redis
def test_demo_on_redis_keeps_every_invariant_and_leaves_no_key(
    tmp_path: Path, redis_url: str
) -> None:
    import redis

    report_path = tmp_path / "report.json"
    command = [sys.executable, "-m", "scalekit", "demo", "--duration", "10"]
    result = subprocess.run(
        [*command, "--redis", redis_url, "--json", str(report_path)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(report_path.read_text())
    assert report["broken"] == []
    ratios = report["cache_hit_ratios"]
    assert ratios["query shared tier (all servers)"] > 0  # another server's miss filled it
    assert ratios["query near tier (per process)"] > 0
    assert report["sessions"]["lost"] == 0
    assert report["sessions"]["seen_on_another_server"] > 0
    assert report["jobs"]["lost"] == 0
    assert report["jobs"]["redelivered"] >= 1
    prefix = report["redis_prefix"]
    assert prefix.startswith("scalekit-demo:")
    client = redis.Redis.from_url(redis_url)
    try:
        assert list(client.scan_iter(match=f"{prefix}*")) == []
    finally:
        client.close()
    assert all(_gone(pid) for pid in report["pids"])
    assert not Path(report["folder"]).exists()


def test_demo_refuses_an_unreachable_redis(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--redis", "redis://127.0.0.1:1/0"]) == 2
    assert "is not usable" in capsys.readouterr().err


def test_demo_refuses_a_duration_out_of_range(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--duration", "0"]) == 2
    assert "--duration" in capsys.readouterr().err


def test_demo_refuses_a_report_path_in_no_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--json", str(tmp_path / "missing" / "report.json")]) == 2
    assert "--json" in capsys.readouterr().err


def test_tour_still_shows_the_blocks_one_at_a_time(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tour"]) == 0
    out = capsys.readouterr().out
    assert "the database saw 1 query" in out
    assert "every key at its new owner: True" in out
