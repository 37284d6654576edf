"""``scalekit demo``: the building blocks at work, in a few seconds of output."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


def _section(title: str, out: Callable[[str], None]) -> None:
    out("")
    out(f"== {title} ==")


def demo_cache(out: Callable[[str], None] = print) -> None:
    """A memoized "database query" with a TTL, stampede protection and stats."""
    from scalekit.cache import LFUCache, TTLCache, cached
    from scalekit.testing import FakeClock

    _section("scalekit.cache: a query cache in front of a slow database", out)
    clock = FakeClock()
    queries: list[int] = []

    def slow_database(user_id: int) -> dict[str, object]:
        queries.append(user_id)
        time.sleep(0.05)  # the round trip we want to avoid
        return {"id": user_id, "name": f"user{user_id}"}

    cache: TTLCache[object, dict[str, object]] = TTLCache(
        maxsize=1_000, ttl=30, timer=clock, stats=True
    )

    @cached(cache)
    def load_user(user_id: int) -> dict[str, object]:
        return slow_database(user_id)

    started = time.perf_counter()
    load_user(42)
    first = time.perf_counter() - started
    started = time.perf_counter()
    load_user(42)
    second = time.perf_counter() - started
    out(f"first call {first * 1000:.1f} ms (database), second {second * 1e6:.0f} us (cache)")

    threads = [threading.Thread(target=load_user, args=(7,)) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    out(f"50 threads asked for user 7 at once: the database saw {queries.count(7)} query")

    clock.advance(30)
    load_user(42)
    out(f"after the 30 s TTL, user 42 was read again: {queries.count(42)} queries in all")
    info = load_user.cache_info()  # type: ignore[attr-defined]
    out(
        f"load_user: {info.hits} calls served without the database, {info.misses} with it; "
        f"{cache.stats().expirations} entries expired"
    )

    _section("eviction policies and the removal listener", out)
    evicted: list[str] = []
    lfu: LFUCache[str, int] = LFUCache(
        maxsize=2, on_evict=lambda key, value, cause: evicted.append(f"{key} ({cause})")
    )
    lfu["home"] = 1
    lfu["about"] = 2
    for _ in range(3):
        lfu["home"]
    lfu["pricing"] = 3
    out(f"LFU kept {sorted(lfu)}; evicted {evicted}: the page read least")


def run(out: Callable[[str], None] = print) -> int:
    """Run every demo; return the exit status."""
    demo_cache(out)
    return 0
