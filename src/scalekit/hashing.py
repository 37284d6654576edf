"""Stable hash functions for placing keys.

Placement must agree across processes and machines, so scalekit never uses the
builtin :func:`hash`, which is randomized per process for ``str`` and ``bytes``.
The default is MurmurHash3 (x64, 128-bit) with a fixed seed, reduced to its high
64 bits: fast (one C call), well mixed and the same everywhere.

>>> murmur3_64("user:42") == murmur3_64(b"user:42")
True
>>> 0 <= murmur3_64("user:42") < 2**64
True
"""

from __future__ import annotations

import mmh3

from scalekit.errors import ConfigurationError
from scalekit.protocols import HashFunction

__all__ = ["DEFAULT_SEED", "default_hash", "make_murmur3_64", "murmur3_32", "murmur3_64"]

DEFAULT_SEED = 0x5CA1E
"""The seed of :func:`default_hash`; changing it moves every key, so it never changes."""


def murmur3_64(data: bytes | str, seed: int = DEFAULT_SEED) -> int:
    """Return an unsigned 64-bit hash of ``data`` (``str`` is hashed as UTF-8).

    Runtime complexity: O(len(data)).
    """
    return mmh3.hash128(data, seed, signed=False) >> 64


def murmur3_32(data: bytes | str, seed: int = DEFAULT_SEED) -> int:
    """Return an unsigned 32-bit MurmurHash3 (x86) of ``data``.

    Runtime complexity: O(len(data)).
    """
    return mmh3.hash(data, seed, signed=False)


def make_murmur3_64(seed: int) -> HashFunction:
    """Return a 64-bit :class:`~scalekit.protocols.HashFunction` with its own seed.

    Two structures built with different seeds place keys independently.

    >>> h = make_murmur3_64(7)
    >>> h("k") == murmur3_64("k", 7)
    True
    """
    if not 0 <= seed < 2**32:
        raise ConfigurationError(f"seed must be in [0, 2**32), got {seed!r}")

    def hash_function(data: bytes | str) -> int:
        return mmh3.hash128(data, seed, signed=False) >> 64

    hash_function.__name__ = f"murmur3_64_seed_{seed}"
    return hash_function


default_hash: HashFunction = murmur3_64
"""The hash every scalekit structure uses unless given ``hash=``."""
