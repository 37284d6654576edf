"""Migration: several threads stepping one Migration, and a batch failing meanwhile."""

from __future__ import annotations

import threading
from collections.abc import Iterator, MutableMapping
from typing import Any

import pytest

from scalekit.sharding import HashRing, Migration


class GatedStore(MutableMapping[str, Any]):
    """A dict whose first write waits for ``gate`` and then raises if ``fail``."""

    def __init__(self, gate: threading.Event, entered: threading.Event, fail: bool) -> None:
        self.data: dict[str, Any] = {}
        self.gate, self.entered, self.fail = gate, entered, fail
        self.armed = True

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        if self.armed:
            self.armed = False
            self.entered.set()
            assert self.gate.wait(10)
            if self.fail:
                raise OSError("the target went away")
        self.data[key] = value

    def __delitem__(self, key: str) -> None:
        del self.data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self.data))

    def __len__(self) -> int:
        return len(self.data)


def _one_source_migration(fail: bool) -> tuple[Migration[str], dict[str, Any], GatedStore, Any]:
    before = HashRing(["a"])
    plan = before.plan_add("b")
    gate, entered = threading.Event(), threading.Event()
    target = GatedStore(gate, entered, fail)
    moving = [k for k in (f"k{i}" for i in range(400)) if plan.move_for(k) is not None][:10]
    source: dict[str, Any] = {key: key for key in moving}
    stores: dict[str, Any] = {"a": source, "b": target}
    migration = Migration(plan, stores, batch_size=len(moving))
    return migration, source, target, (gate, entered, moving)


@pytest.mark.parametrize("fail", [False, True])
def test_a_source_is_not_done_while_another_thread_moves_its_last_batch(fail: bool) -> None:
    migration, source, target, (gate, entered, moving) = _one_source_migration(fail)
    errors: list[BaseException] = []

    def first() -> None:
        try:
            migration.step()
        except OSError as exc:
            errors.append(exc)

    mover = threading.Thread(target=first)
    mover.start()
    assert entered.wait(10)
    # Another thread steps while the only batch is being moved: nothing is left
    # to take, but the source is not done until that batch is.
    try:
        report = migration.step()
        done_meanwhile = migration.done
    finally:
        gate.set()
        mover.join(10)
    assert not report.done
    assert not done_meanwhile
    assert errors if fail else not errors
    report = migration.run()
    assert report.done
    assert migration.done
    assert report.sources_done == report.sources == 1
    assert not any(key in source for key in moving)
    assert all(target.data[key] == key for key in moving)


def test_threads_running_one_migration_finish_with_every_key_moved() -> None:
    before = HashRing(["a", "b"])
    plan = before.plan_add("c")
    stores: dict[str, dict[str, int]] = {"a": {}, "b": {}, "c": {}}
    for i in range(3000):
        stores[before.node_for(f"k{i}")][f"k{i}"] = i
    migration = Migration(plan, stores, batch_size=7)
    reports = []
    threads = [threading.Thread(target=lambda: reports.append(migration.run())) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert all(report.done for report in reports)
    assert len(reports) == 4
    final = migration.progress()
    assert final.sources_done == final.sources
    assert final.examined == final.total
    for i in range(3000):
        assert stores[plan.after.node_for(f"k{i}")][f"k{i}"] == i
