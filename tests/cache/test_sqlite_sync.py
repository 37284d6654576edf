"""``SQLiteInvalidation.sync()`` and ``TieredCache.sync()`` on one SQLite file: a
barrier behind every change published before it, without waiting for the next
poll."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from scalekit.cache import LRUCache, SQLiteCache, SQLiteInvalidation, TieredCache
from scalekit.errors import ArgumentTypeError, ConfigurationError


def _server(path: Path, interval: float) -> tuple[TieredCache[Any], SQLiteInvalidation]:
    shared: SQLiteCache[Any] = SQLiteCache(path)
    channel = SQLiteInvalidation(shared, interval=interval)
    cache: TieredCache[Any] = TieredCache(LRUCache(100), shared, invalidation=channel)
    assert channel.wait_ready(5)
    return cache, channel


@pytest.mark.parametrize("synced", [False, True])
def test_a_read_after_another_processs_write_is_fresh_after_sync(
    tmp_path: Path, synced: bool
) -> None:
    writer, writer_channel = _server(tmp_path / "c.db", interval=5.0)
    reader, reader_channel = _server(tmp_path / "c.db", interval=5.0)  # polls every 5 s
    try:
        writer.set("k", 1)
        assert reader.sync()  # the reader polled past this write: its next poll is 5 s away
        assert reader.get("k") == 1  # in the reader's l1
        writer.set("k", 2)
        if synced:
            started = time.monotonic()
            assert reader.sync(timeout=5) is True
            assert time.monotonic() - started < 2.0  # it polled at once, not at the next tick
            assert reader.get("k") == 2
        else:
            assert reader.get("k") == 1  # stale until the next poll: what sync() is for
    finally:
        for cache, channel in ((writer, writer_channel), (reader, reader_channel)):
            cache.close()
            channel.close()


def test_sync_is_false_when_not_polling(tmp_path: Path) -> None:
    channel = SQLiteInvalidation(tmp_path / "c.db")
    try:
        assert channel.sync() is False  # nothing attached: no listener
    finally:
        channel.close()


@pytest.mark.parametrize(
    ("timeout", "error"),
    [(-1, ConfigurationError), (float("nan"), ConfigurationError), (True, ArgumentTypeError)],
)
def test_a_bad_timeout_is_refused(tmp_path: Path, timeout: Any, error: type) -> None:
    channel = SQLiteInvalidation(tmp_path / "c.db")
    try:
        with pytest.raises(error, match="timeout"):
            channel.sync(timeout)
    finally:
        channel.close()
