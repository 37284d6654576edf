"""Read-modify-write of ONE session key from two real processes, several threads each.

:func:`run_two_processes` starts two copies of this module (``python -m
tests.sessions.crossproc '<json>'``) on one stored session; each runs ``threads``
threads of ``rounds`` requests, released together by a file, and prints what it
saw as JSON. Two modes:

- ``"increment"``: ``session.increment("n")``; a save that gives up (too many
  lost races in a row: ``SessionConflict`` with ``key`` None) is retried, as a
  client would. Every increment must be in ``n``.
- ``"plain"``: ``session["n"] = session.get("n", 0) + 1``; a save either lands or
  raises ``SessionConflict`` (not retried). ``n`` must equal the saves that
  landed, and landed + conflicts must equal the attempts: nothing is lost
  silently.

Only the public API is used, so the same run works against any version of
scalekit on ``PYTHONPATH`` (``mode="plain"`` on the first release shows its lost
updates).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["make_store", "run_two_processes"]


def make_store(kind: str, address: str, name: str) -> Any:
    """A store of ``kind`` ("redis", "sqlite", "postgres") at ``address``; ``name``
    is the Redis key prefix or the SQL table."""
    if kind == "redis":
        import redis

        from scalekit.sessions import RedisSessionStore

        return RedisSessionStore(redis.Redis.from_url(address), prefix=name)
    from scalekit.sessions import SqlSessionStore

    return SqlSessionStore(address, table=name)


def _child(config: dict[str, Any]) -> dict[str, int]:
    store = make_store(config["kind"], config["address"], config["name"])
    from scalekit.errors import SessionConflict

    session_id, mode = config["session_id"], config["mode"]
    landed = conflicts = gave_up = 0
    lock = threading.Lock()
    go = Path(config["go"])

    def worker() -> None:
        nonlocal landed, conflicts, gave_up
        while not go.exists():
            time.sleep(0.001)
        for _ in range(config["rounds"]):
            while True:
                session = store.load(session_id)
                assert session is not None
                if mode == "increment":
                    session.increment("n")
                else:
                    session["n"] = session.get("n", 0) + 1
                try:
                    store.save(session)
                except SessionConflict as exc:
                    with lock:
                        if mode == "increment" and exc.key is None:
                            gave_up += 1
                            continue  # the save stored nothing: the client repeats it
                        conflicts += 1
                    break
                with lock:
                    landed += 1
                break

    threads = [threading.Thread(target=worker) for _ in range(config["threads"])]
    for thread in threads:
        thread.start()
    Path(config["ready"]).touch()
    for thread in threads:
        thread.join()
    return {"landed": landed, "conflicts": conflicts, "gave_up": gave_up}


def run_two_processes(
    kind: str,
    address: str,
    name: str,
    mode: str,
    workdir: Path,
    *,
    threads: int = 4,
    rounds: int = 25,
) -> dict[str, int]:
    """Run the two processes on a new session; the totals and the final ``n``."""
    store = make_store(kind, address, name)
    session = store.create({"n": 0})
    go = workdir / f"go-{session.id[:8]}"
    configs = [
        {
            "kind": kind,
            "address": address,
            "name": name,
            "session_id": session.id,
            "mode": mode,
            "threads": threads,
            "rounds": rounds,
            "go": str(go),
            "ready": str(workdir / f"ready-{session.id[:8]}-{i}"),
        }
        for i in range(2)
    ]
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.sessions.crossproc", json.dumps(config)],
            stdout=subprocess.PIPE,
            cwd=Path(__file__).resolve().parents[2],
            env=os.environ.copy(),
        )
        for config in configs
    ]
    deadline = time.monotonic() + 60
    while not all(Path(c["ready"]).exists() for c in configs):
        if time.monotonic() > deadline or any(c.poll() is not None for c in children):
            for child in children:
                child.kill()
            raise AssertionError("a child process did not start")
        time.sleep(0.005)
    go.touch()
    totals = {"landed": 0, "conflicts": 0, "gave_up": 0}
    for child in children:
        out, _ = child.communicate(timeout=120)
        assert child.returncode == 0, out
        for key, value in json.loads(out).items():
            totals[key] += value
    final = store.load(session.id)
    assert final is not None
    totals["n"] = final["n"]
    totals["attempts"] = 2 * threads * rounds
    close = getattr(store, "close", None)
    if close is not None:
        close()
    return totals


if __name__ == "__main__":
    print(json.dumps(_child(json.loads(sys.argv[1]))))
