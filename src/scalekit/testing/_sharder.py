"""check_sharder: the contract every :class:`~scalekit.sharding.Sharder` meets.

Run it on your own scheme the way trio's ``check_two_way_stream`` runs on a stream::

    from scalekit.testing import check_sharder

    def test_my_sharder():
        check_sharder(MySharder)

It needs no test framework: each check raises :class:`AssertionError` with a message
on a broken promise. ``factory(nodes)`` builds a sharder from an iterable of node
names or a mapping of node to weight. Each check is also a public function of this
module's :data:`SHARDER_CHECKS`, so a pytest suite can report them one by one (as
scalekit's own ``tests/contracts/sharder_contract.py`` does).
"""

from __future__ import annotations

import copy
import math
import pickle
import random
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from scalekit.errors import (
    ConfigurationError,
    DuplicateNode,
    NoNodeAvailable,
    ScalekitError,
    UnknownNode,
)
from scalekit.hashing import key_bytes
from scalekit.testing._raising import raises as _raises

__all__ = ["SHARDER_CHECKS", "SharderCheck", "check_sharder"]

SharderCheck = Callable[..., None]

KEYS = [f"key:{i}:{random.Random(i).getrandbits(32)}" for i in range(4000)]
"""Fixed keys: the same in every run, so a failure reproduces."""

HOSTILE_WEIGHTS: tuple[Any, ...] = (
    0,
    -1,
    math.nan,
    math.inf,
    -math.inf,
    10**400,
    1e308,
    True,
    "1",
    None,
)
HOSTILE_NODES: tuple[Any, ...] = (None, math.nan, float("nan"), [], {"a": 1})
HOSTILE_KEYS: tuple[Any, ...] = (None, 2.5, True, ("k",), ["k"], math.nan)
HOSTILE_COUNTS: tuple[Any, ...] = (-1, True, 2.5, None, "1", 10**400)


def _placement(sharder: Any, keys: list[str] = KEYS) -> dict[str, Any]:
    return {key: sharder.node_for(key) for key in keys}


def _state_of(sharder: Any) -> tuple[Any, ...]:
    return (
        sharder.nodes,
        tuple(sharder.weight_of(node) for node in sharder.nodes),
        _placement(sharder, KEYS[:300]),
    )


def _checked(sharder: Any) -> Any:
    """Call the sharder's ``_check()`` if it has one, and return the sharder."""
    check = getattr(sharder, "_check", None)
    if check is not None:
        check()
    return sharder


# -- the checks --------------------------------------------------------------------


def check_is_a_sharder(factory: Callable[..., Any], **_: Any) -> None:
    """The factory builds a :class:`~scalekit.sharding.Sharder`."""
    from scalekit.sharding import Sharder

    assert isinstance(_checked(factory(["a"])), Sharder), "not a Sharder"


def check_empty(factory: Callable[..., Any], **_: Any) -> None:
    """With no node, every lookup raises NoNodeAvailable; ``nodes_for(k, 0)`` is ``[]``."""
    sharder = _checked(factory())
    _raises(NoNodeAvailable, lambda: sharder.node_for("k"), "node_for on an empty sharder")
    _raises(NoNodeAvailable, lambda: sharder.nodes_for("k", 1), "nodes_for on an empty sharder")
    assert sharder.nodes_for("k", 0) == [], "nodes_for(k, 0) is not []"


def check_placement_is_stable(factory: Callable[..., Any], **_: Any) -> None:
    """Every key goes to a node, always the same one, in every instance."""
    nodes = [f"n{i}" for i in range(5)]
    sharder = _checked(factory(nodes))
    first = _placement(sharder)
    assert set(first.values()) == set(sharder.nodes), "some node gets no key of 4,000"
    assert _placement(sharder) == first, "a key moved with no change"
    assert _placement(factory(nodes)) == first, "two instances disagree: hidden randomness"


def check_keys(factory: Callable[..., Any], **_: Any) -> None:
    """``str``, ``bytes`` and ``int`` keys: a str as its UTF-8 bytes (a lone surrogate
    as its surrogatepass bytes), an int as its decimal digits; any other type is an
    ArgumentTypeError (a TypeError) naming "str, bytes or int"."""
    sharder = _checked(factory(["a", "b", "c"]))
    for key in KEYS[:200]:
        assert sharder.node_for(key) == sharder.node_for(key.encode()), f"{key!r} vs bytes"
    for number in (0, 7, 42, -5, 10**30):
        assert sharder.node_for(number) == sharder.node_for(str(number)), f"int {number}"
        assert sharder.nodes_for(number, 2) == sharder.nodes_for(str(number), 2)
    for text in ("\ud800", "a\udfffb", "\udcff" * 3):
        node = sharder.node_for(text)
        assert node == sharder.node_for(key_bytes(text)), f"{text!r} vs its bytes"
        assert sharder.nodes_for(text, 3)[0] == node
    for bad in HOSTILE_KEYS:
        error = _raises(TypeError, partial(sharder.node_for, bad), f"node_for({bad!r})")
        assert isinstance(error, ScalekitError), f"node_for({bad!r}) raised a bare TypeError"
        assert "str, bytes or int" in str(error), f"node_for({bad!r}): {error}"
        _raises(TypeError, partial(sharder.nodes_for, bad, 1), f"nodes_for({bad!r}, 1)")


def check_nodes_for(factory: Callable[..., Any], **_: Any) -> None:
    """``nodes_for(key, n)``: n distinct nodes, the owner first, the same every time;
    more than there are is NoNodeAvailable; a bad ``n`` is a ScalekitError."""
    sharder = _checked(factory([f"n{i}" for i in range(6)]))
    rng = random.Random(13)
    for i in range(200):
        key = KEYS[i] if i % 2 else "".join(chr(rng.randrange(32, 0x3000)) for _ in range(i % 9))
        n = 1 + i % 6
        chosen = sharder.nodes_for(key, n)
        assert len(chosen) == n, f"nodes_for({key!r}, {n}) gave {len(chosen)} nodes"
        assert len(set(chosen)) == n, f"nodes_for({key!r}, {n}) repeats a node"
        assert chosen[0] == sharder.node_for(key), f"nodes_for({key!r}) owner not first"
        assert set(chosen) <= set(sharder.nodes)
        assert sharder.nodes_for(key, n) == chosen
    _raises(NoNodeAvailable, lambda: sharder.nodes_for("k", 7), "nodes_for beyond the nodes")
    for bad in HOSTILE_COUNTS:
        _raises(ScalekitError, partial(sharder.nodes_for, "k", bad), f"n={bad!r}")


def check_nodes_and_weights(factory: Callable[..., Any], **_: Any) -> None:
    """Nodes in the order added; ``weight_of`` an unknown node is UnknownNode."""
    sharder = factory(["a", "b"])
    sharder.add("c")
    _checked(sharder)
    assert sharder.nodes == ("a", "b", "c"), sharder.nodes
    assert sharder.weight_of("c") == 1
    _raises(UnknownNode, lambda: sharder.weight_of("zzz"), "weight_of an unknown node")


def check_refused_changes_change_nothing(
    factory: Callable[..., Any], *, removes_any: bool = True, **_: Any
) -> None:
    """A duplicate node, an unknown node, a hostile weight or node is refused with a
    ScalekitError (the builtin it subclasses too), and the sharder is unchanged."""
    sharder = _checked(factory(["a", "b", "c"]))
    before = _state_of(sharder)
    _raises(DuplicateNode, lambda: sharder.add("b"), "add of a duplicate")
    _raises(ValueError, lambda: sharder.plan_add("a"), "plan_add of a duplicate")
    _raises(UnknownNode, lambda: sharder.remove("zzz"), "remove of an unknown node")
    _raises(KeyError, lambda: sharder.plan_remove("zzz"), "plan_remove of an unknown node")
    for weight in HOSTILE_WEIGHTS:
        _raises(ScalekitError, partial(sharder.add, "d", weight), f"weight {weight!r}")
    for node in HOSTILE_NODES:
        _raises(ScalekitError, partial(sharder.add, node), f"node {node!r}")
        _raises(ScalekitError, partial(sharder.remove, node), f"remove({node!r})")
        _raises(ScalekitError, partial(sharder.weight_of, node), f"weight_of({node!r})")
        _raises(ScalekitError, partial(sharder.plan_add, node), f"plan_add({node!r})")
        assert node not in sharder, f"{node!r} in the sharder"
    assert _state_of(sharder) == before, "a refused call changed the sharder"
    _checked(sharder)
    for weight in HOSTILE_WEIGHTS:
        _raises(ScalekitError, partial(factory, {"a": 1, "b": weight}), f"built with {weight!r}")
    for node in HOSTILE_NODES:
        _raises(ScalekitError, partial(factory, ["a", node]), f"built with node {node!r}")


def check_odd_node_names(
    factory: Callable[..., Any], *, removes_any: bool = True, **_: Any
) -> None:
    """A node whose name holds a lone surrogate or any unicode is placed like any other."""
    names = ["\ud800node", "n\udfff", "café", "节点"]
    sharder = _checked(factory(names))
    owners = set(_placement(sharder, KEYS[:1000]).values())
    assert owners == set(names), f"only {owners} own keys"
    sharder.add("\udcffx")
    _checked(sharder)
    sharder.remove("\udcffx")
    _checked(sharder)


def check_add_moves_keys_only_to_it(
    factory: Callable[..., Any], *, monotone: bool = True, **_: Any
) -> None:
    """Adding a node moves about 1/(n+1) of the keys (only to it, if monotone)."""
    sharder = factory([f"n{i}" for i in range(10)])
    before = _placement(sharder)
    sharder.add("new")
    _checked(sharder)
    after = _placement(sharder)
    moved = [key for key in KEYS if before[key] != after[key]]
    if monotone:
        assert all(after[key] == "new" for key in moved), "a key moved between old nodes"
    assert 0 < len(moved) / len(KEYS) < 0.2, f"{len(moved)} of {len(KEYS)} moved"


def check_remove_moves_only_its_keys(
    factory: Callable[..., Any], *, monotone: bool = True, removes_any: bool = True, **_: Any
) -> None:
    """Removing a node moves its keys (only them, if monotone) and no key stays on it."""
    nodes = [f"n{i}" for i in range(10)]
    sharder = factory(nodes)
    victim = nodes[3] if removes_any else nodes[-1]
    before = _placement(sharder)
    sharder.remove(victim)
    _checked(sharder)
    after = _placement(sharder)
    assert victim not in after.values(), "a key stays on a removed node"
    if monotone:
        moved = [key for key in KEYS if before[key] != after[key]]
        assert all(before[key] == victim for key in moved), "a key moved between kept nodes"


def check_plans_are_exact(
    factory: Callable[..., Any], *, removes_any: bool = True, **_: Any
) -> None:
    """A plan changes nothing, and ``move_for`` and ``moves`` match the change made."""
    nodes = [f"n{i}" for i in range(8)]
    sharder = factory(nodes)
    before = _placement(sharder)
    victim = nodes[2] if removes_any else nodes[-1]
    changes: list[tuple[Any, Callable[[Any], None]]] = [
        (sharder.plan_add("new"), lambda s: s.add("new")),
        (sharder.plan_remove(victim), lambda s: s.remove(victim)),
    ]
    for plan, change in changes:
        assert _placement(sharder) == before, "planning changed the sharder"
        changed = sharder.copy()
        change(changed)
        after = _placement(changed)
        for key in KEYS:
            expected = None if before[key] == after[key] else (before[key], after[key])
            assert plan.move_for(key) == expected, f"move_for({key!r})"
        pairs = {(before[k], after[k]) for k in KEYS if before[k] != after[k]}
        assert pairs <= {(m.source, m.target) for m in plan.moves}, "a flow is not listed"
        moved = sum(before[k] != after[k] for k in KEYS) / len(KEYS)
        assert abs(plan.moved_fraction - moved) <= 0.03, (plan.moved_fraction, moved)
        assert _placement(plan.after) == after
    _checked(sharder)


def check_weights(factory: Callable[..., Any], *, weighted: bool = True, **_: Any) -> None:
    """A node of weight 3 gets about three times the keys of one of weight 1 (or an
    unweighted scheme refuses any weight but 1)."""
    if not weighted:
        _raises(ConfigurationError, lambda: factory(["a"]).add("b", 2), "weight 2, unweighted")
        return
    sharder = _checked(factory({"small": 1, "big": 3}))
    owners = list(_placement(sharder).values())
    share = owners.count("big") / len(owners)
    assert 0.65 < share < 0.85, f"the node of weight 3 of 4 gets {share:.2f}"


def check_copies_and_pickles(factory: Callable[..., Any], **_: Any) -> None:
    """A copy is independent; a pickle and ``copy.copy`` place keys the same."""
    sharder = factory(["a", "b", "c"])
    twin = _checked(sharder.copy())
    assert _placement(twin) == _placement(sharder)
    twin.add("d")
    assert "d" not in sharder.nodes, "a copy shares its nodes"
    for clone in (pickle.loads(pickle.dumps(sharder)), copy.copy(sharder)):
        _checked(clone)
        assert clone.nodes == sharder.nodes
        assert _placement(clone) == _placement(sharder)


def check_lookups_during_changes(
    factory: Callable[..., Any], *, seconds: float = 0.3, **_: Any
) -> None:
    """4 threads look up while another adds and removes nodes: no error, and every
    answer is a node that was present at some point."""
    stable = [f"n{i}" for i in range(6)]
    sharder = factory(stable)
    ever = set(stable) | {f"extra{i}" for i in range(3)}
    stop = threading.Event()
    errors: list[BaseException] = []
    answers = [0]

    def look() -> None:
        try:
            while not stop.is_set():
                for key in KEYS[:200]:
                    assert sharder.node_for(key) in ever
                    assert len(set(sharder.nodes_for(key, 3))) == 3
                answers[0] += 200
        except BaseException as exc:  # reported by the caller's thread
            errors.append(exc)

    def churn() -> None:
        try:
            while not stop.is_set():
                for i in range(3):
                    sharder.add(f"extra{i}")
                for i in reversed(range(3)):
                    sharder.remove(f"extra{i}")
        except BaseException as exc:  # reported by the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=look) for _ in range(4)]
    threads.append(threading.Thread(target=churn))
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    if errors:
        raise AssertionError(f"a thread failed: {errors[0]!r}") from errors[0]
    assert answers[0] > 0, "no lookup finished"
    assert sharder.nodes == tuple(stable)
    _checked(sharder)


SHARDER_CHECKS: dict[str, SharderCheck] = {
    "is_a_sharder": check_is_a_sharder,
    "empty": check_empty,
    "placement_is_stable": check_placement_is_stable,
    "keys": check_keys,
    "nodes_for": check_nodes_for,
    "nodes_and_weights": check_nodes_and_weights,
    "refused_changes_change_nothing": check_refused_changes_change_nothing,
    "odd_node_names": check_odd_node_names,
    "add_moves_keys_only_to_it": check_add_moves_keys_only_to_it,
    "remove_moves_only_its_keys": check_remove_moves_only_its_keys,
    "plans_are_exact": check_plans_are_exact,
    "weights": check_weights,
    "copies_and_pickles": check_copies_and_pickles,
    "lookups_during_changes": check_lookups_during_changes,
}
"""Every check of :func:`check_sharder`, by name, each ``check(factory, **options)``."""


def check_sharder(
    factory: Callable[..., Any],
    *,
    monotone: bool = True,
    weighted: bool = True,
    removes_any: bool = True,
) -> None:
    """Run every promise of the :class:`~scalekit.sharding.Sharder` contract on the
    sharders ``factory`` builds; raise :class:`AssertionError` on the first broken one.

    ``factory(nodes)`` takes an iterable of node names or a mapping of node to
    weight (and no argument: no nodes). Options say which promises apply:
    ``monotone`` (a change moves keys only to an added node or from a removed
    one: false for Maglev), ``weighted`` (weights other than 1 are accepted:
    false for jump hashing), ``removes_any`` (any node can be removed: false for
    jump hashing, which removes only its last). A sharder with a ``_check()``
    method has it called after every change.

    Runtime: about a second for a scheme with O(log n) lookups.

    >>> from scalekit.sharding import RendezvousHash
    >>> check_sharder(RendezvousHash)
    """
    for name, check in SHARDER_CHECKS.items():
        try:
            check(factory, monotone=monotone, weighted=weighted, removes_any=removes_any)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from exc
