"""Balancers under threads and asyncio tasks: in-flight counts stay exact.

Every balancer of tests/balancing/test_contract.py's BALANCERS runs each test.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
from collections import Counter
from typing import Any

import pytest

from scalekit.balancing import OutlierEjection
from scalekit.errors import NoBackendAvailable, UnknownNode
from scalekit.testing import FakeClock
from tests.balancing.test_contract import BALANCERS
from tests.contracts.balancer_contract import NO_EJECTION, BalancerFactory

pytestmark = pytest.mark.parametrize("make", BALANCERS)

THREADS = 16
BACKENDS = ["a", "b", "c", "d"]


class Boom(Exception):
    """A failed request."""


def run_threads(target: Any, n: int = THREADS) -> list[BaseException]:
    errors: list[BaseException] = []

    def guarded(i: int) -> None:
        try:
            target(i)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)
    return errors


def test_threads_in_lockstep_see_exact_counts(make: BalancerFactory) -> None:
    """16 threads each hold one lease at a barrier: exactly 16 in flight, then 0."""
    balancer = make(BACKENDS, ejection=NO_EJECTION)
    rounds = 25
    barrier = threading.Barrier(THREADS + 1, timeout=20)
    seen: list[tuple[int, dict[str, int]]] = []

    def worker(i: int) -> None:
        for r in range(rounds):
            try:
                with balancer.lease():
                    barrier.wait()  # every thread holds its lease
                    barrier.wait()  # the main thread has looked
                    if (i + r) % 4 == 0:
                        raise Boom
            except Boom:
                pass
            barrier.wait()  # every lease is released
            barrier.wait()  # the main thread has looked again

    def main() -> None:
        for _ in range(rounds):
            barrier.wait()
            stats = balancer.stats()
            seen.append((stats.in_flight, {b: s.in_flight for b, s in stats.backends.items()}))
            barrier.wait()
            barrier.wait()
            seen.append((balancer.stats().in_flight, {}))
            barrier.wait()

    checker = threading.Thread(target=main)
    checker.start()
    assert run_threads(worker) == []
    checker.join(timeout=30)
    assert [total for total, _ in seen] == [THREADS, 0] * rounds
    if make.exact:  # 16 leases, one after another, over 4 equal backends: 4 each
        assert all(set(per.values()) == {4} for _, per in seen[::2])
    stats = balancer.stats()
    assert stats.picks == THREADS * rounds
    assert sum(s.failures for s in stats.backends.values()) == THREADS * rounds // 4
    assert sum(s.successes for s in stats.backends.values()) == THREADS * rounds * 3 // 4


def test_threads_hammering_keep_every_count_exact(make: BalancerFactory) -> None:
    balancer = make(BACKENDS, weights={"a": 2, "d": 0.5}, ejection=NO_EJECTION)
    per_thread = 600
    outcomes: list[Counter[tuple[str, bool]]] = [Counter() for _ in range(THREADS)]
    stop = threading.Event()
    samples: list[dict[str, int]] = []

    def worker(i: int) -> None:
        rng = random.Random(i)
        for _ in range(per_thread):
            ok = rng.random() < 0.8
            try:
                with balancer.lease() as backend:
                    assert balancer.in_flight(backend) >= 1
                    if not ok:
                        raise Boom
            except Boom:
                pass
            outcomes[i][backend, ok] += 1

    def monitor() -> None:
        while not stop.is_set():
            stats = balancer.stats()
            samples.append({b: s.in_flight for b, s in stats.backends.items()})

    watcher = threading.Thread(target=monitor)
    watcher.start()
    try:
        assert run_threads(worker) == []
    finally:
        stop.set()
        watcher.join()
    assert samples
    assert all(0 <= n <= THREADS for sample in samples for n in sample.values())
    assert all(sum(sample.values()) <= THREADS for sample in samples)
    total = sum(outcomes, Counter())
    stats = balancer.stats()
    assert stats.in_flight == 0
    assert stats.picks == THREADS * per_thread
    for backend, s in stats.backends.items():
        assert (s.successes, s.failures) == (total[backend, True], total[backend, False])
        assert s.picks == s.successes + s.failures


def test_threads_eject_the_failing_backend_once(make: BalancerFactory) -> None:
    # A clock that stands still: every latency is 0, so a latency-aware balancer
    # does not steer away from "c" before it has failed 5 times.
    balancer = make(BACKENDS, ejection=OutlierEjection(consecutive_failures=5), clock=FakeClock())

    def worker(i: int) -> None:
        for _ in range(200):
            try:
                with balancer.lease() as backend:
                    if backend == "c":
                        raise Boom
            except Boom:
                pass

    assert run_threads(worker) == []
    stats = balancer.stats()
    c = stats.backends["c"]
    assert (c.ejected, c.ejections, c.in_flight) == (True, 1, 0)
    assert 5 <= c.failures <= 5 + THREADS  # at most the leases already out
    assert c.successes == 0
    assert balancer.healthy() == ("a", "b", "d")
    assert stats.in_flight == 0
    assert sum(s.failures for s in stats.backends.values()) == c.failures


def test_a_thousand_tasks_some_cancelled_mid_lease(make: BalancerFactory) -> None:
    balancer = make(["a", "b", "c", "d", "e"], ejection=NO_EJECTION)
    n = 1000
    entered = 0
    results: dict[str, Any] = {}

    async def request(i: int, gate: asyncio.Event, all_in: asyncio.Event) -> str:
        nonlocal entered
        async with balancer.lease() as backend:
            entered += 1
            if entered == n:
                all_in.set()
            await gate.wait()
            await asyncio.sleep(0)
            if i % 7 == 0:
                raise Boom
            return backend

    async def main() -> None:
        gate, all_in = asyncio.Event(), asyncio.Event()
        tasks = [asyncio.create_task(request(i, gate, all_in)) for i in range(n)]
        await asyncio.wait_for(all_in.wait(), timeout=20)
        stats = balancer.stats()
        results["all_in"] = stats.in_flight
        results["spread"] = sorted(s.in_flight for s in stats.backends.values())
        cancelled = [task for i, task in enumerate(tasks) if i % 3 == 0]
        for task in cancelled:
            task.cancel()
        await asyncio.wait(cancelled)
        results["after_cancel"] = balancer.stats()
        gate.set()
        results["outcomes"] = await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())
    assert results["all_in"] == n
    if make.exact:
        assert results["spread"] == [200] * 5
    cancelled = len(range(0, n, 3))
    after_cancel = results["after_cancel"]
    assert after_cancel.in_flight == n - cancelled
    assert sum(s.successes + s.failures for s in after_cancel.backends.values()) == 0

    outcomes = results["outcomes"]
    assert sum(isinstance(o, asyncio.CancelledError) for o in outcomes) == cancelled
    failed = sum(isinstance(o, Boom) for o in outcomes)
    assert failed == sum(1 for i in range(n) if i % 7 == 0 and i % 3 != 0)
    succeeded = Counter(o for o in outcomes if isinstance(o, str))
    stats = balancer.stats()
    assert stats.in_flight == 0
    assert all(s.in_flight == 0 for s in stats.backends.values())
    assert {b: s.successes for b, s in stats.backends.items() if s.successes} == succeeded
    assert sum(s.failures for s in stats.backends.values()) == failed
    assert stats.picks == n


def test_removing_a_backend_with_requests_in_flight(make: BalancerFactory) -> None:
    balancer = make(["a", "b", "c"], ejection=NO_EJECTION)
    for other in ("b", "c"):
        balancer.mark_down(other)
    on_a = [balancer.lease() for _ in range(3)]
    for other in ("b", "c"):
        balancer.mark_up(other)
    assert balancer.in_flight("a") == 3
    balancer.remove("a")
    assert balancer.stats().in_flight == 0
    on_a[0].release(True)
    on_a[1].release(False)
    with on_a[2]:
        pass
    for lease in on_a:
        lease.release(False)
    assert balancer.backends == ("b", "c")
    assert "a" not in balancer.stats().backends
    assert "a" not in balancer.healthy()
    with pytest.raises(UnknownNode):
        balancer.in_flight("a")
    assert {balancer.pick() for _ in range(40)} == {"b", "c"}
    stats = balancer.stats()
    assert all(s.in_flight == 0 and s.successes == s.failures == 0 for s in stats.backends.values())


def test_re_adding_a_backend_while_an_old_lease_is_in_flight(make: BalancerFactory) -> None:
    balancer = make(["x"], ejection=OutlierEjection(consecutive_failures=1))
    old = balancer.lease()
    balancer.remove("x")
    balancer.add("x")
    new = balancer.lease()
    assert new.backend == "x"
    assert balancer.in_flight("x") == 1
    old.release(False)  # the old record's failure: not the new one's
    x = balancer.stats().backends["x"]
    assert (x.in_flight, x.failures, x.ejected, x.picks) == (1, 0, False, 1)
    assert balancer.pick() == "x"
    new.release()
    x = balancer.stats().backends["x"]
    assert (x.in_flight, x.successes, x.failures) == (0, 1, 0)
    old.release(False)  # twice: still nothing
    assert balancer.in_flight("x") == 0


def test_churn_while_threads_lease(make: BalancerFactory) -> None:
    """Threads lease while another removes and re-adds "x": no counter goes
    negative, and once "x" is removed for good no release brings it back."""
    balancer = make(["a", "b", "x"], ejection=NO_EJECTION)
    stop = threading.Event()
    low: list[int] = []

    def worker(i: int) -> None:
        rng = random.Random(i)
        while not stop.is_set():
            held = [balancer.lease() for _ in range(rng.randint(1, 3))]
            for b in ("a", "b"):
                low.append(balancer.in_flight(b))
            for lease in held:
                lease.release(rng.random() < 0.7)

    def churn(_: int) -> None:
        for _ in range(300):
            with contextlib.suppress(UnknownNode):  # between remove and add
                low.append(balancer.in_flight("x"))
            balancer.remove("x")
            balancer.add("x", random.choice([1, 2]))
        balancer.remove("x")

    workers = threading.Thread(target=lambda: errors.extend(run_threads(worker, 8)))
    errors: list[BaseException] = []
    workers.start()
    errors.extend(run_threads(churn, 1))
    stop.set()
    workers.join(timeout=30)
    assert errors == []
    assert low
    assert min(low) >= 0
    assert balancer.backends == ("a", "b")
    stats = balancer.stats()
    assert set(stats.backends) == {"a", "b"}
    assert stats.in_flight == 0
    assert all(s.picks == s.successes + s.failures for s in stats.backends.values())
    assert "x" not in {balancer.pick() for _ in range(20)}
    balancer.add("x")
    assert balancer.stats().backends["x"].in_flight == 0


def test_no_backend_under_threads_is_counted(make: BalancerFactory) -> None:
    balancer = make(["a"])
    balancer.mark_down("a")

    def worker(i: int) -> None:
        for _ in range(50):
            with pytest.raises(NoBackendAvailable):
                balancer.lease()

    assert run_threads(worker) == []
    assert balancer.stats().no_backend == THREADS * 50
    assert balancer.stats().picks == 0
