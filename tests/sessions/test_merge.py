"""Concurrent saves against a model of the merge: two requests load one session,
change it at random, and save one after the other."""

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
    clash = [k for k in ours if k in theirs and ours[k] != theirs[k]]

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
