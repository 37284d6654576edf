"""Finding the real services tests run against, and deciding to skip or fail."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (now)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def redis_server(*options: str) -> Iterator[int]:
    """A redis-server of the test's own on a free loopback port, keeping nothing on
    disk, stopped (and its files removed) on exit; yields its port."""
    server = shutil.which("redis-server")
    if server is None:
        raise FileNotFoundError("redis-server is not installed")
    port = free_port()
    folder = tempfile.mkdtemp(prefix="scalekit-redis-")
    command = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", folder]
    process = subprocess.Popen(
        [*command, "--appendonly", "no", *options],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise ConnectionError(f"redis-server {options} did not start") from None
                time.sleep(0.02)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(folder, ignore_errors=True)


def require_program(name: str) -> str:
    """The path of the program ``name`` (``/usr/sbin`` searched too); skips the test
    without it, or fails it when services are required."""
    search = os.pathsep.join([os.environ.get("PATH", os.defpath), "/usr/sbin", "/sbin"])
    path = shutil.which(name, path=search)
    if path is None:
        reason = f"{name} is not installed (Debian: apt-get install {name})"
        if services_required():
            pytest.fail(f"{reason} (SCALEKIT_REQUIRE_SERVICES=1)", pytrace=False)
        pytest.skip(reason)
    return path


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct TCP ports on ``host`` that nothing listens on (now)."""
    with ExitStack() as stack:
        probes = [stack.enter_context(socket.socket()) for _ in range(count)]
        for probe in probes:
            probe.bind((host, 0))
        return [int(probe.getsockname()[1]) for probe in probes]


def _wait_for_listeners(
    processes: list[subprocess.Popen[bytes]], addresses: list[tuple[str, int]], what: str
) -> None:
    """Return once every address accepts a connection; ConnectionError if a process
    exits first or 10 s pass."""
    deadline = time.monotonic() + 10
    for process, address in zip(processes, addresses, strict=True):
        while True:
            try:
                socket.create_connection(address, timeout=0.5).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise ConnectionError(f"{what} on {address} did not start") from None
                time.sleep(0.01)


def _stop(processes: list[subprocess.Popen[bytes]], how: int = signal.SIGTERM) -> None:
    for process in processes:
        process.send_signal(how)
    for process in processes:
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def memcached_servers(
    count: int, *options: str, host: str = "127.0.0.1", port: int | None = None
) -> Iterator[list[int]]:
    """``count`` memcached processes of the test's own (8 MB, one thread each) on
    free ports of ``host`` (or all on ``port``, for distinct hosts), started
    together and stopped on exit; yields their ports. Skips (fails when services
    are required) without memcached; ConnectionError if one does not start."""
    program = require_program("memcached")
    as_root = ["-u", "root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []
    ports = free_ports(count) if port is None else [port] * count
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for each in ports:
            command = [program, "-l", host, "-p", str(each), "-U", "0", "-m", "8", "-t", "1"]
            processes.append(
                subprocess.Popen(
                    [*command, *as_root, *options],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        _wait_for_listeners(processes, [(host, each) for each in ports], "memcached")
        if any(process.poll() is not None for process in processes):
            raise ConnectionError(f"a memcached on {host} exited (its port was taken)")
        yield ports
    finally:
        _stop(processes, signal.SIGKILL)  # it keeps nothing; SIGTERM takes up to a second


@contextmanager
def memcached_server(*options: str, host: str = "127.0.0.1") -> Iterator[int]:
    """One memcached of the test's own on a free port of ``host`` (see
    :func:`memcached_servers`); yields its port."""
    with memcached_servers(1, *options, host=host) as ports:
        yield ports[0]


@contextmanager
def nutcracker(
    servers: list[str],
    *,
    hash: str = "fnv1a_64",
    distribution: str = "ketama",
) -> Iterator[int]:
    """A nutcracker (twemproxy) of the test's own, proxying memcached ``servers``
    (config lines such as ``"127.0.0.1:22122:1 server1"``) with the given key hash
    and distribution, its stats on a free port too; stopped (and its files removed)
    on exit. Yields its listening port. Skips (fails when services are required)
    without nutcracker."""
    program = require_program("nutcracker")
    port, stats = free_ports(2)
    folder = tempfile.mkdtemp(prefix="scalekit-nutcracker-")
    config = os.path.join(folder, "nutcracker.yml")
    lines = [
        "pool:",
        f"  listen: 127.0.0.1:{port}",
        f"  hash: {hash}",
        f"  distribution: {distribution}",
        "  timeout: 5000",
        "  auto_eject_hosts: false",
        "  servers:",
        *(f"   - {server}" for server in servers),
    ]
    with open(config, "w", encoding="utf-8") as file:
        file.write("\n".join(lines) + "\n")
    log = os.path.join(folder, "nutcracker.log")
    command = [program, "-c", config, "-s", str(stats), "-a", "127.0.0.1", "-o", log]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        try:
            _wait_for_listeners([process], [("127.0.0.1", port)], "nutcracker")
        except ConnectionError as exc:
            with open(log, encoding="utf-8", errors="replace") as file:
                raise ConnectionError(f"{exc}; its log says:\n{file.read()[-2000:]}") from None
        yield port
    finally:
        _stop([process])
        shutil.rmtree(folder, ignore_errors=True)


# -- Redis Cluster: throwaway clusters of the test's own ---------------------------------


@contextmanager
def redis_cluster_node(*options: str) -> Iterator[int]:
    """A cluster-enabled redis-server of the test's own, in no cluster yet (its
    cluster bus on a free port of its own: port + 10000 can pass 65535); yields
    its port."""
    bus = str(free_port())
    with tempfile.TemporaryDirectory(prefix="scalekit-cluster-") as folder:
        config = os.path.join(folder, "nodes.conf")
        with redis_server(
            "--cluster-enabled", "yes", "--cluster-port", bus,
            "--cluster-config-file", config, *options,
        ) as port:  # fmt: skip
            yield port


def wait_for_cluster(ports: list[int], known: int, timeout: float = 30) -> None:
    """Wait until every node at ``ports`` says ``cluster_state:ok`` and knows
    ``known`` nodes, and all agree on the slot owners; ``TimeoutError`` otherwise."""
    import redis

    clients = [redis.Redis(port=port, socket_timeout=5) for port in ports]
    try:
        deadline = time.monotonic() + timeout
        while True:
            infos = [client.cluster("info") for client in clients]
            tables = [_slot_owners(client) for client in clients]
            if (
                all(info.get("cluster_state") == "ok" for info in infos)
                and all(int(info.get("cluster_known_nodes", 0)) == known for info in infos)
                and all(table == tables[0] for table in tables)
            ):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the cluster on ports {ports} did not settle: {infos}")
            time.sleep(0.05)
    finally:
        for client in clients:
            client.close()


def _slot_owners(client: object) -> list[tuple[int, int, int]]:
    """``(first, last, master port)`` of each range in ``CLUSTER SLOTS``, sorted."""
    reply = client.execute_command("CLUSTER SLOTS")  # type: ignore[attr-defined]
    return sorted((int(r[0]), int(r[1]), int(r[2][1])) for r in reply)


@contextmanager
def redis_cluster(masters: int) -> Iterator[list[int]]:
    """A Redis Cluster of ``masters`` masters (no replicas) on free loopback ports,
    created by ``redis-cli --cluster create`` (which refuses fewer than 3) and
    settled (``cluster_state:ok`` everywhere); yields the ports in the order
    given to redis-cli, stops every server on exit."""
    cli = shutil.which("redis-cli")
    if cli is None:
        raise FileNotFoundError("redis-cli is not installed")
    with ExitStack() as stack:
        ports = [stack.enter_context(redis_cluster_node()) for _ in range(masters)]
        addresses = [f"127.0.0.1:{port}" for port in ports]
        command = [cli, "--cluster", "create", *addresses]
        done = subprocess.run(
            [*command, "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise ConnectionError(f"redis-cli --cluster create failed: {done.stdout}{done.stderr}")
        wait_for_cluster(ports, masters)
        yield ports


@contextmanager
def redis_cluster_or_skip(masters: int) -> Iterator[list[int]]:
    """:func:`redis_cluster`, or a skip (a failure when services are required)
    when redis-server or redis-cli is missing or the cluster does not come up."""
    with ExitStack() as stack:
        ports: list[int] = []

        def start(_: str) -> None:
            ports.extend(stack.enter_context(redis_cluster(masters)))

        require_service(f"a Redis Cluster of {masters} masters", "127.0.0.1 (free ports)", start)
        yield ports
