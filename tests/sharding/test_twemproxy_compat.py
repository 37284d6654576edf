"""KetamaRing(points="twemproxy", hash=...) against a real twemproxy.

Debian's nutcracker (twemproxy 0.5.0) proxies memcached processes of the test's
own with ``distribution: ketama``. Every key is set through nutcracker, each
memcached is then asked which keys it holds (``lru_crawler metadump all``), and
the server found must be the node KetamaRing names, for every key. The same
placements under libketama's point counts (``points="libketama"``) must differ
where the issue says they do, so these tests can fail.

Keys include bytes above 0x7f (hashkit reads them as a signed ``char``) and keys
longer than 12 bytes (jenkins' mixing rounds). Run ``pytest -s`` to see the
agreement figures.
"""

from __future__ import annotations

import os
import random
import socket
import urllib.parse
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from scalekit.hashing import HASHKIT_HASHES
from scalekit.sharding import KetamaRing
from tests.services import memcached_servers, nutcracker, services_required

POOL = 100  # memcached processes shared by the module's cases
KEY_COUNT = 20_000

# Weight sets: the three the issue names, two more pool sizes, two weighted pools.
WEIGHTS = {
    "21-10-9": [21, 10, 9],
    "25-equal": [1] * 25,
    "47-equal": [1] * 47,
    "100-equal": [1] * 100,
    "ketama.servers": [600, 300, 200, 350, 1000, 800, 950, 100],
    "fibonacci": [1, 2, 3, 5, 8, 13, 21, 34, 55, 89],
}
# Where libketama's point counts differ from twemproxy's (the sets); these
# pools name their servers, the others are named by address and port.
LIBKETAMA_DIFFERS = {"21-10-9", "25-equal", "47-equal", "100-equal"}


def _keys(prefix: str, count: int, seed: int) -> list[bytes]:
    """Keys unique to one case: short ones, keys with UTF-8 (bytes above 0x7f),
    and long ones of up to 200 bytes."""
    rng = random.Random(seed)
    keys = []
    for i in range(count):
        kind = i % 10
        if kind == 0:
            tail = "".join(rng.choice("é字ÿ€x") for _ in range(rng.randint(1, 6)))
            key = f"{prefix}:{i}:{tail}"
        elif kind == 1:
            key = f"{prefix}:{i}:" + "z" * rng.randint(1, 180)
        else:
            key = f"{prefix}:{rng.getrandbits(40)}:{i}"
        keys.append(key.encode())
    return keys


class _Memcached:
    """The memcached text protocol over one socket, pipelined."""

    def __init__(self, host: str, port: int) -> None:
        self.socket = socket.create_connection((host, port), timeout=30)
        self.buffer = b""

    def close(self) -> None:
        self.socket.close()

    def _read_until(self, marker: bytes, count: int = 1) -> bytes:
        while self.buffer.count(marker) < count:
            chunk = self.socket.recv(1 << 20)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            self.buffer += chunk
        end = 0
        for _ in range(count):
            end = self.buffer.index(marker, end) + len(marker)
        answer, self.buffer = self.buffer[:end], self.buffer[end:]
        return answer

    def set_many(self, keys: list[bytes], chunk: int = 2_000) -> None:
        for start in range(0, len(keys), chunk):
            part = keys[start : start + chunk]
            self.socket.sendall(b"".join(b"set %s 0 0 1\r\nv\r\n" % key for key in part))
            answers = self._read_until(b"\r\n", len(part)).split(b"\r\n")[:-1]
            assert answers == [b"STORED"] * len(part), answers[:3]

    def keys_held(self) -> set[bytes]:
        self.socket.sendall(b"lru_crawler metadump all\r\n")
        dump = self._read_until(b"END\r\n")
        return {
            urllib.parse.unquote_to_bytes(line.split(b" ", 1)[0][4:].decode("ascii"))
            for line in dump.split(b"\n")
            if line.startswith(b"key=")
        }

    def held_of(self, keys: list[bytes]) -> set[bytes]:
        """Which of ``keys`` this server has (a plain multi-get)."""
        self.socket.sendall(b"get " + b" ".join(keys) + b"\r\n")
        answer = self._read_until(b"END\r\n")
        return {line.split(b" ")[1] for line in answer.split(b"\r\n") if line.startswith(b"VALUE ")}

    def evictions(self) -> int:
        self.socket.sendall(b"stats\r\n")
        for line in self._read_until(b"END\r\n").split(b"\r\n"):
            if line.startswith(b"STAT evictions "):
                return int(line.split()[2])
        raise AssertionError("memcached did not report its evictions")

    def flush(self) -> None:
        self.socket.sendall(b"flush_all\r\n")
        assert self._read_until(b"\r\n") == b"OK\r\n"


def _where(host: str, ports: list[int], keys: list[bytes]) -> list[int]:
    """The index of the server holding each key (each held by exactly one)."""
    wanted = set(keys)
    holder: dict[bytes, int] = {}
    clients = [_Memcached(host, port) for port in ports]
    try:
        for index, client in enumerate(clients):
            for key in client.keys_held() & wanted:
                assert key not in holder, f"{key!r} is on two servers"
                holder[key] = index
        missing = [key for key in keys if key not in holder]
        if missing:  # the crawler's dump can miss an item being bumped: ask for them
            for index, client in enumerate(clients):
                holder.update(dict.fromkeys(client.held_of(missing), index))
        evicted = sum(client.evictions() for client in clients)
        assert len(holder) == len(keys), (
            f"{len(keys) - len(holder)} keys were not found ({evicted} evictions)"
        )
        for client in clients:
            client.flush()
    finally:
        for client in clients:
            client.close()
    return [holder[key] for key in keys]


def _through_nutcracker(
    lines: list[str], hash_name: str, host: str, ports: list[int], keys: list[bytes]
) -> list[int]:
    """Set every key through a nutcracker over ``lines``; where each one landed."""
    with nutcracker(lines, hash=hash_name) as proxy:
        client = _Memcached("127.0.0.1", proxy)
        try:
            client.set_many(keys)
        finally:
            client.close()
    return _where(host, ports, keys)


def _agreement(ring: KetamaRing[str], nodes: list[str], keys: list[bytes], found: list[int]) -> int:
    index = {node: i for i, node in enumerate(nodes)}
    return sum(index[ring.node_for(key)] == at for key, at in zip(keys, found, strict=True))


@pytest.fixture(scope="module")
def pool() -> Iterator[list[int]]:
    """The ports of POOL memcached processes (one thread each; 64 MB, as memory is
    taken when used and -m 8 evicts within a slab class of a weighted case)."""
    with memcached_servers(POOL, "-m", "64") as ports:
        yield ports


@pytest.mark.parametrize("hash_name", ["md5", "fnv1a_64"])
@pytest.mark.parametrize(
    "case",
    [
        pytest.param(case, marks=pytest.mark.slow) if len(WEIGHTS[case]) == 100 else case
        for case in WEIGHTS
    ],
)
def test_every_key_lands_where_the_ring_says(pool: list[int], case: str, hash_name: str) -> None:
    weights = WEIGHTS[case]
    ports = pool[: len(weights)]
    # `host:port:weight name` hashes the name: fixed names make the keys that
    # libketama's counts would misplace the same in every run
    if case in LIBKETAMA_DIFFERS:
        nodes = [f"cache{i}" for i in range(len(weights))]
        lines = [f"127.0.0.1:{p}:{w} {n}" for p, w, n in zip(ports, weights, nodes, strict=True)]
    else:  # unnamed, not on 11211: "host:port" is hashed
        nodes = [f"127.0.0.1:{p}" for p in ports]
        lines = [f"127.0.0.1:{p}:{w}" for p, w in zip(ports, weights, strict=True)]
    keys = _keys(f"{case}/{hash_name}", KEY_COUNT, seed=len(case) * 31 + len(hash_name))
    found = _through_nutcracker(lines, hash_name, "127.0.0.1", ports, keys)

    twemproxy = KetamaRing(
        dict(zip(nodes, weights, strict=True)), points="twemproxy", hash=hash_name
    )
    libketama = KetamaRing(dict(zip(nodes, weights, strict=True)), hash=hash_name)
    agree = _agreement(twemproxy, nodes, keys, found)
    other = _agreement(libketama, nodes, keys, found)
    print(
        f"\n{case:>15} {hash_name:>8}: twemproxy points {agree}/{len(keys)}, "
        f"libketama points {other}/{len(keys)} ({100 * other / len(keys):.2f}%)"
    )
    assert agree == len(keys)
    if case in LIBKETAMA_DIFFERS:
        assert other < len(keys)


OTHER_HASHES = sorted(set(HASHKIT_HASHES) - {"md5", "fnv1a_64"})


@pytest.mark.parametrize("hash_name", OTHER_HASHES)
def test_every_key_hash_of_twemproxy(pool: list[int], hash_name: str) -> None:
    weights = WEIGHTS["ketama.servers"]
    ports = pool[: len(weights)]
    nodes = [f"127.0.0.1:{p}" for p in ports]
    lines = [f"127.0.0.1:{p}:{w}" for p, w in zip(ports, weights, strict=True)]
    keys = _keys(f"hash/{hash_name}", 4_000, seed=len(hash_name))
    found = _through_nutcracker(lines, hash_name, "127.0.0.1", ports, keys)
    ring = KetamaRing(dict(zip(nodes, weights, strict=True)), points="twemproxy", hash=hash_name)
    agree = _agreement(ring, nodes, keys, found)
    print(f"\n{hash_name:>13}: {agree}/{len(keys)}")
    assert agree == len(keys)


def test_port_11211_is_left_out_of_the_name() -> None:
    """Four servers on 11211 of distinct loopback addresses: nutcracker hashes
    "host-k", so nodes named "host" agree and "host:11211" mostly do not."""
    rng = random.Random(os.getpid())
    base = f"127.{rng.randint(100, 250)}.{rng.randint(0, 250)}"
    hosts = [f"{base}.{i}" for i in range(1, 5)]
    with ExitStack() as stack:
        try:
            for host in hosts:
                stack.enter_context(memcached_servers(1, host=host, port=11211))
        except ConnectionError as exc:
            reason = f"cannot run memcached on 11211 of {base}.1-4: {exc}"
            if services_required():
                pytest.fail(reason, pytrace=False)
            pytest.skip(reason)
        weights = [3, 1, 2, 2]
        lines = [f"{host}:11211:{w}" for host, w in zip(hosts, weights, strict=True)]
        keys = _keys("port-11211", 8_000, seed=11211)
        with nutcracker(lines, hash="fnv1a_64") as proxy:
            client = _Memcached("127.0.0.1", proxy)
            try:
                client.set_many(keys)
            finally:
                client.close()
        found: list[int] = []
        holder: dict[bytes, int] = {}
        for index, host in enumerate(hosts):
            client = _Memcached(host, 11211)
            try:
                holder.update(dict.fromkeys(client.keys_held() & set(keys), index))
            finally:
                client.close()
        found = [holder[key] for key in keys]
    results: dict[str, Any] = {}
    for label, nodes in (("host", hosts), ("host:11211", [f"{h}:11211" for h in hosts])):
        ring = KetamaRing(
            dict(zip(nodes, weights, strict=True)), points="twemproxy", hash="fnv1a_64"
        )
        results[label] = _agreement(ring, nodes, keys, found)
    print(f"\nport 11211: {results} of {len(keys)}")
    assert results["host"] == len(keys)
    assert results["host:11211"] < len(keys) * 0.6
