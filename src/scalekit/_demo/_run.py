"""The demo's main process: build, start, load, inject failures, check, report."""

from __future__ import annotations

import http.client
import json
import logging
import multiprocessing
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scalekit._demo._display import display_for

__all__ = ["StartFailed", "run"]

APP_SERVERS = ("app-1", "app-2", "app-3")
SHARDS = ("shard-0", "shard-1", "shard-2")
NEW_SHARD = "shard-3"
PRODUCTS = 2_000
CLIENTS = 12
BASE_DELAY = 0.01  # how far the replication thread keeps replicas behind


Out = Callable[[str], None]


@dataclass
class _Traffic:
    """What the clients saw (guarded by ``lock``)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    served: int = 0
    failed: int = 0
    bad_answers: list[str] = field(default_factory=list)
    session_losses: list[str] = field(default_factory=list)
    truncated: list[str] = field(default_factory=list)
    client_errors: list[str] = field(default_factory=list)
    retries: int = 0
    latencies: list[float] = field(default_factory=list)
    stale_reads: int = 0
    users: int = 0
    sessions_lost: int = 0
    sessions_elsewhere: int = 0
    jobs_sent: set[str] = field(default_factory=set)
    last_visits: dict[str, int] = field(default_factory=dict)


class _Http:
    """Requests through the balancer, retried on another backend when one fails."""

    def __init__(self, balancer: Any, traffic: _Traffic) -> None:
        self.balancer = balancer
        self.traffic = traffic

    def send(
        self, method: str, path: str, cookies: dict[str, str] | None = None
    ) -> tuple[int, bytes] | None:
        from scalekit.errors import NoBackendAvailable

        started = time.perf_counter()
        for _ in range(8):
            try:
                with self.balancer.lease() as backend:
                    status, body = _exchange(backend, method, path, cookies)
            except NoBackendAvailable:
                time.sleep(0.05)
            except _Truncated as exc:
                with self.traffic.lock:
                    self.traffic.truncated.append(str(exc))
            except (OSError, http.client.HTTPException):
                pass
            else:
                with self.traffic.lock:
                    self.traffic.served += 1
                    self.traffic.latencies.append(time.perf_counter() - started)
                return status, body
            with self.traffic.lock:
                self.traffic.retries += 1
        with self.traffic.lock:
            self.traffic.failed += 1
        return None


class StartFailed(RuntimeError):
    """A process of the demo ended, or hung, before it was ready."""


class _Truncated(ConnectionError):
    """A response cut short (the server died while sending it)."""


def _exchange(
    backend: str, method: str, path: str, cookies: dict[str, str] | None
) -> tuple[int, bytes]:
    host, port = backend.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        headers = {}
        if cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
        connection.request(method, path, headers=headers)
        response = connection.getresponse()
        body = response.read()
        if response.status >= 500:
            raise ConnectionError(f"{backend} answered {response.status}")
        length = response.getheader("Content-Length")
        if length is None or int(length) != len(body):
            # HTTP/1.0 without a length ends at the close: a server killed mid-response
            raise _Truncated(f"{backend}: {response.status}, {len(body)} of {length} bytes")
        if cookies is not None:
            for header in response.headers.get_all("Set-Cookie") or []:
                name, _, value = header.split(";")[0].partition("=")
                if "Max-Age=0" in header:
                    cookies.pop(name, None)
                else:
                    cookies[name] = value
        return response.status, body
    finally:
        connection.close()


def _client(number: int, http: _Http, stop: threading.Event, seed: int, css: str) -> None:
    """Run :func:`_browse`; a crash of the client counts as a broken invariant."""
    try:
        _browse(number, http, stop, seed, css)
    except Exception as exc:
        with http.traffic.lock:
            http.traffic.client_errors.append(f"client {number}: {type(exc).__name__}: {exc}")


def _browse(number: int, http: _Http, stop: threading.Event, seed: int, css: str) -> None:
    """One simulated browser after another: look around, log in, visit, read back."""
    rng = random.Random(seed * 1_000 + number)
    traffic = http.traffic
    visitor = 0
    while not stop.is_set():
        visitor += 1
        user = f"u{number}-{visitor}"
        http.send("GET", "/")
        http.send("GET", css)
        for _ in range(3):
            http.send("GET", f"/product/{int(rng.paretovariate(1.2)) % PRODUCTS}")
        cookies: dict[str, str] = {}
        job = f"welcome-{user}" if visitor % 4 == 1 else ""
        answer = http.send("POST", f"/login?user={user}&job={job}", cookies)
        if answer is None:
            continue
        with traffic.lock:
            traffic.users += 1
            if job:
                traffic.jobs_sent.add(job)
        servers: set[str] = set()
        lost = False
        for action in range(6):
            if stop.is_set():
                break
            if action % 2 == 0:
                job = f"receipt-{user}-{action}" if rng.random() < 0.03 else ""
                if number == 0 and visitor == 2 and action == 0:
                    job = "poison-1"  # a mail the worker cannot render: dead-lettered
                answer = http.send("POST", f"/visit?job={job}", cookies)
            else:
                answer = http.send("GET", "/me", cookies)
            if answer is None:
                continue
            if answer[0] != 200:
                with traffic.lock:
                    traffic.bad_answers.append(f"{answer[0]} {answer[1][:200]!r}")
                continue
            data = json.loads(answer[1])
            servers.add(data["server"])
            if data["user"] != user:
                lost = True
                with traffic.lock:
                    traffic.session_losses.append(
                        f"{user} action {action} on {data['server']} at {time.monotonic():.2f}"
                        f" got {data['user']}"
                    )
                continue
            with traffic.lock:
                if action % 2 == 0:
                    traffic.last_visits[user] = data["visits"]
                    if job:
                        traffic.jobs_sent.add(job)
                elif data["visits"] < traffic.last_visits.get(user, 0):
                    traffic.stale_reads += 1
        with traffic.lock:
            traffic.sessions_lost += lost
            traffic.sessions_elsewhere += len(servers) > 1


class _EventHandler(logging.Handler):
    """Shows the main process's ``scalekit.*`` log records as events."""

    def __init__(self, service: _Service) -> None:
        super().__init__(logging.INFO)
        self.service = service

    def emit(self, record: logging.LogRecord) -> None:
        if record.name != "scalekit.sharding":  # the bar shows the resharding
            self.service.log(f"load generator: {record.name}: {record.getMessage()}")


class _Service:
    """The processes and threads of one run, and how to stop them all."""

    def __init__(self, folder: Path, built: Path, out: Out) -> None:
        self.folder = folder
        self.built = built
        self.out = out
        self.display = display_for(out)
        self.spawn = multiprocessing.get_context("spawn")
        self.ready: Any = self.spawn.Queue()
        self.servers: dict[str, Any] = {}
        self.ports: dict[str, int] = {}
        self.metrics: dict[str, int | None] = {}  # process -> its /metrics port
        self.workers: dict[int, tuple[Any, Any]] = {}
        self.stalls: dict[int, Any] = {}  # set: the worker keeps its next job until killed
        self.stop_workers = self.spawn.Event()
        self.pids: list[int] = []
        self.stats: dict[int, dict[str, Any]] = {}  # pid -> last /stats of that process
        self.events: list[str] = []
        self.started = time.monotonic()
        self.stopping = False
        self.scraped: dict[str, list[str]] = {}
        self.logged: list[str] = []
        self._log_offsets: dict[str, int] = {}
        self.closers: list[Callable[[], None]] = []  # run first by stop(), last added first

    def event(self, text: str) -> None:
        line = f"{time.monotonic() - self.started:5.1f}s  {text}"
        self.events.append(line)
        self.display.event(line)

    def log(self, line: str) -> None:
        self.logged.append(line)
        self.display.event(f"log  {line}")

    def tail_logs(self) -> None:
        """Show the lines the child processes logged since the last look."""
        for path in sorted(self.folder.glob("*.log")):
            if path.name.startswith("outbox-"):
                continue
            with path.open() as file:
                file.seek(self._log_offsets.get(path.name, 0))
                lines = file.read().splitlines()
                self._log_offsets[path.name] = file.tell()
            for line in lines:
                self.log(f"{path.stem}: {line}")

    def start_server(self, name: str) -> str:
        from scalekit._demo._app import serve

        if self.stopping:
            raise RuntimeError("the demo is stopping")
        process = self.spawn.Process(
            target=serve,
            args=(str(self.folder), name, self.ports.get(name, 0), str(self.built), self.ready),
            name=f"scalekit-demo-{name}",
            daemon=True,
        )
        process.start()
        self.pids.append(process.pid or 0)
        self.servers[name] = process
        _, port, _, metrics = self._ready(process, name)
        self.ports[name] = port
        self.metrics[name] = metrics
        return f"127.0.0.1:{port}"

    def start_worker(self, number: int) -> None:
        from scalekit._demo._worker import work

        if self.stopping:
            raise RuntimeError("the demo is stopping")
        holding, stall = self.spawn.Event(), self.spawn.Event()
        self.stalls[number] = stall
        process = self.spawn.Process(
            target=work,
            args=(str(self.folder), number, holding, stall, self.stop_workers, self.ready),
            name=f"scalekit-demo-worker-{number}",
            daemon=True,
        )
        process.start()
        self.pids.append(process.pid or 0)
        self.workers[number] = (process, holding)
        started, _, _, metrics = self._ready(process, f"worker-{number}")
        self.metrics[started] = metrics

    def _ready(self, process: Any, who: str, timeout: float = 60.0) -> tuple[Any, ...]:
        """What ``process`` put on :attr:`ready` once it listens; a :class:`StartFailed`
        as soon as it dies first (a crash at start, a port taken) or after ``timeout``."""
        import queue

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                message: tuple[Any, ...] = self.ready.get(timeout=0.1)
            except queue.Empty:
                if not process.is_alive():
                    break
                continue
            if message[0] == who:
                return message
        if process.is_alive():
            process.kill()
            process.join(3)
            raise StartFailed(f"{who} did not start within {timeout:.0f} s")
        raise StartFailed(f"{who} ended at start (exit code {process.exitcode})")

    def poll_stats(self) -> None:
        for name, process in list(self.servers.items()):
            if not process.is_alive() or name not in self.ports:
                continue
            try:
                _, body = _exchange(f"127.0.0.1:{self.ports[name]}", "GET", "/stats", None)
            except (OSError, http.client.HTTPException):
                continue
            data = json.loads(body)
            self.stats[data["pid"]] = data

    def live_stats(self) -> list[dict[str, Any]]:
        alive = {p.pid for p in self.servers.values() if p.is_alive()}
        return [data for pid, data in self.stats.items() if pid in alive]

    def stop(self) -> None:
        self.stopping = True
        while self.closers:  # the load, health checks and replication of this process
            closer = self.closers.pop()
            try:
                closer()
            except Exception as exc:  # the processes are stopped anyway
                self.out(f"while stopping: {type(exc).__name__}: {exc}")
        self.stop_workers.set()
        for process, _ in self.workers.values():
            process.join(3)
        for process in [*self.servers.values(), *(p for p, _ in self.workers.values())]:
            if process.is_alive():
                process.terminate()
        for process in [*self.servers.values(), *(p for p, _ in self.workers.values())]:
            process.join(3)
            if process.is_alive():
                process.kill()
                process.join(3)
        self.ready.close()
        self.ready.join_thread()


def _outbox(folder: Path) -> dict[str, int]:
    """Job id -> the highest attempt any worker sent it at."""
    sent: dict[str, int] = {}
    for path in folder.glob("outbox-*.log"):
        for line in path.read_text().splitlines():
            job, _, attempt = line.partition(" ")
            if attempt.isdigit():
                sent[job] = max(sent.get(job, 0), int(attempt))
    return sent


def _wait(condition: Callable[[], bool], timeout: float, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(
    duration: float = 30.0,
    seed: int = 0,
    json_path: str | None = None,
    redis_url: str | None = None,
    out: Out = print,
) -> int:
    """Run the demo for ``duration`` seconds of traffic; return the exit status."""
    redis_config: dict[str, str] | None = None
    if redis_url is not None:
        try:
            import redis

            redis.Redis.from_url(redis_url, socket_connect_timeout=2).ping()
        except Exception as exc:  # redis-py missing, a bad URL, or no server
            print(f"scalekit demo: Redis at {redis_url} is not usable: {exc}", file=sys.stderr)
            return 2
        redis_config = {"url": redis_url, "prefix": f"scalekit-demo:{uuid.uuid4().hex[:12]}:"}
    else:
        try:
            import sqlalchemy  # noqa: F401 - the session store's dependency
        except ImportError:
            print(
                "scalekit demo keeps sessions in a SQLite file through SQLAlchemy: "
                "pip install 'scalekit[sql]' (or run it with --redis URL)",
                file=sys.stderr,
            )
            return 2
    folder = Path(tempfile.mkdtemp(prefix="scalekit-demo-"))
    service: _Service | None = None
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        service = _Service(folder, folder / "static-built", out)
        report = _main(service, duration, seed, redis_config)
    except KeyboardInterrupt:
        out("interrupted: stopping every process")
        return 130
    except StartFailed as exc:
        print(f"scalekit demo: {exc}: stopping every process", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
        if service is not None:
            service.stop()
        shutil.rmtree(folder, ignore_errors=True)
        if redis_config is not None:
            _forget(redis_config)
    report["pids"] = service.pids
    report["folder"] = str(folder)
    report["redis_prefix"] = None if redis_config is None else redis_config["prefix"]
    _print_report(report, out)
    if json_path is not None:
        try:
            Path(json_path).write_text(json.dumps(report, indent=2))
        except OSError as exc:  # checked at the start, but the disk may have changed
            print(f"scalekit demo: --json: cannot write {json_path}: {exc}", file=sys.stderr)
            return 1
    return 0 if report["ok"] else 1


def _forget(redis_config: dict[str, str]) -> None:
    """Delete every Redis key this run made (they all start with its prefix)."""
    import redis

    client = redis.Redis.from_url(redis_config["url"])
    try:
        keys = list(client.scan_iter(match=f"{redis_config['prefix']}*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    finally:
        client.close()


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _main(
    service: _Service, duration: float, seed: int, redis_config: dict[str, str] | None
) -> dict[str, Any]:
    from scalekit._demo import _db
    from scalekit._demo._app import MAX_LAG, open_queue, serve_metrics
    from scalekit.balancing import HealthChecker, OutlierEjection, RoundRobin
    from scalekit.sharding import HashRing, Migration, MigrationProgress
    from scalekit.web.static import WSGIStaticFiles, build

    out, folder = service.out, service.folder
    where = "SQLite files" if redis_config is None else f"Redis {redis_config['url']} and files"
    out(f"scalekit demo: {duration:.0f} s of traffic, seed {seed}, {where} in {folder}")
    all_shards = [*SHARDS, NEW_SHARD]
    for shard in all_shards:
        _db.create(folder / f"{shard}.db")
        _db.create(folder / f"{shard}.replica.db")
    stores = {shard: _db.ShardFile(folder / f"{shard}.db") for shard in all_shards}
    ring: HashRing[str] = HashRing(list(SHARDS))
    for number in range(PRODUCTS):
        key = f"product:{number}"
        stores[ring.node_for(key)].set(key, {"title": f"product {number}"})
    config = {"all_shards": all_shards, "redis": redis_config}
    _db.write_json(folder / "config.json", config)
    _db.write_json(folder / "topology.json", {"epoch": 1, "shards": list(SHARDS), "plan": None})
    assets = folder / "static"
    assets.mkdir()
    (assets / "site.css").write_text("body { font-family: sans-serif }\n" * 40)
    build(assets, service.built, brotli=False)
    css = WSGIStaticFiles(service.built).url_for("site.css")
    replicator = _db.Replicator(folder, all_shards, delay=BASE_DELAY, period=0.02)
    for shard in all_shards:
        replicator.copy(shard)
    replicator.start()
    service.closers.append(replicator.stop)
    open_queue(folder, config)

    backends = {service.start_server(name): name for name in APP_SERVERS}
    by_name = {name: backend for backend, name in backends.items()}
    for number in (1, 2):
        service.start_worker(number)
    out(f"3 app servers on {', '.join(backends)}; 2 e-mail workers; {CLIENTS} clients")

    balancer: RoundRobin[str] = RoundRobin(
        list(backends), ejection=OutlierEjection(consecutive_failures=2)
    )

    def healthy(backend: str) -> bool:
        return _exchange(backend, "GET", "/health", None)[0] == 200

    checker = HealthChecker(balancer, healthy, interval=0.1, timeout=1.0, rise=2, fall=1)
    checker.start()
    service.closers.append(checker.stop)
    service.metrics["load generator"] = serve_metrics({"web": balancer, "health": checker})
    if service.metrics["load generator"] is None:
        out("metrics: pip install 'scalekit[prometheus]' for a /metrics endpoint per process")
    else:
        out(
            "metrics: "
            + ", ".join(
                f"{who} http://127.0.0.1:{port}/metrics" for who, port in service.metrics.items()
            )
        )
    traffic = _Traffic()
    http = _Http(balancer, traffic)
    stop = threading.Event()
    clients = [
        threading.Thread(target=_client, args=(n, http, stop, seed, css), daemon=True)
        for n in range(CLIENTS)
    ]
    injected: dict[str, Any] = {}
    migration_box: dict[str, Any] = {}
    done = threading.Event()

    def stop_load() -> None:
        stop.set()
        done.set()
        for client in clients:
            if client.is_alive():
                client.join(10)

    service.closers.append(stop_load)
    service.started = time.monotonic()
    for client in clients:
        client.start()

    def at(fraction: float) -> None:
        delay = service.started + fraction * duration - time.monotonic()
        if delay > 0:
            done.wait(delay)

    def chaos() -> None:
        try:
            inject()
        except Exception as exc:  # reported as a broken check, not as a thread's traceback
            injected["error"] = f"{type(exc).__name__}: {exc}"
            service.event(f"failure injection stopped: {injected['error']}")

    def inject() -> None:
        victim = "app-2"
        at(0.12)
        service.servers[victim].kill()
        service.event(f"killed {victim} (SIGKILL, pid {service.servers[victim].pid})")
        injected["server_killed"] = _wait(lambda: by_name[victim] not in balancer.healthy(), 5)
        if injected["server_killed"]:
            service.event(f"{victim} out of rotation: traffic fails over to the others")
        at(0.22)
        replicator.set_delay("shard-1", MAX_LAG * 3)
        service.event(f"replica of shard-1 falls behind (3 x max_lag {MAX_LAG} s)")
        injected["replica_lagged"] = _wait(
            lambda: any(s["shards"]["shard-1"]["lagging"] for s in service.live_stats()), 8, 0.1
        )
        if injected["replica_lagged"]:
            service.event("routers take shard-1's replica out: its reads go to the primary")
        time.sleep(1.0)
        replicator.set_delay("shard-1", BASE_DELAY)
        injected["replica_back"] = _wait(
            lambda: not any(s["shards"]["shard-1"]["lagging"] for s in service.live_stats()),
            8,
            0.1,
        )
        if injected["replica_back"]:
            service.event("shard-1's replica caught up: back in the read rotation")
        at(0.35)
        process, holding = service.workers[1]
        service.stalls[1].set()  # so that the kill lands while it holds a job, every run
        injected["worker_killed"] = holding.wait(10)
        process.kill()
        service.event(f"killed worker 1 while it held a job (pid {process.pid})")
        service.start_worker(1)
        service.event("worker 1 restarted")
        at(0.45)
        service.start_server(victim)
        service.event(f"restarted {victim} on the same port")
        injected["server_back"] = _wait(lambda: by_name[victim] in balancer.healthy(), 10)
        if injected["server_back"]:
            service.event(f"{victim} passed its health checks: back in rotation")
        at(0.55)
        plan = ring.plan_add(NEW_SHARD)
        _db.write_json(
            folder / "topology.json",
            {"epoch": 2, "shards": list(SHARDS), "plan": plan.to_json()},
        )
        _wait(lambda: all(s["epoch"] == 2 for s in service.live_stats()), 10, 0.05)
        time.sleep(0.2)  # requests begun under the old placement finish
        service.event(f"adding {NEW_SHARD}: every server routes by the plan; keys move")
        last = [0.0]

        def bar(progress: MigrationProgress) -> None:
            if time.monotonic() - last[0] > 0.5 or progress.done:
                last[0] = time.monotonic()
                filled = int(30 * progress.fraction)
                service.display.bar(
                    f"resharding [{'#' * filled:<30}] {progress.fraction:4.0%} "
                    f"{progress.moved:,} keys moved"
                )

        migration = Migration(plan, stores, batch_size=100, progress=bar)
        migration_box["migration"] = migration
        result = migration.run()
        finished = _db._now_us()
        _wait(lambda: _db.replica_position(folder / f"{NEW_SHARD}.replica.db") >= finished, 10)
        _db.write_json(
            folder / "topology.json",
            {"epoch": 3, "shards": all_shards, "plan": None},
        )
        injected["keys_moved"] = result.moved
        injected["keys_examined"] = result.examined
        injected["resharded"] = _wait(
            lambda: all(s["epoch"] == 3 for s in service.live_stats()), 10, 0.05
        )
        service.event(
            f"{NEW_SHARD} live: {result.moved:,} keys moved ({plan.summary().splitlines()[0]})"
        )
        migration_box["plan"] = plan

    chaos_thread = threading.Thread(target=chaos, name="chaos", daemon=True)
    chaos_thread.start()
    service.display.start()
    handler = _EventHandler(service)
    logger = logging.getLogger("scalekit")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        _show(service, traffic, balancer, duration, chaos_thread)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        service.display.stop()
    stop_load()
    service.scraped = _scrape(service)
    checker.stop()
    service.poll_stats()
    emails = open_queue(folder, config)
    _wait(lambda: emails.stats().total == 0, 15, 0.1)
    queue = emails.stats()
    service.stop_workers.set()
    for process, _ in service.workers.values():
        process.join(5)
    service.tail_logs()
    replicator.stop()
    return _verify(service, traffic, injected, migration_box, stores, queue, balancer)


def _show(
    service: _Service, traffic: _Traffic, balancer: Any, duration: float, chaos: threading.Thread
) -> None:
    """Show a status line a second until the run's time is up and the chaos is over."""
    last_served = 0
    while time.monotonic() - service.started < duration or chaos.is_alive():
        time.sleep(1.0)
        service.tail_logs()
        service.poll_stats()
        with traffic.lock:
            served, failed, retries = traffic.served, traffic.failed, traffic.retries
            sent = len(traffic.jobs_sent)
        web = _ratio(service.stats.values(), "web")
        query = _ratio(service.stats.values(), "query")
        processed = len(_outbox(service.folder))
        service.display.status(
            f"{time.monotonic() - service.started:5.1f}s  {served - last_served:4d} req/s  "
            f"served {served:,}  failed {failed}  retried {retries}  "
            f"in rotation {len(balancer.healthy())}/3  web hit {web:.0%}  "
            f"query hit {query:.0%}  mails {processed}/{sent}"
        )
        last_served = served


def _scrape(service: _Service) -> dict[str, list[str]]:
    """Scrape every live process's /metrics: process -> the scalekit metric names it shows."""
    alive = {name for name, process in service.servers.items() if process.is_alive()}
    alive |= {f"worker-{n}" for n, (process, _) in service.workers.items() if process.is_alive()}
    alive.add("load generator")
    found: dict[str, list[str]] = {}
    for who, port in service.metrics.items():
        if port is None or who not in alive:
            continue
        try:
            _, body = _exchange(f"127.0.0.1:{port}", "GET", "/metrics", None)
        except (OSError, http.client.HTTPException):
            found[who] = []
            continue
        names = {
            line.split("{")[0].split(" ")[0]
            for line in body.decode().splitlines()
            if line.startswith("scalekit_")
        }
        found[who] = sorted(names)
    return found


def _ratio(snapshots: Any, tier: str) -> float:
    hits = misses = 0
    for data in snapshots:
        if tier in data:
            hits += data[tier]["hits"]
            misses += data[tier]["misses"]
    return hits / (hits + misses) if hits + misses else 0.0


def _verify(
    service: _Service,
    traffic: _Traffic,
    injected: dict[str, Any],
    migration_box: dict[str, Any],
    stores: dict[str, Any],
    queue: Any,
    balancer: Any,
) -> dict[str, Any]:
    from scalekit.sharding import HashRing

    stats = list(service.stats.values())
    final: HashRing[str] = HashRing([*SHARDS, NEW_SHARD])
    if "plan" not in migration_box:
        final = HashRing(list(SHARDS))
    held = {shard: store.items() for shard, store in stores.items()}
    expected = {f"product:{n}" for n in range(PRODUCTS)} | {
        f"user:{user}" for user in traffic.last_visits
    }
    lost_keys = misplaced = behind = 0
    for key in expected:
        owner = final.node_for(key)
        value = held[owner].get(key)
        if value is None:
            lost_keys += 1
        elif key.startswith("user:") and value["visits"] < traffic.last_visits[key[5:]]:
            behind += 1
    for shard, items in held.items():
        misplaced += sum(1 for key in items if final.node_for(key) != shard)
    sent_mail = _outbox(service.folder)
    poison = {job for job in traffic.jobs_sent if job.startswith("poison")}
    jobs_lost = len(traffic.jobs_sent - poison - set(sent_mail))
    redelivered = sum(1 for attempt in sent_mail.values() if attempt > 1)
    per_shard: dict[str, int] = {}
    for data in service.stats.values():
        for shard, counts in data["shards"].items():
            per_shard[shard] = per_shard.get(shard, 0) + counts["reads"] + counts["writes"]
    replica_reads = sum(d["replica_reads"] for d in service.stats.values())
    own_writes = sum(c["read_your_writes"] for d in stats for c in d["shards"].values())
    fallbacks = sum(c["fallbacks"] for d in stats for c in d["shards"].values())
    primary_reads = sum(d["primary_reads"] for d in service.stats.values())
    plan = migration_box.get("plan")
    moved = injected.get("keys_moved", 0)
    report: dict[str, Any] = {
        "requests": {
            "served": traffic.served,
            "failed": traffic.failed,
            "bad_answers": len(traffic.bad_answers),
            "bad_answer_samples": traffic.bad_answers[:5],
            "client_errors": traffic.client_errors,
            "retried": traffic.retries,
            "truncated": len(traffic.truncated),
            "truncated_samples": traffic.truncated[:5],
            "latency_p50_ms": round(_quantile(traffic.latencies, 0.5) * 1e3, 2),
            "latency_p99_ms": round(_quantile(traffic.latencies, 0.99) * 1e3, 2),
        },
        "cache_hit_ratios": {
            "web (pages and static assets)": round(_ratio(service.stats.values(), "web"), 3),
            "query (the cached function)": round(_ratio(service.stats.values(), "query"), 3),
            "query near tier (per process)": round(_ratio(stats, "near"), 3),
            "query shared tier (all servers)": round(_ratio(stats, "shared"), 3),
            "replica reads / all reads": round(
                replica_reads / (replica_reads + primary_reads or 1), 3
            ),
        },
        "shards": {
            "load": dict(sorted(per_shard.items())),
            "keys": {shard: len(items) for shard, items in held.items()},
            "keys_moved": moved,
            "keys_moved_ideal": round(plan.ideal_fraction * injected.get("keys_examined", 0))
            if plan is not None
            else 0,
            "keys_lost": lost_keys,
            "keys_misplaced": misplaced,
            "values_behind_last_write": behind,
        },
        "jobs": {
            "sent": len(traffic.jobs_sent),
            "processed": len(sent_mail),
            "redelivered": redelivered,
            "dead_lettered": queue.dead_letters,
            "poison_sent": len(poison),
            "lost": jobs_lost,
        },
        "sessions": {
            "users": traffic.users,
            "kept": traffic.users - traffic.sessions_lost,
            "lost": traffic.sessions_lost,
            "loss_samples": traffic.session_losses[:5],
            "seen_on_another_server": traffic.sessions_elsewhere,
        },
        "reads": {
            "replica": replica_reads,
            "primary": primary_reads,
            "primary_for_own_write": own_writes,
            "primary_as_no_replica_fit": fallbacks,
        },
        "stale_reads": traffic.stale_reads,
        "injected": injected,
        "events": service.events,
        "logged": service.logged,
        "metrics": {
            "endpoints": {who: port for who, port in service.metrics.items() if port},
            "scraped_at_the_end": service.scraped,
        },
        "balancer": {
            backend: {
                "picks": s.picks,
                "failures": s.failures,
                "ejections": s.ejections,
            }
            for backend, s in balancer.stats().backends.items()
        },
    }
    broken = []
    checks = {
        f"the failure injection failed ({injected.get('error')})": "error" not in injected,
        "a request was lost": traffic.failed == 0,
        "a request got an error answer": not traffic.bad_answers,
        "a client crashed": not traffic.client_errors,
        "a session was lost": traffic.sessions_lost == 0,
        "a job was lost": jobs_lost == 0,
        "a poison job was not dead-lettered": queue.dead_letters == len(poison),
        "a key was lost": lost_keys == 0 and behind == 0,
        "a key was left on a shard that does not own it": misplaced == 0,
        "a read was stale after the user's own write": traffic.stale_reads == 0,
        "the app server was not killed and ejected": bool(injected.get("server_killed")),
        "the replica did not lag and come back": bool(
            injected.get("replica_lagged") and injected.get("replica_back")
        ),
        "no job was redelivered after the worker was killed": redelivered > 0
        and bool(injected.get("worker_killed")),
        "the restarted app server did not come back": bool(injected.get("server_back")),
        "no key moved to the new shard": moved > 0 and bool(injected.get("resharded")),
    }
    broken = [name for name, ok in checks.items() if not ok]
    report["broken"] = broken
    report["ok"] = not broken
    return report


def _print_report(report: dict[str, Any], out: Out) -> None:
    requests, shards, jobs, sessions = (
        report["requests"],
        report["shards"],
        report["jobs"],
        report["sessions"],
    )
    out("")
    out("== report ==")
    out(
        f"requests: {requests['served']:,} served, {requests['failed']} failed "
        f"({requests['retried']} attempts retried on another server, "
        f"{requests['truncated']} of them cut short by a kill); "
        f"latency p50 {requests['latency_p50_ms']} ms, p99 {requests['latency_p99_ms']} ms"
    )
    out(
        "cache hit ratios: "
        + ", ".join(f"{tier} {ratio:.0%}" for tier, ratio in report["cache_hit_ratios"].items())
    )
    out(f"per-shard load (reads + writes): {shards['load']}")
    out(
        f"keys per shard: {shards['keys']}; moved {shards['keys_moved']:,} "
        f"(ideal {shards['keys_moved_ideal']:,}); lost {shards['keys_lost']}, "
        f"misplaced {shards['keys_misplaced']}"
    )
    out(
        f"jobs: {jobs['sent']} sent, {jobs['processed']} processed, "
        f"{jobs['redelivered']} redelivered, {jobs['dead_lettered']} dead-lettered "
        f"({jobs['poison_sent']} poison), {jobs['lost']} lost"
    )
    out(
        f"sessions: {sessions['users']} users logged in, {sessions['kept']} kept, "
        f"{sessions['lost']} lost; {sessions['seen_on_another_server']} seen logged in "
        "on another server"
    )
    reads = report["reads"]
    out(
        f"database reads: {reads['replica']:,} on replicas, {reads['primary']:,} on primaries "
        f"({reads['primary_for_own_write']:,} as the replica had not replayed the user's own "
        f"write, {reads['primary_as_no_replica_fit']:,} as the replica lagged or was unknown, "
        "the rest while keys moved)"
    )
    out(f"stale reads after the user's own write: {report['stale_reads']}")
    if report["ok"]:
        out("every invariant held")
    else:
        out("BROKEN: " + "; ".join(report["broken"]))
