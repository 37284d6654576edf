"""ShardedStore across real processes and real failures: two app processes
resharding 3 Redis servers to 4 while they both read and write, and a server
killed mid-run."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from contextlib import ExitStack
from typing import Any

import pytest

from scalekit.cache import RedisCache
from scalekit.errors import ShardUnavailable
from scalekit.sharding import KetamaRing, ReshardPlan, ShardedStore
from tests.services import redis_server

pytestmark = [pytest.mark.redis, pytest.mark.slow]

KEYS = [f"user:{i}" for i in range(8000)]
NODES = ("r0", "r1", "r2")


def _store(ports: dict[str, int], nodes: tuple[str, ...]) -> ShardedStore[str]:
    import redis

    stores = {n: RedisCache(redis.Redis(port=ports[n])) for n in ports}
    return ShardedStore(KetamaRing(list(nodes)), {n: stores[n] for n in nodes})


def _all_stores(ports: dict[str, int]) -> dict[str, RedisCache[Any]]:
    import redis

    return {n: RedisCache(redis.Redis(port=port)) for n, port in ports.items()}


def _writers(
    store: ShardedStore[str], process: int, stop: Any, results: dict[str, int], errors: list[str]
) -> list[threading.Thread]:
    """2 threads writing and reading back their own keys (disjoint by process and thread)."""

    def work(thread: int) -> None:
        mine = KEYS[process * 2 + thread :: 4]
        version = 0
        try:
            while not stop.is_set():
                version += 1
                for key in mine[version % 11 :: 29]:
                    store.set(key, [process, thread, version])
                    results[key] = version
                    got = store.get(key)
                    if got != [process, thread, version]:
                        errors.append(f"{key}: wrote {version}, read {got}")
        except Exception as exc:
            errors.append(repr(exc))

    return [threading.Thread(target=work, args=(t,)) for t in range(2)]


def _follower(ports: dict[str, int], plan_json: Any, go: Any, stop: Any, out: Any) -> None:
    store = _store(ports, NODES)
    results: dict[str, int] = {}
    errors: list[str] = []
    threads = _writers(store, 1, stop, results, errors)
    for thread in threads:
        thread.start()
    go.wait(30)
    plan: ReshardPlan[str] = ReshardPlan.from_json(plan_json.value.decode())
    store.follow(plan, {"r3": _all_stores(ports)["r3"]})
    out.put("following")
    for thread in threads:
        thread.join()
    store.complete(plan)
    out.put((results, errors))


def test_two_processes_reshard_3_to_4_servers_while_reading_and_writing() -> None:
    with ExitStack() as stack:
        ports = {f"r{i}": stack.enter_context(redis_server()) for i in range(4)}
        store = _store(ports, NODES)
        store.set_many({k: [0] for k in KEYS})
        plan = store.sharder.plan_add("r3")  # type: ignore[attr-defined]
        context = multiprocessing.get_context("spawn")
        plan_json = context.Array("c", plan.to_json().encode())
        go, stop, out = context.Event(), context.Event(), context.Queue()
        child = context.Process(target=_follower, args=(ports, plan_json, go, stop, out))
        child.start()
        results: dict[str, int] = {}
        errors: list[str] = []
        threads = _writers(store, 0, stop, results, errors)
        for thread in threads:
            thread.start()
        time.sleep(0.3)  # both processes are writing before the plan is published
        store.follow(plan, {"r3": _all_stores(ports)["r3"]})
        go.set()
        assert out.get(timeout=30) == "following"
        report = store.reshard(plan, batch_size=500)
        stop.set()
        for thread in threads:
            thread.join()
        child_results, child_errors = out.get(timeout=60)
        child.join(30)
        assert child.exitcode == 0
        assert errors == []
        assert child_errors == []
        assert report.done
        assert report.moved > 1000
        expected: dict[str, Any] = {k: [0] for k in KEYS}
        for process, written in ((0, results), (1, child_results)):
            for key, version in written.items():
                thread = KEYS.index(key) % 4 - process * 2
                expected[key] = [process, thread, version]
        assert store.get_many(KEYS) == expected  # 0 lost keys, every last write kept
        clients = {n: s.client for n, s in _all_stores(ports).items()}
        sizes = {n: c.dbsize() for n, c in clients.items()}
        assert sum(sizes.values()) == len(KEYS)  # none left behind at a source
        assert sizes["r3"] / len(KEYS) <= 1.05 * plan.ideal_fraction
        print(
            f"moved {sizes['r3']} of {len(KEYS)} keys ({sizes['r3'] / len(KEYS):.4f}), ideal "
            f"{plan.ideal_fraction}; writes: {len(results)} + {len(child_results)} keys"
        )


def test_a_server_killed_mid_run_fails_only_its_keys() -> None:
    with ExitStack() as stack:
        ports = {f"r{i}": stack.enter_context(redis_server()) for i in range(3)}
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        stores = {
            n: RedisCache(redis.Redis(port=p, socket_timeout=1, retry=Retry(NoBackoff(), 0)))
            for n, p in ports.items()
        }
        ring = KetamaRing(list(stores))
        store = ShardedStore(ring, stores)
        store.set_many(dict.fromkeys(KEYS[:3000], 1))
        victim = "r1"
        pid = int(stores[victim].client.info("server")["process_id"])
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
        failed: dict[str, set[str]] = {}
        served = []
        for key in KEYS[:600]:
            try:
                value = store.get(key)
            except ShardUnavailable as exc:
                failed[key] = set(exc.failed)
            else:
                served.append((key, value))
        assert all(ring.node_for(k) == victim and keys == {k} for k, keys in failed.items())
        assert all(ring.node_for(k) != victim and value == 1 for k, value in served)
        assert len(failed) > 100
        assert len(served) > 300
        with pytest.raises(ShardUnavailable) as caught:
            store.get_many(KEYS[:3000])
        assert len(caught.value.found) + len(caught.value.failed) == 3000
        assert all(ring.node_for(k) == victim for k in caught.value.failed)
