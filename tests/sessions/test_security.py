"""Session ids and stored records as an attacker would craft them."""

from __future__ import annotations

import pickle
import time
from typing import Any

import pytest

from scalekit.errors import SessionCorrupted
from scalekit.sessions import MemorySessionStore, Record
from scalekit.sessions._session import new_id, valid_id

EXECUTED: list[str] = []


def mark(what: str) -> None:
    EXECUTED.append(what)


class Exploit:
    """Unpickling this runs code: it records that it did."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (mark, ("pwned",))


def test_the_exploit_would_run_if_unpickled() -> None:
    pickle.loads(pickle.dumps(Exploit()))
    assert EXECUTED == ["pwned"]
    EXECUTED.clear()


@pytest.mark.parametrize(
    "payload",
    [
        pickle.dumps(Exploit()),
        pickle.dumps({"user": "admin"}),
        b"\x80\x04\x95",
        b"[1, 2]",  # JSON, but not an object
        b"\xff\xfe not utf-8",
        b"",
    ],
)
def test_a_crafted_record_is_rejected_never_executed(payload: bytes) -> None:
    store = MemorySessionStore()
    session_id = new_id()
    now = time.time()
    store._insert(session_id, Record(payload, 1, now, now), float("inf"), b"op-00001")
    with pytest.raises(SessionCorrupted):
        store.load(session_id)
    assert EXECUTED == []


def test_ids_carry_256_bits_from_secrets() -> None:
    ids = {new_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(valid_id(i) and len(i) == 43 for i in ids)
    # 43 base64url characters carry 258 bits; the last one only uses 4 of its 6
    alphabet = {c for i in ids for c in i[:-1]}
    assert len(alphabet) == 64
