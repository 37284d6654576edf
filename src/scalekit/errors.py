"""The exceptions scalekit raises.

Every error is a :class:`ScalekitError`, so ``except ScalekitError`` catches all of
them. Each child also subclasses the builtin a Python user would already catch for
that situation, so code written against the standard library keeps working::

    Exception
     +-- ScalekitError
          +-- ConfigurationError      (also ValueError)   bad argument or setting
          |    +-- DuplicateNode                          the node is already there
          +-- ArgumentTypeError       (also TypeError)    an argument of the wrong type
          +-- NoNodeAvailable         (also LookupError)  nothing to route a key to
          |    +-- NoBackendAvailable                     every backend is down or ejected
          +-- UnknownNode             (also KeyError)     no such node to remove
          +-- CapacityError                               a size limit was reached
          |    +-- ItemTooLarge       (also ValueError)   one item can never fit
          |    +-- QueueFull                              a bounded queue stayed full
          |    +-- SessionTooLarge    (also ValueError)   a session over max_bytes
          +-- ClosedError             (also RuntimeError) used after close()
          +-- ReentrantCall           (also RecursionError) a cached call waits on itself
          +-- DeliveryExpired                             a message delivery was
          |                                               settled or timed out before
          +-- SessionConflict                             two requests changed one key
          +-- SessionCorrupted        (also ValueError)   a stored session is not ours
          +-- BackendError                                a storage backend failed;
               |                                          the cause is ``__cause__``
               +-- IncompatibleStore                      not a store of ours, or damaged
               +-- ShardUnavailable                       some keys' shards failed

A cache miss stays a plain :class:`KeyError`. Building blocks add their own
children under these (for example a full queue is a :class:`CapacityError`).
Errors raised by a backend library (redis-py, SQLAlchemy, sqlite3) are wrapped in
:class:`BackendError` with ``raise BackendError(...) from exc``, so the original
error and its traceback are never lost.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ArgumentTypeError",
    "BackendError",
    "CapacityError",
    "ClosedError",
    "ConfigurationError",
    "DeliveryExpired",
    "DuplicateNode",
    "IncompatibleStore",
    "ItemTooLarge",
    "NoBackendAvailable",
    "NoNodeAvailable",
    "QueueFull",
    "ReentrantCall",
    "ScalekitError",
    "SessionConflict",
    "SessionCorrupted",
    "SessionTooLarge",
    "ShardUnavailable",
    "UnknownNode",
]


class ScalekitError(Exception):
    """The root of every error scalekit raises."""


class ConfigurationError(ScalekitError, ValueError):
    """An argument or setting is invalid (a negative size, a zero TTL, ...).

    Raised before anything is changed, so the object it was raised from is intact.
    """


class DuplicateNode(ConfigurationError):
    """A node, backend or replica was added twice."""


class ArgumentTypeError(ScalekitError, TypeError):
    """An argument has the wrong type (a ``bool`` where a count goes, ``None`` where a
    name goes, an unhashable node). The message names the argument and the types it
    takes. Raised before anything is changed."""


class NoNodeAvailable(ScalekitError, LookupError):
    """There is no node, backend or replica to route to."""


class NoBackendAvailable(NoNodeAvailable):
    """A balancer has no backend to pick; the message says why (none, all down...)."""


class UnknownNode(ScalekitError, KeyError):
    """A node, backend or replica that is not there was named (to remove it, say)."""

    def __str__(self) -> str:  # KeyError would print repr(message)
        return str(self.args[0]) if self.args else ""


class CapacityError(ScalekitError):
    """A size limit was reached (a full queue, a full pool)."""


class ItemTooLarge(CapacityError, ValueError):
    """A single item is larger than the container's whole capacity."""


class QueueFull(CapacityError):
    """A bounded queue had no room for the message within the timeout (backpressure)."""


class ClosedError(ScalekitError, RuntimeError):
    """The object was used after it was closed."""


class ReentrantCall(ScalekitError, RecursionError):
    """A memoized function called itself, through its cache, with the same key while
    that call was in flight: waiting for its own result would block forever."""


class DeliveryExpired(ScalekitError):
    """A message delivery can no longer be acked, nacked or extended.

    Its visibility timeout ran out (the message is, or will be, delivered again) or
    it was already settled by ``nack``/``reject``. The work may have been done twice:
    at-least-once delivery means handlers must be idempotent.
    """


class BackendError(ScalekitError):
    """A storage backend failed.

    The backend's own exception is chained as ``__cause__``; ``backend`` names the
    backend that failed (``"redis"``, ``"sqlite"``, ...).
    """

    def __init__(self, message: str, *, backend: str | None = None) -> None:
        super().__init__(message)
        self.backend = backend


class IncompatibleStore(BackendError):
    """The database or file is not a scalekit store of this kind, is from an
    incompatible version, or is damaged. Nothing was changed in it."""


class ShardUnavailable(BackendError):
    """Some keys' shards (and their replicas) failed; the other keys were served.

    ``found`` holds what the call read from the shards that answered (for
    ``get_many``); ``failed`` maps each key that failed to the error of the last
    node tried for it. The first of those errors is the ``__cause__``.
    """

    def __init__(
        self, message: str, *, found: dict[str, Any], failed: dict[str, BaseException]
    ) -> None:
        super().__init__(message, backend="sharded")
        self.found = found
        self.failed = failed


class SessionTooLarge(ItemTooLarge):
    """A session's serialized data exceeds the store's ``max_bytes``; nothing was stored."""


class SessionConflict(ScalekitError):
    """Two requests changed the same key of one session at once (or the session was
    deleted meanwhile); the save stored nothing. ``key`` names the key, if one."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class SessionCorrupted(ScalekitError, ValueError):
    """A stored session record is not what scalekit writes (not JSON: a pickle, a
    damaged row). It was not decoded any further and nothing in it was executed."""
