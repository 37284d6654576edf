"""KetamaRing: libketama's own vectors, agreement with uhashring, and exact plans.

The reference is libketama (github.com/RJ/ketama, libketama/ketama.c): its test
harness (libketama/test.sh) pins the md5 of ketama_test's output over a million
keys, and its python binding tests pin a hash and a lookup. uhashring's ketama
mode is an independent implementation that agrees with libketama except where
noted (single-precision hash counts, keys that hash exactly onto a point, ties).
"""

from __future__ import annotations

import gc
import hashlib
import math
import pickle
import random
import shutil
import subprocess
import timeit
from bisect import bisect_left
from pathlib import Path
from typing import Any

import pytest
import uhashring
from hypothesis import given
from hypothesis import strategies as st

from scalekit.errors import ConfigurationError, DuplicateNode, NoNodeAvailable, UnknownNode
from scalekit.sharding._ketama import KetamaRing, hash_count, ketama_hash

RNG = random.Random(20)
KEYS = [f"user:{RNG.getrandbits(48)}" for _ in range(20_000)]

# libketama's ketama.servers, the server file of its test harness.
KETAMA_SERVERS = {
    "10.0.1.1:11211": 600,
    "10.0.1.2:11211": 300,
    "10.0.1.3:11211": 200,
    "10.0.1.4:11211": 350,
    "10.0.1.5:11211": 1000,
    "10.0.1.6:11211": 800,
    "10.0.1.7:11211": 950,
    "10.0.1.8:11211": 100,
}
TEN = [f"10.0.0.{i}:11211" for i in range(10)]


def _moves_by_point(plan: Any) -> Any:
    """A function from a point of the circle to the moves whose ranges hold it."""
    ranges = sorted((end, start, move) for move in plan.moves for start, end in move.ranges)
    ends = [end for end, _, _ in ranges]
    wrapping = [(end, start, move) for end, start, move in ranges if start >= end]

    def holding(point: int) -> list[Any]:
        found = []
        index = bisect_left(ends, point)
        if index < len(ranges) and ranges[index][1] < point:
            found.append(ranges[index][2])  # start < point <= end
        for end, start, move in wrapping:  # (start, end] passes 0
            if point > start or point <= end:
                found.append(move)
        return found

    return holding


def _continuum(ring: Any) -> list[tuple[int, Any]]:
    state = ring._state
    return list(zip(state.points, state.owners, strict=False))


# -- libketama's published vectors -------------------------------------------------


def test_libketama_python_binding_vectors() -> None:
    # python_ketama/tests.py: hashi("test") and get_server("test") on a 600/400 pair.
    assert ketama_hash("test") == 3446378249
    ring = KetamaRing({"127.0.0.1:11211": 600, "127.0.0.1:11212": 400})
    state = ring._state
    assert len(state.points) == 160 * 2
    index = bisect_left(state.points, ketama_hash("test"))
    assert (state.points[index], ring.node_for("test")) == (3454255383, "127.0.0.1:11211")


def test_libketama_harness_md5_over_a_million_keys() -> None:
    """libketama/test.sh: md5 of ketama_test's output on ketama.servers must be
    5672b131391f5aa2b280936aec1eea74. ketama_test prints ketama_error() (empty),
    then "<hash> <point> <server>" for the keys "0" .. "999999"."""
    ring = KetamaRing(KETAMA_SERVERS)
    state = ring._state
    points, owners, count = state.points, state.owners, len(state.points)
    lines = ["\n"]
    for i in range(1_000_000):
        key = str(i).encode()
        h = int.from_bytes(hashlib.md5(key).digest()[:4], "little")
        index = bisect_left(points, h)
        lines.append(f"{h} {points[index % count]} {owners[index]}\n")
    digest = hashlib.md5("".join(lines).encode()).hexdigest()
    assert digest == "5672b131391f5aa2b280936aec1eea74"
    # node_for is the same lookup
    for i in range(0, 1_000_000, 997):
        assert ring.node_for(str(i)) == lines[i + 1].split()[2]


def test_hash_count_is_libketamas_single_precision_arithmetic() -> None:
    # Each value computed by gcc from ketama.c's two lines (x86-64, glibc).
    assert hash_count(600, 1000, 2) == 48
    assert hash_count(1, 3, 3) == 40
    assert hash_count(1, 61, 61) == 39  # exact arithmetic says 40
    assert hash_count(21, 40, 3) == 62  # exact arithmetic says 63
    assert hash_count(100, 4300, 8) == 7
    ring = KetamaRing([f"s{i}" for i in range(61)])
    assert ring.points_of("s0") == 4 * 39


def test_hash_count_against_the_c_compiler(tmp_path: Path) -> None:
    """The C expression itself, compiled: 3,000 random cases."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to evaluate libketama's expression with")
    source = tmp_path / "ks.c"
    source.write_text(
        "#include <stdio.h>\n#include <math.h>\n"
        "int main(void){unsigned long m,t;unsigned int n;"
        'while(scanf("%lu %lu %u",&m,&t,&n)==3){'
        "float pct=(float)m/(float)t;unsigned int ks=floorf(pct*40.0*(float)n);"
        'printf("%u\\n",ks);}return 0;}\n'
    )
    binary = tmp_path / "ks"
    subprocess.run([compiler, "-O2", "-o", str(binary), str(source), "-lm"], check=True)
    rng = random.Random(3)
    cases = [(1, n, n) for n in range(1, 1000)]
    for _ in range(2000):
        n = rng.randint(1, 300)
        weight = rng.randint(1, 10 ** rng.randint(1, 6))
        cases.append((weight, weight + rng.randint(n - 1, (n - 1) * 10 ** rng.randint(0, 6)), n))
    given_input = "\n".join(f"{w} {t} {n}" for w, t, n in cases)
    run = subprocess.run([str(binary)], input=given_input, capture_output=True, text=True)
    expected = [int(line) for line in run.stdout.split()]
    assert [hash_count(*case) for case in cases] == expected


# -- an independent implementation: uhashring's ketama mode ---------------------------


@pytest.mark.parametrize(
    "nodes",
    [
        TEN,
        KETAMA_SERVERS,
        {f"cache-{i}.example.com": w for i, w in enumerate([1, 2, 3, 5, 8, 13, 21, 34])},
    ],
    ids=["ten-equal", "ketama.servers", "fibonacci-weights"],
)
def test_agrees_with_uhashring_on_10000_keys(nodes: Any) -> None:
    ring = KetamaRing(nodes)
    other = uhashring.HashRing(nodes, hash_fn="ketama")
    assert _continuum(ring) == other.get_points()
    for key in KEYS[:10_000]:
        assert ring.node_for(key) == other.get_node(key)
        assert ring.hash_of(key) == other.get_key(key)
    for key in KEYS[:300]:
        assert ring.nodes_for(key, 3) == [conf["nodename"] for conf in other.range(key, 3)]
    ring._check()


def test_uhashring_computes_hash_counts_in_exact_integers() -> None:
    """Where libketama's float rounding drops a hash, uhashring keeps it."""
    nodes = {"a": 21, "b": 10, "c": 9}
    ring = KetamaRing(nodes)
    other = uhashring.HashRing(nodes, hash_fn="ketama")
    assert ring.points_of("a") == 4 * 62
    assert other.distribution["a"] == 4 * 63


def test_a_key_on_a_point_belongs_to_that_point() -> None:
    """The key "<server>-<k>" hashes exactly onto the first point of that digest:
    libketama returns it (first point >= hash); uhashring's bisect_right skips it."""
    ring = KetamaRing(KETAMA_SERVERS)
    other = uhashring.HashRing(KETAMA_SERVERS, hash_fn="ketama")
    differ = 0
    for server in KETAMA_SERVERS:
        key = f"{server}-0"
        assert ketama_hash(key) in ring._state.points
        assert ring.node_for(key) == server
        point, node = other.get_server(key)
        assert point > ketama_hash(key)
        differ += node != server
    assert differ > 0


def test_equal_points_go_to_the_node_added_first() -> None:
    """cache-764 and cache-2697 share the point 1743038596 (the first 4 bytes of
    md5("cache-764-18")). libketama's qsort (glibc: a stable merge sort) keeps the
    server listed first; uhashring gives the point to the one listed last."""
    tie = 1743038596
    assert ketama_hash("cache-764-18") == ketama_hash("cache-2697-35") == tie
    one = KetamaRing(["cache-764", "cache-2697"])
    two = KetamaRing(["cache-2697", "cache-764"])
    points = one._state.points
    index = points.index(tie)
    inside = next(k for k in KEYS if points[index - 1] < ketama_hash(k) <= tie)
    for key in ("cache-764-18", inside):
        assert one.node_for(key) == "cache-764"
        assert two.node_for(key) == "cache-2697"
    assert uhashring.HashRing(["cache-764", "cache-2697"], hash_fn="ketama").get_node(inside) == (
        "cache-2697"
    )
    # Adding a node never takes a tied point from a node that holds it.
    three = KetamaRing(["cache-2697"])
    three.add("cache-764")
    assert three.node_for(inside) == "cache-2697"


def test_lookup_takes_at_most_half_the_time_of_uhashring() -> None:
    """Timed interleaved (one round of each, in turn) with the collector off, so
    that a busy machine or a full suite's heap slows both sides alike."""
    ring = KetamaRing(TEN)
    other = uhashring.HashRing(TEN, hash_fn="ketama")
    keys = KEYS[:5000]
    ours, theirs = [], []
    enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(9):
            ours.append(timeit.timeit(lambda: [ring.node_for(k) for k in keys], number=1))
            theirs.append(timeit.timeit(lambda: [other.get_node(k) for k in keys], number=1))
    finally:
        if enabled:
            gc.enable()
    assert min(ours) / min(theirs) < 0.65  # about 0.45 measured; slack for a busy machine


# -- structure, plans and shares ---------------------------------------------------------


def test_a_node_too_light_for_a_point_owns_nothing_but_is_a_replica_choice() -> None:
    ring = KetamaRing({"heavy": 1_000_000, "light": 1})
    assert ring.points_of("light") == 0
    assert {ring.node_for(k) for k in KEYS[:500]} == {"heavy"}
    assert ring.nodes_for("k", 2) == ["heavy", "light"]
    assert ring._shares(ring._state) == {"heavy": 1.0, "light": 0.0}


@pytest.mark.parametrize("nodes", [TEN, KETAMA_SERVERS], ids=["equal", "weighted"])
def test_plan_ranges_say_exactly_which_keys_move(nodes: Any) -> None:
    ring = KetamaRing(nodes)
    victim = next(iter(ring.nodes))
    for plan in (ring.plan_add("10.0.2.1:11211", 500), ring.plan_remove(victim)):
        moves_at = _moves_by_point(plan)
        for key in KEYS:
            holding = moves_at(ring.hash_of(key))
            expected = plan.move_for(key)
            if expected is None:
                assert holding == []
            else:
                assert [(m.source, m.target) for m in holding] == [expected]
        before, after = ring._shares(ring._state), plan.after._shares(plan.after._state)
        # what each node gains or loses is what flows to or from it
        for node in set(before) | set(after):
            gained = sum(m.fraction for m in plan.moves if m.target == node)
            lost = sum(m.fraction for m in plan.moves if m.source == node)
            assert after.get(node, 0.0) - before.get(node, 0.0) == pytest.approx(gained - lost)


def test_equal_weights_move_keys_only_to_an_added_node() -> None:
    ring = KetamaRing(TEN)
    plan = ring.plan_add("10.0.0.10:11211")
    assert plan.targets == {"10.0.0.10:11211"}
    assert plan.moved_fraction == pytest.approx(plan.ideal_fraction, rel=0.35)
    ring.add("10.0.0.10:11211")
    assert _continuum(ring) == _continuum(plan.after)
    ring._check()


def test_shares_cover_the_circle() -> None:
    ring = KetamaRing(KETAMA_SERVERS)
    shares = ring._shares(ring._state)
    assert math.fsum(shares.values()) == pytest.approx(1.0)
    counts = dict.fromkeys(ring.nodes, 0)
    for key in KEYS:
        counts[ring.node_for(key)] += 1
    for node, share in shares.items():
        assert counts[node] / len(KEYS) == pytest.approx(share, abs=0.015)


@given(
    weights=st.lists(st.integers(1, 1000), min_size=1, max_size=6),
    changes=st.lists(st.tuples(st.sampled_from(["add", "remove", "weight"]), st.integers(1, 50))),
)
def test_any_history_builds_the_continuum_of_its_final_nodes(
    weights: list[int], changes: list[tuple[str, int]]
) -> None:
    ring = KetamaRing({f"10.0.0.{i}:11211": w for i, w in enumerate(weights)})
    fresh = 100
    for change, weight in changes:
        if change == "add":
            ring.add(f"10.0.1.{fresh}:11211", weight)
            fresh += 1
        elif change == "remove" and len(ring) > 1:
            ring.remove(ring.nodes[weight % len(ring)])
        else:
            ring.set_weight(ring.nodes[weight % len(ring)], weight)
        ring._check()
    final = {node: ring.weight_of(node) for node in ring.nodes}
    assert _continuum(ring) == _continuum(KetamaRing(final))  # the point cache is faithful
    ints = {node: int(w) for node, w in final.items()}
    total, count = sum(ints.values()), len(ints)
    other = uhashring.HashRing(ints, hash_fn="ketama")
    # uhashring agrees whenever its integer hash counts equal libketama's
    if all(hash_count(w, total, count) == 40 * count * w // total for w in ints.values()):
        for key in KEYS[:200]:
            assert ring.node_for(key) == other.get_node(key)


# -- bad input -------------------------------------------------------------------------


def _state_of(ring: KetamaRing[Any]) -> tuple[Any, ...]:
    return ring.nodes, [ring.weight_of(n) for n in ring.nodes], _continuum(ring)


def test_bad_input_is_refused_and_changes_nothing() -> None:
    ring = KetamaRing({"a": 2, "b": 1, 3: 1})
    before = _state_of(ring)
    with pytest.raises(DuplicateNode):
        ring.add("a")
    with pytest.raises(DuplicateNode):
        ring.add("3")  # str(node) places a node: "3" would sit on the points of 3
    for weight in (0, -1, math.nan, math.inf):
        with pytest.raises(ConfigurationError):
            ring.add("c", weight)
        with pytest.raises(ConfigurationError):
            ring.set_weight("a", weight)
    with pytest.raises(ConfigurationError):
        ring.add("c", 1e39)  # past single precision: libketama cannot weigh it
    with pytest.raises(UnknownNode):
        ring.remove("zzz")
    with pytest.raises(UnknownNode):
        ring.plan_remove("zzz")
    with pytest.raises(TypeError, match="str, bytes or int"):
        ring.node_for(4.2)  # type: ignore[arg-type]
    assert ring.node_for(42) == ring.node_for("42")  # an int key is its digits
    assert _state_of(ring) == before
    with pytest.raises(ConfigurationError):
        KetamaRing({"a": 1e-300})


def test_an_empty_ring_has_no_node() -> None:
    ring: KetamaRing[str] = KetamaRing()
    with pytest.raises(NoNodeAvailable):
        ring.node_for("k")
    ring.add("a")
    ring.remove("a")
    with pytest.raises(NoNodeAvailable):
        ring.node_for("k")
    assert ring.plan_add("a").moves == ()


def test_pickles_and_copies_place_alike() -> None:
    ring = KetamaRing(KETAMA_SERVERS)
    for clone in (pickle.loads(pickle.dumps(ring)), ring.copy()):
        assert _continuum(clone) == _continuum(ring)
