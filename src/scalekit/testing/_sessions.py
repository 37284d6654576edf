"""The session store contract: run it on your own store.

:func:`check_session_store` runs every check on a :class:`~scalekit.sessions.SessionStore`,
:func:`check_async_session_store` the same checks on an
:class:`~scalekit.sessions.AsyncSessionStore`. Each check makes its stores with
``factory(**settings)``: a new store on an empty backend, built with those
settings (always ``clock=``, a :class:`~scalekit.testing.FakeClock`; sometimes
``idle_timeout``, ``absolute_timeout``, ``max_bytes`` or ``policies``, some of
them hostile: the store must refuse those). A failed check raises
``AssertionError`` naming the check::

    from scalekit.testing import check_session_store

    def test_my_store():
        check_session_store(lambda **settings: MyStore(my_backend(), **settings))

The checks are written once, as coroutines: a sync store's calls are wrapped so
that they never suspend, and its concurrency check runs on threads, an async
store's on tasks. Nothing here imports a test framework.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any

from scalekit.errors import (
    ArgumentTypeError,
    ConfigurationError,
    ScalekitError,
    SessionConflict,
    SessionTooLarge,
)
from scalekit.testing._clock import FakeClock
from scalekit.testing._coroutines import Awaited, drive
from scalekit.testing._coroutines import expect as _expect
from scalekit.testing._coroutines import raises as _raises

__all__ = ["SESSION_STORE_CHECKS", "check_async_session_store", "check_session_store"]

START = 1_700_000_000.0

MALFORMED: tuple[Any, ...] = (
    "",
    "x",
    "../../etc/passwd",
    "a" * 42,
    "a" * 44,
    "a" * 42 + "!",
    "a" * 42 + "=",
    " " + "a" * 42,
    "\ud800" * 43,
)
"""Ids that are not of the shape a store makes: they load as None, touch as False,
delete as a no-op."""

NOT_IDS: tuple[Any, ...] = (None, 123, b"a" * 43, ["a" * 43], 1.5)
"""Values that are not even a str: ``ArgumentTypeError`` naming ``session_id``."""

_STORE_METHODS = frozenset(("create", "load", "save", "delete", "touch", "rotate", "purge_expired"))


class _Env:
    """What a check gets: stores, the clock they share, and a way to run workers
    at once."""

    def __init__(self, factory: Callable[..., Any], asynchronous: bool) -> None:
        self.clock = FakeClock(START)
        self._factory = factory
        self._asynchronous = asynchronous

    def make(self, **settings: Any) -> Any:
        """A new store with these settings (and the clock), awaitable either way."""
        store = self._factory(clock=self.clock, **settings)
        return store if self._asynchronous else Awaited(store, _STORE_METHODS)

    def refuses(self, **settings: Any) -> ScalekitError:
        """The error a store made with these (bad) settings raises."""
        try:
            self._factory(clock=self.clock, **settings)
        except (ArgumentTypeError, ConfigurationError) as exc:
            return exc
        raise AssertionError(f"a store was made with {settings!r}")

    async def gather(self, workers: Iterable[Coroutine[Any, Any, None]]) -> None:
        """Run the workers at once: tasks for an async store, threads for a sync one."""
        if self._asynchronous:
            import asyncio  # here: importing scalekit.testing must not import asyncio

            await asyncio.gather(*workers)
            return
        errors: list[BaseException] = []

        def run(worker: Coroutine[Any, Any, None]) -> None:
            try:
                drive(worker)
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(worker,)) for worker in workers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]


async def _data(store: Any, session_id: str) -> Any:
    """The session's data, or None if it does not load."""
    loaded = await store.load(session_id)
    return None if loaded is None else loaded.to_dict()


async def _two(store: Any, session_id: str) -> tuple[Any, Any]:
    first, second = await store.load(session_id), await store.load(session_id)
    _expect(first is not None and second is not None, "a stored session did not load")
    return first, second


# -- the checks ------------------------------------------------------------------------


async def create_stores_at_once(env: _Env) -> None:
    store = env.make()
    session = await store.create({"user": 7, "roles": ["admin"]})
    _expect(len(session.id) == 43 and session.version == 1, f"create gave {session!r}")
    _expect(not session.is_new, "a created session is stored, not new")
    loaded = await store.load(session.id)
    _expect(loaded is not None, "a created session did not load")
    _expect(loaded.to_dict() == {"user": 7, "roles": ["admin"]}, f"loaded {loaded.to_dict()}")
    _expect((loaded.version, loaded.created_at) == (1, START), "version or created_at differ")
    _expect(not loaded.modified and not loaded.is_new, "a loaded session is unmodified")


async def ids_are_random_and_unique(env: _Env) -> None:
    store = env.make()
    ids = {(await store.create()).id for _ in range(100)}
    _expect(len(ids) == 100, "ids repeat")
    _expect(all(len(i) == 43 and i.isascii() for i in ids), "ids are not 43 URL-safe characters")


async def malformed_ids_load_as_none(env: _Env) -> None:
    store = env.make()
    kept = await store.create({"k": "v"})
    _expect(await store.load("A" * 43) is None, "an unknown id loaded")
    for bad in MALFORMED:
        _expect(await store.load(bad) is None, f"load({bad!r}) is not None")
        _expect(await store.touch(bad) is False, f"touch({bad!r}) is not False")
        await store.delete(bad)
    for wrong in NOT_IDS:
        for method in ("load", "touch", "delete"):
            try:
                await getattr(store, method)(wrong)
            except ArgumentTypeError as exc:
                _expect("session_id" in str(exc), f"{method}({wrong!r}): {exc} names no session_id")
            else:
                raise AssertionError(f"{method}({wrong!r}) was not refused")
    _expect(await _data(store, kept.id) == {"k": "v"}, "a malformed id changed another session")


async def save_stores_changes_and_bumps_the_version(env: _Env) -> None:
    store = env.make()
    session = await store.create({"a": 1})
    session["b"] = {"nested": [1, 2]}
    del session["a"]
    await store.save(session)
    _expect(session.version == 2, f"version {session.version} after one save")
    loaded = await store.load(session.id)
    _expect(loaded.to_dict() == {"b": {"nested": [1, 2]}}, f"saved {loaded.to_dict()}")
    _expect(loaded.version == 2, "the stored version is not 2")


async def nested_changes_are_seen(env: _Env) -> None:
    store = env.make()
    session = await store.create({"cart": [1]})
    loaded = await store.load(session.id)
    loaded["cart"].append(2)
    _expect(loaded.modified, "a nested change is not seen")
    await store.save(loaded)
    _expect(await _data(store, session.id) == {"cart": [1, 2]}, "a nested change was not saved")


async def an_unchanged_save_only_touches(env: _Env) -> None:
    store = env.make(idle_timeout=100, absolute_timeout=None)
    session = await store.create({"a": 1})
    env.clock.advance(60)
    loaded = await store.load(session.id)
    await store.save(loaded)
    env.clock.advance(60)  # 120 s after creation, 60 s after the touch
    again = await store.load(session.id)
    _expect(again is not None, "an unchanged save did not extend the idle expiry")
    _expect(again.version == 1, "an unchanged save wrote a new version")


async def concurrent_saves_of_different_keys_merge(env: _Env) -> None:
    store = env.make()
    session = await store.create({"shared": 0, "gone": 1, "kept": 1})
    first, second = await _two(store, session.id)
    first["cart"] = ["book"]
    first["shared"] = 1
    second["theme"] = "dark"
    del second["gone"]
    await store.save(first)
    await store.save(second)  # saved meanwhile: merged, not overwritten
    loaded = await store.load(session.id)
    expected = {"shared": 1, "cart": ["book"], "theme": "dark", "kept": 1}
    _expect(loaded.to_dict() == expected, f"merged into {loaded.to_dict()}")
    _expect(loaded.version == 3 and second.version == 3, "the merge is not version 3")
    _expect(second.to_dict() == expected, "the saved session does not hold the merge")


async def concurrent_changes_of_one_key_conflict(env: _Env) -> None:
    store = env.make()
    session = await store.create({"count": 0})
    first, second = await _two(store, session.id)
    first["count"] = 1
    second["count"] = 2
    await store.save(first)
    try:
        await store.save(second)
    except SessionConflict as exc:
        _expect(exc.key == "count", f"the conflict names {exc.key!r}")
    else:
        raise AssertionError("two changes of one key did not conflict")
    _expect(await _data(store, session.id) == {"count": 1}, "a conflicting save stored something")


async def the_same_change_twice_conflicts(env: _Env) -> None:
    """Two requests that read n == 5 and both write 6 made two increments: the
    second save must not pass as "no change"."""
    store = env.make()
    session = await store.create({"n": 5})
    first, second = await _two(store, session.id)
    first["n"] = first["n"] + 1
    second["n"] = second["n"] + 1
    await store.save(first)
    with _raises(SessionConflict, "both set n from 5 to 6"):
        await store.save(second)
    _expect(await _data(store, session.id) == {"n": 6}, "a conflicting save stored something")


async def deleting_a_key_another_request_changed_conflicts(env: _Env) -> None:
    store = env.make()
    session = await store.create({"token": "a"})
    first, second = await _two(store, session.id)
    first["token"] = "b"
    del second["token"]
    await store.save(first)
    with _raises(SessionConflict, "a key deleted here and changed there"):
        await store.save(second)
    _expect(await _data(store, session.id) == {"token": "b"}, "the conflicting delete stored")


async def saving_a_deleted_session_conflicts(env: _Env) -> None:
    store = env.make()
    session = await store.create({"a": 1})
    loaded = await store.load(session.id)
    await store.delete(session.id)
    loaded["a"] = 2
    with _raises(SessionConflict, "saving a deleted session"):
        await store.save(loaded)
    _expect(await store.load(session.id) is None, "a deleted session came back")


async def values_must_be_json(env: _Env) -> None:
    store = env.make()
    session = await store.create({"a": 1})
    for value in (object(), {1, 2}, "\ud800", ["ok", "\udfff"], math.nan):
        with _raises(ArgumentTypeError, f"session value {value!r}"):
            session["key"] = value
    for key in (1, None, b"k", "\ud800"):
        with _raises((ArgumentTypeError, ConfigurationError), f"session key {key!r}"):
            session[key] = "x"
    for data in ({"x": {1, 2}}, {1: "x"}, {"\ud800": 1}, {"k": "\ud800"}, "not a mapping", [1]):
        with _raises((ArgumentTypeError, ConfigurationError), f"create({data!r})"):
            await store.create(data)
    _expect(not session.modified, "a refused value changed the session")
    await store.save(session)
    _expect(await _data(store, session.id) == {"a": 1}, "a refused value was stored")


async def too_large_is_refused_and_stores_nothing(env: _Env) -> None:
    store = env.make(max_bytes=1024)
    with _raises(SessionTooLarge, "create over max_bytes"):
        await store.create({"blob": "x" * 2000})
    session = await store.create({"small": 1})
    session["blob"] = "x" * 2000
    with _raises(SessionTooLarge, "save over max_bytes"):
        await store.save(session)
    _expect(await _data(store, session.id) == {"small": 1}, "a session over max_bytes was stored")
    with _raises(ValueError, "SessionTooLarge is a ValueError"):
        await store.create({"blob": "y" * 2000})


async def idle_timeout_slides_and_absolute_caps(env: _Env) -> None:
    store = env.make(idle_timeout=100, absolute_timeout=250)
    session = await store.create({"a": 1})
    env.clock.advance(90)
    _expect(await store.touch(session.id), "touch of a live session")
    env.clock.advance(90)  # 180 s old, 90 s idle: alive
    loaded = await store.load(session.id)
    _expect(loaded is not None, "touch did not slide the idle expiry")
    loaded["b"] = 2
    await store.save(loaded)  # a save slides the idle timeout too
    env.clock.advance(60)  # 240 s old
    _expect(await store.load(session.id) is not None, "save did not slide the idle expiry")
    _expect(await store.touch(session.id), "touch of a live session")
    env.clock.advance(20)  # 260 s old: past the absolute timeout
    _expect(await store.load(session.id) is None, "a session outlived absolute_timeout")
    _expect(await store.touch(session.id) is False, "touch of an expired session")


async def an_idle_session_expires(env: _Env) -> None:
    store = env.make(idle_timeout=100, absolute_timeout=None)
    session = await store.create({"a": 1})
    env.clock.advance(101)
    _expect(await store.load(session.id) is None, "an idle session loaded")
    _expect(await store.touch(session.id) is False, "an idle session was touched")
    _expect(await store.purge_expired() >= 0, "purge_expired is a count")
    _expect(await store.load(session.id) is None, "an idle session came back")


async def purge_expired_deletes_only_expired(env: _Env) -> None:
    store = env.make(idle_timeout=100, absolute_timeout=None)
    old = await store.create({"old": 1})
    env.clock.advance(60)
    fresh = await store.create({"fresh": 1})
    env.clock.advance(60)
    _expect(await store.purge_expired() in (0, 1), "purged more than the expired session")
    _expect(await store.load(old.id) is None, "an expired session loaded")
    _expect(await store.load(fresh.id) is not None, "purge deleted a live session")


async def delete(env: _Env) -> None:
    store = env.make()
    session = await store.create({"a": 1})
    await store.delete(session.id)
    _expect(await store.load(session.id) is None, "a deleted session loaded")
    await store.delete(session.id)  # twice: a no-op


async def rotate_moves_the_session_to_a_new_id(env: _Env) -> None:
    store = env.make()
    session = await store.create({"cart": ["book"]})
    old_id = session.id
    loaded = await store.load(old_id)
    loaded["user"] = "ada"  # logged in: rotate
    rotated = await store.rotate(loaded)
    _expect(rotated.id != old_id and loaded.id == rotated.id, "rotate kept the id")
    _expect(await store.load(old_id) is None, "the old id lives after rotate")
    again = await store.load(rotated.id)
    _expect(again.to_dict() == {"cart": ["book"], "user": "ada"}, f"rotated {again.to_dict()}")
    _expect(again.created_at == session.created_at, "rotate changed created_at")


async def rotate_after_a_concurrent_save_conflicts(env: _Env) -> None:
    store = env.make()
    session = await store.create({"a": 1})
    first, second = await _two(store, session.id)
    first["a"] = 2
    await store.save(first)
    with _raises(SessionConflict, "rotate of an outdated session"):
        await store.rotate(second)
    _expect(await _data(store, session.id) == {"a": 2}, "the failed rotate changed the session")


async def stats_count_what_happened(env: _Env) -> None:
    """A store with ``stats()`` counts each operation once it answered (a store
    without it is not checked)."""
    store = env.make()
    if not callable(getattr(store, "stats", None)):
        return
    session = await store.create({"a": 1, "n": 0})
    first, second = await _two(store, session.id)  # two loads
    await store.load("a" * 43)  # unknown
    await store.load("x")  # malformed
    first.increment("n")
    await store.save(first)
    second.increment("n")
    await store.save(second)  # merged onto first's save
    third, fourth = await _two(store, session.id)
    third["a"] = 2
    fourth["a"] = 3
    await store.save(third)
    with _raises(SessionConflict, "both set a"):
        await store.save(fourth)
    unchanged = await store.load(session.id)
    await store.save(unchanged)  # no change: a touch
    _expect(await store.touch(session.id), "touch of a live session")
    rotated = await store.rotate(unchanged)
    await store.delete(rotated.id)
    blank = store.blank()
    blank["x"] = 1
    await store.save(blank)
    env.clock.advance(10**6)
    await store.purge_expired()
    stats = store.stats()
    seen = {
        "created": stats.created,
        "loaded": stats.loaded,
        "not_found": stats.not_found,
        "saved": stats.saved,
        "merged": stats.merged,
        "conflicts": stats.conflicts,
        "touched": stats.touched,
        "rotated": stats.rotated,
        "deleted": stats.deleted,
    }
    wanted = {
        "created": 2,
        "loaded": 5,
        "not_found": 2,
        "saved": 3,
        "merged": 1,
        "conflicts": 1,
        "touched": 2,
        "rotated": 1,
        "deleted": 1,
    }
    _expect(seen == wanted, f"stats() counted {seen}, not {wanted}")
    _expect(stats.purged in (0, 1), f"one expired session purged, counted {stats.purged}")


async def a_blank_session_is_stored_only_with_data(env: _Env) -> None:
    store = env.make()
    blank = store.blank()
    _expect(blank.is_new and blank.version == 0, "blank() is new, version 0")
    await store.save(blank)
    _expect(await store.load(blank.id) is None, "an empty blank session was stored")
    blank["visits"] = 1
    await store.save(blank)
    loaded = await store.load(blank.id)
    _expect(loaded is not None and loaded.to_dict() == {"visits": 1}, "a blank session with data")
    _expect(loaded.version == 1 and not blank.is_new, "a stored blank session is version 1")


async def increments_add_up(env: _Env) -> None:
    store = env.make()
    session = await store.create({"hits": 10, "name": "x"})
    first, second = await _two(store, session.id)
    _expect(first.increment("hits") == 11, "increment returns the new value")
    first.increment("hits", 2)
    first.increment("new", 0.5)
    second.increment("hits")
    second.increment("new", 0.25)
    await store.save(first)
    await store.save(second)  # merged: 10 + 3 + 1
    _expect(
        await _data(store, session.id) == {"hits": 14, "name": "x", "new": 0.75},
        "increments did not add up",
    )
    third, fourth = await _two(store, session.id)
    third.increment("hits")
    fourth["hits"] = 0  # a plain write of a key another request incremented
    await store.save(third)
    with _raises(SessionConflict, "a plain write of a key incremented meanwhile"):
        await store.save(fourth)
    refused = await store.load(session.id)
    for by in (True, math.nan, math.inf, -math.inf, 10**400, "1", None):
        with _raises((ArgumentTypeError, ConfigurationError), f"increment(by={by!r})"):
            refused.increment("hits", by)
    with _raises(ArgumentTypeError, "increment of a str"):
        refused.increment("name")
    _expect(refused["hits"] == 15 and not refused.modified, "a refused increment changed hits")
    refused.increment("hits", 1e308)
    with _raises(ConfigurationError, "an increment past a finite float"):
        refused.increment("hits", 1e308)
    _expect(refused["hits"] == 15 + 1e308, "a refused increment changed the value")


async def merge_policies(env: _Env) -> None:
    store = env.make(policies={"token": "max", "theme": "last_write_wins"})
    session = await store.create({"token": 5, "theme": "light", "other": 0})
    first, second = await _two(store, session.id)
    first["token"], second["token"] = 9, 7
    first["theme"], second["theme"] = "dark", "blue"
    await store.save(first)
    await store.save(second)
    _expect(
        await _data(store, session.id) == {"token": 9, "theme": "blue", "other": 0},
        "max kept the larger token, last_write_wins the later theme",
    )
    third, fourth = await _two(store, session.id)
    third["other"], fourth["other"] = 1, 1
    await store.save(third)
    with _raises(SessionConflict, "a key without a policy, changed twice"):
        await store.save(fourth)
    for policies in ({"k": "min"}, ["k"], {1: "max"}, {"\ud800": "max"}, "max"):
        env.refuses(policies=policies)


async def refused_arguments_change_nothing(env: _Env) -> None:
    store = env.make()
    session = await store.create({"a": 1})
    loaded = await store.load(session.id)
    calls: tuple[tuple[Callable[[], Awaitable[Any]], str], ...] = (
        (lambda: store.rotate(1), "rotate(1)"),
        (lambda: store.rotate(None), "rotate(None)"),
        (lambda: store.save(None), "save(None)"),
        (lambda: store.save({"a": 2}), "save(a dict)"),
    )
    for call, what in calls:
        with _raises(ArgumentTypeError, what):
            await call()
    _expect(await _data(store, session.id) == {"a": 1}, "a refused call changed the session")
    _expect((await store.load(session.id)).version == 1, "a refused call wrote a version")
    await store.save(loaded)  # the session is usable after them
    for name in ("idle_timeout", "absolute_timeout"):
        for bad in (math.nan, math.inf, -1, 0, 10**400, 1e308, True, "60"):
            env.refuses(**{name: bad})
    for bad in (0, 1, -5, 1.5, True, 10**400, "1024"):
        env.refuses(max_bytes=bad)
    env.refuses(serializer=object())


async def concurrent_requests_lose_no_update(env: _Env) -> None:
    """Workers at once on one session: increments of one shared key all add up,
    each worker's own key holds all its writes, and a plain read-modify-write of
    one shared key either lands or raises SessionConflict: landed + conflicts ==
    attempts, and the stored count is the number landed."""
    store = env.make()
    session = await store.create({})
    workers, rounds = 6, 10
    landed = [0] * workers
    conflicts = [0] * workers

    async def worker(n: int) -> None:
        for _ in range(rounds):
            while True:  # a give-up (key None: too many lost races) is retried
                loaded = await store.load(session.id)
                loaded.increment("hits")
                loaded[f"t{n}"] = loaded.get(f"t{n}", 0) + 1
                try:
                    await store.save(loaded)
                    break
                except SessionConflict as exc:
                    _expect(exc.key is None, f"increments conflicted on {exc.key!r}")
            loaded = await store.load(session.id)
            loaded["plain"] = loaded.get("plain", 0) + 1
            try:
                await store.save(loaded)
                landed[n] += 1
            except SessionConflict:
                conflicts[n] += 1

    await env.gather(worker(n) for n in range(workers))
    final = await _data(store, session.id)
    expected = {"hits": workers * rounds, **{f"t{n}": rounds for n in range(workers)}}
    _expect({k: v for k, v in final.items() if k != "plain"} == expected, f"lost updates: {final}")
    _expect(
        sum(landed) + sum(conflicts) == workers * rounds, "an attempt neither landed nor raised"
    )
    _expect(
        final.get("plain", 0) == sum(landed), f"plain {final.get('plain')} != landed {sum(landed)}"
    )


_CHECKS: dict[str, Callable[[_Env], Awaitable[None]]] = {
    check.__name__: check
    for check in (
        create_stores_at_once,
        ids_are_random_and_unique,
        malformed_ids_load_as_none,
        save_stores_changes_and_bumps_the_version,
        nested_changes_are_seen,
        an_unchanged_save_only_touches,
        concurrent_saves_of_different_keys_merge,
        concurrent_changes_of_one_key_conflict,
        the_same_change_twice_conflicts,
        deleting_a_key_another_request_changed_conflicts,
        saving_a_deleted_session_conflicts,
        values_must_be_json,
        too_large_is_refused_and_stores_nothing,
        idle_timeout_slides_and_absolute_caps,
        an_idle_session_expires,
        purge_expired_deletes_only_expired,
        delete,
        rotate_moves_the_session_to_a_new_id,
        rotate_after_a_concurrent_save_conflicts,
        a_blank_session_is_stored_only_with_data,
        stats_count_what_happened,
        increments_add_up,
        merge_policies,
        refused_arguments_change_nothing,
        concurrent_requests_lose_no_update,
    )
}

SESSION_STORE_CHECKS: tuple[str, ...] = tuple(_CHECKS)
"""The names of the checks, in the order they run (for ``checks=``)."""


def _selected(checks: Iterable[str] | None) -> list[Callable[[_Env], Awaitable[None]]]:
    names = SESSION_STORE_CHECKS if checks is None else list(checks)
    unknown = [name for name in names if name not in _CHECKS]
    if unknown:
        raise ConfigurationError(f"no session store check named {', '.join(map(repr, unknown))}")
    return [_CHECKS[name] for name in names]


def _named(name: str, error: AssertionError) -> AssertionError:
    return AssertionError(f"session store check {name}: {error}")


def check_session_store(
    factory: Callable[..., Any], *, checks: Iterable[str] | None = None
) -> None:
    """Run the session store contract on the sync stores ``factory(**settings)`` makes.

    ``checks`` limits the run to those names of :data:`SESSION_STORE_CHECKS`.
    Raises ``AssertionError`` naming the first check that fails.
    """
    for check in _selected(checks):
        try:
            drive(check(_Env(factory, asynchronous=False)))  # type: ignore[arg-type]
        except AssertionError as exc:
            raise _named(check.__name__, exc) from exc


async def check_async_session_store(
    factory: Callable[..., Any], *, checks: Iterable[str] | None = None
) -> None:
    """:func:`check_session_store` for async stores: ``factory(**settings)`` (called
    in the running event loop) makes an :class:`~scalekit.sessions.AsyncSessionStore`.
    Await it in the loop the stores belong to."""
    for check in _selected(checks):
        try:
            await check(_Env(factory, asynchronous=True))
        except AssertionError as exc:
            raise _named(check.__name__, exc) from exc
