"""The ``Session`` mapping, its stored record, ids, serialization and merging."""

from __future__ import annotations

import json
import math
import re
import secrets
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, Literal

from scalekit._json import dumps as fast_dumps
from scalekit._json import loads as fast_loads
from scalekit._validate import check_choice, check_name, check_number, check_str, type_name
from scalekit.errors import ArgumentTypeError, ConfigurationError, SessionConflict, SessionCorrupted

__all__ = [
    "JSON",
    "POLICIES",
    "Policy",
    "Record",
    "Serializer",
    "Session",
    "expires_at",
    "merge",
    "new_id",
    "valid_id",
]

Policy = Literal["conflict", "max", "last_write_wins"]
POLICIES: tuple[Policy, ...] = ("conflict", "max", "last_write_wins")
"""How a save merges a key that this request changed and another request changed
too: ``"conflict"`` (the default: :class:`SessionConflict`, equal values or not),
``"max"`` (the larger of the two numbers, or strings; for values that only grow,
such as a read-your-writes token), ``"last_write_wins"`` (this request's value,
asked for by name only)."""

_ID = re.compile(r"[A-Za-z0-9_-]{43}\Z")
_MISSING: Any = object()


def new_id() -> str:
    """A new session id: 256 random bits from :mod:`secrets`, URL-safe (43 chars)."""
    return secrets.token_urlsafe(32)


def valid_id(session_id: object) -> bool:
    """Whether ``session_id`` has the shape of an id this library makes."""
    return isinstance(session_id, str) and _ID.match(session_id) is not None


class Serializer:
    """JSON: the session data must be a mapping of str to JSON values. Never pickle.

    Through orjson when it is installed (the ``fast`` extra), with the same text
    and values as the standard library's ``json`` (see ``scalekit._json``)."""

    name = "json"
    _dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode

    def dumps(self, data: Mapping[str, Any]) -> bytes:
        try:
            return fast_dumps(data)
        except (TypeError, ValueError) as exc:
            raise ArgumentTypeError(f"session values must be JSON values: {exc}") from None

    def loads(self, raw: bytes) -> dict[str, Any]:
        try:
            data = fast_loads(raw)  # this store writes UTF-8 only
        except ValueError as exc:
            raise SessionCorrupted(f"a stored session is not JSON ({exc})") from None
        if not isinstance(data, dict):
            raise SessionCorrupted(f"a stored session is a {type(data).__name__}, not an object")
        return data


JSON = Serializer()


@dataclass(frozen=True, slots=True)
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


_encode_str = json.encoder.encode_basestring  # what the encoder uses with ensure_ascii=False
_SCALARS = {None: "null", True: "true", False: "false"}


def _encoded(value: Any) -> str:
    """``value`` as JSON text, or :class:`ArgumentTypeError` (also ``TypeError``) if
    it is not a JSON value that UTF-8 can carry (a lone surrogate cannot).

    A str, int, bool or None is encoded directly, as ``json`` would (the common
    session value, noted on every use: this saves the encoder's own overhead)."""
    kind = type(value)
    try:
        if kind is str:
            text: str = _encode_str(value)
        elif kind is int:
            text = int.__repr__(value)
        elif value is None or kind is bool:
            text = _SCALARS[value]
        else:
            text = JSON._dumps(value)
        if not text.isascii():
            text.encode()
    except (TypeError, ValueError) as exc:
        raise ArgumentTypeError(f"session values must be JSON values: {exc}") from None
    return text


def _check_key(key: object) -> str:
    """A session key: a str that UTF-8 can carry (``""`` included)."""
    text = check_str(key, "session key", allow_empty=True)
    if text and not text.isascii():
        check_name(text, "session key")
    return text


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_policies(policies: object) -> dict[str, Policy]:
    """``policies`` as a dict of session key to merge policy (see :data:`POLICIES`);
    None is no policy. Raises naming the bad key or policy.

    >>> check_policies({"rw_token": "max"})
    {'rw_token': 'max'}
    """
    if policies is None:
        return {}
    if not isinstance(policies, Mapping):
        raise ArgumentTypeError(
            f"policies must be a mapping of session key to policy, got {type_name(policies)}"
        )
    checked: dict[str, Policy] = {}
    for key, policy in policies.items():
        checked[_check_key(key)] = check_choice(policy, f"policies[{key!r}]", POLICIES)
    return checked


class Session(MutableMapping[str, Any]):
    """One user's session: a mutable mapping of str keys to JSON values.

    It notes what each key held the first time it is used (read, set or deleted),
    so a save knows which keys this request changed or deleted, nested changes too
    (``session["cart"].append(...)``), and merges only those onto a newer version
    saved by a concurrent request. Keys a request never uses cost nothing.
    :meth:`increment` records a delta instead, which a merge adds to the stored
    number.
    """

    __slots__ = (
        "_data",
        "_deltas",
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
        # key -> the sum of increment() calls, for keys changed by nothing else
        self._deltas: dict[str, int | float] = {}

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
        if type(key) is not str or not key.isascii():
            _check_key(key)
        _encoded(value)  # refuse what cannot be stored now, not at save time
        if key not in self._original:
            self._note(key)
        if self._deltas:
            self._deltas.pop(key, None)  # a plain write: merged as one
        self._data[key] = value

    def __delitem__(self, key: str) -> None:
        if key not in self._data:
            raise KeyError(key)
        self._note(key)
        self._deltas.pop(key, None)
        del self._data[key]

    def increment(self, key: str, by: int | float = 1) -> int | float:
        """Add ``by`` to the number under ``key`` (absent: 0) and return the sum.

        Unlike ``session[key] += by``, the save merges increments: if another request
        saved meanwhile, this request's total ``by`` is added to the stored number,
        so concurrent increments add up instead of conflicting. A key this request
        also sets or deletes is merged as a plain write.

        Raises :class:`~scalekit.errors.ArgumentTypeError` if the stored value is not
        a number, and for a ``by`` that is not an ``int`` or ``float`` (``bool`` is
        not); :class:`~scalekit.errors.ConfigurationError` for NaN, infinity, or a
        sum that is not finite. Nothing changes then.

        Runtime complexity: O(1) (O(size of the value) the first time a key is used).

        >>> session = Session("x" * 43, {}, version=1, created_at=0.0,
        ...                   accessed_at=0.0, expires_at=60.0)
        >>> session.increment("visits"), session.increment("visits", by=2)
        (1, 3)
        """
        _check_key(key)
        check_number(by, "by")
        current = self._data.get(key, 0)
        if not _is_number(current):
            raise ArgumentTypeError(
                f"session[{key!r}] holds a {type_name(current)}, not a number to increment"
            )
        total: int | float = current + by
        if not math.isfinite(total):
            raise ConfigurationError(f"session[{key!r}] + {by!r} is not a finite number")
        written = key not in self._deltas and self._written(key)
        self._note(key)
        self._data[key] = total
        if not written:
            self._deltas[key] = self._deltas.get(key, 0) + by
        return total

    def _written(self, key: str) -> bool:
        """Whether ``key`` holds another value than it was loaded with."""
        original = self._original.get(key, _MISSING)
        if original is _MISSING:
            return False
        value = self._data.get(key, _MISSING)
        return bool((None if value is _MISSING else _encoded(value)) != original)

    # -- what changed ---------------------------------------------------------

    def changes(self) -> tuple[dict[str, Any], set[str]]:
        """``(changed, deleted)``: keys set to a different value since loading, with
        their values, and keys deleted."""
        changed, deleted, _ = self._changes()
        return changed, deleted

    def _changes(self) -> tuple[dict[str, Any], set[str], dict[str, str]]:
        """:meth:`changes`, and the JSON of each changed key's value."""
        changed: dict[str, Any] = {}
        deleted: set[str] = set()
        encoded: dict[str, str] = {}
        data = self._data
        for key, original in self._original.items():
            value = data.get(key, _MISSING)
            if value is _MISSING:
                if original is not None:
                    deleted.add(key)
            else:
                text = _encoded(value)
                if text != original:
                    changed[key] = value
                    encoded[key] = text
        return changed, deleted, encoded

    @property
    def modified(self) -> bool:
        """Whether a save would store anything (a new session always would)."""
        if self.is_new:
            return True
        changed, deleted, _ = self._changes()
        return bool(changed or deleted)

    def to_dict(self) -> dict[str, Any]:
        """A deep copy of the data."""
        return json.loads(JSON._dumps(self._data))  # type: ignore[no-any-return]

    def _saved(
        self,
        data: dict[str, Any],
        version: int,
        accessed_at: float,
        expires: float,
        encoded: dict[str, str] | None = None,
    ) -> None:
        """The store saved ``data`` as ``version``: it is the new baseline. Keys used
        so far are noted again now: the caller may still hold their values. With
        ``encoded`` (what :meth:`_changes` gave, ``data`` being this session's data
        unmerged), a noted key keeps its JSON or takes the one there, unencoded again."""
        self._data = data
        original = self._original
        if encoded is None:
            self._original = {key: _encoded(data[key]) for key in original if key in data}
        else:
            original.update(encoded)
            if len(original) != len(encoded):  # some noted keys are unchanged or gone
                for key in [key for key in original if key not in data]:
                    del original[key]
        self._deltas = {}
        self.version = version
        self.accessed_at = accessed_at
        self.expires_at = expires
        self.is_new = False

    def __repr__(self) -> str:
        return f"<Session {self.id[:8]}... v{self.version} {len(self._data)} keys>"

    def _check(self) -> None:
        """Assert the internal invariants (for tests).

        Runtime complexity: O(size of the keys used)."""
        assert isinstance(self._data, dict)
        assert self.version >= 0
        assert self.is_new == (self.version == 0) or not self.is_new
        for key, original in self._original.items():
            assert isinstance(key, str)
            assert original is None or isinstance(original, str)
        for key, delta in self._deltas.items():
            # only a key noted when first used, holding a number, can carry a delta
            assert key in self._original, key
            assert _is_number(delta), delta
            assert _is_number(self._data.get(key)), key


def merge(
    session: Session, current: dict[str, Any], policies: Mapping[str, Policy] | None = None
) -> dict[str, Any]:
    """``current`` (saved meanwhile by another request) with this request's changes
    applied: its changed keys set, its deleted keys removed, its increments added.

    A key this request set or deleted whose value in ``current`` is no longer the
    one this request loaded was changed by the other request too: that is a
    :class:`SessionConflict`, whether the two values are equal or not (two
    requests that read ``n == 5`` and both write 6 made two increments), unless
    ``policies`` names the key: ``"max"`` keeps the larger of two numbers (or two
    strings), ``"last_write_wins"`` keeps this request's value. A key changed only
    by :meth:`Session.increment` gets the stored number plus this request's total.

    Runtime complexity: O(size of the keys this request used).
    """
    changed, deleted = session.changes()
    merged = dict(current)
    deltas = session._deltas
    for key, value in changed.items():
        theirs = current.get(key, _MISSING)
        delta = deltas.get(key)
        if delta is not None:
            merged[key] = _added(session, key, theirs, delta)
        elif not _differs(session, key, theirs):
            merged[key] = value
        else:
            merged[key] = _resolved(session, key, value, theirs, policies)
    for key in deleted:
        theirs = current.get(key, _MISSING)
        if _differs(session, key, theirs) and (policies or {}).get(key) != "last_write_wins":
            raise _conflict(session, key, "deleted here and changed by another request")
        if theirs is not _MISSING:
            del merged[key]
    return merged


def _conflict(session: Session, key: str, what: str) -> SessionConflict:
    return SessionConflict(f"session {session.id[:8]}...: key {key!r} was {what}", key=key)


def _added(session: Session, key: str, theirs: Any, delta: int | float) -> int | float:
    """The stored number under ``key`` plus this request's increments."""
    if theirs is _MISSING:
        if session._original.get(key) is not None:
            raise _conflict(session, key, "incremented here and deleted by another request")
        return delta
    if not _is_number(theirs):
        raise _conflict(session, key, "incremented here and set to a non-number by another request")
    total = theirs + delta
    if not math.isfinite(total):
        raise _conflict(session, key, "incremented past a finite number")
    return total  # type: ignore[no-any-return]


def _resolved(
    session: Session, key: str, ours: Any, theirs: Any, policies: Mapping[str, Policy] | None
) -> Any:
    """The merged value of a key both requests changed, by its policy."""
    policy = (policies or {}).get(key, "conflict")
    if policy == "last_write_wins":
        return ours
    if policy == "max" and theirs is not _MISSING:
        if _is_number(ours) and _is_number(theirs):
            return max(ours, theirs)
        if isinstance(ours, str) and isinstance(theirs, str):
            return max(ours, theirs)
    raise _conflict(session, key, "changed by another request")


def _differs(session: Session, key: str, theirs: Any) -> bool:
    """Whether the other request changed ``key`` from what this one loaded."""
    original = session._original.get(key)
    if theirs is _MISSING:
        return original is not None
    return original != _encoded(theirs)
