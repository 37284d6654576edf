"""ShardedStore.reshard: stopped and resumed, reported on, and followed by another
store that only routes by the plan."""

from __future__ import annotations

import io
from typing import Any

import pytest

from scalekit.cache import LRUCache
from scalekit.errors import ConfigurationError
from scalekit.sharding import MigrationProgress, RendezvousHash, ReshardPlan, ShardedStore
from scalekit.sharding._progress import progress_bar


def _fleet() -> tuple[dict[str, LRUCache[str, Any]], ShardedStore[str]]:
    shards = {n: LRUCache(10_000) for n in ("a", "b", "c", "d")}
    store = ShardedStore(RendezvousHash(["a", "b", "c"]), {n: shards[n] for n in "abc"})
    store.set_many({f"k{i}": i for i in range(3000)})
    return shards, store


def test_a_stopped_reshard_resumes_and_loses_nothing() -> None:
    shards, store = _fleet()
    plan = store.sharder.plan_add("d")  # type: ignore[attr-defined]
    reports: list[MigrationProgress] = []

    def stop_after_two(report: MigrationProgress) -> None:
        reports.append(report)
        if len(reports) == 2:
            store.stop()

    first = store.reshard(plan, {"d": shards["d"]}, batch_size=200, progress=stop_after_two)
    assert not first.done
    assert store.sharder.nodes == ("a", "b", "c")  # still routing by the plan
    store.set("k1", "written meanwhile")
    assert store.get_many([f"k{i}" for i in range(3000)]) == {
        f"k{i}": "written meanwhile" if i == 1 else i for i in range(3000)
    }
    second = store.reshard(plan)  # the same plan: resumes
    assert second.done
    assert second.examined == 3000
    assert store.sharder.nodes == ("a", "b", "c", "d")
    assert sum(len(s) for s in shards.values()) == 3000  # nothing left behind
    for key in (f"k{i}" for i in range(3000)):
        owner = store.sharder.node_for(key)
        assert key in shards[owner]


def test_a_follower_routes_by_the_plan_while_another_moves_keys() -> None:
    shards, mover = _fleet()
    follower = ShardedStore(RendezvousHash(["a", "b", "c"]), {n: shards[n] for n in "abc"})
    plan = mover.sharder.plan_add("d")  # type: ignore[attr-defined]
    published = plan.to_json()
    follower.follow(ReshardPlan.from_json(published), {"d": shards["d"]})
    mover.follow(plan, {"d": shards["d"]})
    stopped: list[bool] = []

    def stop_once(report: MigrationProgress) -> None:
        if report.examined >= 1500 and not stopped:
            stopped.append(True)
            mover.stop()

    half = mover.reshard(plan, batch_size=500, progress=stop_once)
    assert not half.done
    moving = [k for k in (f"k{i}" for i in range(3000)) if plan.move_for(k)]
    for key in moving[:50]:
        follower.set(key, -1)  # writes land at the new owner
    assert all(follower.get(k) == -1 for k in moving[:50])
    assert mover.reshard(plan).done
    follower.complete(ReshardPlan.from_json(published))
    assert all(mover.get(k) == -1 for k in moving[:50])
    assert follower.get_many([f"k{i}" for i in range(3000)]) == mover.get_many(
        [f"k{i}" for i in range(3000)]
    )


def test_progress_is_plain_text_without_rich_or_tqdm(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_bars(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith(("rich", "tqdm")):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_bars)
    out = io.StringIO()
    show = progress_bar("resharding", stream=out, every=0.0)
    show(MigrationProgress(examined=500, moved=120, sources_done=1, sources=3, total=3000))
    show(MigrationProgress(examined=3000, moved=700, sources_done=3, sources=3, total=3000))
    assert out.getvalue().splitlines() == [
        "resharding: 500/3,000 keys examined (17%), 120 moved",
        "resharding: 3,000/3,000 keys examined (100%), 700 moved, done",
    ]


def test_cluster_progress_is_the_same_bar_counted_in_slots(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    from scalekit.sharding._cluster import ClusterReshardProgress, _progress_callback

    real_import = builtins.__import__

    def no_bars(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith(("rich", "tqdm")):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_bars)
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    show = _progress_callback(True)
    assert show is not None
    show(ClusterReshardProgress(slots_done=4096, slots_total=4096, keys_moved=1234))
    assert err.getvalue().splitlines() == [
        "resharding: 4,096/4,096 slots examined (100%), 1,234 keys moved, done"
    ]


def test_a_store_that_cannot_list_its_keys_is_refused() -> None:
    class Opaque:
        def get(self, key: str, default: Any = None) -> Any:
            return default

        def set(self, key: str, value: Any, *, ttl: Any = None) -> None: ...

        def add(self, key: str, value: Any, *, ttl: Any = None) -> bool:
            return True

        def delete(self, key: str) -> bool:
            return False

        def ttl_of(self, key: str) -> Any:
            raise KeyError(key)

        def get_many(self, keys: Any) -> dict[str, Any]:
            return {}

        def set_many(self, items: Any, *, ttl: Any = None) -> None: ...

    stores = {n: Opaque() for n in "abcd"}
    store = ShardedStore(RendezvousHash(["a", "b", "c"]), {n: stores[n] for n in "abc"})
    with pytest.raises(ConfigurationError, match="cannot list its keys"):
        store.reshard(store.sharder.plan_add("d"), {"d": stores["d"]})  # type: ignore[attr-defined]
