"""The router against a model world, and under threads.

The world has a primary whose WAL position grows with each write, and replicas
that replay it at their own pace, lag, and become unreachable. The safety
property: a read never goes to a replica that has not replayed the reader's own
writes. The liveness property: once the replicas are healthy, caught up and
probed again, reads go to them, not to the primary.
"""

from __future__ import annotations

import random
import threading
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from scalekit.replication import ReplicaRouter
from scalekit.testing import FakeClock

REPLICAS = ("a", "b", "c")
SPARE = "d"  # added and removed while the router runs
MAX_LAG = 1.0
WINDOW = 3.0


class RouterMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.primary_position = 0
        self.position = dict.fromkeys((*REPLICAS, SPARE), 0)
        self.lag = dict.fromkeys((*REPLICAS, SPARE), 0.0)
        self.reachable = dict.fromkeys((*REPLICAS, SPARE), True)
        self.token = 0
        self.spare_reads = 0  # reads served by the spare, whose counter goes when it goes
        self.gone_reads = 0
        self.pinned_until = -1.0  # a write without a token pins reads until then
        self.router = ReplicaRouter(
            "p",
            list(REPLICAS),
            read_your_writes="token",
            position_probe=self.probe_position,
            lag_probe=self.probe_lag,
            max_lag=MAX_LAG,
            window=WINDOW,
            probe_interval=1.0,
            down_for=5.0,
            clock=self.clock,
        )

    def probe_position(self, replica: str) -> int:
        if not self.reachable[replica]:
            raise ConnectionRefusedError(replica)
        return self.position[replica]

    def probe_lag(self, replica: str) -> float:
        if not self.reachable[replica]:
            raise ConnectionRefusedError(replica)
        return self.lag[replica]

    @rule(seconds=st.sampled_from([0.0, 0.005, 0.01, 0.3, 1.0, 5.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(replica=st.sampled_from((*REPLICAS, SPARE)), amount=st.integers(1, 20))
    def replay(self, replica: str, amount: int) -> None:
        self.position[replica] = min(self.position[replica] + amount, self.primary_position)

    @rule(replica=st.sampled_from(REPLICAS), lag=st.sampled_from([0.0, 0.5, 1.0, 2.5, 1e9]))
    def set_lag(self, replica: str, lag: float) -> None:
        self.lag[replica] = lag

    @rule(replica=st.sampled_from(REPLICAS), up=st.booleans())
    def set_reachable(self, replica: str, up: bool) -> None:
        self.reachable[replica] = up

    @rule(replica=st.sampled_from(REPLICAS))
    def report_failure(self, replica: str) -> None:
        self.router.report_failure(replica)

    @rule(caught_up=st.booleans())
    def add_spare(self, caught_up: bool) -> None:
        if SPARE in self.router.replicas:
            self.router.remove_replica(SPARE)
            self.gone_reads += self.spare_reads
            self.spare_reads = 0
        else:
            self.position[SPARE] = self.primary_position if caught_up else 0
            self.router.add_replica(SPARE)

    @rule(size=st.integers(1, 30))
    def write_with_token(self, size: int) -> None:
        self.primary_position += size
        self.token = self.primary_position
        self.router.note_write(self.token)  # an earlier write without token still pins

    @rule()
    def write_without_token(self) -> None:
        assert self.router.for_write() == "p"
        self.pinned_until = self.clock() + WINDOW

    @rule()
    def read(self) -> None:
        target = self.router.for_read()
        self.spare_reads += target == SPARE
        if self.clock() < self.pinned_until:
            assert target == "p"
        if target != "p":
            assert self.position[target] >= self.token, (target, self.position, self.token)

    @precondition(lambda self: self.clock() >= self.pinned_until)
    @rule()
    def read_once_everything_is_healthy(self) -> None:
        for replica in REPLICAS:
            self.reachable[replica] = True
            self.lag[replica] = 0.0
        self.position["b"] = self.primary_position
        self.clock.advance(1.0)  # every replica is probed again on the next read
        target = self.router.for_read()
        self.spare_reads += target == SPARE
        assert target != "p"
        assert self.position[target] >= self.token

    @invariant()
    def counters_add_up(self) -> None:
        stats = self.router.stats()
        served = sum(stats.replica_reads.values()) + stats.primary_reads + self.gone_reads
        assert stats.reads == served
        assert set(stats.down) >= set(stats.lagging)
        assert set(self.router.healthy()) == set(self.router.replicas) - set(stats.down)
        assert set(self.router.balancer.backends) == set(self.router.replicas)  # type: ignore[attr-defined]

    @invariant()
    def router_invariants_hold(self) -> None:
        self.router._check()


TestRouterMachine = RouterMachine.TestCase


def test_threads_always_read_their_own_writes() -> None:
    """16 threads write and read at once; replicas replay in the background."""
    lock = threading.Lock()
    primary = [0]
    positions = dict.fromkeys(REPLICAS, 0)
    stop = threading.Event()

    def position_probe(replica: str) -> int:
        with lock:
            return positions[replica]

    router = ReplicaRouter(
        "p",
        list(REPLICAS),
        read_your_writes="token",
        position_probe=position_probe,
        probe_interval=0.001,
    )

    def replicate() -> None:
        rng = random.Random(1)
        while not stop.is_set():
            with lock:
                replica = rng.choice(REPLICAS)
                positions[replica] = max(positions[replica], primary[0] - rng.randint(0, 40))

    violations: list[Any] = []
    on_replica = [0]

    def client(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(400):
            if rng.random() < 0.3:
                with lock:
                    primary[0] += 1
                    token = primary[0]
                router.note_write(token)
            mine = router.token() or 0
            target = router.for_read()
            if target != "p":
                on_replica[0] += 1
                with lock:
                    if positions[target] < mine:
                        violations.append((target, positions[target], mine))

    replicator = threading.Thread(target=replicate)
    replicator.start()
    clients = [threading.Thread(target=client, args=(seed,)) for seed in range(16)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join()
    stop.set()
    replicator.join()
    assert violations == []
    stats = router.stats()
    assert stats.reads == 16 * 400
    assert on_replica[0] > 0  # the property was exercised on replicas, not only the primary
    assert stats.reads == sum(stats.replica_reads.values()) + stats.primary_reads
