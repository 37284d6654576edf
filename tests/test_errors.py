from __future__ import annotations

import pytest

from scalekit import errors
from scalekit.errors import (
    BackendError,
    CapacityError,
    ClosedError,
    ConfigurationError,
    DuplicateNode,
    ItemTooLarge,
    NoNodeAvailable,
    ScalekitError,
    UnknownNode,
)


@pytest.mark.parametrize(
    ("error", "builtin"),
    [
        (ConfigurationError, ValueError),
        (NoNodeAvailable, LookupError),
        (ItemTooLarge, ValueError),
        (ClosedError, RuntimeError),
        (UnknownNode, KeyError),
        (DuplicateNode, ValueError),
    ],
)
def test_errors_are_also_the_builtin_users_catch(
    error: type[Exception], builtin: type[Exception]
) -> None:
    with pytest.raises(builtin):
        raise error("boom")
    with pytest.raises(ScalekitError):
        raise error("boom")


def test_every_error_descends_from_scalekit_error_and_is_drawn_in_the_tree() -> None:
    doc = errors.__doc__ or ""
    for name in errors.__all__:
        error = getattr(errors, name)
        assert issubclass(error, ScalekitError)
        assert name in doc, f"{name} is missing from the tree in scalekit.errors"


def test_item_too_large_is_a_capacity_error() -> None:
    assert issubclass(ItemTooLarge, CapacityError)


def test_backend_error_keeps_the_cause_and_the_backend() -> None:
    cause = ConnectionResetError("peer went away")

    def fetch() -> None:
        try:
            raise cause
        except ConnectionResetError as exc:
            raise BackendError("get failed", backend="redis") from exc

    with pytest.raises(BackendError) as info:
        fetch()
    assert info.value.__cause__ is cause
    assert info.value.backend == "redis"
    assert str(info.value) == "get failed"
