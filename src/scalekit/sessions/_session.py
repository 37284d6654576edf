"""The ``Session`` mapping, its stored record, ids, serialization and merging."""

from __future__ import annotations

import json
import math
import re
import secrets
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from scalekit.errors import SessionConflict, SessionCorrupted

__all__ = [
    "JSON",
    "Record",
    "Serializer",
    "Session",
    "expires_at",
    "merge",
    "new_id",
    "valid_id",
]

_ID = re.compile(r"[A-Za-z0-9_-]{43}\Z")
_MISSING: Any = object()


def new_id() -> str:
    """A new session id: 256 random bits from :mod:`secrets`, URL-safe (43 chars)."""
    return secrets.token_urlsafe(32)


def valid_id(session_id: object) -> bool:
    """Whether ``session_id`` has the shape of an id this library makes."""
    return isinstance(session_id, str) and _ID.match(session_id) is not None


class Serializer:
    """JSON: the session data must be a mapping of str to JSON values. Never pickle."""

    name = "json"
    _dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode

    def dumps(self, data: Mapping[str, Any]) -> bytes:
        try:
            return self._dumps(data).encode()
        except (TypeError, ValueError) as exc:
            raise TypeError(f"session values must be JSON values: {exc}") from None

    def loads(self, raw: bytes) -> dict[str, Any]:
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, ValueError) as exc:
            raise SessionCorrupted(f"a stored session is not JSON ({exc})") from None
        if not isinstance(data, dict):
            raise SessionCorrupted(f"a stored session is a {type(data).__name__}, not an object")
        return data


JSON = Serializer()


@dataclass(frozen=True)
class Record:
    """A session as a store keeps it."""

    data: bytes
    version: int
    created_at: float
    accessed_at: float


def expires_at(
    created_at: float, accessed_at: float, idle: float | None, absolute: float | None
) -> float:
    """When a session expires: ``idle`` seconds after its last use or ``absolute``
    seconds after its creation, whichever comes first (None: no such limit)."""
    return min(
        math.inf if idle is None else accessed_at + idle,
        math.inf if absolute is None else created_at + absolute,
    )


def _encoded(value: Any) -> str:
    try:
        return JSON._dumps(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"session values must be JSON values: {exc}") from None


class Session(MutableMapping[str, Any]):
    """One user's session: a mutable mapping of str keys to JSON values.

    It notes what each key held the first time it is used (read, set or deleted),
    so a save knows which keys this request changed or deleted, nested changes too
    (``session["cart"].append(...)``), and merges only those onto a newer version
    saved by a concurrent request. Keys a request never uses cost nothing.
    """

    __slots__ = (
        "_data",
        "_original",
        "accessed_at",
        "created_at",
        "expires_at",
        "id",
        "is_new",
        "version",
    )

    def __init__(
        self,
        session_id: str,
        data: dict[str, Any],
        *,
        version: int,
        created_at: float,
        accessed_at: float,
        expires_at: float,
        is_new: bool = False,
    ) -> None:
        self.id = session_id
        self._data = data
        self.version = version
        self.created_at = created_at
        self.accessed_at = accessed_at
        self.expires_at = expires_at
        self.is_new = is_new
        # key -> its JSON when first used (None: absent then)
        self._original: dict[str, str | None] = {}

    # -- the mapping --------------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        value = self._data[key]
        if key not in self._original:
            self._original[key] = _encoded(value)
        return value

    def get(self, key: str, default: Any = None) -> Any:
        if key in self._data:
            return self[key]
        return default

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def _note(self, key: str) -> None:
        if key not in self._original:
            value = self._data.get(key, _MISSING)
            self._original[key] = None if value is _MISSING else _encoded(value)

    def __setitem__(self, key: str, value: Any) -> None:
        if not isinstance(key, str):
            raise TypeError(f"session keys are str, got {type(key).__name__}")
        _encoded(value)  # refuse what cannot be stored now, not at save time
        self._note(key)
        self._data[key] = value

    def __delitem__(self, key: str) -> None:
        if key not in self._data:
            raise KeyError(key)
        self._note(key)
        del self._data[key]

    # -- what changed ---------------------------------------------------------

    def changes(self) -> tuple[dict[str, Any], set[str]]:
        """``(changed, deleted)``: keys set to a different value since loading, with
        their values, and keys deleted."""
        changed: dict[str, Any] = {}
        deleted: set[str] = set()
        data = self._data
        for key, original in self._original.items():
            value = data.get(key, _MISSING)
            if value is _MISSING:
                if original is not None:
                    deleted.add(key)
            elif _encoded(value) != original:
                changed[key] = value
        return changed, deleted

    @property
    def modified(self) -> bool:
        """Whether a save would store anything (a new session always would)."""
        if self.is_new:
            return True
        changed, deleted = self.changes()
        return bool(changed or deleted)

    def to_dict(self) -> dict[str, Any]:
        """A deep copy of the data."""
        return json.loads(JSON._dumps(self._data))  # type: ignore[no-any-return]

    def _saved(
        self, data: dict[str, Any], version: int, accessed_at: float, expires: float
    ) -> None:
        """The store saved ``data`` as ``version``: it is the new baseline. Keys used
        so far are noted again now: the caller may still hold their values."""
        self._data = data
        self._original = {key: _encoded(data[key]) for key in self._original if key in data}
        self.version = version
        self.accessed_at = accessed_at
        self.expires_at = expires
        self.is_new = False

    def __repr__(self) -> str:
        return f"<Session {self.id[:8]}... v{self.version} {len(self._data)} keys>"


def merge(session: Session, current: dict[str, Any]) -> dict[str, Any]:
    """``current`` (saved meanwhile by another request) with this request's changes
    applied: its changed keys set, its deleted keys removed. Raises
    :class:`SessionConflict` if the other request changed one of those keys too,
    to another value."""
    changed, deleted = session.changes()
    merged = dict(current)
    for key, value in changed.items():
        theirs = current.get(key, _MISSING)
        if theirs is not _MISSING and _encoded(theirs) == _encoded(value):
            continue  # both made the same change
        if _differs(session, key, theirs):
            raise SessionConflict(
                f"session {session.id[:8]}...: key {key!r} was changed by another request",
                key=key,
            )
        merged[key] = value
    for key in deleted:
        theirs = current.get(key, _MISSING)
        if theirs is _MISSING:
            continue
        if _differs(session, key, theirs):
            raise SessionConflict(
                f"session {session.id[:8]}...: key {key!r} was deleted here "
                "and changed by another request",
                key=key,
            )
        del merged[key]
    return merged


def _differs(session: Session, key: str, theirs: Any) -> bool:
    """Whether the other request changed ``key`` from what this one loaded."""
    original = session._original.get(key)
    if theirs is _MISSING:
        return original is not None
    return original != _encoded(theirs)
