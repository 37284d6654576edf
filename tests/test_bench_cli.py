"""``scalekit bench``: one table of ratios over every block, and each block's part."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from scalekit import _bench_suite
from scalekit._bench_suite import BLOCKS, Row, Settings, format_table, run_blocks
from scalekit.cli import main

SRC = Path(__file__).resolve().parent.parent / "src"


@pytest.mark.slow  # a subprocess running every comparison: 9-20 s
def test_quick_run_prints_one_table_of_every_block_and_writes_the_rows(tmp_path: Path) -> None:
    path = tmp_path / "bench.json"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-m", "scalekit", "bench", "--quick", "--json", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "scalekit time / rival time" in out
    assert "below 1, scalekit is faster" in out
    report = json.loads(path.read_text())
    rows = report["rows"]
    expected = [(block, what) for block, cases in BLOCKS.items() for what, _, _ in cases]
    assert [(row["block"], row["what"]) for row in rows] == expected
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("block "))
    assert "ratio" in lines[header]
    assert "claim" in lines[header]
    table = lines[header + 1 : header + 1 + len(rows)]
    for row, line in zip(rows, table, strict=True):
        assert line.startswith(row["block"])
        assert row["what"] in line
        if row["ratio"] is None:
            assert row["note"], row
            assert row["met"] is None
            claim, note = re.escape(row["claim"]), re.escape(row["note"])
            assert re.search(rf" {claim} +{note}$", line), line
            continue
        assert row["ours"] > 0
        assert row["rival"] > 0
        assert row["ratio"] > 0
        # the ratio is ours / rival, as the times are: it points the same way
        times = row["ours"] / row["rival"]
        if times < 0.5 or times > 2:
            assert (row["ratio"] < 1) == (times < 1), row
        missed = "  MISSED (a loaded machine? run it again)" if row["met"] is False else ""
        assert line.endswith(f"{row['ratio']:.2f}  {row['claim']}{missed}"), line
        if row["claim"].startswith("<"):
            bound, figure = row["claim"].split()
            limit = float(figure)
            assert row["met"] == (row["ratio"] <= limit if bound == "<=" else row["ratio"] < limit)
        else:
            assert row["met"] is None
    measured = {row["block"] for row in rows if row["ratio"] is not None}
    # rivals of the test extra are installed here; only the Redis rows wait for --redis
    assert measured == set(BLOCKS)
    skipped = [row for row in rows if row["ratio"] is None]
    assert {row["note"] for row in skipped} == {"needs a Redis server: pass --redis URL"}
    elapsed = float(re.search(r"^elapsed (\d+\.\d) s$", out, re.M).group(1))  # type: ignore[union-attr]
    assert abs(elapsed - report["elapsed_seconds"]) < 0.1
    assert report["quick"] is True


@pytest.mark.parametrize(
    ("block", "module", "package"),
    [
        ("cache", "cachetools", "cachetools"),
        ("sharding", "uhashring", "uhashring"),
        ("mq", "persistqueue", "persist-queue"),
        ("web", "hishel", "hishel"),
        ("replication", "sqlalchemy", "sqlalchemy"),
        ("sessions", "starlette", "starlette itsdangerous"),
    ],
)
def test_a_missing_rival_is_a_row_saying_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, block: str, module: str, package: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # import now raises ImportError
    rows = run_blocks([block], Settings(rounds=1))
    missing = [row for row in rows if row.note == f"rival not installed (pip install {package})"]
    assert missing, rows
    assert all(row.ratio is None and row.ours is None for row in missing)
    assert all(not row.note.startswith("error") for row in rows), rows


def test_a_comparison_that_fails_is_reported_and_the_others_still_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(settings: Settings) -> Any:
        raise RuntimeError("boom")

    cases = [("broken", "1", broken), *BLOCKS["replication"]]
    monkeypatch.setitem(BLOCKS, "replication", cases)
    assert main(["bench", "replication", "--quick"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert any("broken" in line and "error: RuntimeError('boom')" in line for line in lines)
    routed = next(line for line in lines if line.startswith("replication") and "Routing" in line)
    assert float(routed.partition("  MISSED")[0].split()[-3]) > 0


def test_rows_without_figures_show_their_reason() -> None:
    rows = [
        Row("cache", "LRU hit", 1e-7, 2e-7, 0.5, "0.44"),
        Row("web", "hit / hishel", None, None, None, "<= 0.2", "rival not installed (pip ...)"),
    ]
    text = format_table(rows).splitlines()
    assert text[1].split()[-6:] == ["100", "ns", "200", "ns", "0.50", "0.44"]
    assert text[2].endswith("<= 0.2  rival not installed (pip ...)")


def test_bad_arguments_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ["bench", "--redis", "localhost:6379"],
        ["bench", "nosuchblock"],
        ["bench", "cache", "--details", "--repeat", "0"],
        ["bench", "--details"],
        ["bench", "web", "--details"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        assert "error" in capsys.readouterr().err


def test_json_that_cannot_be_written_is_refused_before_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "missing-folder" / "out.json"
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "replication", "--quick", "--json", str(target)])
    assert exit_info.value.code == 2
    assert "--json: no folder" in capsys.readouterr().err


@pytest.mark.redis
def test_redis_comparisons_run_with_a_redis_url(redis_url: str) -> None:
    import redis

    rows = run_blocks(["sessions"], Settings(rounds=3, redis_url=redis_url))
    assert [row.what for row in rows] == [what for what, _, _ in BLOCKS["sessions"]]
    assert all(row.ratio is not None for row in rows), rows
    assert all(row.ratio > 0 for row in rows if row.ratio is not None)
    cache_rows = run_blocks(["cache"], Settings(rounds=3, redis_url=redis_url))
    redis_row = next(row for row in cache_rows if "RedisCache" in row.what)
    assert redis_row.ratio is not None
    assert redis_row.ratio > 0
    client = redis.Redis.from_url(redis_url)
    try:
        assert list(client.scan_iter(match="scalekit-bench:*")) == []  # cleaned up
    finally:
        client.close()


def test_an_unreachable_redis_is_a_row_not_a_crash() -> None:
    rows = run_blocks(["sessions"], Settings(rounds=1, redis_url="redis://127.0.0.1:1/12"))
    redis_row = next(row for row in rows if "Redis" in row.what)
    assert redis_row.ratio is None
    assert redis_row.note.startswith("no answer from the Redis at --redis URL")


# -- each module's own figures, after its part of the table (--details) -------------


def _after_table(out: str) -> list[str]:
    lines = out.splitlines()
    return lines[lines.index(next(line for line in lines if line.startswith("elapsed"))) + 2 :]


@pytest.mark.slow  # every policy and operation timed: 3-10 s
def test_details_print_a_ratio_for_every_policy_and_operation(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["bench", "cache", "--quick", "--details", "--repeat", "1"]) == 0
    lines = _after_table(capsys.readouterr().out)
    rows = [line.split() for line in lines[2:]]
    assert len(rows) == 12
    assert {row[0] for row in rows} == {"LRU", "LFU", "FIFO", "TTL"}
    assert all(float(row[-1]) > 0 for row in rows)


def test_details_of_replication_print_each_decision(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "replication", "--quick", "--details", "--repeat", "1"]) == 0
    out = "\n".join(_after_table(capsys.readouterr().out))
    for name in ("for_read(), window mode", "for_read(), token mode", "for_write(), no stickiness"):
        assert re.search(rf"{re.escape(name)}\s+\d+ ns", out), out


def test_details_of_balancing_print_every_balancer_at_every_size(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from scalekit._bench import BALANCER_KINDS

    assert main(["bench", "balancing", "--quick", "--details", "--repeat", "1"]) == 0
    rows = _after_table(capsys.readouterr().out)[2:]
    assert len(rows) == len(BALANCER_KINDS)
    for kind, row in zip(BALANCER_KINDS, rows, strict=True):
        assert row.startswith(kind)
        assert row[len(kind) :].count("ns") == 3
        assert float(row.split()[-1]) > 0


def test_the_command_names_every_block_of_the_suite() -> None:
    from scalekit.cli import _BENCH_BLOCKS

    assert list(_BENCH_BLOCKS) == list(BLOCKS)


def test_settings_quick_is_below_the_full_rounds() -> None:
    assert Settings(rounds=25).quick
    assert not Settings().quick
    assert _bench_suite.HEADER.count("\n") == 2


def test_a_time_budget_ends_the_rounds_early() -> None:
    import time

    from scalekit import _bench
    from scalekit._bench_timing import interleaved_ratio

    calls = {"ours": 0, "rival": 0}

    def ours() -> None:
        calls["ours"] += 1
        time.sleep(0.001)  # the time measured is the subject here

    def rival() -> None:
        calls["rival"] += 1
        time.sleep(0.002)

    ours_s, rival_s, ratio = interleaved_ratio(ours, rival, rounds=10_000, batch=1, seconds=0.05)
    assert 4 <= calls["ours"] == calls["rival"] < 100  # a warm-up call, then >= 3 rounds
    assert 0 < ours_s < rival_s
    assert 0 < ratio < 1
    calls.update(ours=0, rival=0)
    _, _, theirs_over_ours = _bench.interleaved_ratio(
        ours, rival, rounds=10_000, warmup=1, seconds=0.05
    )
    assert (calls["ours"] - 1) % 2 == 1  # an odd number of timed rounds
    assert 4 <= calls["ours"] < 100
    assert theirs_over_ours > 1


def test_interleaved_ratio_alternates_who_goes_first() -> None:
    """A side that runs faster right after the other (warm caches) must not be
    favoured: each side goes first in half of the rounds."""
    from scalekit._bench_timing import interleaved_ratio

    order: list[str] = []
    interleaved_ratio(lambda: order.append("a"), lambda: order.append("b"), rounds=4, batch=1)
    assert order[2:] == ["a", "b", "b", "a", "a", "b", "b", "a"]
