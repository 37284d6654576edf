"""cached over a shared Store when the store or the caller fails mid-flow: the
lease is dropped at once (not left to expire), callers get a value or an error,
and a lease shorter than the computation never stores an older result over a
newer one."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from scalekit.cache import cached
from scalekit.errors import BackendError

LEASE = 5.0  # a caller that waited for it to expire would take 5 s


class MemoryStore:
    """A minimal sync Store (not a mapping), with failures to switch on."""

    def __init__(self) -> None:
        self.items: dict[str, tuple[Any, float | None]] = {}
        self.lock = threading.Lock()
        self.fail_set = False
        self.failing: set[int] = set()  # threads whose sets fail
        self.add_delay = 0.0
        self.sets: list[tuple[str, Any]] = []

    def _live(self, key: str) -> tuple[Any, float | None] | None:
        item = self.items.get(key)
        if item is not None and item[1] is not None and item[1] <= time.monotonic():
            del self.items[key]
            return None
        return item

    def get(self, key: str, default: Any = None) -> Any:
        with self.lock:
            item = self._live(key)
        return default if item is None else item[0]

    def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        failing = self.fail_set or threading.get_ident() in self.failing
        if failing and not key.endswith("#lease"):
            raise BackendError("the store is down", backend="test")
        with self.lock:
            self.sets.append((key, value))
            self.items[key] = (value, None if ttl is None else time.monotonic() + ttl)

    def add(self, key: str, value: Any, ttl: float | None = None) -> bool:
        time.sleep(self.add_delay)
        with self.lock:
            if self._live(key) is not None:
                return False
            self.items[key] = (value, None if ttl is None else time.monotonic() + ttl)
            return True

    def delete(self, key: str) -> bool:
        with self.lock:
            return self.items.pop(key, None) is not None

    def holds(self, key: str) -> bool:
        with self.lock:
            return self._live(key) is not None


def test_a_failed_store_of_the_result_drops_the_lease_and_raises() -> None:
    store = MemoryStore()

    @cached(store, lease=LEASE)
    def double(n: int) -> int:
        return 2 * n

    store.fail_set = True
    with pytest.raises(BackendError):
        double(1)
    assert not store.holds(double.cache_key(1) + "#lease")  # type: ignore[attr-defined]
    store.fail_set = False
    assert double(1) == 2


def test_a_result_the_store_refuses_drops_the_lease() -> None:
    store = MemoryStore()

    def refusing(key: str, value: Any, ttl: float | None = None) -> None:
        if isinstance(value, set):
            raise TypeError("not JSON")
        MemoryStore.set(store, key, value, ttl)

    store.set = refusing  # type: ignore[method-assign]

    @cached(store, lease=LEASE)
    def letters(word: str) -> set[str]:
        return set(word)

    with pytest.raises(TypeError):
        letters("ab")
    assert not store.holds(letters.cache_key("ab") + "#lease")  # type: ignore[attr-defined]


def test_another_process_takes_over_at_once_when_the_leader_fails_to_store() -> None:
    store = MemoryStore()
    started, calls = threading.Event(), []

    def slow(n: int) -> int:
        calls.append(n)
        started.set()
        time.sleep(0.1)
        return n

    leader = cached(store, lease=LEASE)(slow)  # two decorators: two processes' memos
    follower = cached(store, lease=LEASE)(slow)
    errors: list[BaseException] = []

    def lead() -> None:
        store.failing.add(threading.get_ident())
        try:
            leader(1)
        except BackendError as exc:
            errors.append(exc)

    thread = threading.Thread(target=lead)
    thread.start()
    assert started.wait(5)
    began = time.monotonic()
    assert follower(1) == 1  # it waited for the leader's lease, then took over
    assert time.monotonic() - began < LEASE / 2  # not until the lease expired
    thread.join(5)
    assert len(errors) == 1
    assert calls == [1, 1]


def test_a_leader_cancelled_while_taking_the_lease_drops_it() -> None:
    store = MemoryStore()
    store.add_delay = 0.2  # the add is on a worker thread when the task is cancelled

    @cached(store, lease=LEASE)
    async def double(n: int) -> int:
        return 2 * n

    async def main() -> None:
        task = asyncio.create_task(double(1))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.3)  # the add on the worker thread is over by now
        assert not store.holds(double.cache_key(1) + "#lease")  # type: ignore[attr-defined]
        store.add_delay = 0.0
        assert await asyncio.wait_for(double(1), 1) == 2

    asyncio.run(main())


def test_a_lease_shorter_than_the_computation_keeps_the_newer_result() -> None:
    store = MemoryStore()
    versions = iter(["first", "second"])
    first_started = threading.Event()

    def compute(n: int) -> str:
        version = next(versions)
        if version == "first":
            first_started.set()
            time.sleep(0.4)  # outlives its 0.1 s lease
        return version

    one = cached(store, lease=0.1)(compute)
    two = cached(store, lease=0.1)(compute)
    got: list[str] = []
    thread = threading.Thread(target=lambda: got.append(one(1)))
    thread.start()
    assert first_started.wait(5)
    time.sleep(0.15)  # the first lease expired: the second caller takes a new one
    assert two(1) == "second"
    thread.join(5)
    assert got == ["first"]
    assert store.get(one.cache_key(1)) == "second"  # type: ignore[attr-defined]
    assert [value for key, value in store.sets if not key.endswith("#lease")] == ["second"]
