"""The contract every scalekit session store meets (sync and async).

Subclass :class:`SessionStoreContract` in a test module that provides a ``stores``
fixture: a :class:`StoreEnv` whose ``make(**settings)`` builds a store on a fresh,
empty backend with ``env.clock`` (a FakeClock) as its clock. See
tests/sessions/test_contract.py. :class:`AsyncSessionStoreContract` does the same
for async stores (``astores``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from scalekit.errors import SessionConflict, SessionTooLarge
from scalekit.sessions import Session
from scalekit.testing import FakeClock

__all__ = ["AsyncSessionStoreContract", "SessionStoreContract", "StoreEnv"]

MALFORMED = [
    "",
    "x",
    "../../etc/passwd",
    "a" * 42,
    "a" * 44,
    "a" * 42 + "!",
    "a" * 42 + "=",
    " " + "a" * 42,
    None,
    123,
    b"a" * 43,
]


@dataclass
class StoreEnv:
    """Builds stores of one backend; every store shares ``clock``."""

    make: Callable[..., Any]
    clock: FakeClock


class SessionStoreContract:
    """Every test, run once per sync store by the ``stores`` fixture."""

    def test_create_stores_at_once(self, stores: StoreEnv) -> None:
        store = stores.make()
        session = store.create({"user": 7, "roles": ["admin"]})
        assert isinstance(session, Session)
        assert len(session.id) == 43
        assert session.version == 1
        loaded = store.load(session.id)
        assert loaded is not None
        assert loaded.to_dict() == {"user": 7, "roles": ["admin"]}
        assert (loaded.version, loaded.created_at) == (1, session.created_at)
        assert not loaded.modified

    def test_ids_are_random_and_unique(self, stores: StoreEnv) -> None:
        store = stores.make()
        ids = {store.create().id for _ in range(200)}
        assert len(ids) == 200
        assert all(len(i) == 43 and i.isascii() for i in ids)

    @pytest.mark.parametrize("bad", MALFORMED)
    def test_unknown_or_malformed_ids_load_as_none(self, stores: StoreEnv, bad: Any) -> None:
        store = stores.make()
        kept = store.create({"k": "v"})
        assert store.load(bad) is None
        assert store.load("A" * 43) is None  # well formed, unknown
        assert store.touch(bad) is False
        store.delete(bad)  # a no-op
        loaded = store.load(kept.id)
        assert loaded is not None
        assert loaded.to_dict() == {"k": "v"}

    def test_save_stores_changes_and_bumps_the_version(self, stores: StoreEnv) -> None:
        store = stores.make()
        session = store.create({"a": 1})
        session["b"] = {"nested": [1, 2]}
        del session["a"]
        store.save(session)
        assert session.version == 2
        loaded = store.load(session.id)
        assert loaded is not None
        assert loaded.to_dict() == {"b": {"nested": [1, 2]}}
        assert loaded.version == 2

    def test_nested_changes_are_seen(self, stores: StoreEnv) -> None:
        store = stores.make()
        session = store.create({"cart": [1]})
        loaded = store.load(session.id)
        assert loaded is not None
        loaded["cart"].append(2)
        assert loaded.modified
        store.save(loaded)
        again = store.load(session.id)
        assert again is not None
        assert again["cart"] == [1, 2]

    def test_an_unchanged_save_only_touches(self, stores: StoreEnv) -> None:
        store = stores.make(idle_timeout=100, absolute_timeout=None)
        session = store.create({"a": 1})
        stores.clock.advance(60)
        loaded = store.load(session.id)
        assert loaded is not None
        store.save(loaded)
        stores.clock.advance(60)  # 120 s after creation, 60 s after the touch
        again = store.load(session.id)
        assert again is not None
        assert again.version == 1

    def test_concurrent_saves_of_different_keys_merge(self, stores: StoreEnv) -> None:
        store = stores.make()
        session = store.create({"shared": 0, "gone": 1, "kept": 1})
        first, second = store.load(session.id), store.load(session.id)
        assert first is not None
        assert second is not None
        first["cart"] = ["book"]
        first["shared"] = 1
        second["theme"] = "dark"
        del second["gone"]
        store.save(first)
        store.save(second)  # saved meanwhile: merged, not overwritten
        loaded = store.load(session.id)
        assert loaded is not None
        assert loaded.to_dict() == {"shared": 1, "cart": ["book"], "theme": "dark", "kept": 1}
        assert loaded.version == 3
        assert second.version == 3
        assert second.to_dict() == loaded.to_dict()

    def test_concurrent_changes_of_one_key_conflict(self, stores: StoreEnv) -> None:
        store = stores.make()
        session = store.create({"count": 0})
        first, second = store.load(session.id), store.load(session.id)
        assert first is not None
        assert second is not None
        first["count"] = 1
        second["count"] = 2
        store.save(first)
        with pytest.raises(SessionConflict) as raised:
            store.save(second)
        assert raised.value.key == "count"
        loaded = store.load(session.id)
        assert loaded is not None
        assert loaded.to_dict() == {"count": 1}

    def test_the_same_change_twice_does_not_conflict(self, stores: StoreEnv) -> None:
        store = stores.make()
        session = store.create({})
        first, second = store.load(session.id), store.load(session.id)
        assert first is not None
        assert second is not None
        first["flag"] = True
        second["flag"] = True
        store.save(first)
        store.save(second)
        loaded = store.load(session.id)
        assert loaded is not None
        assert loaded.to_dict() == {"flag": True}

    def test_deleting_a_key_another_request_changed_conflicts(self, stores: StoreEnv) -> None:
        store = stores.make()
        session = store.create({"token": "a"})
        first, second = store.load(session.id), store.load(session.id)
        assert first is not None
        assert second is not None
        first["token"] = "b"
        del second["token"]
        store.save(first)
        with pytest.raises(SessionConflict):
            store.save(second)

    def test_saving_a_deleted_session_conflicts(self, stores: StoreEnv) -> None:
        store = stores.make()
        session = store.create({"a": 1})
        loaded = store.load(session.id)
        assert loaded is not None
        store.delete(session.id)
        loaded["a"] = 2
        with pytest.raises(SessionConflict):
            store.save(loaded)
        assert store.load(session.id) is None  # not resurrected

    def test_values_must_be_json(self, stores: StoreEnv) -> None:
        store = stores.make()
        session = store.create({})
        with pytest.raises(TypeError):
            session["when"] = object()
        with pytest.raises(TypeError):
            session[1] = "x"  # type: ignore[index]
        with pytest.raises(TypeError):
            store.create({"x": {1, 2}})

    def test_too_large_is_refused_and_stores_nothing(self, stores: StoreEnv) -> None:
        store = stores.make(max_bytes=1024)
        with pytest.raises(SessionTooLarge):
            store.create({"blob": "x" * 2000})
        session = store.create({"small": 1})
        session["blob"] = "x" * 2000
        with pytest.raises(SessionTooLarge):
            store.save(session)
        loaded = store.load(session.id)
        assert loaded is not None
        assert loaded.to_dict() == {"small": 1}
        with pytest.raises(ValueError):  # SessionTooLarge is a ValueError too
            store.create({"blob": "y" * 2000})

    def test_idle_timeout_slides_and_absolute_caps(self, stores: StoreEnv) -> None:
        store = stores.make(idle_timeout=100, absolute_timeout=250)
        session = store.create({"a": 1})
        stores.clock.advance(90)
        assert store.touch(session.id)
        stores.clock.advance(90)  # 180 s old, 90 s idle: alive
        loaded = store.load(session.id)
        assert loaded is not None
        loaded["b"] = 2
        store.save(loaded)  # a save slides the idle timeout too
        stores.clock.advance(60)  # 240 s old
        assert store.load(session.id) is not None
        assert store.touch(session.id)
        stores.clock.advance(20)  # 260 s old: past the absolute timeout
        assert store.load(session.id) is None
        assert store.touch(session.id) is False

    def test_an_idle_session_expires(self, stores: StoreEnv) -> None:
        store = stores.make(idle_timeout=100, absolute_timeout=None)
        session = store.create({"a": 1})
        stores.clock.advance(101)
        assert store.load(session.id) is None
        assert store.touch(session.id) is False
        assert store.purge_expired() >= 0
        assert store.load(session.id) is None

    def test_purge_expired_deletes_only_expired(self, stores: StoreEnv) -> None:
        store = stores.make(idle_timeout=100, absolute_timeout=None)
        old = store.create({"old": 1})
        stores.clock.advance(60)
        fresh = store.create({"fresh": 1})
        stores.clock.advance(60)
        purged = store.purge_expired()
        assert purged in (0, 1)  # 0: the backend expires keys itself
        assert store.load(old.id) is None
        assert store.load(fresh.id) is not None

    def test_delete(self, stores: StoreEnv) -> None:
        store = stores.make()
        session = store.create({"a": 1})
        store.delete(session.id)
        assert store.load(session.id) is None
        store.delete(session.id)  # twice: a no-op

    def test_rotate_moves_the_session_to_a_new_id(self, stores: StoreEnv) -> None:
        store = stores.make()
        session = store.create({"cart": ["book"]})
        old_id = session.id
        loaded = store.load(old_id)
        assert loaded is not None
        loaded["user"] = "ada"  # logged in: rotate
        rotated = store.rotate(loaded)
        assert rotated.id != old_id
        assert loaded.id == rotated.id
        assert store.load(old_id) is None  # session fixation: the old id is dead
        again = store.load(rotated.id)
        assert again is not None
        assert again.to_dict() == {"cart": ["book"], "user": "ada"}
        assert again.created_at == session.created_at

    def test_rotate_after_a_concurrent_save_conflicts(self, stores: StoreEnv) -> None:
        store = stores.make()
        session = store.create({"a": 1})
        first, second = store.load(session.id), store.load(session.id)
        assert first is not None
        assert second is not None
        first["a"] = 2
        store.save(first)
        with pytest.raises(SessionConflict):
            store.rotate(second)
        loaded = store.load(session.id)
        assert loaded is not None
        assert loaded["a"] == 2

    def test_a_blank_session_is_stored_only_with_data(self, stores: StoreEnv) -> None:
        store = stores.make()
        blank = store.blank()
        store.save(blank)
        assert store.load(blank.id) is None  # nothing to store
        blank["visits"] = 1
        store.save(blank)
        loaded = store.load(blank.id)
        assert loaded is not None
        assert loaded.to_dict() == {"visits": 1}
        assert loaded.version == 1

    def test_threads_lose_no_update(self, stores: StoreEnv) -> None:
        """8 threads each increment their own key 25 times in one session."""
        store = stores.make()
        session = store.create({})
        threads_n, rounds = 8, 25
        errors: list[BaseException] = []

        def worker(n: int) -> None:
            try:
                for _ in range(rounds):
                    loaded = store.load(session.id)
                    assert loaded is not None
                    loaded[f"t{n}"] = loaded.get(f"t{n}", 0) + 1
                    store.save(loaded)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(threads_n)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == []
        loaded = store.load(session.id)
        assert loaded is not None
        assert loaded.to_dict() == {f"t{n}": rounds for n in range(threads_n)}


class AsyncSessionStoreContract:
    """The async stores, once per store by the ``astores`` fixture."""

    def test_round_trip(self, astores: StoreEnv) -> None:
        async def main() -> None:
            store = astores.make(idle_timeout=100, absolute_timeout=None)
            session = await store.create({"a": 1})
            loaded = await store.load(session.id)
            assert loaded is not None
            assert loaded.to_dict() == {"a": 1}
            loaded["b"] = 2
            await store.save(loaded)
            first, second = await store.load(session.id), await store.load(session.id)
            assert first is not None
            assert second is not None
            first["x"] = 1
            second["y"] = 1
            await store.save(first)
            await store.save(second)
            merged = await store.load(session.id)
            assert merged is not None
            assert merged.to_dict() == {"a": 1, "b": 2, "x": 1, "y": 1}
            first["a"] = 5
            second["a"] = 6
            await store.save(first)
            with pytest.raises(SessionConflict):
                await store.save(second)
            with pytest.raises(SessionConflict):  # merged was loaded before first's save
                await store.rotate(merged)
            current = await store.load(session.id)
            assert current is not None
            rotated = await store.rotate(current)
            assert await store.load(session.id) is None
            assert await store.load(rotated.id) is not None
            for bad in MALFORMED:
                assert await store.load(bad) is None
            astores.clock.advance(50)
            assert await store.touch(rotated.id)
            astores.clock.advance(99)
            assert await store.load(rotated.id) is not None
            astores.clock.advance(2)
            assert await store.load(rotated.id) is None
            assert await store.purge_expired() >= 0
            await store.delete(rotated.id)
            blank = store.blank()
            blank["v"] = 1
            await store.save(blank)
            assert await store.load(blank.id) is not None

        asyncio.run(main())

    def test_tasks_lose_no_update(self, astores: StoreEnv) -> None:
        async def main() -> dict[str, Any]:
            store = astores.make()
            session = await store.create({})

            async def worker(n: int) -> None:
                for _ in range(10):
                    loaded = await store.load(session.id)
                    assert loaded is not None
                    loaded[f"t{n}"] = loaded.get(f"t{n}", 0) + 1
                    await store.save(loaded)

            await asyncio.gather(*(worker(n) for n in range(8)))
            loaded = await store.load(session.id)
            assert loaded is not None
            return loaded.to_dict()

        assert asyncio.run(main()) == {f"t{n}": 10 for n in range(8)}
