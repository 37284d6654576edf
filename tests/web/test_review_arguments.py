"""Review: hostile arguments to the web cache's public methods."""

from __future__ import annotations

import asyncio

import pytest

from scalekit.errors import ConfigurationError
from scalekit.web import HttpCache


@pytest.mark.parametrize("tag", ["a b", " ", "a\tb", " a", "a\n", "a\u3000b"])
def test_a_tag_no_surrogate_key_can_hold_is_refused_by_purge(tag: str) -> None:
    # Surrogate-Key: "a b" is the tags a and b; purge("a b") purged nothing, silently
    cache = HttpCache()
    with pytest.raises(ConfigurationError, match="tag"):
        cache.purge(tag)
    with pytest.raises(ConfigurationError, match="tag"):
        asyncio.run(cache.purge_async(tag))
    assert cache.stats().purges == 0
    assert cache.store.get(cache.purges_key()) is None
