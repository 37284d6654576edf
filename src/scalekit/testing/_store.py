"""The :class:`~scalekit.protocols.Store` contract: run it on your own store.

:func:`check_store` runs every check on a sync store, :func:`check_async_store`
the same checks on an :class:`~scalekit.protocols.AsyncStore`. ``make()`` returns
the store under test; it may be shared with other runs (a Redis database): every
check writes keys of its own, under a random prefix. Expiry is checked with real
time, so ``resolution`` says how late a store may expire an item (memcached
counts whole seconds: 2.0); the whole run sleeps about ``2 * resolution + 0.4``
seconds::

    from scalekit.testing import check_store

    def test_my_store():
        check_store(lambda: MyStore(my_server()))

Stores whose values go through a serializer (the remote ones) hold JSON values;
``json_only=False`` adds a check that any value (a tuple, an object) reads back
as itself, for stores that keep objects in memory.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from scalekit.errors import ArgumentTypeError, ConfigurationError, ScalekitError
from scalekit.testing._coroutines import Awaited, drive, expect, raises

__all__ = ["STORE_CHECKS", "check_async_store", "check_store"]

_METHODS = frozenset(("get", "set", "add", "delete", "ttl_of", "get_many", "set_many", "set_if"))
_ABSENT: Any = object()

BAD_TTLS: tuple[Any, ...] = (0, -1, math.nan, -math.inf, 10**400, 1e308, True, "1", [1])
"""TTLs every store refuses, changing nothing."""

KEYS: tuple[str, ...] = (
    "plain",
    "",
    "with space",
    "new\nline",
    "tab\tand\x00nul",
    "é ü 日本",
    "emoji \U0001f600",
    "lone \ud800 surrogate",
    "lone \udfff surrogate",
    "k" * 300,
    "~tilde",
)
"""Keys every store keeps apart and reads back, whatever its server allows."""

VALUES: tuple[Any, ...] = (
    0,
    -1,
    2**70,
    1.5,
    "text é \U0001f600",
    "",
    True,
    False,
    [1, "two", [3.0]],
    {"nested": {"list": [1, 2], "none": None}},
    [],
    {},
)
"""JSON values that read back equal to themselves."""


class _Env:
    def __init__(self, make: Callable[[], Any], asynchronous: bool, resolution: float) -> None:
        self._make = make
        self._asynchronous = asynchronous
        self.resolution = resolution
        self.prefix = f"scalekit-check:{uuid.uuid4().hex}:"

    def store(self) -> Any:
        store = self._make()
        return store if self._asynchronous else Awaited(store, _METHODS)

    def key(self, name: str) -> str:
        return self.prefix + name

    async def sleep(self, seconds: float) -> None:
        if self._asynchronous:
            import asyncio  # here: importing scalekit.testing must not import asyncio

            await asyncio.sleep(seconds)
        else:
            time.sleep(seconds)


async def _refused(what: str, call: Awaitable[Any]) -> None:
    try:
        await call
    except (ArgumentTypeError, ConfigurationError):
        return
    except ScalekitError as exc:
        raise AssertionError(f"{what} raised {exc!r}, not a bad-argument error") from exc
    raise AssertionError(f"{what} was accepted")


# -- the checks ------------------------------------------------------------------------


async def get_set_delete(env: _Env) -> None:
    store, key = env.store(), env.key("a")
    expect(await store.get(key) is None, "a missing key does not read as None")
    expect(await store.get(key, _ABSENT) is _ABSENT, "a missing key does not read as default")
    await store.set(key, {"v": 1})
    expect(await store.get(key) == {"v": 1}, "a value set does not read back")
    await store.set(key, [2])
    expect(await store.get(key) == [2], "an overwrite does not read back")
    expect(await store.delete(key) is True, "delete of a present key is not True")
    expect(await store.delete(key) is False, "delete of a missing key is not False")
    expect(await store.get(key, _ABSENT) is _ABSENT, "a deleted key still reads")


async def add_only_if_absent(env: _Env) -> None:
    store, key = env.store(), env.key("add")
    expect(await store.add(key, 1) is True, "add of a missing key is not True")
    expect(await store.add(key, 2) is False, "add of a present key is not False")
    expect(await store.get(key) == 1, "add of a present key changed it")
    await store.delete(key)
    expect(await store.add(key, 3) is True, "add after delete is not True")
    expect(await store.get(key) == 3, "add after delete did not store")


async def values_read_back(env: _Env) -> None:
    store = env.store()
    for index, value in enumerate(VALUES):
        key = env.key(f"value-{index}")
        await store.set(key, value)
        got = await store.get(key, _ABSENT)
        expect(got == value and type(got) is type(value), f"{value!r} read back as {got!r}")
    await store.set(env.key("none"), None)
    expect(await store.get(env.key("none"), _ABSENT) is None, "a stored None reads as missing")


async def keys_kept_apart(env: _Env) -> None:
    store = env.store()
    for index, name in enumerate(KEYS):
        await store.set(env.key(name), index)
    for index, name in enumerate(KEYS):
        got = await store.get(env.key(name))
        expect(got == index, f"key {name[:40]!r} read {got!r}, not {index}")
    found = await store.get_many([env.key(name) for name in KEYS])
    expect(found == {env.key(n): i for i, n in enumerate(KEYS)}, "get_many mixed up keys")


async def ttls(env: _Env) -> None:
    store = env.store()
    key = env.key("ttl")
    await store.set(key, 1, ttl=100)
    left = await store.ttl_of(key)
    expect(left is not None and 95 < left <= 100 + env.resolution, f"ttl_of after ttl=100: {left}")
    await store.set(key, 1, ttl=math.inf)
    expect(await store.ttl_of(key) is None, "ttl=math.inf does not live forever")
    with raises(KeyError, "ttl_of of a missing key"):
        await store.ttl_of(env.key("never-set"))


async def overwrites_reset_the_ttl(env: _Env) -> None:
    store = env.store()
    fresh, again, many = env.key("fresh"), env.key("again"), env.key("again-many")
    await store.set(fresh, 0)  # no ttl: the store's default, whatever it is
    default = await store.ttl_of(fresh)
    for key in (again, many):
        await store.set(key, 1, ttl=0.5)
    await store.set(again, 2)
    await store.set_many({many: 2})
    for key, how in ((again, "set"), (many, "set_many")):
        left = await store.ttl_of(key)
        expect(
            left is None if default is None else left is not None and left > default - 1,
            f"{how} without ttl over a key with one kept its ttl ({left}, a new key gets "
            f"{default})",
        )


async def items_expire(env: _Env) -> None:
    store = env.store()
    short, kept, added = env.key("short"), env.key("kept"), env.key("short-add")
    await store.set(short, "x", ttl=0.2)
    await store.set(kept, "y", ttl=100)
    expect(await store.add(added, 1, ttl=0.2), "add of a new key failed")
    expect(await store.get(short) == "x", "an item expired at once")
    await store.set_many({env.key("many-short"): 1}, ttl=0.2)
    await env.sleep(0.2 + env.resolution + 0.2)
    expect(await store.get(short, _ABSENT) is _ABSENT, "an item outlived its ttl")
    expect(await store.get_many([short, kept]) == {kept: "y"}, "get_many sees an expired item")
    expect(await store.get(env.key("many-short"), _ABSENT) is _ABSENT, "set_many ignored ttl")
    with raises(KeyError, "ttl_of of an expired key"):
        await store.ttl_of(short)
    expect(await store.add(added, 2) is True, "add over an expired key is not True")
    expect(await store.get(added) == 2, "add over an expired key did not store")


async def many_at_once(env: _Env) -> None:
    store = env.store()
    items = {env.key(f"m{i}"): i for i in range(50)}
    await store.set_many(items)
    await store.set_many({})
    keys = [*items, env.key("missing"), env.key("m0")]
    expect(await store.get_many(keys) == items, "get_many after set_many differs")
    expect(await store.get_many([]) == {}, "get_many([]) is not {}")
    expect(await store.get_many(iter([env.key("m1")])) == {env.key("m1"): 1}, "get_many(iter)")


async def bad_arguments_change_nothing(env: _Env) -> None:
    store, key = env.store(), env.key("kept")
    await store.set(key, "original")
    for ttl in BAD_TTLS:
        await _refused(f"set(ttl={ttl!r})", store.set(key, "changed", ttl=ttl))
        await _refused(f"add(ttl={ttl!r})", store.add(env.key("new"), 1, ttl=ttl))
        await _refused(f"set_many(ttl={ttl!r})", store.set_many({key: "changed"}, ttl=ttl))
    for keys in ("abc", b"abc", 5, None):
        await _refused(f"get_many({keys!r})", store.get_many(keys))
    for items in ([(key, 1)], None, "abc"):
        await _refused(f"set_many({items!r})", store.set_many(items))
    for unhashable in (["x"], {"x": 1}):
        with raises(TypeError, f"a key {unhashable!r}"):
            await store.set(unhashable, 1)
    expect(await store.get(key) == "original", "a refused call changed the stored value")
    expect(await store.get(env.key("new"), _ABSENT) is _ABSENT, "a refused add stored")


async def bad_values_store_nothing(env: _Env, json_only: bool) -> None:
    if not json_only:
        return
    store, key = env.store(), env.key("kept")
    await store.set(key, "original")
    for value in (object(), math.nan, math.inf, {1j: 1}, b"bytes"):
        await _refused(f"set({value!r})", store.set(key, value))
    good, bad = env.key("good"), env.key("bad")
    await _refused("set_many with one bad value", store.set_many({good: 1, bad: object()}))
    expect(await store.get(key) == "original", "a refused value changed the stored one")
    expect(await store.get_many([good, bad]) == {}, "set_many stored part of a refused batch")


async def any_value_reads_back(env: _Env, json_only: bool) -> None:
    if json_only:
        return
    store, key = env.store(), env.key("object")
    for value in ((1, 2), frozenset({3}), {1: "int key"}):
        await store.set(key, value)
        expect(await store.get(key) == value, f"{value!r} did not read back as itself")


async def set_if_only_while_the_guard_holds(env: _Env) -> None:
    """A store that says its ``set_if`` is atomic (``atomic_set_if``) writes only
    while the guard holds the expected value, live (a store without it is not
    checked: ``cached`` does not use it there)."""
    store = env.store()
    if not getattr(store, "atomic_set_if", False):
        return
    key, guard = env.key("guarded"), env.key("guarded#lease")
    stored = await store.set_if(key, 1, guard=guard, expected="token")
    expect(stored is False, "set_if with no guard stored")
    expect(await store.get(key, _ABSENT) is _ABSENT, "set_if with no guard wrote")
    await store.add(guard, "token", ttl=5)
    stored = await store.set_if(key, 2, guard=guard, expected="other")
    expect(stored is False and await store.get(key, _ABSENT) is _ABSENT, "a wrong guard wrote")
    stored = await store.set_if(key, 3, guard=guard, expected="token", ttl=100)
    expect(stored is True, "set_if under its guard did not store")
    expect(await store.get(key) == 3, "set_if under its guard does not read back")
    left = await store.ttl_of(key)
    expect(left is not None and 95 < left <= 100 + env.resolution, f"set_if's ttl: {left}")
    await store.delete(guard)
    stored = await store.set_if(key, 4, guard=guard, expected="token")
    expect(stored is False and await store.get(key) == 3, "set_if wrote after its guard went")
    await store.set(guard, "token", ttl=0.2)
    await env.sleep(0.2 + env.resolution + 0.2)
    stored = await store.set_if(key, 5, guard=guard, expected="token")
    expect(stored is False and await store.get(key) == 3, "an expired guard let set_if write")


_CHECKS: dict[str, Callable[..., Awaitable[None]]] = {
    check.__name__: check
    for check in (
        get_set_delete,
        add_only_if_absent,
        values_read_back,
        keys_kept_apart,
        ttls,
        overwrites_reset_the_ttl,
        items_expire,
        many_at_once,
        set_if_only_while_the_guard_holds,
        bad_arguments_change_nothing,
        bad_values_store_nothing,
        any_value_reads_back,
    )
}
_TAKES_JSON_ONLY = frozenset(("bad_values_store_nothing", "any_value_reads_back"))

STORE_CHECKS: tuple[str, ...] = tuple(_CHECKS)
"""The names of the store checks, in the order they run."""


def _selected(checks: Iterable[str] | None) -> list[str]:
    names = list(STORE_CHECKS if checks is None else checks)
    unknown = [name for name in names if name not in _CHECKS]
    if unknown:
        raise ConfigurationError(f"no store check named {', '.join(map(repr, unknown))}")
    return names


def _run(name: str, env: _Env, json_only: bool) -> Awaitable[None]:
    if name in _TAKES_JSON_ONLY:
        return _CHECKS[name](env, json_only)
    return _CHECKS[name](env)


def check_store(
    make: Callable[[], Any],
    *,
    resolution: float = 0.05,
    json_only: bool = True,
    checks: Iterable[str] | None = None,
) -> None:
    """Run the :class:`~scalekit.protocols.Store` contract on the store ``make()`` returns.

    ``resolution`` is how many seconds late the store may expire an item;
    ``json_only`` says its values are JSON (refusing the rest); ``checks`` limits
    the run to those names of :data:`STORE_CHECKS`. Raises ``AssertionError``
    naming the first check that fails.
    """
    for name in _selected(checks):
        try:
            drive(_run(name, _Env(make, False, resolution), json_only))  # type: ignore[arg-type]
        except AssertionError as exc:
            raise AssertionError(f"store check {name}: {exc}") from exc


async def check_async_store(
    make: Callable[[], Any],
    *,
    resolution: float = 0.05,
    json_only: bool = True,
    checks: Iterable[str] | None = None,
) -> None:
    """:func:`check_store` for an :class:`~scalekit.protocols.AsyncStore`; await it
    in the event loop the store belongs to."""
    for name in _selected(checks):
        try:
            await _run(name, _Env(make, True, resolution), json_only)
        except AssertionError as exc:
            raise AssertionError(f"store check {name}: {exc}") from exc
