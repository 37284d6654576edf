"""Space-Saving heavy hitters against an exact Counter; splitting and routing hot keys."""

from __future__ import annotations

import math
import random
import threading
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from scalekit.errors import NoNodeAvailable, ScalekitError
from scalekit.sharding import HashRing
from scalekit.sharding._hotkeys import Estimate, HotKeyDetector, HotKeyRouter, KeySplitter

# A stream: (key, count) pairs over a small universe, often skewed towards a few keys.
UNIVERSE = 40
KEYS_ = st.one_of(st.integers(0, 3), st.integers(0, UNIVERSE - 1))
STREAMS = st.lists(
    st.tuples(KEYS_, st.one_of(st.just(1), st.integers(1, 6))),
    max_size=300,
)


def check_structure(detector: HotKeyDetector[Any]) -> None:
    """The stream summary: ascending non-empty buckets, linked both ways, each key once."""
    seen = []
    bucket, before = detector._first, None
    while bucket is not None:
        assert bucket.prev is before
        assert bucket.keys, "an empty bucket was left in the list"
        if before is not None:
            assert before.count < bucket.count
        for key in bucket.keys:
            assert detector._entries[key].bucket is bucket
        seen.extend(bucket.keys)
        before, bucket = bucket, bucket.next
    assert detector._last is before
    assert sorted(map(repr, seen)) == sorted(map(repr, detector._entries))


def snapshot(detector: HotKeyDetector[Any]) -> tuple[Any, ...]:
    return (detector.top(), detector.total, len(detector))


# -- Space-Saving guarantees --------------------------------------------------------


@given(k=st.integers(1, 12), stream=STREAMS)
def test_space_saving_guarantees(k: int, stream: list[tuple[int, int]]) -> None:
    detector: HotKeyDetector[int] = HotKeyDetector(k)
    exact: Counter[int] = Counter()
    for key, count in stream:
        detector.add(key, count)
        exact[key] += count
    total = sum(exact.values())
    assert detector.total == total
    assert len(detector) == min(k, len(exact))
    check_structure(detector)
    # Every key seen more than total / k times is monitored.
    for key, true in exact.items():
        if true * k > total:
            assert key in detector
    # Every estimate brackets the true count, monitored or not.
    for key in range(UNIVERSE + 1):
        estimate = detector.estimate(key)
        assert estimate.count >= exact[key]
        assert estimate.guaranteed == estimate.count - estimate.error <= exact[key]
        assert estimate.error >= 0
    # The monitored counts add up to the total, greatest first.
    top = detector.top()
    assert sum(count for _, count in top) == total
    counts = [count for _, count in top]
    assert counts == sorted(counts, reverse=True)
    assert {key for key, _ in top} == {key for key in exact if key in detector}
    for n in (0, 1, k // 2, k, k + 3):
        assert detector.top(n) == top[:n]


@given(k=st.integers(1, 8), stream=st.lists(st.integers(0, 20), max_size=300))
def test_unit_counts_agree_with_the_reference_algorithm(k: int, stream: list[int]) -> None:
    """Counts match a direct Space-Saving (any least key may be replaced: same multiset)."""
    detector: HotKeyDetector[int] = HotKeyDetector(k)
    counts: dict[int, int] = {}
    for key in stream:
        detector.add(key)
        if key in counts:
            counts[key] += 1
        elif len(counts) < k:
            counts[key] = 1
        else:
            least = min(counts.values())
            victim = next(key for key, count in counts.items() if count == least)
            del counts[victim]
            counts[key] = least + 1
        assert sorted(c for _, c in detector.top()) == sorted(counts.values())
        assert detector.estimate(key).count == counts[key]


def test_finds_the_heavy_hitters_of_a_zipf_stream() -> None:
    rng = random.Random(5)
    universe = [f"key:{i}" for i in range(5000)]
    weights = [1 / (i + 1) ** 1.1 for i in range(len(universe))]
    stream = rng.choices(universe, weights, k=60_000)
    exact = Counter(stream)
    detector: HotKeyDetector[str] = HotKeyDetector(100)
    for key in stream:
        detector.add(key)
    true_top = [key for key, _ in exact.most_common(10)]
    found = [key for key, _ in detector.top(10)]
    assert set(true_top[:5]) <= set(found)
    assert len(set(true_top) & set(found)) >= 8
    for key in true_top:
        estimate = detector.estimate(key)
        assert estimate.guaranteed <= exact[key] <= estimate.count


def test_the_docstring_example_step_by_step() -> None:
    detector: HotKeyDetector[str] = HotKeyDetector(2)
    assert detector.estimate("a") == Estimate(0, 0)
    detector.add("a")
    detector.add("b", 3)
    assert detector.top() == [("b", 3), ("a", 1)]
    detector.add("c", 2)  # replaces "a" (count 1): 1 + 2, error 1
    assert detector.estimate("c") == Estimate(3, 1)
    assert detector.estimate("a") == Estimate(3, 3)  # not monitored: at most the least
    assert detector.top() == [("b", 3), ("c", 3)]
    assert "a" not in detector
    assert len(detector) == 2
    assert detector.total == 6
    assert detector.k == 2
    assert repr(detector) == "HotKeyDetector(k=2, monitored=2, total=6)"
    detector.clear()
    assert (detector.top(), detector.total, len(detector)) == ([], 0, 0)
    assert detector.estimate("b") == Estimate(0, 0)
    detector.add("z")
    assert detector.top() == [("z", 1)]


@pytest.mark.parametrize("k", [0, -1, 1.5, "3", None, True, math.nan, math.inf, 10**400])
def test_k_must_be_a_positive_int(k: Any) -> None:
    with pytest.raises(ScalekitError, match="k must be"):
        HotKeyDetector(k)


@pytest.mark.parametrize("count", [0, -1, 1.5, "2", None, True, math.nan, math.inf, 10**400])
def test_a_bad_count_changes_nothing(count: Any) -> None:
    detector: HotKeyDetector[str] = HotKeyDetector(2)
    detector.add("a", 2)
    before = snapshot(detector)
    with pytest.raises(ScalekitError, match="count must be"):
        detector.add("a", count)
    with pytest.raises(ScalekitError, match="count must be"):
        detector.add("new", count)
    assert snapshot(detector) == before
    detector._check()


@pytest.mark.parametrize("key", [None, math.nan, ["a"], {"a": 1}])
def test_a_key_that_cannot_be_counted_changes_nothing(key: Any) -> None:
    detector: HotKeyDetector[Any] = HotKeyDetector(2)
    detector.add("a", 2)
    before = snapshot(detector)
    with pytest.raises(ScalekitError, match="key must"):
        detector.add(key)
    assert snapshot(detector) == before
    detector._check()


def test_an_unhashable_key_changes_nothing() -> None:
    detector: HotKeyDetector[Any] = HotKeyDetector(1)
    detector.add("a")
    with pytest.raises(TypeError):
        detector.add(["a"])
    assert snapshot(detector) == ([("a", 1)], 1, 1)


@pytest.mark.parametrize("n", [-1, 1.5, "2", True, math.nan, 10**400])
def test_top_refuses_a_bad_n(n: Any) -> None:
    detector: HotKeyDetector[str] = HotKeyDetector(2)
    with pytest.raises(ScalekitError, match="n must be"):
        detector.top(n)


def test_concurrent_adds_are_all_counted() -> None:
    detector: HotKeyDetector[int] = HotKeyDetector(16)

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(5000):
            detector.add(rng.randrange(64), rng.choice([1, 1, 1, 3]))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    check_structure(detector)
    assert sum(count for _, count in detector.top()) == detector.total


# -- KeySplitter ----------------------------------------------------------------------


def test_a_split_key_is_read_from_every_copy_and_written_to_all() -> None:
    ring = HashRing([f"n{i}" for i in range(6)])
    splitter = KeySplitter(ring, replicas=3, rng=random.Random(1))
    for key in ("hot", b"hot", "other"):
        copies = splitter.write_nodes(key)
        assert copies == ring.nodes_for(key, 3)
        assert len(set(copies)) == 3
        reads = Counter(splitter.read_node(key) for _ in range(3000))
        assert set(reads) == set(copies)
        assert min(reads.values()) > 800  # about a third each
    assert splitter.replicas == 3
    assert splitter.sharder is ring
    assert repr(splitter).endswith("replicas=3)")


def test_a_splitter_uses_every_node_when_there_are_fewer_than_replicas() -> None:
    ring = HashRing(["a", "b"])
    splitter = KeySplitter(ring, replicas=5)
    assert sorted(splitter.write_nodes("k")) == ["a", "b"]
    assert splitter.write_nodes("k")[0] == ring.node_for("k")
    ring.remove("a")
    assert splitter.write_nodes("k") == ["b"]
    ring.remove("b")
    with pytest.raises(NoNodeAvailable):
        splitter.write_nodes("k")
    with pytest.raises(NoNodeAvailable):
        splitter.read_node("k")


@pytest.mark.parametrize("replicas", [0, -1, 1.5, "3", None, True, math.inf, 10**400])
def test_replicas_must_be_a_positive_int(replicas: Any) -> None:
    with pytest.raises(ScalekitError, match="replicas must be"):
        KeySplitter(HashRing(["a"]), replicas=replicas)


def test_splitter_refuses_bad_sharders_and_keys() -> None:
    with pytest.raises(TypeError, match="Sharder"):
        KeySplitter({"a": 1})  # type: ignore[arg-type]
    splitter = KeySplitter(HashRing(["a"]))
    with pytest.raises(TypeError, match="str, bytes or int"):
        splitter.read_node(7.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="rng must be"):
        KeySplitter(HashRing(["a"]), rng=7)  # type: ignore[arg-type]
    assert splitter.write_nodes(7) == splitter.write_nodes("7")  # an int key is its digits


# -- HotKeyRouter -----------------------------------------------------------------------


def make_router(**kwargs: Any) -> tuple[HashRing[str], HotKeyRouter[str]]:
    ring = HashRing([f"n{i}" for i in range(6)])
    kwargs.setdefault("rng", random.Random(3))
    return ring, HotKeyRouter(ring, HotKeyDetector(50), **kwargs)


def test_hot_keys_are_spread_and_cold_keys_go_to_their_owner() -> None:
    ring, router = make_router(replicas=3, threshold=0.05)
    rng = random.Random(8)
    reads: dict[str, Counter[str]] = {}
    for _ in range(20_000):
        key = "hot" if rng.random() < 0.3 else f"cold:{rng.randrange(2000)}"
        reads.setdefault(key, Counter())[router.read_node(key)] += 1
    assert router.is_hot("hot")
    assert set(reads["hot"]) == set(ring.nodes_for("hot", 3))
    assert min(reads["hot"].values()) > 1500
    cold = [key for key in reads if key != "hot"]
    assert not any(router.is_hot(key) for key in cold)
    # After warm-up every cold read went to the owner (early on, with few reads
    # counted, a cold key may briefly look hot).
    late = [key for key in cold[-200:] if sum(reads[key].values()) == 1]
    assert all(set(reads[key]) == {ring.node_for(key)} for key in late)
    # Writes go to every copy, hot or cold.
    assert router.write_nodes("hot") == ring.nodes_for("hot", 3)
    assert router.write_nodes("cold:1") == ring.nodes_for("cold:1", 3)


def test_is_hot_counts_nothing_and_read_node_counts_one() -> None:
    _, router = make_router(threshold=0.5)
    assert not router.is_hot("k")  # nothing counted yet
    assert router.detector.total == 0
    router.read_node("k")
    assert router.detector.total == 1
    assert router.is_hot("k")  # one read of one: all the traffic
    router.read_node("j")
    router.read_node("j")
    assert router.is_hot("j")
    assert not router.is_hot("k")  # 1 of 3 < 0.5
    assert router.threshold == 0.5
    with pytest.raises(TypeError, match="str, bytes or int"):
        router.read_node(3.5)  # type: ignore[arg-type]
    assert router.detector.total == 3
    router.read_node("\ud800")  # a lone surrogate is a key like any other
    assert router.detector.total == 4


def test_a_key_is_never_hot_by_overestimation_alone() -> None:
    ring = HashRing(["a", "b", "c"])
    detector: HotKeyDetector[str] = HotKeyDetector(2)
    router = HotKeyRouter(ring, detector, replicas=2, threshold=0.3)
    for i in range(10):
        router.read_node(f"k{i}")  # each replaces the last: count grows, error too
    newest = detector.estimate("k9")
    assert newest.count >= 0.3 * detector.total
    assert newest.guaranteed == 1
    assert not router.is_hot("k9")


@pytest.mark.parametrize(
    "threshold", [0, -0.1, 1.5, float("nan"), math.inf, 10**400, "0.1", None, True]
)
def test_threshold_must_be_a_share(threshold: Any) -> None:
    with pytest.raises(ScalekitError, match="threshold"):
        make_router(threshold=threshold)


def test_router_refuses_a_bad_detector() -> None:
    with pytest.raises(TypeError, match="HotKeyDetector"):
        HotKeyRouter(HashRing(["a"]), Counter())  # type: ignore[arg-type]


def test_router_repr() -> None:
    _, router = make_router(replicas=2, threshold=0.25)
    text = repr(router)
    assert text.startswith("HotKeyRouter(")
    assert "replicas=2" in text
    assert "threshold=0.25" in text


class DetectorMachine(RuleBasedStateMachine):
    """HotKeyDetector against exact counts: every Space-Saving bound, and _check()."""

    def __init__(self) -> None:
        super().__init__()
        self.k = 3
        self.detector: HotKeyDetector[str] = HotKeyDetector(self.k)
        self.true: Counter[str] = Counter()

    @rule(key=st.sampled_from("abcdefg"), count=st.integers(1, 4))
    def add(self, key: str, count: int) -> None:
        self.detector.add(key, count)
        self.true[key] += count

    @rule()
    def clear(self) -> None:
        self.detector.clear()
        self.true.clear()

    @invariant()
    def bounds_hold(self) -> None:
        self.detector._check()
        total = sum(self.true.values())
        assert self.detector.total == total
        for key in "abcdefg":
            estimate = self.detector.estimate(key)
            assert estimate.count - estimate.error <= self.true[key] <= estimate.count
            if self.true[key] > total / self.k:
                assert key in self.detector


TestDetectorMachine = DetectorMachine.TestCase
TestDetectorMachine.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
