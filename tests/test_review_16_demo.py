"""Review of ``scalekit demo`` (issue 16): every invariant the demo reports can
fail, a bad ``--json`` is refused before the run, a process that dies at start
is an error at once, and an interrupted run stops its threads with its processes."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from scalekit._demo import _run
from scalekit.cli import main
from scalekit.sharding import HashRing

# -- the checks of _verify: each one breaks when its invariant does --------------


class _Store:
    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def items(self) -> dict[str, Any]:
        return dict(self.data)


def _kit(folder: Path) -> dict[str, Any]:
    """The inputs of ``_verify`` for a run in which every invariant held."""
    traffic = _run._Traffic(served=40, users=2)
    traffic.jobs_sent = {"welcome-a", "poison-1"}
    traffic.last_visits = {"a": 3}
    (folder / "outbox-1.log").write_text("welcome-a 1\nwelcome-a 2\n")  # redelivered once
    all_shards = [*_run.SHARDS, _run.NEW_SHARD]
    stores = {shard: _Store() for shard in all_shards}
    ring = HashRing(all_shards)
    for number in range(_run.PRODUCTS):
        key = f"product:{number}"
        stores[ring.node_for(key)].data[key] = {"title": key}
    stores[ring.node_for("user:a")].data["user:a"] = {"visits": 3}
    counts = {"reads": 5, "writes": 1, "lagging": False, "fallbacks": 0, "read_your_writes": 1}
    service = SimpleNamespace(
        stats={
            1: {
                "shards": {shard: dict(counts) for shard in all_shards},
                "replica_reads": 3,
                "primary_reads": 2,
                "web": {"hits": 3, "misses": 1},
                "query": {"hits": 1, "misses": 1},
            }
        },
        folder=folder,
        events=[],
        logged=[],
        metrics={},
        scraped={},
    )
    injected = {
        "server_killed": True,
        "replica_lagged": True,
        "replica_back": True,
        "worker_killed": True,
        "server_back": True,
        "keys_moved": 500,
        "keys_examined": 2_000,
        "resharded": True,
    }
    return {
        "service": service,
        "traffic": traffic,
        "injected": injected,
        "migration_box": {"plan": SimpleNamespace(ideal_fraction=0.25)},
        "stores": stores,
        "queue": SimpleNamespace(dead_letters=1),
        "balancer": SimpleNamespace(stats=lambda: SimpleNamespace(backends={})),
    }


def _verify(kit: dict[str, Any]) -> dict[str, Any]:
    return _run._verify(
        kit["service"],
        kit["traffic"],
        kit["injected"],
        kit["migration_box"],
        kit["stores"],
        kit["queue"],
        kit["balancer"],
    )


def _owner(kit: dict[str, Any], key: str) -> _Store:
    store: _Store = kit["stores"][HashRing([*_run.SHARDS, _run.NEW_SHARD]).node_for(key)]
    return store


def _lose_a_key(kit: dict[str, Any]) -> None:
    del _owner(kit, "product:7").data["product:7"]


def _misplace_a_key(kit: dict[str, Any]) -> None:
    owner = _owner(kit, "product:7")
    other = next(store for store in kit["stores"].values() if store is not owner)
    other.data["product:7"] = {"title": "product:7"}


def _lose_a_job(kit: dict[str, Any]) -> None:
    kit["traffic"].jobs_sent.add("receipt-b-0")


def _set(obj_key: str, attribute: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def fault(kit: dict[str, Any]) -> None:
        target = kit[obj_key]
        if isinstance(target, dict):
            target[attribute] = value
        else:
            setattr(target, attribute, value)

    return fault


def _write_behind(kit: dict[str, Any]) -> None:
    _owner(kit, "user:a").data["user:a"] = {"visits": 2}


FAULTS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "request lost": (_set("traffic", "failed", 1), "a request was lost"),
    "session lost": (_set("traffic", "sessions_lost", 1), "a session was lost"),
    "job lost": (_lose_a_job, "a job was lost"),
    "poison kept": (_set("queue", "dead_letters", 0), "a poison job was not dead-lettered"),
    "key lost": (_lose_a_key, "a key was lost"),
    "write lost": (_write_behind, "a key was lost"),
    "key misplaced": (_misplace_a_key, "a key was left on a shard that does not own it"),
    "stale read": (
        _set("traffic", "stale_reads", 1),
        "a read was stale after the user's own write",
    ),
    "injection failed": (
        _set("injected", "error", "StartFailed: app-2 ended at start (exit code 1)"),
        "the failure injection failed",
    ),
}


def test_a_run_in_which_every_invariant_held_is_ok(tmp_path: Path) -> None:
    report = _verify(_kit(tmp_path))
    assert report["broken"] == []
    assert report["ok"]
    assert report["jobs"]["redelivered"] == 1
    assert report["shards"]["keys_lost"] == 0


@pytest.mark.parametrize("fault", list(FAULTS))
def test_each_broken_invariant_is_reported(tmp_path: Path, fault: str) -> None:
    kit = _kit(tmp_path)
    inject, check = FAULTS[fault]
    inject(kit)
    report = _verify(kit)
    assert not report["ok"]
    assert [name for name in report["broken"] if name.startswith(check)], report["broken"]


def test_a_broken_report_makes_the_command_exit_1(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    kit = _kit(tmp_path)
    kit["traffic"].failed = 1
    monkeypatch.setattr(_run, "_main", lambda *args: _verify(kit))
    lines: list[str] = []
    assert _run.run(duration=3, out=lines.append) == 1
    assert "BROKEN: a request was lost" in lines


# -- what the clients detect: a fake service that forgets or serves old data ----------


class _FakeHttp:
    """The demo's HTTP API in memory, with a fault: ``forget`` (a server that does
    not know the session) or ``stale`` (``/me`` one visit behind)."""

    def __init__(self, fault: str | None, stop: threading.Event, requests: int = 300) -> None:
        self.traffic = _run._Traffic()
        self.fault = fault
        self.stop = stop
        self.left = requests
        self.sessions: dict[str, str] = {}
        self.visits: dict[str, int] = {}

    def send(
        self, method: str, path: str, cookies: dict[str, str] | None = None
    ) -> tuple[int, bytes] | None:
        self.left -= 1
        if self.left <= 0:
            self.stop.set()
        route, _, query = path.partition("?")
        if cookies is None or route not in ("/login", "/visit", "/me"):
            return 200, b"page"
        if route == "/login":
            user = query.split("&")[0].split("=")[1]
            cookies["sid"] = f"s-{len(self.sessions)}"
            self.sessions[cookies["sid"]] = user
        user = self.sessions.get(cookies.get("sid", ""))
        if self.fault == "forget" and route != "/login" and self.left % 7 == 0:
            user = None
        if route == "/visit" and user is not None:
            self.visits[user] = self.visits.get(user, 0) + 1
        visits = self.visits.get(user or "", 0)
        if self.fault == "stale" and route == "/me":
            visits -= 1
        return 200, json.dumps({"server": "app-1", "user": user, "visits": visits}).encode()


@pytest.mark.parametrize("fault", [None, "forget", "stale"])
def test_the_clients_see_a_lost_session_and_a_stale_read(fault: str | None) -> None:
    stop = threading.Event()
    http = _FakeHttp(fault, stop)
    _run._browse(0, http, stop, 7, "/static/site.css")  # type: ignore[arg-type]
    traffic = http.traffic
    assert traffic.users > 5
    assert (traffic.sessions_lost > 0) == (fault == "forget")
    assert (traffic.stale_reads > 0) == (fault == "stale")


# -- --json is refused before the run, and a failed write is an error --------------


def _no_run(*args: Any, **kwargs: Any) -> int:
    raise AssertionError("the demo ran with a --json it cannot write")


@pytest.mark.parametrize("where", ["folder", "file in a file"])
def test_a_json_path_that_cannot_be_written_is_refused_before_the_run(
    where: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr("scalekit._demo.run", _no_run)
    (tmp_path / "plain").write_text("")
    path = tmp_path if where == "folder" else tmp_path / "plain" / "report.json"
    assert main(["demo", "--json", str(path)]) == 2
    assert "--json" in capsys.readouterr().err


def test_a_report_that_cannot_be_written_at_the_end_is_an_error_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(_run, "_main", lambda *args: {"ok": True})
    monkeypatch.setattr(_run, "_print_report", lambda report, out: None)
    assert _run.run(duration=3, json_path=str(tmp_path)) == 1
    assert "cannot write" in capsys.readouterr().err


# -- a process that dies at start -------------------------------------------------


def test_a_server_that_dies_at_start_is_an_error_at_once(tmp_path: Path) -> None:
    service = _run._Service(tmp_path, tmp_path / "built", lambda line: None)
    began = time.monotonic()
    try:
        with pytest.raises(_run.StartFailed, match="app-1 ended at start"):
            service.start_server("app-1")  # no config.json: the process dies in _build
    finally:
        service.stop()
    assert time.monotonic() - began < 30


def test_a_taken_port_is_an_error_at_once(tmp_path: Path) -> None:
    from scalekit._demo import _db

    _db.write_json(tmp_path / "config.json", {"all_shards": ["shard-0"], "redis": None})
    _db.write_json(tmp_path / "topology.json", {"epoch": 1, "shards": ["shard-0"], "plan": None})
    for name in ("shard-0.db", "shard-0.replica.db"):
        _db.create(tmp_path / name)
    (tmp_path / "built").mkdir()
    (tmp_path / "built" / "manifest.json").write_text("{}")
    service = _run._Service(tmp_path, tmp_path / "built", lambda line: None)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        service.ports["app-1"] = taken.getsockname()[1]
        try:
            with pytest.raises(_run.StartFailed, match="app-1 ended at start"):
                service.start_server("app-1")
        finally:
            service.stop()


def test_a_start_that_fails_ends_the_command_with_a_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def fail(*args: Any) -> dict[str, Any]:
        raise _run.StartFailed("app-1 ended at start (exit code 1)")

    monkeypatch.setattr(_run, "_main", fail)
    assert _run.run(duration=3, out=lambda line: None) == 1
    assert "app-1 ended at start" in capsys.readouterr().err


# -- stopping: the main process's threads end with the processes --------------------


def test_stop_runs_every_closer_last_first_even_when_one_fails(tmp_path: Path) -> None:
    lines: list[str] = []
    service = _run._Service(tmp_path, tmp_path / "built", lines.append)
    ran: list[str] = []

    def broken() -> None:
        ran.append("broken")
        raise RuntimeError("boom")

    service.closers += [lambda: ran.append("first"), broken, lambda: ran.append("last")]
    service.stop()
    assert ran == ["last", "broken", "first"]
    assert any("boom" in line for line in lines)


def test_ctrl_c_before_the_demo_handles_it_is_exit_130_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(*args: Any) -> int:
        raise KeyboardInterrupt  # as while the demo still imports SQLAlchemy

    monkeypatch.setattr("scalekit._demo.run", interrupted)
    assert main(["demo", "--duration", "3"]) == 130
    assert "interrupted" in capsys.readouterr().err


# -- the stale-read check against the real app: a replica that lies about its position --


def _serve_one_app(folder: Path) -> tuple[Any, Any]:
    """The demo's files for 3 shards, the replication thread, and app-1 in a thread
    of this process: (its server, the replicator)."""
    from wsgiref.simple_server import make_server

    from scalekit._demo import _app, _db
    from scalekit.web.static import build

    for shard in _run.SHARDS:
        _db.create(folder / f"{shard}.db")
        _db.create(folder / f"{shard}.replica.db")
    ring = HashRing(list(_run.SHARDS))
    stores = {shard: _db.ShardFile(folder / f"{shard}.db") for shard in _run.SHARDS}
    for number in range(_run.PRODUCTS):
        stores[ring.node_for(f"product:{number}")].set(f"product:{number}", {"title": "p"})
    config = {"all_shards": list(_run.SHARDS), "redis": None}
    _db.write_json(folder / "config.json", config)
    _db.write_json(folder / "topology.json", {"epoch": 1, "shards": config["all_shards"]})
    (folder / "static").mkdir()
    (folder / "static" / "site.css").write_text("body { color: black }\n")
    build(folder / "static", folder / "built", brotli=False)
    replicator = _db.Replicator(folder, list(_run.SHARDS), delay=_run.BASE_DELAY, period=0.02)
    for shard in _run.SHARDS:
        replicator.copy(shard)
    replicator.start()
    app, _, _ = _app._build(folder, "app-1", str(folder / "built"))
    server = make_server("127.0.0.1", 0, app, server_class=_app._Server, handler_class=_app._Quiet)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return server, replicator


@pytest.mark.parametrize("lying", [False, True])
def test_a_replica_claiming_writes_it_has_not_replayed_is_a_stale_read(
    lying: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from scalekit._demo import _app, _db
    from scalekit.balancing import RoundRobin

    probe = _app._probe

    def position_lies(measure: Callable[[Path], Any], file: Path) -> Callable[[str], Any]:
        if measure is _db.replica_position:  # "holds every write": reads go there
            return lambda _: 2**62
        return probe(measure, file)

    if lying:
        monkeypatch.setattr(_app, "_probe", position_lies)
    server, replicator = _serve_one_app(tmp_path)
    try:
        traffic = _run._Traffic()
        http = _run._Http(RoundRobin([f"127.0.0.1:{server.server_address[1]}"]), traffic)
        stop = threading.Event()
        clients = [
            threading.Thread(target=_run._client, args=(n, http, stop, 3, "/static/x.css"))
            for n in range(2)
        ]
        for client in clients:
            client.start()
        time.sleep(2.0)
        stop.set()
        for client in clients:
            client.join(10)
    finally:
        server.shutdown()
        server.server_close()
        replicator.stop()
    assert traffic.client_errors == []
    assert traffic.failed == 0
    assert traffic.users > 3
    assert (traffic.stale_reads > 0) == lying, traffic.stale_reads
