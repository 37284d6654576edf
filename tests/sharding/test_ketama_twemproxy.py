"""KetamaRing's twemproxy options without a server: hashkit's key hashes against
libmemcached's published vectors, twemproxy's point count against the C compiler,
and the ring against a plain model of ``ketama_update``/``ketama_dispatch``.

The proof against a running twemproxy is in test_twemproxy_compat.py.
"""

from __future__ import annotations

import json
import pickle
import random
import shutil
import subprocess
from bisect import bisect_left
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scalekit.errors import ArgumentTypeError, ConfigurationError
from scalekit.hashing import HASHKIT_HASHES, hashkit_hash, hashkit_md5
from scalekit.sharding import KetamaRing, ShardingScheme
from scalekit.sharding._ketama import hash_count, ketama_hash

# libmemcached's tests/hash_results.h: list_to_hash and the value of each hash.
WORDS = "apple beat carrot daikon eggplant flower green hide ick jack kick lime mushrooms"
WORDS += " nectarine orange peach quant ripen strawberry tang up volumne when yellow zip"
LIBMEMCACHED_VALUES = {
    "one_at_a_time": """
        2297466611 3902465932 469785835 1937308741 261917617 3785641677 1439605128
        1649152283 1493851484 1246520657 2221159044 1973511823 384136800 214358653
        2379473940 4269788650 2864377005 2638630052 427683330 990491717 1747111141 792127364
        2599214128 2553037199 2509838425""",
    "md5": """
        3195025439 2556848621 3724893440 3332385401 245758794 2550894432 121710495
        3053817768 1250994555 1862072655 2631955953 2951528551 1451250070 2820856945
        2060845566 3646985608 2138080750 217675895 2230934345 1234361223 3968582726
        2455685270 1293568479 199067604 2042482093""",
    "crc32": """
        10542 22009 14526 19510 19432 10199 20634 9369 11511 10362 7893 31289 11313 9354
        7621 30628 15218 25967 2695 9380 17300 28156 9192 20484 16925""",
    "fnv1_64": """
        473199127 4148981457 3971873300 3257986707 1722477987 2991193800 4147007314
        3633179701 1805162104 3503289120 3395702895 3325073042 2345265314 3340346032
        2722964135 1173398992 2815549194 2562818319 224996066 2680194749 3035305390
        246890365 2395624193 4145193337 1801941682""",
    "fnv1a_64": """
        1488911807 2500855813 1510099634 1390325195 3647689787 3241528582 1669328060
        2604311949 734810122 1516407546 560948863 1767346780 561034892 4156330026 3716417003
        3475297030 1518272172 227211583 3938128828 126112909 3043416448 3131561933
        1328739897 2455664041 2272238452""",
    "fnv1_32": """
        67176023 1190179409 2043204404 3221866419 2567703427 3787535528 4147287986
        3500475733 344481048 3865235296 2181839183 119581266 510234242 4248244304 1362796839
        103389328 1449620010 182962511 3554262370 3206747549 1551306158 4127558461
        1889140833 2774173721 1180552018""",
    "fnv1a_32": """
        280767167 2421315013 3072375666 855001899 459261019 3521085446 18738364 1625305005
        2162232970 777243802 3323728671 132336572 3654473228 260679466 1169454059 2698319462
        1062177260 235516991 2218399068 405302637 1128467232 3579622413 2138539289 96429129
        2877453236""",
    "hsieh": """
        3738850110 3636226060 3821074029 3489929160 3485772682 80540287 1805464076
        1895033657 409795758 979934958 3634096985 1284445480 2265380744 707972988 353823508
        1549198350 1327930172 9304163 4220749037 2493964934 2777873870 2057831732 1510213931
        2027828987 3395453351""",
    "murmur": """
        4142305122 734504955 3802834688 4076891445 387802650 560515427 3274673488 3150339524
        1527441970 2728642900 3613992239 2938419259 2321988328 1145154116 4038540960
        2224541613 264013145 3995512858 2400956718 2346666219 926327338 442757446 1770805201
        560483147 3902279934""",
    "jenkins": """
        1442444624 4253821186 1885058256 2120131735 3261968576 3515188778 4232909173
        4288625128 1812047395 3689182164 2502979932 1214050606 2415988847 1494268927
        1025545760 3920481083 4153263658 3824871822 3072759809 798622255 3065432577
        1453328165 2691550971 3408888387 2629893356""",
}
RNG = random.Random(14)
KEYS = [f"user:{RNG.getrandbits(40)}" for _ in range(2_000)]


@pytest.mark.parametrize("name", sorted(LIBMEMCACHED_VALUES))
def test_hashkit_hashes_give_libmemcacheds_values(name: str) -> None:
    function = hashkit_hash(name)
    expected = [int(value) for value in LIBMEMCACHED_VALUES[name].split()]
    assert [function(word) for word in WORDS.split()] == expected
    assert [function(word.encode()) for word in WORDS.split()] == expected


def test_crc32a_is_the_standard_crc32_and_md5_is_ketamas_hash() -> None:
    assert HASHKIT_HASHES["crc32a"]("123456789") == 0xCBF43926
    assert HASHKIT_HASHES["crc32"]("123456789") == (0xCBF43926 >> 16) & 0x7FFF
    assert all(hashkit_md5(key) == ketama_hash(key) for key in KEYS[:200])


def _fnv1a_32_textbook(data: bytes, *, signed_char: bool = False) -> int:
    value = 0x811C9DC5
    for byte in data:
        if signed_char and byte >= 0x80:
            byte |= 0xFFFFFF00
        value = ((value ^ byte) * 0x01000193) % 2**32
    return value


@given(st.binary(max_size=40))
def test_a_byte_above_0x7f_is_a_signed_char(data: bytes) -> None:
    # hashkit reads a key through `char`, signed on x86-64: 0x80..0xff arrive as
    # 0xffffff80..0xffffffff (test_twemproxy_compat shows nutcracker agrees).
    value = HASHKIT_HASHES["fnv1a_32"](data)
    assert value == _fnv1a_32_textbook(data, signed_char=True)
    if all(byte < 0x80 for byte in data):
        assert value == _fnv1a_32_textbook(data)


def test_a_high_byte_hashes_unlike_the_textbook() -> None:
    assert HASHKIT_HASHES["fnv1a_32"](b"\xe9") != _fnv1a_32_textbook(b"\xe9")


@pytest.mark.parametrize("name", sorted(HASHKIT_HASHES))
@given(data=st.binary(max_size=64))
def test_hashkit_hashes_are_unsigned_32_bit_and_take_every_key_form(name: str, data: bytes) -> None:
    function = hashkit_hash(name)
    value = function(data)
    assert 0 <= value < 2**32
    assert function(bytearray(data)) == value == function(memoryview(data))
    text = data.decode("latin-1")
    assert function(text) == function(text.encode("utf-8", "surrogatepass"))


def test_unknown_and_mistyped_hash_names_are_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"fnv1a_64.*hsieh") as info:
        hashkit_hash("sha1")
    assert "md5" in str(info.value)
    with pytest.raises(ArgumentTypeError):
        hashkit_hash(None)  # type: ignore[arg-type]
    with pytest.raises(ArgumentTypeError):
        HASHKIT_HASHES["md5"](4.5)  # type: ignore[arg-type]


# -- twemproxy's point count ------------------------------------------------------------


def test_the_point_counts_the_issue_names() -> None:
    assert hash_count(21, 40, 3, points="twemproxy") == 63  # 252 points
    assert hash_count(21, 40, 3) == 62  # 248 points
    differ = [
        n for n in range(1, 101) if hash_count(1, n, n) != hash_count(1, n, n, points="twemproxy")
    ]
    assert differ == [25, 47, 50, 55, 71, 94, 100]
    assert KetamaRing({"a": 21, "b": 10, "c": 9}, points="twemproxy").points_of("a") == 252


def test_twemproxys_point_count_against_the_c_compiler(tmp_path: Path) -> None:
    """twemproxy's expression (nc_ketama.c), compiled: 3,000 random cases and
    every pool of 1 to 999 equal servers."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to evaluate twemproxy's expression with")
    source = tmp_path / "pps.c"
    source.write_text(
        "#include <stdio.h>\n#include <math.h>\n"
        "int main(void){unsigned int w,t,n;"
        'while(scanf("%u %u %u",&w,&t,&n)==3){float pct=(float)w/(float)t;'
        "unsigned int pps=(unsigned int)((floorf((float)(pct*160/4*(float)n+0.0000000001)))*4);"
        'printf("%u\\n",pps);}return 0;}\n'
    )
    binary = tmp_path / "pps"
    subprocess.run([compiler, "-O2", "-o", str(binary), str(source), "-lm"], check=True)
    rng = random.Random(5)
    cases = [(1, n, n) for n in range(1, 1000)]
    for _ in range(2000):
        n = rng.randint(1, 300)
        weight = rng.randint(1, 10 ** rng.randint(1, 5))
        cases.append((weight, weight + rng.randint(n - 1, (n - 1) * 10 ** rng.randint(0, 4)), n))
    given_input = "\n".join(f"{w} {t} {n}" for w, t, n in cases)
    run = subprocess.run([str(binary)], input=given_input, capture_output=True, text=True)
    expected = [int(line) for line in run.stdout.split()]
    assert len(expected) == len(cases)
    assert [4 * hash_count(*case, points="twemproxy") for case in cases] == expected


# -- the ring against a plain model of twemproxy ------------------------------------------


def _model_node(nodes: dict[str, int], hash_name: str, key: str) -> str:
    """ketama_update then ketama_dispatch, written out plainly."""
    import hashlib
    import struct

    total, count = sum(nodes.values()), len(nodes)
    continuum: list[tuple[int, int]] = []
    for index, (name, weight) in enumerate(nodes.items()):
        for k in range(hash_count(weight, total, count, points="twemproxy")):
            digest = hashlib.md5(f"{name}-{k}".encode()).digest()
            continuum += [(value, index) for value in struct.unpack("<4I", digest)]
    continuum.sort(key=lambda item: item[0])  # stable, as glibc's qsort: server order
    values = [value for value, _ in continuum]
    at = bisect_left(values, hashkit_hash(hash_name)(key)) % len(continuum)
    return list(nodes)[continuum[at][1]]


@given(
    weights=st.lists(st.integers(1, 200), min_size=1, max_size=8),
    hash_name=st.sampled_from(sorted(HASHKIT_HASHES)),
    changes=st.lists(st.tuples(st.sampled_from(["add", "remove", "weight"]), st.integers(1, 60))),
)
def test_any_history_places_keys_as_the_model(
    weights: list[int], hash_name: str, changes: list[tuple[str, int]]
) -> None:
    nodes = {f"127.0.0.1:{22000 + i}": w for i, w in enumerate(weights)}
    ring = KetamaRing(nodes, points="twemproxy", hash=hash_name)
    fresh = 100
    for change, weight in changes:
        if change == "add":
            ring.add(f"cache{fresh}", weight)
            fresh += 1
        elif change == "remove" and len(ring) > 1:
            ring.remove(ring.nodes[weight % len(ring)])
        else:
            ring.set_weight(ring.nodes[weight % len(ring)], weight)
        ring._check()
    final = {node: int(ring.weight_of(node)) for node in ring.nodes}
    for key in KEYS[:40]:
        assert ring.node_for(key) == _model_node(final, hash_name, key)
        assert ring.nodes_for(key, 1) == [ring.node_for(key)]
        assert ring.hash_of(key) == hashkit_hash(hash_name)(key)


@pytest.mark.parametrize("hash_name", ["fnv1a_64", "murmur", "md5"])
def test_plans_follow_the_chosen_key_hash(hash_name: str) -> None:
    ring = KetamaRing(
        {f"10.0.0.{i}": w for i, w in enumerate([3, 1, 4, 1, 5])},
        points="twemproxy",
        hash=hash_name,
    )
    plan = ring.plan_add("10.0.0.9", 2)
    ring.add("10.0.0.9", 2)
    moved = {key for key in KEYS if plan.move_for(key) is not None}
    assert moved == {key for key in KEYS if plan.before.node_for(key) != ring.node_for(key)}
    assert moved


def test_the_settings_survive_to_dict_pickle_and_copy() -> None:
    ring = KetamaRing({"a": 2, "b": 1, "c": 1}, points="twemproxy", hash="murmur")
    spec = ring.to_dict()
    assert spec["settings"] == {"points": "twemproxy", "hash": "murmur"}
    for clone in (
        ShardingScheme.from_dict(json.loads(json.dumps(spec))),
        pickle.loads(pickle.dumps(ring)),
        ring.copy(),
    ):
        assert isinstance(clone, KetamaRing)
        assert (clone.points, clone.hash) == ("twemproxy", "murmur")
        assert [clone.node_for(k) for k in KEYS[:300]] == [ring.node_for(k) for k in KEYS[:300]]
        clone._check()
    default = KetamaRing(["a"]).to_dict()["settings"]
    assert default == {"points": "libketama", "hash": "md5"}
    old = {"scheme": "KetamaRing", "epoch": 0, "settings": {}, "nodes": [["a", 1]]}
    assert ShardingScheme.from_dict(old).to_dict()["settings"] == default


def test_bad_options_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="'libketama', 'twemproxy'"):
        KetamaRing(["a"], points="libmemcached")
    with pytest.raises(ArgumentTypeError):
        KetamaRing(["a"], points=None)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="choose one of md5, fnv1_64"):
        KetamaRing(["a"], hash="fnv1a")
    with pytest.raises(ArgumentTypeError):
        KetamaRing(["a"], hash=b"md5")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        hash_count(1, 2, 2, points="twem")
    ring = KetamaRing(["a", "b"], points="twemproxy", hash="crc32")
    with pytest.raises(ArgumentTypeError, match="str, bytes or int"):
        ring.node_for(4.2)  # type: ignore[arg-type]
    assert ring.node_for(42) == ring.node_for("42") == ring.node_for(b"42")
    ring._check()
