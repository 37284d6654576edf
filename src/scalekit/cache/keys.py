"""Key functions for :func:`~scalekit.cache.cached`: turn call arguments into a cache key.

Compatible with :mod:`cachetools.keys`.

>>> hashkey(1, 2, flag=True) == hashkey(1, 2, flag=True)
True
>>> hashkey(1) == typedkey(1)
False
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

__all__ = ["hashkey", "methodkey", "typedkey"]


class _KeywordMark:
    """Separates positional from keyword arguments in a key; never equal to an argument."""


_KWMARK = (_KeywordMark,)


class _HashedTuple(tuple[Hashable, ...]):
    """A tuple that computes its hash once: keys are hashed at every cache lookup."""

    __hashvalue: int | None = None

    def __hash__(self) -> int:
        hashvalue = self.__hashvalue
        if hashvalue is None:
            self.__hashvalue = hashvalue = tuple.__hash__(self)
        return hashvalue

    def __add__(self, other: tuple[Any, ...]) -> _HashedTuple:
        return _HashedTuple(tuple(self) + tuple(other))

    def __radd__(self, other: tuple[Any, ...]) -> _HashedTuple:
        return _HashedTuple(tuple(other) + tuple(self))

    def __getstate__(self) -> dict[str, Any]:
        return {}


def hashkey(*args: Hashable, **kwargs: Hashable) -> Hashable:
    """Return a key for the call ``f(*args, **kwargs)``. Runtime complexity: O(len(args))."""
    if kwargs:
        return _HashedTuple(args + _KWMARK + tuple(sorted(kwargs.items())))
    return _HashedTuple(args)


def methodkey(self: Any, *args: Hashable, **kwargs: Hashable) -> Hashable:
    """Like :func:`hashkey`, ignoring the first argument (``self``)."""
    return hashkey(*args, **kwargs)


def typedkey(*args: Hashable, **kwargs: Hashable) -> Hashable:
    """Like :func:`hashkey`, but ``f(1)`` and ``f(1.0)`` get different keys."""
    key = hashkey(*args, **kwargs)
    return _HashedTuple(
        tuple(key)  # type: ignore[arg-type]
        + tuple(type(arg) for arg in args)
        + tuple(type(value) for _, value in sorted(kwargs.items()))
    )
