"""SlotMap against live Redis Clusters of the test's own: the create split, the
slot table, and a reshard carried out slot by slot while clients read and write."""

from __future__ import annotations

import ctypes
import random
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from scalekit.errors import ConfigurationError, UnknownNode
from scalekit.sharding import SlotMap
from scalekit.sharding._cluster import ClusterResharder, ClusterRouter, read_cluster_table
from scalekit.sharding._slots import redis_cli_split
from tests.services import (
    redis_cluster_node,
    redis_cluster_or_skip,
    wait_for_cluster,
)


def _client(host: str, port: int) -> Any:
    import redis

    return redis.Redis(host=host, port=port, socket_timeout=10)


def _names(ports: list[int]) -> list[str]:
    return [f"127.0.0.1:{port}" for port in ports]


def _cluster_owners(port: int) -> list[str]:
    """The owner of each slot by CLUSTER SLOTS, read here without scalekit."""
    client = _client("127.0.0.1", port)
    try:
        owners = [""] * 16384
        for first, last, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
            owners[first : last + 1] = [f"{master[0].decode()}:{master[1]}"] * (last - first + 1)
        return owners
    finally:
        client.close()


# -- the create split, without a server ------------------------------------------------


def _c_float_split(masters: int) -> list[tuple[int, int]]:
    """redis-cli's loop, step by step in C floats (ctypes), as clusterManagerCommandCreate."""
    per_node = ctypes.c_float(16384 / ctypes.c_float(masters).value)
    cursor = ctypes.c_float(0.0)
    first, ranges = 0, []
    for index in range(masters):
        value = ctypes.c_float(ctypes.c_float(cursor.value + per_node.value).value - 1).value
        last = int(value + 0.5)  # lround of a positive value
        if last > 16384 or index == masters - 1:
            last = 16383
        last = max(last, first)
        ranges.append((first, last))
        first = last + 1
        cursor = ctypes.c_float(cursor.value + per_node.value)
    return ranges


@pytest.mark.parametrize("masters", range(1, 9))
def test_the_create_split_is_redis_clis(masters: int) -> None:
    nodes = [f"m{i}" for i in range(masters)]
    slot_map = SlotMap.redis_cluster(nodes)
    expected = _c_float_split(masters)
    assert [(r.start, r.stop - 1) for r in redis_cli_split(masters)] == expected
    for node, (first, last) in zip(nodes, expected, strict=True):
        assert slot_map.slots_of(node) == frozenset(range(first, last + 1))
    slot_map._check()


def test_the_create_split_as_redis_cli_printed_it() -> None:
    # "Master[i] -> Slots a - b", printed by redis-cli 7.0.15 --cluster create
    assert [(r.start, r.stop - 1) for r in redis_cli_split(3)] == [
        (0, 5460),
        (5461, 10922),
        (10923, 16383),
    ]
    assert [(r.start, r.stop - 1) for r in redis_cli_split(5)][1:3] == [(3277, 6553), (6554, 9829)]


def test_single_precision_matters_and_quotas_hold() -> None:
    for masters in [*range(1, 300), 1000, 2687]:
        counts = [len(r) for r in redis_cli_split(masters)]
        assert sum(counts) == 16384
        assert 16384 // masters <= min(counts) <= max(counts) <= -(-16384 // masters)
    weighted = SlotMap.redis_cluster({"a": 1, "b": 2})  # weights: proportional, as before
    assert weighted.quotas() == {"a": 5461, "b": 10923}
    murmur = SlotMap(["a", "b", "c"])  # not a Redis Cluster map: the old rule
    assert murmur.quotas() == {"a": 5462, "b": 5461, "c": 5461}


# -- live clusters ------------------------------------------------------------------------


@pytest.fixture(scope="module", params=[3, 4, 5])
def cluster(request: pytest.FixtureRequest) -> Iterator[list[int]]:
    with redis_cluster_or_skip(request.param) as ports:
        yield ports


@pytest.mark.slow
def test_from_cluster_agrees_on_every_slot_and_key(cluster: list[int]) -> None:
    client = _client("127.0.0.1", cluster[0])
    slot_map = SlotMap.from_cluster(client)
    slot_map._check()
    owners = _cluster_owners(cluster[1])
    assert [slot_map._state.table[s] for s in range(16384)] == owners
    assert slot_map.nodes == tuple(_names(cluster))
    # the create split: a fresh map of the masters in creation order owns the same
    created = SlotMap.redis_cluster(_names(cluster))
    assert sum(a != b for a, b in zip(created._state.table, owners, strict=True)) == 0
    rng = random.Random(len(cluster))
    keys = [f"user:{rng.getrandbits(40)}" for _ in range(9_000)]
    keys += [f"{{tag{i % 50}}}.{i}" for i in range(990)]
    keys += ["", "{}", "{}{a}", "{{}}", "a{b", "foo", "{user1000}.following", "ключ", "😀", "{"]
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.execute_command("CLUSTER", "KEYSLOT", key)
    assert [slot_map.slot_of(k) for k in keys] == pipe.execute()
    by_node: dict[str, list[str]] = {}
    for key in keys:
        by_node.setdefault(slot_map.node_for(key), []).append(key)
    for node, owned in by_node.items():
        host, port = node.split(":")
        node_client = _client(host, int(port))
        pipe = node_client.pipeline(transaction=False)
        for key in owned:
            pipe.execute_command("EXISTS", key)
        answers = pipe.execute(raise_on_error=False)
        assert [a for a in answers if isinstance(a, Exception)] == []  # no MOVED
        node_client.close()
    client.close()


# -- growing a live cluster slot by slot ---------------------------------------------------


def _meet(ports: list[int], new_port: int) -> None:
    new = _client("127.0.0.1", new_port)
    bus = int(new.config_get("cluster-port")["cluster-port"])  # not port + 10000 here
    new.close()
    client = _client("127.0.0.1", ports[0])
    client.execute_command("CLUSTER", "MEET", "127.0.0.1", new_port, bus)
    client.close()
    wait_for_cluster([*ports, new_port], known=len(ports) + 1)


def _load(router: ClusterRouter, keys: list[str]) -> None:
    for key in keys:
        router.execute(key, "SET", key, "0")


class Writer(threading.Thread):
    """Writes its own keys through a router, reads them back, records every
    acknowledged value and every error the caller saw."""

    def __init__(self, router: ClusterRouter, keys: list[str], seed: int) -> None:
        super().__init__(daemon=True)
        self.router, self.keys, self.rng = router, keys, random.Random(seed)
        self.acked: dict[str, str] = {}
        self.errors: list[BaseException] = []
        self.stale: list[tuple[str, Any, str]] = []
        self.operations = 0
        self.halt = threading.Event()

    def run(self) -> None:
        counter = 0
        while not self.halt.is_set():
            key = self.rng.choice(self.keys)
            counter += 1
            try:
                if self.rng.random() < 0.5:
                    value = str(counter)
                    self.router.execute(key, "SET", key, value)
                    self.acked[key] = value
                else:
                    got = self.router.execute(key, "GET", key)
                    want = self.acked.get(key, "0")
                    if got is None or got.decode() != want:
                        self.stale.append((key, got, want))
                self.operations += 1
            except BaseException as exc:
                self.errors.append(exc)


@pytest.mark.slow
def test_grow_three_masters_to_four_slot_by_slot_under_load() -> None:
    with redis_cluster_or_skip(3) as ports:
        started = time.monotonic()
        with redis_cluster_node() as new_port:
            _meet(ports, new_port)
            slot_map = SlotMap.from_cluster(_client("127.0.0.1", ports[0]))
            new = f"127.0.0.1:{new_port}"
            plan = slot_map.plan_add(new)
            assert plan.moved_fraction <= 1.05 * plan.ideal_fraction
            assert plan.targets == {new}
            router = ClusterRouter(slot_map, _client)
            keys = [f"key:{i}" for i in range(20_000)]
            _load(router, keys)
            writers = [Writer(router, keys[i::2], seed=i) for i in range(2)]
            for writer in writers:
                writer.start()
            seen: list[tuple[int, str, str, int]] = []
            done_right: list[bool] = []

            def on_slot(slot: int, source: str, target: str, moved: int) -> None:
                seen.append((slot, source, target, moved))
                done_right.append(slot_map._state.table[slot] == target)

            resharder = ClusterResharder(_client, plan, slot_map, on_slot=on_slot, batch_size=50)
            reshard_started = time.monotonic()
            report = resharder.run()
            reshard_time = time.monotonic() - reshard_started
            time.sleep(0.2)
            for writer in writers:
                writer.halt.set()
            for writer in writers:
                writer.join(30)
            assert report.done
            assert not report.stopped
            assert len(seen) == len(done_right) == sum(len(m.slots) for m in plan.moves)
            assert all(done_right)  # routing by the map was right as each slot finished
            errors = [e for w in writers for e in w.errors]
            stale = [s for w in writers for s in w.stale]
            assert errors == []
            assert stale == []
            # every acknowledged write is readable, at the owner the cluster names
            check = ClusterRouter(SlotMap.from_cluster(_client("127.0.0.1", new_port)), _client)
            lost = [
                key
                for writer in writers
                for key, value in writer.acked.items()
                if check.execute(key, "GET", key) != value.encode()
            ]
            assert lost == []
            assert check.moved == check.asked == 0
            # a router on the map from before the reshard follows MOVED and catches up
            behind = ClusterRouter(plan.before.copy(), _client)  # type: ignore[arg-type]
            moving = [k for k in keys if plan.move_for(k) is not None][:200]
            assert all(behind.execute(k, "GET", k) is not None for k in moving)
            assert behind.moved == 1  # to a master it did not know: it reloads the table
            assert behind.asked == 0
            assert all(behind.slot_map.node_for(k) == new for k in moving)
            behind.close()
            total = sum(_client("127.0.0.1", port).dbsize() for port in [*ports, new_port])
            assert total == len(keys)
            # the map is plan.after and the cluster's table
            owners = _cluster_owners(ports[0])
            assert list(slot_map._state.table) == owners
            assert slot_map.epoch == plan.epoch
            assert slot_map.nodes == plan.after.nodes
            slot_map._check()
            keys_moved = sum(moved for *_, moved in seen)
            on_new = _client("127.0.0.1", new_port).dbsize()
            assert keys_moved == on_new
            assert keys_moved / len(keys) <= 1.05 * plan.ideal_fraction
            operations = sum(w.operations for w in writers)
            print(
                f"\ngrow 3->4: {len(keys)} keys, {operations} operations by 2 threads, "
                f"{len(errors)} errors, {len(lost)} lost writes, {len(stale)} stale reads; "
                f"plan moves {plan.moved_fraction:.4%} (ideal {plan.ideal_fraction:.4%}, "
                f"{plan.moved_fraction / plan.ideal_fraction:.4f} x); keys moved "
                f"{keys_moved} = {keys_moved / len(keys):.4%} "
                f"({keys_moved / len(keys) / plan.ideal_fraction:.4f} x ideal); "
                f"MOVED {router.moved}, ASK {router.asked}; reshard {reshard_time:.1f} s, "
                f"test {time.monotonic() - started:.1f} s"
            )
            router.close()
            check.close()


@pytest.mark.slow
def test_a_stopped_or_crashed_reshard_resumes() -> None:
    with redis_cluster_or_skip(3) as ports, redis_cluster_node() as new_port:
        _meet(ports, new_port)
        slot_map = SlotMap.from_cluster(_client("127.0.0.1", ports[0]))
        new = f"127.0.0.1:{new_port}"
        plan = slot_map.plan_add(new)
        router = ClusterRouter(slot_map, _client)
        keys = [f"k{i}" for i in range(5_000)]
        _load(router, keys)

        holder: list[ClusterResharder] = []

        def stop_after_40(slot: int, source: str, target: str, moved: int) -> None:
            if holder[0].progress().slots_done >= 40:
                holder[0].stop()

        first = ClusterResharder(_client, plan, slot_map, on_slot=stop_after_40)
        holder.append(first)
        report = first.run()
        assert report.stopped
        assert report.slots_done == 40
        assert slot_map.epoch == 0  # half way: the new node owns 40 slots

        assert len(slot_map.slots_of(new)) == 40
        # a crash in the middle of the next slot: markers set, part of its keys moved
        moves = sorted(plan.moves, key=lambda m: (str(m.source), str(m.target)))
        slot, source = [(s, m.source) for m in moves for s in m.slots][40]
        ids = {n: _myid(n) for n in plan.after.nodes}
        target_client, source_client = _client("127.0.0.1", new_port), _client(*_split(source))
        target_client.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source])
        source_client.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[new])
        in_slot = source_client.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000)
        half = in_slot[: len(in_slot) // 2]
        if half:
            source_client.execute_command(
                "MIGRATE", "127.0.0.1", new_port, "", 0, 5000, "KEYS", *half
            )
        # and a stray marker, on a slot the plan leaves where it is
        owner, other = plan.before.nodes[0], plan.before.nodes[1]
        stray_slot = next(
            s
            for s in range(16384)
            if plan.before._state.table[s] == owner == plan.after._state.table[s]
        )
        _client(*_split(other)).execute_command(
            "CLUSTER", "SETSLOT", stray_slot, "IMPORTING", ids[owner]
        )
        second = ClusterResharder(_client, plan, slot_map)
        report = second.run()
        assert report.done
        assert second.rolled_back == [stray_slot]
        assert list(slot_map._state.table) == _cluster_owners(ports[0])
        assert slot_map.epoch == plan.epoch
        for port in [*ports, new_port]:
            nodes = _client("127.0.0.1", port).execute_command("CLUSTER", "NODES").decode()
            assert "->-" not in nodes
            assert "-<-" not in nodes
        check = ClusterRouter(SlotMap.from_cluster(_client("127.0.0.1", ports[0])), _client)
        assert all(check.execute(k, "GET", k) == b"0" for k in keys)
        assert check.moved == check.asked == 0
        assert sum(_client("127.0.0.1", p).dbsize() for p in [*ports, new_port]) == len(keys)
        # a third run has nothing left to do
        assert ClusterResharder(_client, plan, slot_map).run().keys_moved == 0


def _split(node: str) -> tuple[str, int]:
    host, port = node.rsplit(":", 1)
    return host, int(port)


def _myid(node: str) -> str:
    client = _client(*_split(node))
    try:
        return str(client.execute_command("CLUSTER", "MYID").decode())
    finally:
        client.close()


@pytest.mark.slow
def test_after_redis_cli_rebalance_reload_follows() -> None:
    cli = shutil.which("redis-cli")
    with redis_cluster_or_skip(3) as ports, redis_cluster_node() as new_port:
        assert cli is not None
        _meet(ports, new_port)
        slot_map = SlotMap.from_cluster(_client("127.0.0.1", ports[0]))
        slot_map.add(f"127.0.0.1:{new_port}")
        subprocess.run(
            [cli, "--cluster", "rebalance", f"127.0.0.1:{ports[0]}", "--cluster-use-empty-masters"],
            check=True,
            capture_output=True,
            timeout=300,
        )
        wait_for_cluster([*ports, new_port], known=4)
        owners = _cluster_owners(ports[0])
        differ = sum(a != b for a, b in zip(slot_map._state.table, owners, strict=True))
        assert differ > 100  # add() plans its own moves, redis-cli its own
        slot_map.reload(_client("127.0.0.1", ports[0]))
        assert list(slot_map._state.table) == owners
        slot_map._check()
        print(f"\nafter redis-cli rebalance: add() differs on {differ} slots, reload on 0")


class FakeClient:
    """Answers CLUSTER SHARDS (as a flat RESP list) or, like Redis 6, only CLUSTER SLOTS."""

    def __init__(self, shards: bool) -> None:
        self.shards = shards

    def execute_command(self, *args: Any) -> Any:
        import redis

        if args[1] == "SHARDS":
            if not self.shards:
                raise redis.ResponseError("unknown subcommand 'SHARDS'")
            node = [b"id", b"x", b"port", 7001, b"ip", b"10.0.0.2", b"role", b"master"]
            empty = [b"id", b"y", b"port", 7003, b"ip", b"10.0.0.3", b"role", b"master"]
            replica = [b"id", b"z", b"port", 7002, b"ip", b"10.0.0.9", b"role", b"replica"]
            return [
                [b"slots", [100, 16383], b"nodes", [node, replica]],
                [
                    b"slots",
                    [0, 99],
                    b"nodes",
                    [[b"port", 7000, b"ip", b"10.0.0.1", b"role", b"master"]],
                ],
                [b"slots", [], b"nodes", [empty]],
            ]
        return [
            [100, 16383, [b"10.0.0.2", 7001, b"x"], [b"10.0.0.9", 7002, b"z"]],
            [0, 99, [b"10.0.0.1", 7000, b"w"]],
        ]


@pytest.mark.parametrize("shards", [True, False])
def test_the_table_from_shards_or_slots(shards: bool) -> None:
    slot_map = SlotMap.from_cluster(FakeClient(shards))
    assert slot_map.nodes == ("10.0.0.1:7000", "10.0.0.2:7001")
    assert slot_map.quotas() == {"10.0.0.1:7000": 100, "10.0.0.2:7001": 16284}
    slot_map._check()
    _, masters = read_cluster_table(FakeClient(shards))
    assert ("10.0.0.3:7003" in masters) is shards  # a master with no slot: SHARDS only


def test_errors_without_a_cluster() -> None:
    slot_map = SlotMap(["a"])
    with pytest.raises(ConfigurationError, match="Redis Cluster"):
        slot_map.reload(object())
    cluster_map = SlotMap.redis_cluster(["127.0.0.1:1"])
    with pytest.raises(UnknownNode):
        cluster_map.assign_slot(0, "nope")
    with pytest.raises(ConfigurationError):
        cluster_map.assign_slot(16384, "127.0.0.1:1")
    with pytest.raises(ConfigurationError, match="Redis Cluster slot maps"):
        ClusterResharder(_client, SlotMap(["a"]).plan_add("b"))


def test_importing_sharding_does_not_import_redis() -> None:
    import sys

    code = "import sys, scalekit.sharding; print('redis' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
