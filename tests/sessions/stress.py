"""The lost-update proof, shared by every store: 32 workers each increment their
own key of one session, 3,000 increments in all, and every one must be there.

A save merges onto every newer version it finds; when it loses too many races in
a row it gives up with SessionConflict (``key`` None) and stores nothing, and the
worker repeats the request, as a client would. Nothing is ever lost silently.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from scalekit.errors import SessionConflict
from scalekit.sessions import Session

WORKERS = 32
INCREMENTS = 3_000


def shares(total: int = INCREMENTS, workers: int = WORKERS) -> list[int]:
    """``total`` split over ``workers`` as evenly as it goes."""
    return [total // workers + (1 if n < total % workers else 0) for n in range(workers)]


def hammer(store: Any) -> tuple[Session, list[str | None]]:
    """Run the workers on threads; return the final session and the give-ups' keys."""
    session = store.create({})
    counts = shares()
    gave_up: list[str | None] = []
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        key = f"t{n}"
        try:
            for _ in range(counts[n]):
                while True:
                    loaded = store.load(session.id)
                    assert loaded is not None
                    loaded[key] = loaded.get(key, 0) + 1
                    try:
                        store.save(loaded)
                        break
                    except SessionConflict as exc:
                        gave_up.append(exc.key)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert errors == []
    final = store.load(session.id)
    assert final is not None
    return final, gave_up


async def hammer_async(store: Any) -> tuple[Session, list[str | None]]:
    """:func:`hammer` with asyncio tasks on an async store."""
    session = await store.create({})
    counts = shares()
    gave_up: list[str | None] = []

    async def worker(n: int) -> None:
        key = f"t{n}"
        for _ in range(counts[n]):
            while True:
                loaded = await store.load(session.id)
                assert loaded is not None
                loaded[key] = loaded.get(key, 0) + 1
                try:
                    await store.save(loaded)
                    break
                except SessionConflict as exc:
                    gave_up.append(exc.key)

    await asyncio.gather(*(worker(n) for n in range(WORKERS)))
    final = await store.load(session.id)
    assert final is not None
    return final, gave_up


def check(final: Session, gave_up: list[str | None]) -> None:
    """Every increment is in the final data, one version per increment, and every
    give-up was a run of lost races, never a clash of keys."""
    counts = shares()
    assert set(gave_up) <= {None}
    assert final.to_dict() == {f"t{n}": counts[n] for n in range(WORKERS)}
    assert final.version == INCREMENTS + 1
