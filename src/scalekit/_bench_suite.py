"""``scalekit bench``: every block's headline comparison, one table of ratios.

Each comparison times scalekit and the library a user would otherwise pick in the
same process, interleaved (alternating batches, :func:`scalekit._bench_timing.interleaved_ratio`),
and keeps the median of the per-round ratios **scalekit time / rival time**
(below 1: scalekit is faster). The workloads are those of ``benchmarks/``
(:mod:`scalekit._bench`); the claim beside each ratio is the figure
``docs/performance.md`` publishes, or the target a block is held to.

A rival that is not installed, or a comparison that needs a server not given,
becomes a row saying so; nothing here asserts a ratio.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

from scalekit._bench_timing import interleaved_ratio

__all__ = ["BLOCKS", "HEADER", "Row", "Settings", "format_table", "run_blocks"]


@dataclass(frozen=True)
class Row:
    """One comparison: seconds per operation of each side and their ratio, or,
    when it could not run, ``note`` saying why (the figures are then ``None``)."""

    block: str
    what: str
    ours: float | None
    rival: float | None
    ratio: float | None
    claim: str
    note: str = ""

    @property
    def met(self) -> bool | None:
        """Whether the ratio meets a target claim (``<= x``, ``< x``); None for a
        published figure, no claim, or no ratio."""
        bound, _, figure = self.claim.partition(" ")
        if self.ratio is None or bound not in ("<=", "<"):
            return None
        limit = float(figure)
        return self.ratio <= limit if bound == "<=" else self.ratio < limit

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "met": self.met}


@dataclass(frozen=True)
class Settings:
    """How long to measure: ``rounds`` alternating rounds per comparison (the
    median of their ratios counts), fewer if ``seconds`` pass first (a loaded
    machine shortens the run rather than stretch it); ``redis_url`` enables the
    Redis comparisons."""

    rounds: int = 201
    seconds: float | None = 4.0
    redis_url: str | None = None

    @property
    def quick(self) -> bool:
        return self.rounds < 201


class _Skip(Exception):
    """A comparison that cannot run here; its message becomes the row's note."""


def _not_installed(package: str) -> _Skip:
    return _Skip(f"rival not installed (pip install {package})")


def _ratio(
    ours: Callable[[], Any],
    rival: Callable[[], Any],
    settings: Settings,
    *,
    ops: int,
    batch: int = 1,
) -> tuple[float, float, float]:
    """Seconds per operation of each (a call does ``ops`` operations) and the ratio."""
    ours_s, rival_s, ratio = interleaved_ratio(
        ours, rival, rounds=settings.rounds, batch=batch, seconds=settings.seconds
    )
    return ours_s / ops, rival_s / ops, ratio


Comparison = Callable[[Settings], tuple[float, float, float]]


# -- cache ---------------------------------------------------------------------------


def _cache_pair(policy: str, workload: str) -> Comparison:
    def compare(settings: Settings) -> tuple[float, float, float]:
        from scalekit import _bench

        try:
            theirs = _bench.cache_factories("cachetools")[policy]
        except ImportError:
            raise _not_installed("cachetools") from None
        ours = _bench.cache_factories("scalekit")[policy]
        build = _bench.WORKLOADS[workload]
        return _ratio(build(ours), build(theirs), settings, ops=_bench.BATCH)

    return compare


def tiered_l1_workloads(
    l1_ttl: float | None = None,
) -> tuple[Callable[[], None], Callable[[], None], Any]:
    """Hits of 1,000 keys on a TieredCache's l1 and on a plain LRUCache (both with
    ``l1_ttl``, so both read the clock or neither), and the TieredCache
    (``benchmarks/bench_scale_out.py`` times the same)."""
    from scalekit.cache import LRUCache, TieredCache

    keys = [f"user:{i}:profile" for i in range(1_000)]
    plain: LRUCache[str, str] = LRUCache(1_000, ttl=l1_ttl)
    near: TieredCache[str] = TieredCache(LRUCache(1_000), LRUCache(2_000), l1_ttl=l1_ttl)
    for key in keys:
        plain[key] = key
        near.set(key, key)
    get_plain, get_near = plain.get, near.get

    def ours() -> None:
        for key in keys:
            get_near(key)

    def rival() -> None:
        for key in keys:
            get_plain(key)

    return ours, rival, near


def _tiered_l1_hit(settings: Settings) -> tuple[float, float, float]:
    ours, rival, _ = tiered_l1_workloads()
    return _ratio(ours, rival, settings, ops=1_000, batch=2)


@contextmanager
def _redis(settings: Settings) -> Iterator[tuple[Any, str]]:
    """A redis-py client on ``--redis URL`` and a private key prefix, whose keys
    are deleted afterwards."""
    if settings.redis_url is None:
        raise _Skip("needs a Redis server: pass --redis URL")
    try:
        import redis
    except ImportError:
        raise _not_installed("redis") from None
    try:
        client = redis.Redis.from_url(settings.redis_url)
    except ValueError as exc:
        raise _Skip(f"--redis URL refused: {exc}") from None
    prefix = f"scalekit-bench:{uuid.uuid4().hex}:"
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        raise _Skip(f"no answer from the Redis at --redis URL: {exc}") from None
    try:
        yield client, prefix
    finally:
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.delete(*keys)
        client.close()


def _redis_cache_get(settings: Settings) -> tuple[float, float, float]:
    from scalekit._json import dumps
    from scalekit.cache import RedisCache

    value = {"id": 48213, "name": "Ada Lovelace", "roles": ["customer"], "score": 9.5}
    with _redis(settings) as (client, prefix):
        cache: RedisCache[Any] = RedisCache(client, prefix=prefix + "ours:", ttl=600)
        cache.set("k", value)
        client.set(prefix + "raw", dumps(value), px=600_000)
        key = prefix + "raw"
        return _ratio(lambda: cache.get("k"), lambda: client.get(key), settings, ops=1, batch=20)


# -- sharding ------------------------------------------------------------------------


def _sqlite_cache_get(settings: Settings) -> tuple[float, float, float]:
    """A hit of a small JSON object among 1,000 with a TTL, on files of one folder."""
    from scalekit.cache import SQLiteCache

    try:
        import diskcache
    except ImportError:
        raise _not_installed("diskcache") from None
    value = {"id": 48213, "name": "Ada Lovelace", "roles": ["customer"], "score": 9.5}
    with tempfile.TemporaryDirectory(prefix="scalekit-bench-") as folder:
        ours: SQLiteCache[Any] = SQLiteCache(f"{folder}/ours.db", ttl=600)
        rival = diskcache.Cache(f"{folder}/diskcache")
        try:
            ours.set_many({f"k{i}": value for i in range(1000)})
            for i in range(1000):
                rival.set(f"k{i}", value, expire=600)
            return _ratio(lambda: ours.get("k7"), lambda: rival.get("k7"), settings, ops=1)
        finally:
            ours.close()
            rival.close()


def _lookup(scheme: str) -> Comparison:
    def compare(settings: Settings) -> tuple[float, float, float]:
        from scalekit import _bench

        try:
            pairs = {name: (ours, theirs) for name, ours, theirs in _bench.lookup_pairs()}
        except ImportError:
            raise _not_installed("uhashring") from None
        ours, theirs = pairs[scheme]
        keys = _bench.LOOKUP_KEYS[:2_000]
        return _ratio(
            lambda: [ours(key) for key in keys],
            lambda: [theirs(key) for key in keys],
            settings,
            ops=len(keys),
        )

    return compare


# -- balancing -----------------------------------------------------------------------


def _lease(kind: str, size: int) -> Comparison:
    def compare(settings: Settings) -> tuple[float, float, float]:
        from scalekit._bench import lease_workload, make_balancer

        leases = 200
        ours = lease_workload(make_balancer(kind, size), leases)
        naive = lease_workload(make_balancer("naive min()", size), leases)
        return _ratio(ours, naive, settings, ops=leases)

    return compare


# -- mq ------------------------------------------------------------------------------


def _mq_memory(settings: Settings) -> tuple[float, float, float]:
    from scalekit._bench import MQ_BATCH, mq_memory_workload, queue_queue_workload

    return _ratio(mq_memory_workload(), queue_queue_workload(), settings, ops=MQ_BATCH)


def _mq_sqlite(settings: Settings) -> tuple[float, float, float]:
    from scalekit import _bench

    try:
        import persistqueue  # noqa: F401
    except ImportError:
        raise _not_installed("persist-queue") from None
    messages = 20 if settings.quick else 50
    with tempfile.TemporaryDirectory(prefix="scalekit-bench-") as folder:
        body = _bench.MQ_JSON_BODY
        ours = _bench.mq_sqlite_workload(f"{folder}/mq.db", "FULL", messages, body=body)
        theirs = _bench.persist_queue_workload(f"{folder}/pq", messages, body=body)
        # whole runs in alternating order, after both write-ahead logs passed a checkpoint
        rounds = max(3, settings.rounds // 3) | 1
        ours_s, theirs_s, theirs_over_ours = _bench.interleaved_ratio(
            ours, theirs, rounds=rounds, warmup=1 if settings.quick else 3, seconds=settings.seconds
        )
    # the median of an odd number of ratios: its inverse is the median of the inverses
    return ours_s / messages, theirs_s / messages, 1 / theirs_over_ours


# -- replication ---------------------------------------------------------------------


def _routing_overhead(settings: Settings) -> tuple[float, float, float]:
    try:
        from sqlalchemy import create_engine, text
        from sqlalchemy.orm import Session
    except ImportError:
        raise _not_installed("sqlalchemy") from None
    from scalekit.replication import ReplicaRouter
    from scalekit.replication.sqlalchemy import routing_sessionmaker

    with tempfile.TemporaryDirectory(prefix="scalekit-bench-") as folder:
        primary, *replicas = [create_engine(f"sqlite:///{folder}/{n}.db") for n in "pab"]
        try:
            router = ReplicaRouter(primary, replicas, read_your_writes=None)
            # routed reads run in autocommit on a replica: the plain session does too
            plain_engine = replicas[0].execution_options(isolation_level="AUTOCOMMIT")
            select_1 = text("SELECT 1")
            with routing_sessionmaker(router)() as routed, Session(plain_engine) as plain:
                return _ratio(
                    lambda: routed.execute(select_1).scalar_one(),
                    lambda: plain.execute(select_1).scalar_one(),
                    settings,
                    ops=1,
                    batch=20,
                )
        finally:
            for engine in (primary, *replicas):
                engine.dispose()


# -- web -----------------------------------------------------------------------------


def _web_hit(rival: str) -> Comparison:
    def compare(settings: Settings) -> tuple[float, float, float]:
        import asyncio

        from scalekit import _bench_web as web
        from scalekit.web import CacheMiddleware, HttpCache

        loop = asyncio.new_event_loop()
        try:
            cached = CacheMiddleware(web.page_app(), HttpCache())
            headers, bare = web.capture_hit(cached, loop)
            if not headers.get("cache-status", "").startswith("scalekit; hit"):
                raise AssertionError(f"not a hit: {headers}")
            if rival == "bare":
                ours, theirs = web.runner(cached, loop, 20), web.runner(bare, loop, 20)
                return _ratio(ours, theirs, settings, ops=20)
            try:
                import hishel  # noqa: F401
            except ImportError:
                raise _not_installed("hishel") from None
            with tempfile.TemporaryDirectory(prefix="scalekit-bench-") as folder:
                other = web.hishel_app(folder)
                try:
                    web.capture_hit(other, loop)
                    ours, theirs = web.runner(cached, loop, 5), web.runner(other, loop, 5)
                    return _ratio(ours, theirs, settings, ops=5)
                finally:
                    loop.run_until_complete(other.aclose())
        finally:
            loop.close()

    return compare


# -- sessions ------------------------------------------------------------------------

_SESSION: dict[str, Any] = {
    "user_id": 48213,
    "name": "Ada Lovelace",
    "roles": ["customer", "beta-tester", "reviewer"],
    "cart": [{"sku": f"SKU-{i:05d}", "qty": i % 3 + 1, "price": 9.99 + i} for i in range(8)],
    "recent": [f"/products/{i * 7919 % 10000}/reviews" for i in range(12)],
    "prefs": {"theme": "dark", "page_size": 50, "currency": "GBP"},
    "counter": 0,
}


def _redis_session(settings: Settings) -> tuple[float, float, float]:
    from scalekit._json import dumps
    from scalekit.sessions import RedisSessionStore

    with _redis(settings) as (client, prefix):
        store = RedisSessionStore(client, prefix=prefix)
        session_id = store.create(_SESSION).id
        raw_key, raw = prefix + "raw", dumps(_SESSION)
        client.set(raw_key, raw)

        def request() -> None:
            session = store.load(session_id)
            assert session is not None
            session["counter"] += 1
            store.save(session)

        def raw_pair() -> None:
            client.set(raw_key, client.get(raw_key))

        return _ratio(request, raw_pair, settings, ops=1, batch=10)


def _asgi_sessions(settings: Settings) -> tuple[float, float, float]:
    import asyncio

    try:
        import itsdangerous  # noqa: F401 - Starlette's sessions sign with it
        import starlette  # noqa: F401
    except ImportError:
        raise _not_installed("starlette itsdangerous") from None
    from scalekit import _bench_web as web

    loop = asyncio.new_event_loop()
    try:
        ours = web.session_runner("scalekit", loop, 20)
        theirs = web.session_runner("starlette", loop, 20)
        return _ratio(ours, theirs, settings, ops=20)
    finally:
        loop.close()


# -- the table -----------------------------------------------------------------------

BLOCKS: dict[str, list[tuple[str, str, Comparison]]] = {
    "cache": [
        ("LRUCache get(key) hit / cachetools", "0.44", _cache_pair("LRU", "get(key) hit")),
        ("LRUCache set, evicting / cachetools", "0.37", _cache_pair("LRU", "set with eviction")),
        ("TTLCache get(key) hit / cachetools", "0.15", _cache_pair("TTL", "get(key) hit")),
        ("TTLCache set, evicting / cachetools", "0.22", _cache_pair("TTL", "set with eviction")),
        ("TieredCache l1 hit / LRUCache.get hit", "<= 1.5", _tiered_l1_hit),
        ("RedisCache.get hit / redis-py get", "<= 1.3", _redis_cache_get),
        ("SQLiteCache.get hit / diskcache", "<= 1.0", _sqlite_cache_get),
    ],
    "sharding": [
        ("HashRing.node_for / uhashring", "0.15", _lookup("HashRing")),
        ("KetamaRing.node_for / uhashring ketama", "0.44", _lookup("KetamaRing")),
        ("MaglevHash.node_for / uhashring", "0.18", _lookup("MaglevHash")),
    ],
    "balancing": [
        ("LeastConnections lease, 1,000 / naive min()", "0.19", _lease("LeastConnections", 1000)),
        ("RoundRobin lease, 1,000 / naive min()", "0.05", _lease("RoundRobin", 1000)),
        ("LeastConnections lease, 10 / naive min()", "7.1", _lease("LeastConnections", 10)),
    ],
    "replication": [
        ("RoutingSession SELECT 1 / SQLAlchemy Session, SQLite", "< 1.05", _routing_overhead),
    ],
    "mq": [
        ("memory put+get+ack / queue.Queue put+get", "0.85", _mq_memory),
        ("SQLite FULL put+get+ack / persist-queue", "0.79", _mq_sqlite),
    ],
    "web": [
        ("HttpCache hit in-process / app sending its bytes", "11.8", _web_hit("bare")),
        ("HttpCache hit in-process / hishel ASGI hit", "<= 0.2", _web_hit("hishel")),
    ],
    "sessions": [
        ("SessionMiddleware request, memory / Starlette's", "-", _asgi_sessions),
        ("RedisSessionStore load+save / redis-py GET+SET", "1.55", _redis_session),
    ],
}
"""block -> (what, claim, comparison) in table order."""


def run_blocks(
    blocks: list[str], settings: Settings, progress: Callable[[Row], None] | None = None
) -> list[Row]:
    """Run the comparisons of ``blocks`` in order; ``progress`` sees each row as it ends."""
    rows = []
    for block in blocks:
        for what, claim, compare in BLOCKS[block]:
            try:
                ours, rival, ratio = compare(settings)
            except _Skip as skip:
                row = Row(block, what, None, None, None, claim, str(skip))
            except Exception as exc:  # reported in its row; the other comparisons go on
                row = Row(block, what, None, None, None, claim, f"error: {exc!r}")
            else:
                row = Row(block, what, ours, rival, ratio, claim)
            rows.append(row)
            if progress is not None:
                progress(row)
    return rows


def _duration(seconds: float) -> str:
    if seconds < 1e-6:
        return f"{seconds * 1e9:.0f} ns"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    return f"{seconds * 1e3:.2f} ms"


HEADER = (
    "ratio = scalekit time / rival time per operation, both timed in the same run in\n"
    "alternating rounds (median of the per-round ratios): below 1, scalekit is faster.\n"
    "claim: the ratio docs/performance.md publishes, or the target (<=, <) it is held to (-: none)."
)


def format_table(rows: list[Row]) -> str:
    """The rows as a text table (figures per operation)."""
    width = max([len(row.what) for row in rows] + [4])
    lines = [
        f"{'block':<12}{'what':<{width}}  {'scalekit':>10}  {'rival':>10}  {'ratio':>6}  claim"
    ]
    for row in rows:
        head = f"{row.block:<12}{row.what:<{width}}  "
        if row.ratio is None or row.ours is None or row.rival is None:
            lines.append(f"{head}{'-':>10}  {'-':>10}  {'-':>6}  {row.claim:<7} {row.note}")
        else:
            missed = "  MISSED (a loaded machine? run it again)" if row.met is False else ""
            lines.append(
                f"{head}{_duration(row.ours):>10}  {_duration(row.rival):>10}  "
                f"{row.ratio:>6.2f}  {row.claim}{missed}"
            )
    return "\n".join(lines)
