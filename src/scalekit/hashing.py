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

import hashlib
import struct
import zlib
from collections.abc import Callable, Mapping
from types import MappingProxyType

import mmh3

from scalekit.errors import ArgumentTypeError, ConfigurationError
from scalekit.protocols import HashFunction

__all__ = [
    "DEFAULT_SEED",
    "HASHKIT_HASHES",
    "Key",
    "default_hash",
    "hashkit_crc32",
    "hashkit_crc32a",
    "hashkit_fnv1_32",
    "hashkit_fnv1_64",
    "hashkit_fnv1a_32",
    "hashkit_fnv1a_64",
    "hashkit_hash",
    "hashkit_hsieh",
    "hashkit_jenkins",
    "hashkit_md5",
    "hashkit_murmur",
    "hashkit_one_at_a_time",
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


# -- the key hashes of libmemcached's hashkit, as twemproxy runs them ----------------

_M32 = 0xFFFFFFFF
_M64 = 0xFFFFFFFFFFFFFFFF


def _signed_char(byte: int, mask: int) -> int:
    """``(uintN_t)(char)byte`` on x86-64, where ``char`` is signed: bytes >= 0x80
    arrive sign-extended."""
    return byte | (mask ^ 0xFF) if byte & 0x80 else byte


# each byte as a signed char widened to 32 and 64 bits; an ASCII key skips the lookup
_CHAR32 = tuple(_signed_char(byte, _M32) for byte in range(256))
_CHAR64 = tuple(_signed_char(byte, _M64) for byte in range(256))


def _raw(key: Key) -> bytes:
    return key if type(key) is bytes else key_bytes(key)


def _fnv1(data: bytes, value: int, prime: int, mask: int, chars: tuple[int, ...]) -> int:
    """FNV-1 (multiply, then xor) in ``mask`` arithmetic; bytes are signed chars
    (``chars``), which only non-ASCII bytes need looked up."""
    if data.isascii():
        for byte in data:
            value = ((value * prime) & mask) ^ byte
    else:
        for byte in data:
            value = ((value * prime) & mask) ^ chars[byte]
    return value


def _fnv1a(data: bytes, value: int, prime: int, mask: int, chars: tuple[int, ...]) -> int:
    """FNV-1a (xor, then multiply), as :func:`_fnv1`."""
    if data.isascii():
        for byte in data:
            value = ((value ^ byte) * prime) & mask
    else:
        for byte in data:
            value = ((value ^ chars[byte]) * prime) & mask
    return value


def hashkit_md5(key: Key) -> int:
    """hashkit's ``md5``: the first 4 bytes of ``md5(key)``, little-endian.

    The same as libketama's key hash, :func:`scalekit.sharding.ketama_hash`.

    Runtime complexity: O(len(key)).

    >>> hashkit_md5("apple")  # libmemcached's tests/hash_results.h
    3195025439
    """
    return int.from_bytes(hashlib.md5(key_bytes(key)).digest()[:4], "little")


def hashkit_fnv1_64(key: Key) -> int:
    """hashkit's ``fnv1_64``: 64-bit FNV-1, its low 32 bits.

    Runtime complexity: O(len(key)).

    >>> hashkit_fnv1_64("apple")  # libmemcached's tests/hash_results.h
    473199127
    """
    return _fnv1(_raw(key), 0xCBF29CE484222325, 0x100000001B3, _M64, _CHAR64) & _M32


def hashkit_fnv1a_64(key: Key) -> int:
    """hashkit's ``fnv1a_64`` (twemproxy's default hash), which is not FNV-1a 64:
    FNV-1a in 32-bit arithmetic with the 64-bit offset basis and prime cut to
    their low 32 bits.

    Runtime complexity: O(len(key)).

    >>> hashkit_fnv1a_64("apple")  # libmemcached's tests/hash_results.h
    1488911807
    """
    return _fnv1a(_raw(key), 0x84222325, 0x1B3, _M32, _CHAR32)


def hashkit_fnv1_32(key: Key) -> int:
    """hashkit's ``fnv1_32``: 32-bit FNV-1.

    Runtime complexity: O(len(key)).

    >>> hashkit_fnv1_32("apple")  # libmemcached's tests/hash_results.h
    67176023
    """
    return _fnv1(_raw(key), 0x811C9DC5, 0x01000193, _M32, _CHAR32)


def hashkit_fnv1a_32(key: Key) -> int:
    """hashkit's ``fnv1a_32``: 32-bit FNV-1a.

    Runtime complexity: O(len(key)).

    >>> hashkit_fnv1a_32("apple")  # libmemcached's tests/hash_results.h
    280767167
    """
    return _fnv1a(_raw(key), 0x811C9DC5, 0x01000193, _M32, _CHAR32)


def hashkit_crc32(key: Key) -> int:
    """hashkit's ``crc32``, which is not CRC-32: bits 16..30 of the CRC-32, so a
    number below 32768 (libmemcached's, kept by twemproxy).

    Runtime complexity: O(len(key)).

    >>> hashkit_crc32("apple")  # libmemcached's tests/hash_results.h
    10542
    """
    return (zlib.crc32(key_bytes(key)) >> 16) & 0x7FFF


def hashkit_crc32a(key: Key) -> int:
    """hashkit's ``crc32a``: the standard CRC-32 (as :func:`zlib.crc32`).

    Runtime complexity: O(len(key)).

    >>> hex(hashkit_crc32a("123456789"))  # the CRC-32 check value
    '0xcbf43926'
    """
    return zlib.crc32(key_bytes(key))


def hashkit_murmur(key: Key) -> int:
    """hashkit's ``murmur``: MurmurHash2 (32-bit) seeded with ``0xdeadbeef * len(key)``,
    reading little-endian words.

    Runtime complexity: O(len(key)).

    >>> hashkit_murmur("apple")  # libmemcached's tests/hash_results.h
    4142305122
    """
    data = key_bytes(key)
    length = len(data) & _M32
    m = 0x5BD1E995
    value = ((0xDEADBEEF * length) & _M32) ^ length
    whole = len(data) - len(data) % 4
    for (word,) in struct.iter_unpack("<I", data[:whole]):
        word = (word * m) & _M32
        word ^= word >> 24
        value = ((value * m) & _M32) ^ ((word * m) & _M32)
    tail = data[whole:]
    if tail:
        value ^= int.from_bytes(tail, "little")
        value = (value * m) & _M32
    value ^= value >> 13
    value = (value * m) & _M32
    return value ^ (value >> 15)


def _three_words(data: bytes, offset: int) -> tuple[int, int, int]:
    words: tuple[int, int, int] = struct.unpack_from("<3I", data, offset)
    return words


def _rot(value: int, shift: int) -> int:
    return ((value << shift) | (value >> (32 - shift))) & _M32


def hashkit_jenkins(key: Key) -> int:
    """hashkit's ``jenkins``: Bob Jenkins' lookup3 ``hashlittle`` with initval 13.

    Runtime complexity: O(len(key)).

    >>> hashkit_jenkins("apple")  # libmemcached's tests/hash_results.h
    1442444624
    """
    data = key_bytes(key)
    length = len(data)
    a = b = c = (0xDEADBEEF + length + 13) & _M32
    if not length:
        return c
    offset = 0
    while length - offset > 12:
        x, y, z = _three_words(data, offset)
        a, b, c = (a + x) & _M32, (b + y) & _M32, (c + z) & _M32
        a = (a - c) & _M32 ^ _rot(c, 4)
        c = (c + b) & _M32
        b = (b - a) & _M32 ^ _rot(a, 6)
        a = (a + c) & _M32
        c = (c - b) & _M32 ^ _rot(b, 8)
        b = (b + a) & _M32
        a = (a - c) & _M32 ^ _rot(c, 16)
        c = (c + b) & _M32
        b = (b - a) & _M32 ^ _rot(a, 19)
        a = (a + c) & _M32
        c = (c - b) & _M32 ^ _rot(b, 4)
        b = (b + a) & _M32
        offset += 12
    x, y, z = _three_words(data[offset:].ljust(12, b"\0"), 0)
    a, b, c = (a + x) & _M32, (b + y) & _M32, (c + z) & _M32
    c = (c ^ b) - _rot(b, 14) & _M32
    a = (a ^ c) - _rot(c, 11) & _M32
    b = (b ^ a) - _rot(a, 25) & _M32
    c = (c ^ b) - _rot(b, 16) & _M32
    a = (a ^ c) - _rot(c, 4) & _M32
    b = (b ^ a) - _rot(a, 14) & _M32
    return (c ^ b) - _rot(b, 24) & _M32


def hashkit_one_at_a_time(key: Key) -> int:
    """hashkit's ``one_at_a_time``: Bob Jenkins' one-at-a-time hash.

    Runtime complexity: O(len(key)).

    >>> hashkit_one_at_a_time("apple")  # libmemcached's tests/hash_results.h
    2297466611
    """
    value = 0
    for byte in _raw(key):
        value = (value + _CHAR32[byte]) & _M32
        value = (value + (value << 10)) & _M32
        value ^= value >> 6
    value = (value + (value << 3)) & _M32
    value ^= value >> 11
    return (value + (value << 15)) & _M32


def hashkit_hsieh(key: Key) -> int:
    """hashkit's ``hsieh``: Paul Hsieh's SuperFastHash (0 for an empty key).

    Runtime complexity: O(len(key)).

    >>> hashkit_hsieh("apple")  # libmemcached's tests/hash_results.h
    3738850110
    """
    data = key_bytes(key)
    if not data:
        return 0
    value = 0
    whole = len(data) - len(data) % 4
    for low, high in struct.iter_unpack("<HH", data[:whole]):
        value = (value + low) & _M32
        value = ((value << 16) & _M32) ^ ((high << 11) & _M32) ^ value
        value = (value + (value >> 11)) & _M32
    tail = data[whole:]
    if len(tail) == 3:
        value = (value + (tail[0] | tail[1] << 8)) & _M32
        value ^= (value << 16) & _M32
        value ^= (_CHAR32[tail[2]] << 18) & _M32
        value = (value + (value >> 11)) & _M32
    elif len(tail) == 2:
        value = (value + (tail[0] | tail[1] << 8)) & _M32
        value ^= (value << 11) & _M32
        value = (value + (value >> 17)) & _M32
    elif len(tail) == 1:
        value = (value + tail[0]) & _M32
        value ^= (value << 10) & _M32
        value = (value + (value >> 1)) & _M32
    value ^= (value << 3) & _M32
    value = (value + (value >> 5)) & _M32
    value ^= (value << 4) & _M32
    value = (value + (value >> 17)) & _M32
    value ^= (value << 25) & _M32
    return (value + (value >> 6)) & _M32


HASHKIT_HASHES: Mapping[str, Callable[[Key], int]] = MappingProxyType(
    {
        "md5": hashkit_md5,
        "fnv1_64": hashkit_fnv1_64,
        "fnv1a_64": hashkit_fnv1a_64,
        "fnv1_32": hashkit_fnv1_32,
        "fnv1a_32": hashkit_fnv1a_32,
        "crc32": hashkit_crc32,
        "crc32a": hashkit_crc32a,
        "murmur": hashkit_murmur,
        "jenkins": hashkit_jenkins,
        "one_at_a_time": hashkit_one_at_a_time,
        "hsieh": hashkit_hsieh,
    }
)
"""The 32-bit key hashes of libmemcached's hashkit by the name twemproxy's ``hash:``
setting gives them; bytes >= 0x80 count as a signed ``char``, as on x86-64."""


def hashkit_hash(name: str) -> Callable[[Key], int]:
    """The hashkit key hash called ``name`` (see :data:`HASHKIT_HASHES`).

    Raises :class:`~scalekit.errors.ArgumentTypeError` for a name that is not a
    ``str`` and :class:`~scalekit.errors.ConfigurationError`, listing the
    choices, for an unknown one.

    Runtime complexity: O(1).

    >>> hashkit_hash("fnv1a_64")("apple")
    1488911807
    """
    if not isinstance(name, str):
        raise ArgumentTypeError(f"a hash name must be a str, not {type(name).__name__}")
    try:
        return HASHKIT_HASHES[name]
    except KeyError:
        choices = ", ".join(HASHKIT_HASHES)
        raise ConfigurationError(f"unknown hash name {name!r}; choose one of {choices}") from None
