"""ReplicaRouter without a database: fake targets, fake probes, a FakeClock."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
from collections import Counter
from typing import Any

import pytest

from scalekit.balancing import LeastConnections, RoundRobin
from scalekit.errors import ArgumentTypeError, ConfigurationError, DuplicateNode, UnknownNode
from scalekit.replication import ReplicaRouter
from scalekit.sharding import HashRing
from scalekit.testing import FakeClock


class World:
    """Replicas whose replayed position and lag the test sets, with probe counts."""

    def __init__(self, *replicas: str) -> None:
        self.position = dict.fromkeys(replicas, 0)
        self.lag = dict.fromkeys(replicas, 0.0)
        self.unreachable: set[str] = set()
        self.probes: Counter[str] = Counter()

    def position_probe(self, replica: str) -> int:
        self.probes[replica] += 1
        if replica in self.unreachable:
            raise ConnectionRefusedError(replica)
        return self.position[replica]

    def lag_probe(self, replica: str) -> float:
        if replica in self.unreachable:
            raise ConnectionRefusedError(replica)
        return self.lag[replica]


def token_router(world: World, clock: FakeClock, **options: Any) -> ReplicaRouter[str]:
    return ReplicaRouter(
        "p",
        list(world.position),
        read_your_writes="token",
        position_probe=world.position_probe,
        clock=clock,
        **options,
    )


def reads(router: ReplicaRouter[str], n: int) -> Counter[str]:
    return Counter(router.for_read() for _ in range(n))


def in_fresh_context(fn: Any) -> Any:
    return contextvars.Context().run(fn)


# -- spreading reads, writes ---------------------------------------------------


def test_reads_go_round_robin_over_replicas_and_writes_to_the_primary() -> None:
    router = ReplicaRouter("p", ["a", "b", "c"], read_your_writes=None)
    assert [router.for_read() for _ in range(6)] == ["a", "b", "c", "a", "b", "c"]
    assert router.for_write() == "p"
    assert router.for_read() == "a"  # no stickiness
    stats = router.stats()
    assert (stats.reads, stats.writes, stats.primary_reads) == (7, 1, 0)
    assert stats.replica_reads == {"a": 3, "b": 2, "c": 2}


def test_without_replicas_everything_goes_to_the_primary_and_counts_as_fallback() -> None:
    router = ReplicaRouter("p", [])
    assert router.for_read() == "p"
    assert router.stats().fallbacks == 1


def test_a_weighted_balancer_spreads_by_weight() -> None:
    balancer = RoundRobin(["a", "b"], weights={"a": 3, "b": 1}, panic_threshold=0)
    router = ReplicaRouter("p", ["a", "b"], balancer=balancer)
    assert reads(router, 400) == {"a": 300, "b": 100}


# -- read your writes ------------------------------------------------------------


def test_window_mode_reads_from_the_primary_for_the_window_after_a_write() -> None:
    clock = FakeClock()
    router = ReplicaRouter("p", ["a", "b"], window=15.0, clock=clock)
    assert router.for_read() == "a"
    router.for_write()
    clock.advance(14.9)
    assert router.for_read() == "p"
    clock.advance(0.1)
    assert router.for_read() in ("a", "b")
    assert router.stats().read_your_writes == 1


def test_no_stickiness_mode() -> None:
    router = ReplicaRouter("p", ["a"], read_your_writes=None)
    router.for_write()
    assert router.for_read() == "a"


def test_token_mode_reads_only_from_replicas_that_replayed_the_token() -> None:
    clock, world = FakeClock(), World("a", "b")
    router = token_router(world, clock)
    world.position.update(a=100, b=50)
    router.note_write(80)
    assert router.token() == 80
    assert set(reads(router, 10)) == {"a"}
    router.note_write(120)
    assert set(reads(router, 10)) == {"p"}
    assert router.stats().read_your_writes == 10


def test_a_replica_that_caught_up_is_used_without_waiting_for_the_next_poll() -> None:
    clock, world = FakeClock(), World("a")
    router = token_router(world, clock, probe_interval=60)
    world.position["a"] = 10
    router.note_write(20)
    assert router.for_read() == "p"
    world.position["a"] = 20
    assert router.for_read() == "p"  # the last reading is not 10 ms old
    clock.advance(0.01)
    assert router.for_read() == "a"


def test_a_replica_behind_the_token_is_probed_at_most_every_10_ms() -> None:
    clock, world = FakeClock(), World("a")
    router = token_router(world, clock, probe_interval=60)
    router.note_write(1)
    for _ in range(100):
        router.for_read()
    assert world.probes["a"] == 1  # the first poll; then the reading is fresh
    clock.advance(0.01)
    for _ in range(100):
        router.for_read()
    assert world.probes["a"] == 2


def test_the_token_is_kept_newest_first() -> None:
    router = token_router(World("a"), FakeClock())
    router.note_write(30)
    router.note_write(20)
    router.use_token(10)
    assert router.token() == 30
    router.use_token(40)
    assert router.token() == 40


def test_a_write_without_token_in_token_mode_pins_reads_for_the_window() -> None:
    clock, world = FakeClock(), World("a")
    router = token_router(world, clock, window=5)
    router.for_write()
    assert router.for_read() == "p"
    router.note_write(0)  # a later commit's token: the raw write may commit after it
    assert router.for_read() == "p"
    clock.advance(5)
    assert router.for_read() == "a"
    assert router.token() == 0


def test_a_token_carries_read_your_writes_to_another_thread() -> None:
    clock, world = FakeClock(), World("a", "b")
    router = token_router(world, clock)
    world.position.update(a=5, b=5)

    def request_1() -> Any:
        router.note_write(10)
        return router.token()

    exported: list[Any] = []
    thread = threading.Thread(target=lambda: exported.append(request_1()))
    thread.start()
    thread.join()
    assert router.token() is None  # this thread wrote nothing

    seen: list[str] = []

    def request_2() -> None:
        assert router.for_read() in ("a", "b")  # before importing: any replica
        router.use_token(exported[0])
        seen.extend(router.for_read() for _ in range(4))

    thread = threading.Thread(target=request_2)
    thread.start()
    thread.join()
    assert seen == ["p"] * 4
    world.position["b"] = 10
    clock.advance(1)
    with router.scope(token=exported[0]):
        assert set(reads(router, 4)) == {"b"}


def test_contexts_are_independent_across_threads() -> None:
    clock = FakeClock()
    router = ReplicaRouter("p", ["a"], clock=clock)
    wrote = threading.Event()
    results: dict[str, str] = {}

    def writer() -> None:
        router.for_write()
        wrote.set()
        results["writer"] = router.for_read()

    def reader() -> None:
        wrote.wait()
        results["reader"] = router.for_read()

    threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {"writer": "p", "reader": "a"}


def test_contexts_are_independent_across_asyncio_tasks() -> None:
    router = ReplicaRouter("p", ["a"], clock=FakeClock())

    async def writer() -> str:
        router.for_write()
        await asyncio.sleep(0)
        return router.for_read()

    async def reader() -> str:
        await asyncio.sleep(0)
        return router.for_read()

    async def main() -> list[str]:
        return list(await asyncio.gather(writer(), reader()))

    assert asyncio.run(main()) == ["p", "a"]


def test_scope_starts_fresh_and_restores_the_outer_context() -> None:
    router = ReplicaRouter("p", ["a"], clock=FakeClock())
    router.for_write()
    with router.scope():
        assert router.for_read() == "a"
        router.for_write()
        assert router.for_read() == "p"
    assert router.for_read() == "p"
    with router.use_primary(), router.scope():
        assert not router.pinned()


# -- pinning -------------------------------------------------------------------


def test_use_primary_pins_reads_without_counting_a_write() -> None:
    router = ReplicaRouter("p", ["a"], clock=FakeClock())
    with router.use_primary() as primary:
        assert primary == "p"
        assert router.pinned()
        with router.use_primary():
            assert router.for_read() == "p"
        assert router.for_read() == "p"
    assert not router.pinned()
    assert router.for_read() == "a"
    assert router.stats().pinned == 2


def test_transaction_pins_reads_and_counts_as_a_write_when_it_ends() -> None:
    clock = FakeClock()
    router = ReplicaRouter("p", ["a"], clock=clock, window=1)
    with router.transaction() as primary:
        assert primary == "p"
        assert router.for_read() == "p"
        clock.advance(5)
    assert router.for_read() == "p"  # the window starts when the transaction ends
    clock.advance(1)
    assert router.for_read() == "a"


def test_transaction_pins_afterwards_in_token_mode_too() -> None:
    """What the block wrote on the primary it was given has no token to wait for."""
    clock, world = FakeClock(), World("a")
    router = token_router(world, clock, window=2)
    world.position["a"] = 7
    with router.transaction():
        router.note_write(7)  # a routing session committed inside
    assert router.for_read() == "p"
    clock.advance(2)
    assert router.for_read() == "a"


def test_transaction_notes_a_write_even_when_the_block_raises() -> None:
    router = ReplicaRouter("p", ["a"], clock=FakeClock())
    with pytest.raises(RuntimeError), router.transaction():
        raise RuntimeError("rolled back, or maybe not")
    assert router.for_read() == "p"


# -- lag -----------------------------------------------------------------------


def test_a_replica_over_max_lag_gets_no_reads_until_it_catches_up() -> None:
    clock, world = FakeClock(), World("a", "b")
    router = ReplicaRouter(
        "p", ["a", "b"], max_lag=1.0, lag_probe=world.lag_probe, probe_interval=1.0, clock=clock
    )
    world.lag["b"] = 3.0
    assert set(reads(router, 10)) == {"a"}
    assert router.stats().lagging == ("b",)
    assert router.healthy() == ("a",)
    world.lag["b"] = 0.5
    assert set(reads(router, 10)) == {"a"}  # not probed again yet
    clock.advance(1.0)
    assert set(reads(router, 10)) == {"a", "b"}
    assert router.stats().lag == {"a": 0.0, "b": 0.5}


def test_when_every_replica_lags_reads_fall_back_to_the_primary() -> None:
    clock, world = FakeClock(), World("a")
    router = ReplicaRouter("p", ["a"], max_lag=1.0, lag_probe=world.lag_probe, clock=clock)
    world.lag["a"] = float("inf")  # replayed nothing yet
    assert router.for_read() == "p"
    assert router.stats().fallbacks == 1


def test_probes_run_at_most_every_probe_interval() -> None:
    clock, world = FakeClock(), World("a", "b")
    router = ReplicaRouter(
        "p",
        ["a", "b"],
        lag_probe=world.lag_probe,
        position_probe=world.position_probe,
        probe_interval=2.0,
        clock=clock,
    )
    for _ in range(50):
        router.for_read()
        clock.advance(0.1)
    assert world.probes == {"a": 3, "b": 3}  # at 0, 2 and 4 seconds


def test_max_lag_zero_tolerates_only_fully_caught_up_replicas() -> None:
    world = World("a")
    router = ReplicaRouter("p", ["a"], max_lag=0, lag_probe=world.lag_probe, clock=FakeClock())
    assert router.for_read() == "a"


# -- failures ------------------------------------------------------------------


def test_a_failed_replica_is_down_for_down_for_seconds_without_probes() -> None:
    clock = FakeClock()
    router = ReplicaRouter("p", ["a", "b"], down_for=5, clock=clock, read_your_writes=None)
    router.report_failure("a")
    assert set(reads(router, 6)) == {"b"}
    assert router.stats().down == ("a",)
    clock.advance(5)
    assert set(reads(router, 6)) == {"a", "b"}
    assert router.stats().failures == 1


def test_with_probes_a_failed_replica_returns_when_a_probe_passes() -> None:
    clock, world = FakeClock(), World("a", "b")
    router = ReplicaRouter(
        "p", ["a", "b"], lag_probe=world.lag_probe, probe_interval=1, down_for=60, clock=clock
    )
    router.for_read()  # the first poll
    router.report_failure("a")
    assert set(reads(router, 6)) == {"b"}
    clock.advance(1)
    assert set(reads(router, 6)) == {"a", "b"}


def test_a_probe_that_raises_takes_the_replica_out_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock, world = FakeClock(), World("a", "b")
    router = ReplicaRouter("p", ["a", "b"], lag_probe=world.lag_probe, clock=clock)
    world.unreachable.add("a")
    with caplog.at_level(logging.WARNING, logger="scalekit.replication"):
        assert set(reads(router, 4)) == {"b"}
    assert "probing replica 'a' failed" in caplog.text
    assert router.stats().probe_errors == 1
    world.unreachable.clear()
    clock.advance(1)
    assert set(reads(router, 4)) == {"a", "b"}


def test_read_retries_an_unreachable_replica_elsewhere() -> None:
    router = ReplicaRouter("p", ["a", "b"], read_your_writes=None, clock=FakeClock())
    calls: list[str] = []

    def query(target: str) -> str:
        calls.append(target)
        if target == "a":
            raise ConnectionResetError("a is gone")
        return f"rows from {target}"

    assert router.read(query) == "rows from b"
    assert calls == ["a", "b"]
    assert router.stats().down == ("a",)
    assert router.stats().retries == 1
    assert [router.read(query) for _ in range(3)] == ["rows from b"] * 3


def test_read_ends_on_the_primary_when_every_replica_fails() -> None:
    router = ReplicaRouter("p", ["a", "b"], read_your_writes=None, clock=FakeClock())

    def query(target: str) -> str:
        if target != "p":
            raise TimeoutError(target)
        return "rows from p"

    assert router.read(query) == "rows from p"
    assert set(router.stats().down) == {"a", "b"}


def test_read_raises_errors_of_the_query_and_of_the_primary() -> None:
    router = ReplicaRouter("p", ["a"], read_your_writes=None, clock=FakeClock())

    def bad_sql(target: str) -> str:
        raise ValueError("syntax error")

    with pytest.raises(ValueError, match="syntax"):
        router.read(bad_sql)
    assert router.stats().down == ()

    def everything_down(target: str) -> str:
        raise ConnectionRefusedError(target)

    with pytest.raises(ConnectionRefusedError, match="p"):
        router.read(everything_down)


def test_a_balancer_in_panic_mode_cannot_send_reads_to_a_down_replica() -> None:
    balancer = LeastConnections(["a", "b"])  # panics below 50% healthy
    router = ReplicaRouter("p", ["a", "b"], balancer=balancer, read_your_writes=None)
    router.report_failure("a")
    router.report_failure("b")
    assert router.for_read() == "p"
    assert router.stats().fallbacks == 1


# -- topology ------------------------------------------------------------------


def test_promote_swaps_primary_and_replicas_in_one_step() -> None:
    router = ReplicaRouter("p", ["a", "b"], read_your_writes=None)
    router.promote("a")
    assert (router.primary, router.replicas) == ("a", ("b",))
    assert set(reads(router, 4)) == {"b"}
    router.promote("c", replicas=["b", "d"])
    assert (router.primary, router.replicas) == ("c", ("b", "d"))
    assert set(reads(router, 4)) == {"b", "d"}
    assert router.balancer.backends == ("b", "d")


def test_promote_rejects_a_primary_that_is_also_a_replica() -> None:
    router = ReplicaRouter("p", ["a", "b"])
    with pytest.raises(DuplicateNode):
        router.promote("a", replicas=["a", "b"])
    with pytest.raises(DuplicateNode):
        router.promote("c", replicas=["b", "b"])
    assert (router.primary, router.replicas) == ("p", ("a", "b"))


def test_add_and_remove_replicas() -> None:
    router = ReplicaRouter("p", ["a"], read_your_writes=None)
    router.add_replica("b")
    assert set(reads(router, 4)) == {"a", "b"}
    router.remove_replica("a")
    assert set(reads(router, 4)) == {"b"}
    with pytest.raises(UnknownNode):
        router.remove_replica("a")
    with pytest.raises(DuplicateNode):
        router.add_replica("p")


def test_several_primaries_route_writes_by_key_through_the_sharder() -> None:
    sharder = HashRing(["p1", "p2"])
    router = ReplicaRouter(["p1", "p2"], ["a"], sharder=sharder, clock=FakeClock())
    for key in ("user:1", "user:2", "user:3", "order:9"):
        assert router.for_write(key=key) == sharder.node_for(key)
    owner = router.for_write(key="user:7")
    assert router.for_read() == owner  # reads its own write from the primary it wrote
    assert {router.for_write(key=f"k{i}") for i in range(50)} == {"p1", "p2"}


def test_several_primaries_by_name() -> None:
    sharder = HashRing(["east", "west"])
    router = ReplicaRouter({"east": "pe", "west": "pw"}, [], sharder=sharder)
    assert router.primary_for("k") == {"east": "pe", "west": "pw"}[sharder.node_for("k")]
    router.promote("pw2", replacing="pw")
    assert router.primaries == ("pe", "pw2")
    assert {router.primary_for(f"k{i}") for i in range(50)} == {"pe", "pw2"}


def test_a_sharder_naming_no_primary_is_an_error() -> None:
    sharder = HashRing(["p1", "elsewhere"])
    router = ReplicaRouter(["p1", "p2"], [], sharder=sharder)
    key = next(f"k{i}" for i in range(1000) if sharder.node_for(f"k{i}") == "elsewhere")
    with pytest.raises(UnknownNode, match="elsewhere"):
        router.for_write(key=key)


@pytest.mark.parametrize(
    ("args", "options", "message"),
    [
        (("p", ["a"]), {"read_your_writes": "always"}, "read_your_writes"),
        (("p", ["a"]), {"window": -1}, "window"),
        (("p", ["a"]), {"probe_interval": float("inf")}, "probe_interval"),
        (("p", ["a"]), {"down_for": 0}, "down_for"),
        (("p", ["a"]), {"max_lag": 1}, "lag_probe"),
        (("p", ["a"]), {"max_lag": -1, "lag_probe": float}, "max_lag"),
        (("p", ["a"]), {"read_your_writes": "token"}, "position_probe"),
        ((["p", "q"], ["a"]), {}, "sharder"),
        (
            (["p", "q"], ["a"]),
            {"sharder": HashRing(["p", "q"]), "read_your_writes": "token", "position_probe": int},
            "one primary",
        ),
        (([], ["a"]), {}, "at least one primary"),
        (("p", ["a"]), {"balancer": RoundRobin(["b"])}, "not the replicas"),
    ],
)
def test_bad_settings_are_refused(args: Any, options: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        ReplicaRouter(*args, **options)


def test_a_replica_listed_twice_is_refused() -> None:
    with pytest.raises(DuplicateNode):
        ReplicaRouter("p", ["a", "a"])
    with pytest.raises(DuplicateNode):
        ReplicaRouter("p", ["p"])
    with pytest.raises(DuplicateNode):
        ReplicaRouter(["p", "p"], [], sharder=HashRing(["p"]))


def test_background_polling_keeps_probes_off_the_read_path() -> None:
    probed_by: list[str] = []
    ran = threading.Event()

    def lag_probe(replica: str) -> float:
        probed_by.append(threading.current_thread().name)
        ran.set()
        return 0.0

    router = ReplicaRouter("p", ["a", "b"], lag_probe=lag_probe, probe_interval=0.01)
    router.start_polling()
    router.start_polling()  # idempotent
    try:
        assert ran.wait(5)
        for _ in range(200):
            router.for_read()
        time.sleep(0.05)
    finally:
        router.stop_polling()
    assert len(probed_by) >= 4
    assert set(probed_by) == {"scalekit-replica-poller"}
    after = len(probed_by)
    time.sleep(0.05)
    assert len(probed_by) == after  # stopped
    router.for_read()  # due again: the read polls itself once more
    assert probed_by[-1] == threading.current_thread().name


def test_promote_while_reading_from_many_threads() -> None:
    """Every read returns a target of the old or the new topology, never a mix."""
    router = ReplicaRouter("p", ["a", "b", "c"], read_your_writes=None)
    topologies = [("p", ("a", "b", "c")), ("a", ("b", "c", "p")), ("b", ("c", "p", "a"))]
    targets = {"p", "a", "b", "c"}
    stop = threading.Event()
    bad: list[Any] = []
    counts = Counter[str]()

    def reader() -> None:
        while not stop.is_set():
            target = router.for_read()
            counts[target] += 1
            if target not in targets:
                bad.append(target)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        for i in range(100):
            primary, replicas = topologies[(i + 1) % 3]
            router.promote(primary, replicas=list(replicas))
            assert (router.primary, router.replicas) == (primary, replicas)
            time.sleep(0.001)  # let the readers see this topology
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert bad == []
    assert set(counts) == targets
    stats = router.stats()
    assert stats.reads == sum(counts.values())


def test_with_max_lag_a_replica_gets_reads_only_once_measured() -> None:
    clock = FakeClock()
    lags: dict[str, Any] = {"a": 0.0, "b": None}
    router = ReplicaRouter(
        "p", ["a", "b"], max_lag=1.0, lag_probe=lags.__getitem__, probe_interval=1, clock=clock
    )
    assert router.healthy() == ()  # nothing measured yet
    assert set(reads(router, 4)) == {"a"}  # the first read measured them: b's lag is unknown
    router.add_replica("c")
    lags["c"] = float("nan")
    assert set(reads(router, 4)) == {"a"}  # c waits for the next poll
    clock.advance(1)
    assert set(reads(router, 4)) == {"a"}  # unknown (None, NaN) is not within max_lag
    lags.update(b=0.5, c=0.2)
    clock.advance(1)
    assert set(reads(router, 6)) == {"a", "b", "c"}


def test_a_probe_in_flight_does_not_undo_a_failure_reported_meanwhile() -> None:
    clock = FakeClock()
    router: ReplicaRouter[str]
    failing = ["a"]

    def lag_probe(replica: str) -> float:
        if replica in failing:
            failing.remove(replica)
            router.report_failure(replica)  # reported while this probe runs
        return 0.0

    router = ReplicaRouter("p", ["a", "b"], lag_probe=lag_probe, clock=clock)
    router.poll()
    assert router.stats().down == ("a",)
    clock.advance(1)
    router.poll()  # a probe begun after the failure may bring it back
    assert router.stats().down == ()


def test_a_token_of_the_wrong_kind_is_refused_where_it_is_imported() -> None:
    clock, world = FakeClock(), World("a")
    router = token_router(world, clock)
    world.position["a"] = 7
    router.for_read()  # the first poll: positions are ints
    with pytest.raises(TypeError, match="does not compare"):
        router.use_token("7")  # a cookie's string, not parsed
    assert router.token() is None
    assert router.for_read() == "a"
    router.use_token(7)
    assert router.token() == 7


# -- tokens are checked where they come in (issue 13, item 11) -------------------------


@pytest.mark.parametrize("method", ["use_token", "note_write"])
def test_a_token_of_the_wrong_kind_is_refused_before_the_first_probe(method: str) -> None:
    clock, world = FakeClock(), World("a", "b")
    world.position.update(a=7, b=7)
    router = token_router(world, clock)
    assert not world.probes  # nothing probed yet: no position is known
    with pytest.raises(TypeError, match="does not compare"):
        getattr(router, method)("7")
    assert router.token() is None
    assert router.stats().writes == 0
    assert router.for_read() in ("a", "b")  # and later reads work
    getattr(router, method)(7)
    assert router.token() == 7
    router._check()


def test_without_any_position_the_first_token_is_the_reference() -> None:
    clock, world = FakeClock(), World("a")
    world.unreachable.add("a")  # every probe fails: no position is known
    router = token_router(world, clock)
    router.note_write(5)
    with pytest.raises(ArgumentTypeError, match="does not compare"):
        router.use_token("5")
    with pytest.raises(ArgumentTypeError, match="does not compare"):
        router.note_write(b"5")
    assert router.token() == 5
    assert router.for_read() == "p"


def test_a_probe_reporting_positions_of_another_kind_sends_such_reads_to_the_primary() -> None:
    clock, world = FakeClock(), World("a")
    world.unreachable.add("a")
    router = token_router(world, clock)
    router.use_token(5)  # accepted: nothing to compare with
    world.unreachable.clear()
    world.position["a"] = "zzz"  # type: ignore[assignment]
    clock.advance(1)
    assert router.for_read() == "p"  # not a TypeError


@pytest.mark.parametrize(
    ("token", "error"),
    [
        (float("nan"), ConfigurationError),
        (True, ArgumentTypeError),
        ({}, ArgumentTypeError),
        (object(), ArgumentTypeError),
        ({1, 2}, ArgumentTypeError),  # a set: >= is a subset test, and not with an int
    ],
)
@pytest.mark.parametrize("method", ["use_token", "note_write", "scope"])
def test_a_token_that_cannot_be_ordered_is_refused(token: Any, error: type, method: str) -> None:
    clock, world = FakeClock(), World("a")
    world.position["a"] = 3
    router = token_router(world, clock)
    router.note_write(2)
    call = router.scope if method == "scope" else getattr(router, method)
    with pytest.raises(error):
        call(token).__enter__() if method == "scope" else call(token)
    assert router.token() == 2
    assert router.stats().writes == 1


# -- every argument (issue 13, item 12) --------------------------------------------------

NAN = float("nan")


@pytest.mark.parametrize(
    ("args", "options", "error", "message"),
    [
        (("p", ["a"]), {"window": NAN}, ConfigurationError, "window"),
        (("p", ["a"]), {"window": 10**400}, ConfigurationError, "window"),
        (("p", ["a"]), {"window": True}, ArgumentTypeError, "window"),
        (("p", ["a"]), {"window": None}, ArgumentTypeError, "window"),
        (("p", ["a"]), {"window": 1e308}, ConfigurationError, "window"),
        (("p", ["a"]), {"probe_interval": NAN}, ConfigurationError, "probe_interval"),
        (("p", ["a"]), {"probe_interval": "1"}, ArgumentTypeError, "probe_interval"),
        (("p", ["a"]), {"down_for": float("inf")}, ConfigurationError, "down_for"),
        (("p", ["a"]), {"down_for": False}, ArgumentTypeError, "down_for"),
        (("p", ["a"]), {"max_lag": NAN, "lag_probe": float}, ConfigurationError, "max_lag"),
        (("p", ["a"]), {"max_lag": 1e999, "lag_probe": float}, ConfigurationError, "max_lag"),
        (("p", ["a"]), {"max_lag": 10**400, "lag_probe": float}, ConfigurationError, "max_lag"),
        (("p", ["a"]), {"max_lag": True, "lag_probe": float}, ArgumentTypeError, "max_lag"),
        (("p", ["a"]), {"max_lag": 1, "lag_probe": 3}, ArgumentTypeError, "lag_probe"),
        (("p", ["a"]), {"position_probe": "x"}, ArgumentTypeError, "position_probe"),
        (("p", ["a"]), {"is_failure": None}, ArgumentTypeError, "is_failure"),
        (("p", ["a"]), {"clock": 5}, ArgumentTypeError, "clock"),
        (("p", ["a"]), {"read_your_writes": True}, ConfigurationError, "read_your_writes"),
        (("p", ["a"]), {"read_your_writes": []}, ConfigurationError, "read_your_writes"),
        (("p", ["a"]), {"balancer": "rr"}, ArgumentTypeError, "balancer"),
        ((["p", "q"], ["a"]), {"sharder": "ring"}, ArgumentTypeError, "sharder"),
        ((None, ["a"]), {}, ArgumentTypeError, "primary"),
        ((NAN, ["a"]), {}, ConfigurationError, "primary"),
        (("\ud800", ["a"]), {}, ConfigurationError, "primary"),
        (([[1]], ["a"]), {}, ArgumentTypeError, "primary"),
        (({"\ud800": "p"}, ["a"]), {}, ConfigurationError, "primary name"),
        (({"x": "p", "y": "p"}, ["a"]), {}, DuplicateNode, "twice"),
        (("p", [NAN]), {}, ConfigurationError, "replica"),
        (("p", [None]), {}, ArgumentTypeError, "replica"),
        (("p", ["\ud800"]), {}, ConfigurationError, "replica"),
        (("p", [{}]), {}, ArgumentTypeError, "replica"),
        (("p", "ab"), {}, ArgumentTypeError, "replicas"),
        (("p", None), {}, ArgumentTypeError, "replicas"),
    ],
)
def test_hostile_arguments_are_refused_by_name(
    args: Any, options: Any, error: type, message: str
) -> None:
    with pytest.raises(error, match=message):
        ReplicaRouter(*args, **options)


@pytest.mark.parametrize(
    ("replica", "weight", "error"),
    [
        (NAN, 1, ConfigurationError),
        ("\ud800", 1, ConfigurationError),
        (None, 1, ArgumentTypeError),
        ([], 1, ArgumentTypeError),
        ("c", NAN, ConfigurationError),
        ("c", float("inf"), ConfigurationError),
        ("c", 10**400, ConfigurationError),
        ("c", 0, ConfigurationError),
        ("c", True, ArgumentTypeError),
        ("c", None, ArgumentTypeError),
        ("a", 1, DuplicateNode),
        ("p", 1, DuplicateNode),
    ],
)
def test_a_refused_add_replica_changes_nothing(replica: Any, weight: Any, error: type) -> None:
    router = ReplicaRouter("p", ["a", "b"], clock=FakeClock())
    before = (router.replicas, router.balancer.backends, router.stats())  # type: ignore[attr-defined]
    with pytest.raises(error):
        router.add_replica(replica, weight)
    assert (router.replicas, router.balancer.backends, router.stats()) == before  # type: ignore[attr-defined]
    router._check()


@pytest.mark.parametrize(
    ("args", "options"),
    [
        ((NAN,), {}),
        (("\ud800",), {}),
        ((None,), {}),
        (("a",), {"replicas": ["b", NAN]}),
        (("a",), {"replicas": "bc"}),
        (("a",), {"replacing": NAN}),
        (("a",), {"replacing": "\ud800"}),
    ],
)
def test_a_refused_promote_changes_nothing(args: Any, options: Any) -> None:
    router = ReplicaRouter("p", ["a", "b"], clock=FakeClock())
    before = (router.primaries, router.replicas, router.balancer.backends)  # type: ignore[attr-defined]
    with pytest.raises((ArgumentTypeError, ConfigurationError)):
        router.promote(*args, **options)
    assert (router.primaries, router.replicas, router.balancer.backends) == before  # type: ignore[attr-defined]
    router._check()


def test_promote_refuses_a_replica_that_stays_a_primary() -> None:
    router = ReplicaRouter(["p1", "p2"], ["r1"], sharder=HashRing(["p1", "p2"]), clock=FakeClock())
    before = (router.primaries, router.replicas, router.balancer.backends)  # type: ignore[attr-defined]
    with pytest.raises(DuplicateNode):
        router.promote("n", ["r1", "p2"], replacing="p1")
    assert (router.primaries, router.replicas, router.balancer.backends) == before  # type: ignore[attr-defined]
    router.promote("n", ["r1", "p1"], replacing="p1")  # the replaced one may become a replica
    assert (router.primaries, router.replicas) == (("n", "p2"), ("r1", "p1"))
    router._check()


def test_remove_replica_refuses_hostile_names() -> None:
    router = ReplicaRouter("p", ["a"], clock=FakeClock())
    for bad, error in (
        (NAN, ConfigurationError),
        (None, ArgumentTypeError),
        ([], ArgumentTypeError),
    ):
        with pytest.raises(error):
            router.remove_replica(bad)
    assert router.replicas == ("a",)


# -- the balancer and the sharder are protocols (issue 13, structure) ------------------


class BarePicker:
    """A balancer with only what SupportsPick asks: pick, mark_down, mark_up."""

    def __init__(self, backends: list[str]) -> None:
        self.up = list(backends)

    def pick(self, key: object = None) -> str:
        if not self.up:
            from scalekit.errors import NoBackendAvailable

            raise NoBackendAvailable("none")
        return self.up[0]

    def mark_down(self, backend: str) -> None:
        self.up.remove(backend)

    def mark_up(self, backend: str) -> None:
        self.up.append(backend)


def test_a_bare_supports_pick_balancer_routes_reads() -> None:
    from scalekit.protocols import SupportsPick

    picker = BarePicker(["a", "b"])
    assert isinstance(picker, SupportsPick)
    router = ReplicaRouter("p", ["a", "b"], balancer=picker, clock=FakeClock())
    assert router.for_read() == "a"
    router.report_failure("a")
    assert router.for_read() == "b"
    with pytest.raises(ConfigurationError, match="add"):
        router.add_replica("c")
    assert router.replicas == ("a", "b")
    router._check()


def test_check_catches_a_broken_invariant() -> None:
    router = ReplicaRouter("p", ["a", "b"], clock=FakeClock())
    router._check()
    router._replicas["a"].lagging = True  # lagging but not marked down
    with pytest.raises(AssertionError):
        router._check()


def test_read_and_report_failure_refuse_hostile_arguments() -> None:
    router = ReplicaRouter("p", ["a"], clock=FakeClock())
    with pytest.raises(ArgumentTypeError, match="fn"):
        router.read(None)  # type: ignore[arg-type]
    for bad, error in (
        (NAN, ConfigurationError),
        (None, ArgumentTypeError),
        ({}, ArgumentTypeError),
    ):
        with pytest.raises(error, match="replica"):
            router.report_failure(bad)
    assert router.stats().failures == 0
    assert router.stats().reads == 0


# -- one record per scope (issue 13, item 3) -------------------------------------------


def test_writes_in_copied_contexts_inside_a_scope_reach_the_scope() -> None:
    """A thread pool's copy (asyncio.to_thread, a Starlette sync endpoint) and a task's
    copy (asyncio.gather, BaseHTTPMiddleware) share the scope's record."""
    clock, world = FakeClock(), World("a")
    router = token_router(world, clock)

    async def request() -> tuple[Any, Any]:
        with router.scope():
            await asyncio.to_thread(router.note_write, 10)
            after_thread = router.token()
            await asyncio.gather(asyncio.create_task(asyncio.sleep(0)), _write(router, 20))
            return after_thread, router.token()

    assert asyncio.run(request()) == (10, 20)
    assert router.token() is None  # the scope's record went with it


async def _write(router: ReplicaRouter[str], token: int) -> None:
    router.note_write(token)


def test_a_plain_context_set_in_a_copy_is_not_seen_outside_a_scope() -> None:
    """Without a scope (and no write before), a copy's first write stays in the copy,
    as a ContextVar would: this is why requests need a scope."""
    router = token_router(World("a"), FakeClock())
    contextvars.copy_context().run(router.note_write, 10)
    assert router.token() is None
