"""The durability proof: a producer/consumer process is SIGKILLed at 20 random
points of a 10,000-message run and restarted each time; no message is lost, and
only deliveries in flight at a kill are handled twice.

The child (CHILD below) puts message i with dedup key i and then appends i to a
progress file; a restarted producer resumes at the last i it wrote, and the
dedup key absorbs the one put that may have committed after it. Its consumer
takes batches and, for each delivery, appends "body attempt" to a record file
(one ``write``, before the ack), then acks. Each start appends an epoch line to
the record, so every duplicate can be traced to the kill that ended its epoch.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from scalekit.mq import Broker
from scalekit.mq._sqlite import SqliteBackend

N = 10_000
KILLS = 20
BATCH = 25
VT = 1.0  # deliveries in flight at a kill come back after a second

CHILD = r"""
import os, sys, threading
from scalekit.mq import Broker
from scalekit.mq._sqlite import SqliteBackend

db, record_path, progress_path, n, batch, vt = sys.argv[1:]
n, batch, vt = int(n), int(batch), float(vt)


def complete_lines(path):
    # the lines of an append-only file, cutting a torn last line (none expected:
    # each line is one small write)
    if not os.path.exists(path):
        return []
    with open(path, "rb+") as file:
        data = file.read()
        cut = data.rfind(b"\n") + 1
        if cut != len(data):
            file.truncate(cut)
    return data[:cut].decode().splitlines()


done = complete_lines(progress_path)
complete_lines(record_path)
start = int(done[-1]) + 1 if done else 0
record = os.open(record_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
progress = os.open(progress_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
os.write(record, b"start %d %d\n" % (os.getpid(), start))

broker = Broker(SqliteBackend(db, synchronous="FULL", poll_interval=0.05))
queue = broker.queue("work", visibility_timeout=vt, max_deliveries=None, dedup_window=1e9)


def produce():
    for i in range(start, n):
        queue.put(i, dedup_key=str(i))
        os.write(progress, b"%d\n" % i)


producer = threading.Thread(target=produce)
producer.start()
while True:
    got = queue.get_many(batch, timeout=0.05)
    for delivery in got:
        os.write(record, b"%d %d\n" % (delivery.body, delivery.attempt))
        delivery.ack()
    if not got and not producer.is_alive() and queue.stats().total == 0:
        break
producer.join()
os.write(record, b"done\n")
broker.close()
"""


def read_record(path: Path) -> list[list[tuple[int, int]]]:
    """The handled (body, attempt) pairs, one list per epoch (process run)."""
    epochs: list[list[tuple[int, int]]] = []
    for line in path.read_text().splitlines():
        if line.startswith("start"):
            epochs.append([])
        elif line != "done":
            body, attempt = line.split()
            epochs[-1].append((int(body), int(attempt)))
    return epochs


def queued_bodies(db: Path) -> list[int]:
    """What the store holds, read straight from the file (with the child dead)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT kind, body FROM mq_messages").fetchall()
    finally:
        conn.close()
    return [json.loads(bytes(body)) for kind, body in rows if kind == "j"]


def wait_for_lines(path: Path, target: int, child: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while child.poll() is None and time.monotonic() < deadline:
        if path.exists() and path.read_bytes().count(b"\n") >= target:
            return
        time.sleep(0.002)


@pytest.mark.slow
def test_sigkilled_producer_consumer_loses_nothing(tmp_path: Path) -> None:
    db, record, progress = tmp_path / "q.db", tmp_path / "record.txt", tmp_path / "progress.txt"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, str(script), str(db), str(record), str(progress)]
    command += [str(N), str(BATCH), str(VT)]
    rng = random.Random(20260525)
    # kill points: after this many record lines (handled messages + epoch lines)
    targets = sorted(rng.sample(range(200, N - 200), KILLS))
    started = time.monotonic()
    for kills, target in enumerate(targets):
        child = subprocess.Popen(command, env=env)
        wait_for_lines(record, target + kills, child)
        time.sleep(rng.uniform(0, 0.02))  # not always right after a write
        assert child.poll() is None, "the run finished before the kill"
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        # after every kill: each message produced so far is handled or still stored
        produced = len(progress.read_text().splitlines()) if progress.exists() else 0
        so_far = {body for epoch in read_record(record) for body, _ in epoch}
        stored = set(queued_bodies(db))
        missing = set(range(produced)) - so_far - stored
        assert not missing, f"lost after kill {kills + 1}: {sorted(missing)[:10]}"
    child = subprocess.Popen(command, env=env)
    assert child.wait(timeout=120) == 0
    elapsed = time.monotonic() - started

    epochs = read_record(record)
    assert KILLS // 2 < len(epochs) <= KILLS + 1  # some kills may hit a child still starting
    assert record.read_text().endswith("done\n")
    handled = Counter(body for epoch in epochs for body, _ in epoch)
    assert set(handled) == set(range(N))  # every message handled
    seen: dict[int, int] = {}  # body -> epoch of its first handling
    duplicates_per_kill: Counter[int] = Counter()
    for number, epoch in enumerate(epochs):
        for body, attempt in epoch:
            if body in seen:
                # handled again: only after a kill ended the epoch that first had it,
                # and only as a redelivery
                assert seen[body] < number, f"{body} handled twice in one run"
                assert attempt > 1
                duplicates_per_kill[seen[body]] += 1
            else:
                seen[body] = number
    assert all(count <= BATCH for count in duplicates_per_kill.values()), duplicates_per_kill
    assert sum(handled.values()) - N == sum(duplicates_per_kill.values())

    with Broker(SqliteBackend(db)) as broker:
        queue = broker.queue("work", visibility_timeout=VT, max_deliveries=None)
        stats = queue.stats()
        assert (stats.total, stats.dead_letters) == (0, 0)
        assert stats.acked == N  # each message acked exactly once
        queue._check()  # type: ignore[attr-defined]
    print(
        f"\n{N} messages, {KILLS} SIGKILLs, {sum(duplicates_per_kill.values())} handled "
        f"twice (at most {max(duplicates_per_kill.values(), default=0)} per kill), "
        f"{elapsed:.1f} s"
    )
