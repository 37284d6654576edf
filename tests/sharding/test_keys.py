"""Keys every sharder accepts, and the one that crashed the interpreter (issue 13, item 1).

mmh3 5.3.1 segfaults on a ``str`` holding a lone surrogate. Each case runs in a
subprocess, so a crash fails the test instead of ending the test run.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from scalekit.sharding import (
    HashRing,
    JumpHash,
    KetamaRing,
    MaglevHash,
    RendezvousHash,
    SlotMap,
)

SHARDERS = {
    "HashRing": "HashRing(NODES)",
    "HashRing-custom-hash": "HashRing(NODES, hash=make_murmur3_64(7))",
    "KetamaRing": "KetamaRing(NODES)",
    "JumpHash": "JumpHash(NODES)",
    "MaglevHash": "MaglevHash(NODES, table_size=251)",
    "SlotMap": "SlotMap(NODES)",
    "SlotMap-redis": "SlotMap.redis_cluster(NODES)",
    "RendezvousHash": "RendezvousHash(NODES)",
    "RendezvousHash-weighted": "RendezvousHash({n: i + 1 for i, n in enumerate(NODES)})",
}

PROGRAM = """
from scalekit.hashing import key_bytes, make_murmur3_64
from scalekit.sharding import *

for NODES in (["a", "b", "c"], ["\\ud800node", "n\\udfff", "\\udcff" * 3]):
    sharder = {expr}
    sharder.add("\\ud801x")
    for key in ("\\ud800", "x\\udfffy", "\\udcff" * 5, "\\ud83d"):
        owner = sharder.node_for(key)
        assert owner == sharder.node_for(key_bytes(key)), key
        assert sharder.nodes_for(key, 3)[0] == owner
        plan = sharder.plan_add("\\ud802new")
        plan.move_for(key)
        BoundedLoads(sharder).acquire(key)
        HotKeyRouter(sharder, HotKeyDetector(4), replicas=2).read_node(key)
    for probe in ("hash_of", "slot_of", "table_index"):
        if hasattr(sharder, probe):
            getattr(sharder, probe)("\\ud800")
    sharder._check()
print("ok")
"""


@pytest.mark.parametrize("expr", list(SHARDERS.values()), ids=list(SHARDERS))
def test_a_lone_surrogate_key_or_node_name_does_not_crash(expr: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(PROGRAM.format(expr=expr))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    assert result.stdout.strip() == "ok"


ALL = [
    HashRing,
    KetamaRing,
    JumpHash,
    lambda nodes: MaglevHash(nodes, table_size=251),
    SlotMap,
    SlotMap.redis_cluster,
    RendezvousHash,
]


@pytest.mark.parametrize("make", ALL)
def test_an_int_key_is_the_key_of_its_digits(make: object) -> None:
    sharder = make([f"n{i}" for i in range(7)])  # type: ignore[operator]
    for number in (0, 1, 42, -3, 2**64, 10**50):
        assert sharder.node_for(number) == sharder.node_for(str(number))
        assert sharder.nodes_for(number, 3) == sharder.nodes_for(f"{number}".encode(), 3)
    with pytest.raises(TypeError, match="str, bytes or int"):
        sharder.node_for(True)
    with pytest.raises(TypeError, match="str, bytes or int"):
        sharder.node_for(4.0)


def test_valid_text_is_placed_as_its_utf8_bytes() -> None:
    """Encoding every key did not move any valid key: str, its UTF-8 and a fresh
    str object agree, for ASCII and non-ASCII text, in each scheme."""
    keys = ["user:1", "café", "ключ", "键", "😀", "", "a" * 300]
    for make in ALL:
        sharder = make(["a", "b", "c", "d"])  # type: ignore[operator]
        for key in keys:
            assert sharder.node_for(key) == sharder.node_for(key.encode("utf-8"))
