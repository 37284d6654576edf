"""Concurrent saves against a model of the merge: two requests load one session,
change it at random (plain writes, deletes, increments; keys with merge policies),
and save one after the other."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scalekit.errors import SessionConflict
from scalekit.sessions import MemorySessionStore

KEYS = st.sampled_from(["a", "b", "c", "d", "e"])
VALUES = st.integers(0, 3) | st.lists(st.integers(0, 2), max_size=2)
DATA = st.dictionaries(KEYS, VALUES, max_size=5)
EDITS = st.lists(st.tuples(KEYS, st.none() | VALUES), max_size=6)  # None: delete

_GONE: Any = object()


def edit(data: dict[str, Any], edits: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(data)
    for key, value in edits:
        if value is None:
            result.pop(key, None)
        else:
            result[key] = value
    return result


def diff(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """key -> new value (or _GONE) for every key that differs."""
    keys = set(before) | set(after)
    return {k: after.get(k, _GONE) for k in keys if before.get(k, _GONE) != after.get(k, _GONE)}


@given(original=DATA, first_edits=EDITS, second_edits=EDITS)
def test_the_second_save_merges_or_conflicts_as_the_model_says(
    original: dict[str, Any],
    first_edits: list[tuple[str, Any]],
    second_edits: list[tuple[str, Any]],
) -> None:
    store = MemorySessionStore()
    session = store.create(original)
    first, second = store.load(session.id), store.load(session.id)
    assert first is not None
    assert second is not None
    for request, edits in ((first, first_edits), (second, second_edits)):
        for key, value in edits:
            if value is None:
                request.pop(key, None)
            else:
                request[key] = value
    after_first = edit(original, first_edits)
    after_second = edit(original, second_edits)
    ours, theirs = diff(original, after_second), diff(original, after_first)
    # a key both changed clashes even when both wrote the same value (two requests
    # that read n == 5 and both write 6 made two increments)
    clash = [k for k in ours if k in theirs]

    store.save(first)
    if clash:
        with pytest.raises(SessionConflict) as raised:
            store.save(second)
        assert raised.value.key in clash
        expected = after_first
    else:
        store.save(second)
        expected = dict(after_first)
        for key, value in ours.items():
            if value is _GONE:
                expected.pop(key, None)
            else:
                expected[key] = value
    loaded = store.load(session.id)
    assert loaded is not None
    assert loaded.to_dict() == expected


POLICY = {"a": "max", "b": "last_write_wins"}  # "c", "d", "e": conflict
STEPS = st.lists(
    st.tuples(KEYS, st.sampled_from(["set", "delete", "increment"]), st.integers(-2, 3)),
    max_size=6,
)


def act(session: Any, steps: list[tuple[str, str, int]]) -> None:
    for key, kind, number in steps:
        if kind == "set":
            session[key] = number
        elif kind == "delete":
            session.pop(key, None)
        elif isinstance(session.get(key, 0), int):
            session.increment(key, number)


def model(
    original: dict[str, int], first: list[tuple[str, str, int]], second: list[tuple[str, str, int]]
) -> dict[str, Any] | None:
    """The data after both saves, or None where the second must conflict."""
    after = [dict(original), dict(original)]
    incremented_only: list[dict[str, int]] = [{}, {}]
    for i, steps in enumerate((first, second)):
        data, deltas = after[i], incremented_only[i]
        for key, kind, number in steps:
            if kind == "set":
                data[key] = number
                deltas.pop(key, None)
            elif kind == "delete":
                if key in data:
                    del data[key]
                    deltas.pop(key, None)
            else:  # a plain write unless the key holds what it was loaded with
                plain = key not in deltas and data.get(key, _GONE) != original.get(key, _GONE)
                data[key] = data.get(key, 0) + number
                if not plain:
                    deltas[key] = deltas.get(key, 0) + number
    stored, mine = after[0], after[1]
    theirs = diff(original, stored)
    result = dict(stored)
    for key, value in diff(original, mine).items():
        if key in incremented_only[1] and value is not _GONE:
            base = stored.get(key, _GONE)
            if base is _GONE:
                if key in original:
                    return None
                base = 0
            result[key] = base + incremented_only[1][key]
        elif key not in theirs or POLICY.get(key) == "last_write_wins":
            if value is _GONE:
                result.pop(key, None)
            else:
                result[key] = value
        elif POLICY.get(key) == "max" and value is not _GONE and theirs[key] is not _GONE:
            result[key] = max(value, theirs[key])
        else:
            return None
    return result


@given(
    original=st.dictionaries(KEYS, st.integers(0, 3), max_size=5),
    first=STEPS,
    second=STEPS,
)
def test_increments_and_policies_merge_as_the_model_says(
    original: dict[str, int],
    first: list[tuple[str, str, int]],
    second: list[tuple[str, str, int]],
) -> None:
    store = MemorySessionStore(policies=POLICY)
    session = store.create(original)
    one, two = store.load(session.id), store.load(session.id)
    assert one is not None
    assert two is not None
    act(one, first)
    act(two, second)
    one._check()
    two._check()
    expected = model(original, first, second)
    store.save(one)
    if expected is None:
        with pytest.raises(SessionConflict):
            store.save(two)
        expected = one.to_dict()
    else:
        changed = two.modified
        store.save(two)
        if changed:  # an unchanged save only touches: two keeps what it loaded
            assert two.to_dict() == expected
    loaded = store.load(session.id)
    assert loaded is not None
    assert loaded.to_dict() == expected
    store._check()


KEYS = st.sampled_from(["a", "b", "c", "d"])
VALUES = st.one_of(st.integers(-5, 5), st.text(max_size=3), st.lists(st.integers(0, 3), max_size=2))
ACTIONS = st.lists(
    st.tuples(st.sampled_from(["read", "set", "delete", "append", "increment"]), KEYS, VALUES),
    max_size=8,
)


@given(st.dictionaries(KEYS, VALUES), ACTIONS, ACTIONS)
def test_after_a_save_the_noted_keys_are_the_saved_values(
    data: dict[str, Any], first: list[tuple[str, str, Any]], second: list[tuple[str, str, Any]]
) -> None:
    """A save keeps the JSON it already made for the keys used (it does not encode
    them again): that baseline must be what a fresh load notes, so the next save
    and merge see the same changes."""
    store = MemorySessionStore()
    session = store.create(data)

    def act(target: Any, actions: list[tuple[str, str, Any]]) -> None:
        for action, key, value in actions:
            if action == "read":
                target.get(key)
            elif action == "set":
                target[key] = value
            elif action == "delete" and key in target:
                del target[key]
            elif action == "append" and isinstance(target.get(key), list):
                target[key].append(1)
            elif action == "increment" and type(target.get(key, 0)) is int:
                target.increment(key)

    act(session, first)
    stored_any = session.modified
    store.save(session)
    session._check()
    fresh = store.load(session.id)
    assert fresh is not None
    if stored_any:  # else the save only touched: nothing is noted again
        for key in session._original:
            fresh.get(key)
        expected = {key: text for key, text in fresh._original.items() if text is not None}
        assert session._original == expected
    # the next save from this baseline stores what a fresh session's would
    act(session, second)
    act(fresh, second)
    store.save(session)
    stored = store.load(session.id)
    assert stored is not None
    assert stored.to_dict() == fresh.to_dict()
