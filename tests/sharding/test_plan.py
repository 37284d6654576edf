"""Plans and placements in serialised form, with epochs: how a fleet learns a plan."""

from __future__ import annotations

import json
from typing import Any

import pytest

from scalekit.errors import ConfigurationError, ScalekitError
from scalekit.hashing import make_murmur3_64
from scalekit.sharding import (
    HashRing,
    JumpHash,
    KetamaRing,
    MaglevHash,
    RendezvousHash,
    ReshardPlan,
    ShardingScheme,
    SlotMap,
)

KEYS = [f"key:{i}" for i in range(2000)] + ["\ud800", "café"]

SCHEMES: list[Any] = [
    lambda nodes: HashRing(nodes, vnodes=32),
    lambda nodes: HashRing(nodes, weight_unit=2),
    KetamaRing,
    lambda nodes: SlotMap(nodes, slots=997),
    SlotMap.redis_cluster,
    JumpHash,
    RendezvousHash,
    lambda nodes: MaglevHash(nodes, table_size=251),
]


@pytest.mark.parametrize("make", SCHEMES)
def test_a_placement_and_a_plan_survive_json(make: Any) -> None:
    sharder = make([f"n{i}" for i in range(5)] + ["\udcffodd"])
    sharder.add("n9")  # history: a slot map's table depends on it
    assert sharder.epoch == 1
    clone = ShardingScheme.from_dict(json.loads(json.dumps(sharder.to_dict())))
    assert type(clone) is type(sharder)
    assert clone.nodes == sharder.nodes
    assert clone.epoch == 1
    assert [clone.node_for(k) for k in KEYS] == [sharder.node_for(k) for k in KEYS]
    clone._check()

    plan = sharder.plan_add("new")
    assert plan.epoch == 2
    text = plan.to_json()
    text.encode("ascii")  # a lone surrogate in a name is escaped
    again = ReshardPlan.from_json(text)
    assert again.epoch == 2
    assert [again.move_for(k) for k in KEYS] == [plan.move_for(k) for k in KEYS]
    assert again.moves == plan.moves
    sharder.add("new")
    assert sharder.epoch == plan.epoch  # the change has the epoch its plan announced
    assert [again.after.node_for(k) for k in KEYS] == [sharder.node_for(k) for k in KEYS]


def test_epochs_count_changes() -> None:
    ring = HashRing(["a", "b"])
    assert ring.epoch == 0
    assert ring.plan_remove("b").epoch == 1
    assert ring.plan_weight("a", 2).epoch == 1
    ring.set_weight("a", 2)
    ring.add("c")
    ring.remove("b")
    assert ring.epoch == 3
    assert ring.copy().epoch == 3
    with pytest.raises(ScalekitError):
        ring.add("c")  # refused: the epoch does not move
    assert ring.epoch == 3


def test_what_cannot_be_written_out_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="custom hash"):
        HashRing(["a"], hash=make_murmur3_64(3)).to_dict()
    with pytest.raises(ConfigurationError, match="custom hash"):
        SlotMap(["a"], hash=make_murmur3_64(3)).to_dict()
    with pytest.raises(ConfigurationError, match="str and int"):
        HashRing([("host", 1)]).to_dict()


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[]",
        "{}",
        '{"format": "other"}',
        '{"format": "scalekit.reshard-plan/1"}',
        '{"format": "scalekit.reshard-plan/1", "epoch": 1, "before": 1, "after": 2}',
        '{"format": "scalekit.reshard-plan/1", "epoch": 1, "before": {"scheme": "Nope"},'
        ' "after": {"scheme": "Nope"}}',
    ],
)
def test_a_text_that_is_not_a_plan_is_refused(text: str) -> None:
    with pytest.raises(ScalekitError):
        ReshardPlan.from_json(text)


def test_a_tampered_plan_is_refused() -> None:
    spec = HashRing(["a", "b"]).plan_add("c").to_dict()
    spec["epoch"] = 7
    with pytest.raises(ConfigurationError, match="epoch"):
        ReshardPlan.from_dict(spec)
    spec = SlotMap(["a", "b"], slots=64).plan_add("c").to_dict()
    spec["after"]["runs"][1][1] = 99
    with pytest.raises(ConfigurationError, match="node index"):
        ReshardPlan.from_dict(spec)
    spec["after"]["runs"] = [[0, 0], [70, 1]]
    with pytest.raises(ConfigurationError, match="cover"):
        ReshardPlan.from_dict(spec)
    spec = HashRing(["a", "b"]).plan_add("c").to_dict()
    spec["after"]["epoch"] = -1
    with pytest.raises(ConfigurationError):
        ReshardPlan.from_dict(spec)
