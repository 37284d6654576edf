"""The contract every scalekit ``Sharder`` meets, whatever its scheme.

The checks themselves ship as :func:`scalekit.testing.check_sharder` (in
``scalekit/testing/_sharder.py``), so a user runs them on their own scheme; this
module reports them one by one per scheme, and adds a hypothesis state machine
that calls each scheme's ``_check()`` from an invariant. A scheme joins with one
line in tests/sharding/test_contract.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from scalekit.errors import DuplicateNode, UnknownNode
from scalekit.testing import SHARDER_CHECKS, check_sharder
from scalekit.testing._sharder import check_lookups_during_changes

__all__ = ["SharderContract", "SharderFactory", "churn_while_looking_up", "sharder_machine"]


@dataclass(frozen=True)
class SharderFactory:
    """How to build one scheme, and which promises of the contract apply to it.

    ``monotone``: a change moves keys only to an added node or from a removed one.
    ``weighted``: accepts weights other than 1. ``removes_any``: any node can be
    removed (jump hash removes only the last).
    """

    build: Callable[..., Any]
    monotone: bool = True
    weighted: bool = True
    removes_any: bool = True
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __call__(self, nodes: Any = ()) -> Any:
        return self.build(nodes, **self.kwargs)

    @property
    def options(self) -> dict[str, bool]:
        return {
            "monotone": self.monotone,
            "weighted": self.weighted,
            "removes_any": self.removes_any,
        }


class SharderContract:
    """Every check of ``check_sharder``, one test each; every test takes ``make``."""

    @pytest.mark.parametrize("check", sorted(SHARDER_CHECKS))
    def test_contract(self, make: SharderFactory, check: str) -> None:
        SHARDER_CHECKS[check](make, **make.options)

    def test_check_sharder_reports_the_broken_promise(self, make: SharderFactory) -> None:
        """check_sharder fails, naming the check, on a scheme that breaks a promise."""

        def forgetful(nodes: Any = ()) -> Any:
            sharder = make(nodes)
            sharder.copy = lambda: make(())  # a copy that loses the nodes
            return sharder

        with pytest.raises(AssertionError, match=r"plans_are_exact|copies_and_pickles"):
            check_sharder(forgetful, **make.options)


def churn_while_looking_up(make: SharderFactory, seconds: float) -> None:
    """4 threads look up while another adds and removes nodes (see the shipped check)."""
    check_lookups_during_changes(make, seconds=seconds)


KEYS = [f"k{i}" for i in range(40)] + ["\ud800", 42, b"\xff"]
NAMES = [f"n{i}" for i in range(6)] + ["\udcffodd"]


def sharder_machine(make: SharderFactory) -> type[RuleBasedStateMachine]:
    """A state machine over ``make``'s scheme, against a model of its nodes and
    weights; every step ends with the scheme's ``_check()``."""

    class SharderMachine(RuleBasedStateMachine):
        @initialize(count=st.integers(0, 4))
        def start(self, count: int) -> None:
            self.model: dict[str, float] = dict.fromkeys(NAMES[:count], 1)
            self.sharder = make(list(self.model))

        @precondition(lambda self: len(self.model) < len(NAMES))
        @rule(data=st.data(), weight=st.sampled_from([1, 1, 2, 0.5, 3]))
        def add(self, data: st.DataObject, weight: float) -> None:
            node = data.draw(st.sampled_from([n for n in NAMES if n not in self.model]))
            weight = weight if make.weighted else 1
            plan = self.sharder.plan_add(node, weight)
            self.sharder.add(node, weight)
            self.model[node] = weight
            for key in KEYS:
                assert plan.after.node_for(key) == self.sharder.node_for(key)

        @precondition(lambda self: self.model)
        @rule(data=st.data())
        def remove(self, data: st.DataObject) -> None:
            nodes = list(self.model)
            node = data.draw(st.sampled_from(nodes if make.removes_any else nodes[-1:]))
            plan = self.sharder.plan_remove(node)
            self.sharder.remove(node)
            del self.model[node]
            if self.model:
                for key in KEYS:
                    assert plan.after.node_for(key) == self.sharder.node_for(key)

        @precondition(lambda self: self.model and make.weighted)
        @rule(data=st.data(), weight=st.sampled_from([1, 2, 0.5]))
        def set_weight(self, data: st.DataObject, weight: float) -> None:
            node = data.draw(st.sampled_from(list(self.model)))
            self.sharder.set_weight(node, weight)
            self.model[node] = weight

        @precondition(lambda self: self.model)
        @rule(node=st.sampled_from(NAMES))
        def refused_changes_change_nothing(self, node: str) -> None:
            before = (self.sharder.nodes, [self.sharder.node_for(k) for k in KEYS[:5]])
            if node in self.model:
                with pytest.raises(DuplicateNode):
                    self.sharder.add(node)
            else:
                with pytest.raises(UnknownNode):
                    self.sharder.remove(node)
            after = (self.sharder.nodes, [self.sharder.node_for(k) for k in KEYS[:5]])
            assert after == before

        @precondition(lambda self: self.model)
        @rule(key=st.sampled_from(KEYS), n=st.integers(1, 7))
        def look_up(self, key: Any, n: int) -> None:
            n = min(n, len(self.model))
            chosen = self.sharder.nodes_for(key, n)
            assert chosen[0] == self.sharder.node_for(key)
            assert len(set(chosen)) == n
            assert set(chosen) <= set(self.model)

        @invariant()
        def matches_the_model(self) -> None:
            self.sharder._check()
            assert self.sharder.nodes == tuple(self.model)
            for node, weight in self.model.items():
                assert self.sharder.weight_of(node) == weight

    SharderMachine.TestCase.settings = settings(
        max_examples=25, stateful_step_count=20, deadline=None
    )
    return SharderMachine
