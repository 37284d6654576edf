"""Stable hash functions for placing keys.

Placement must agree across processes and machines, so scalekit never uses the
builtin :func:`hash`, which is randomized per process for ``str`` and ``bytes``.
The default is MurmurHash3 (x64, 128-bit) with a fixed seed, reduced to its high
64 bits: fast (one C call), well mixed and the same everywhere.

Every ``str`` is encoded here, by :func:`key_bytes`, before it reaches a C hash:
UTF-8 with ``surrogatepass``, so valid text hashes exactly as Redis, libketama and
uhashring hash it, and a lone surrogate (which JSON allows and
``surrogateescape``-decoded input carries) hashes as its own bytes instead of
reaching mmh3, which crashes the interpreter on it. An ``int`` key hashes as its
decimal digits, as Redis and memcached see a key that a client sends as a number.

>>> murmur3_64("user:42") == murmur3_64(b"user:42")
True
>>> 0 <= murmur3_64("user:42") < 2**64
True
>>> murmur3_64(42) == murmur3_64("42")
True
>>> key_bytes("\\ud800")
b'\\xed\\xa0\\x80'
"""

from __future__ import annotations

import mmh3

from scalekit.errors import ArgumentTypeError, ConfigurationError
from scalekit.protocols import HashFunction

__all__ = [
    "DEFAULT_SEED",
    "Key",
    "default_hash",
    "key_bytes",
    "make_murmur3_64",
    "murmur3_32",
    "murmur3_64",
]

DEFAULT_SEED = 0x5CA1E
"""The seed of :func:`default_hash`; changing it moves every key, so it never changes."""

Key = str | bytes | int
"""What a key placed by a hash may be: text, bytes, or an integer (not ``bool``)."""

_hash128 = mmh3.hash128
_hash32 = mmh3.hash


def key_bytes(key: object) -> bytes:
    """Return the bytes a key is hashed as.

    ``bytes`` as they are (a ``bytearray`` or ``memoryview`` copied), ``str`` as UTF-8
    with ``surrogatepass`` (identical to plain UTF-8 for valid text), ``int`` as its
    decimal digits. Anything else, ``bool`` included, raises
    :class:`~scalekit.errors.ArgumentTypeError` naming the accepted types.

    Runtime complexity: O(len(key)).

    >>> key_bytes("é"), key_bytes(b"k"), key_bytes(-7)
    (b'\\xc3\\xa9', b'k', b'-7')
    """
    if isinstance(key, bytes):
        return key
    if isinstance(key, str):
        try:
            return key.encode()
        except UnicodeEncodeError:
            return key.encode("utf-8", "surrogatepass")
    if isinstance(key, int) and not isinstance(key, bool):
        try:
            return b"%d" % key
        except ValueError:  # more digits than sys.get_int_max_str_digits() allows
            raise ConfigurationError(
                f"an int key has too many digits to hash ({key.bit_length()} bits)"
            ) from None
    if isinstance(key, (bytearray, memoryview)):
        return bytes(key)
    raise ArgumentTypeError(f"a key must be str, bytes or int, not {type(key).__name__}")


def murmur3_64(data: Key, seed: int = DEFAULT_SEED) -> int:
    """Return an unsigned 64-bit hash of ``data`` (encoded by :func:`key_bytes`).

    Runtime complexity: O(len(data)).
    """
    try:
        return _hash128(data if type(data) is bytes else key_bytes(data), seed, signed=False) >> 64
    except (TypeError, ValueError, OverflowError):
        _check_seed(seed)  # a bad seed is named; otherwise the key's error stands
        raise


def murmur3_32(data: Key, seed: int = DEFAULT_SEED) -> int:
    """Return an unsigned 32-bit MurmurHash3 (x86) of ``data`` (encoded by :func:`key_bytes`).

    Runtime complexity: O(len(data)).
    """
    try:
        return _hash32(data if type(data) is bytes else key_bytes(data), seed, signed=False)
    except (TypeError, ValueError, OverflowError):
        _check_seed(seed)
        raise


def _check_seed(seed: object) -> int:
    """``seed`` if it is an int in ``[0, 2**32)``; the error of a bad one otherwise."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ArgumentTypeError(f"seed must be an int, got {type(seed).__name__}")
    if not 0 <= seed < 2**32:
        raise ConfigurationError(f"seed must be in [0, 2**32), got {seed!r}")
    return seed


def make_murmur3_64(seed: int) -> HashFunction:
    """Return a 64-bit :class:`~scalekit.protocols.HashFunction` with its own seed.

    Two structures built with different seeds place keys independently.

    >>> h = make_murmur3_64(7)
    >>> h("k") == murmur3_64("k", 7)
    True
    """
    _check_seed(seed)

    def hash_function(data: Key, /) -> int:
        raw = data if type(data) is bytes else key_bytes(data)
        return _hash128(raw, seed, signed=False) >> 64

    hash_function.__name__ = f"murmur3_64_seed_{seed}"
    return hash_function


default_hash: HashFunction = murmur3_64
"""The hash every scalekit structure uses unless given ``hash=``."""
