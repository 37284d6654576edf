"""scalekit.testing.check_queue_backend catches a broken backend, and passes a
sound one in one call (its checks also run one by one in the queue contract)."""

from __future__ import annotations

from typing import Any

import pytest

from scalekit.mq import MemoryBackend
from scalekit.mq._memory import _MemoryQueue
from scalekit.testing import check_queue_backend


def test_the_memory_backend_passes() -> None:
    check_queue_backend(MemoryBackend)


class _ForgetsDeadLetters(MemoryBackend):
    """A broken backend: rejecting deletes instead of dead-lettering."""

    def open_queue(self, *args: Any, **kwargs: Any) -> Any:
        queue = super().open_queue(*args, **kwargs)
        assert isinstance(queue, _MemoryQueue)
        queue._bury = lambda delivery, reason: None  # type: ignore[method-assign]
        return queue


def test_a_broken_backend_fails_naming_the_check() -> None:
    with pytest.raises(AssertionError, match="check_dead_letters_and_redrive"):
        check_queue_backend(_ForgetsDeadLetters)


class _RedrivesPastMaxsize(MemoryBackend):
    """A broken backend: redrive ignores a bounded queue's room (as it did before)."""

    def open_queue(self, *args: Any, **kwargs: Any) -> Any:
        queue = super().open_queue(*args, **kwargs)
        assert isinstance(queue, _MemoryQueue)
        redrive = queue.redrive

        def unbounded_redrive(limit: int | None = None) -> int:
            maxsize, queue.maxsize = queue.maxsize, None
            try:
                return redrive(limit)
            finally:
                queue.maxsize = maxsize

        queue.redrive = unbounded_redrive  # type: ignore[method-assign]
        return queue


def test_a_redrive_past_maxsize_fails_naming_the_check() -> None:
    with pytest.raises(AssertionError, match="check_redrive_into_a_bounded_queue"):
        check_queue_backend(_RedrivesPastMaxsize)
