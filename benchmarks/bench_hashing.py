"""Key hashing: scalekit's default (seeded MurmurHash3) against the md5 that
ketama-style rings such as uhashring use, on the same 1,000 keys."""

from __future__ import annotations

import hashlib

import pytest

from scalekit.hashing import default_hash

KEYS = [f"user:{i}:profile" for i in range(1000)]


def _md5_int(key: str) -> int:
    return int.from_bytes(hashlib.md5(key.encode()).digest()[:8], "big")


@pytest.mark.benchmark(group="hash 1000 keys")
def test_scalekit_default_hash(benchmark) -> None:  # type: ignore[no-untyped-def]
    result = benchmark(lambda: [default_hash(k) for k in KEYS])
    assert len(set(result)) == len(KEYS)


@pytest.mark.benchmark(group="hash 1000 keys")
def test_md5_rival(benchmark) -> None:  # type: ignore[no-untyped-def]
    result = benchmark(lambda: [_md5_int(k) for k in KEYS])
    assert len(set(result)) == len(KEYS)
