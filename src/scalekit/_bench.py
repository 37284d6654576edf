"""Workloads shared by ``benchmarks/`` and ``scalekit bench``: scalekit against its rivals.

Each workload is a zero-argument function doing ``BATCH`` operations, built for
one library's cache; the same workload is built for the rival so the two can be
timed side by side and compared as a ratio.
"""

from __future__ import annotations

import random
import statistics
import time
import timeit
from collections import OrderedDict
from collections.abc import Callable, Iterator, MutableMapping
from itertools import cycle
from typing import Any

__all__ = [
    "BALANCER_KINDS",
    "BALANCER_SIZES",
    "BATCH",
    "CACHE_SIZE",
    "LOOKUP_KEYS",
    "MQ_BATCH",
    "MQ_JSON_BODY",
    "POLICIES",
    "WORKLOADS",
    "FloorTTLCache",
    "NaiveLeastConnections",
    "balancer_costs",
    "cache_factories",
    "compare_caches",
    "compare_hit_ratios",
    "compare_lookups",
    "get_hit_workload",
    "getitem_hit_workload",
    "hit_ratio",
    "interleaved_ratio",
    "lease_workload",
    "lookup_pairs",
    "make_balancer",
    "measure",
    "mq_memory_workload",
    "mq_sqlite_workload",
    "persist_queue_workload",
    "queue_queue_workload",
    "set_evict_workload",
    "sharding_quality",
    "wakeup_latency",
    "zipf_trace",
]

CACHE_SIZE = 1_000
BATCH = 10_000
POLICIES = ("LRU", "LFU", "FIFO", "TTL")
TTL = 3_600.0

_rng = random.Random(20261125)
HOT_KEYS = [f"user:{i}:profile" for i in range(CACHE_SIZE)]
READS = [_rng.choice(HOT_KEYS) for _ in range(BATCH)]
NEW_KEYS = [f"item:{i}" for i in range(20 * BATCH)]

Factory = Callable[[], MutableMapping[str, Any]]


def cache_factories(library: str) -> dict[str, Factory]:
    """``policy -> factory`` of a 1,000-entry cache of ``library`` (scalekit or cachetools)."""
    module: Any
    if library == "scalekit":
        import scalekit.cache as module
    elif library == "cachetools":
        import cachetools as module
    else:
        raise ValueError(f"unknown library {library!r}")
    return {
        "LRU": lambda: module.LRUCache(CACHE_SIZE),
        "LFU": lambda: module.LFUCache(CACHE_SIZE),
        "FIFO": lambda: module.FIFOCache(CACHE_SIZE),
        "TTL": lambda: module.TTLCache(CACHE_SIZE, TTL),
    }


class FloorTTLCache:
    """The least a correct TTL cache can do on a hit, in Python: the yardstick of a hit.

    An ordered dict in LRU order, a dict of deadlines, and ``_next_expiry``, at most
    the earliest deadline. A hit is one lookup, one clock read compared with
    ``_next_expiry`` and one ``move_to_end``; only once the clock reaches
    ``_next_expiry`` does a read look at the key's own deadline, so that an expired
    item is never returned. Writes evict the least recently used item; nothing is
    purged ahead of time. Not part of scalekit's API: benchmarks only.

    Runtime complexity: O(1) for a read and a write.
    """

    __slots__ = ("_data", "_deadlines", "_maxsize", "_next_expiry", "_timer", "_ttl")

    def __init__(
        self, maxsize: int, ttl: float, timer: Callable[[], float] = time.monotonic
    ) -> None:
        self._data: OrderedDict[Any, Any] = OrderedDict()
        self._deadlines: dict[Any, float] = {}
        self._maxsize = maxsize
        self._ttl = ttl
        self._timer = timer
        self._next_expiry = float("inf")

    def __getitem__(self, key: Any) -> Any:
        data = self._data
        value = data[key]
        if self._timer() < self._next_expiry:
            data.move_to_end(key)
            return value
        return self._checked(key, value)

    def get(self, key: Any, default: Any = None) -> Any:
        data = self._data
        try:
            value = data[key]
        except KeyError:
            return default
        if self._timer() < self._next_expiry:
            data.move_to_end(key)
            return value
        try:
            return self._checked(key, value)
        except KeyError:
            return default

    def _checked(self, key: Any, value: Any) -> Any:
        """The slow read: drop ``key`` if its deadline has passed."""
        if self._deadlines[key] <= self._timer():
            del self._data[key], self._deadlines[key]
            self._next_expiry = min(self._deadlines.values(), default=float("inf"))
            raise KeyError(key)
        self._data.move_to_end(key)
        return value

    def __setitem__(self, key: Any, value: Any) -> None:
        data = self._data
        if key not in data and len(data) >= self._maxsize:
            del self._deadlines[data.popitem(last=False)[0]]
        data[key] = value
        data.move_to_end(key)
        deadline = self._deadlines[key] = self._timer() + self._ttl
        if deadline < self._next_expiry:
            self._next_expiry = deadline

    def __len__(self) -> int:
        return len(self._data)


def _filled(factory: Factory) -> MutableMapping[str, Any]:
    cache = factory()
    for key in HOT_KEYS:
        cache[key] = key
    return cache


def getitem_hit_workload(factory: Factory) -> Callable[[], object]:
    """``BATCH`` reads ``cache[key]`` of keys that are all present."""
    cache = _filled(factory)

    def run() -> object:
        for key in READS:
            cache[key]
        return cache

    return run


def get_hit_workload(factory: Factory) -> Callable[[], object]:
    """``BATCH`` reads ``cache.get(key)`` of keys that are all present."""
    cache = _filled(factory)
    get = cache.get

    def run() -> object:
        for key in READS:
            get(key)
        return cache

    return run


def set_evict_workload(factory: Factory) -> Callable[[], object]:
    """``BATCH`` writes of keys not in the full cache: each write evicts one item."""
    cache = _filled(factory)
    stream: Iterator[list[str]] = cycle(
        [NEW_KEYS[i : i + BATCH] for i in range(0, len(NEW_KEYS), BATCH)]
    )

    def run() -> object:
        for key in next(stream):
            cache[key] = key
        return cache

    return run


WORKLOADS: dict[str, Callable[[Factory], Callable[[], object]]] = {
    "cache[key] hit": getitem_hit_workload,
    "get(key) hit": get_hit_workload,
    "set with eviction": set_evict_workload,
}


def measure(run: Callable[[], object], *, repeat: int = 7, number: int = 5) -> float:
    """Best time of one ``run()`` in seconds (the minimum is the least noisy estimate)."""
    run()
    return min(timeit.repeat(run, timer=time.perf_counter, repeat=repeat, number=number)) / number


def compare_caches(repeat: int = 7) -> list[tuple[str, str, float, float]]:
    """Time every workload on scalekit and cachetools, interleaved in one run.

    Returns ``(policy, workload, scalekit seconds per op, cachetools seconds per op)``.
    """
    ours = cache_factories("scalekit")
    theirs = cache_factories("cachetools")
    rows = []
    for policy in POLICIES:
        for name, workload in WORKLOADS.items():
            a = measure(workload(ours[policy]), repeat=repeat) / BATCH
            b = measure(workload(theirs[policy]), repeat=repeat) / BATCH
            rows.append((policy, name, a, b))
    return rows


def zipf_trace(
    *,
    keys: int = 100_000,
    length: int = 200_000,
    skew: float = 0.9,
    scan_every: int = 20_000,
    scan_length: int = 5_000,
    drift: int = 0,
    seed: int = 7,
) -> list[str]:
    """Requests for ``keys`` Zipf-distributed keys, with a scan of one-off keys
    (``scan_length`` keys never seen again) after every ``scan_every`` requests.

    With ``drift``, the popular keys change after each scan: every rank moves to
    a key ``drift`` further on, as when yesterday's news gives way to today's.
    """
    import bisect
    import itertools

    rng = random.Random(seed)
    weights = [1.0 / (rank**skew) for rank in range(1, keys + 1)]
    cumulative = list(itertools.accumulate(weights))
    total = cumulative[-1]
    trace: list[str] = []
    scans = 0
    while len(trace) < length:
        for _ in range(scan_every):
            rank = bisect.bisect_left(cumulative, rng.random() * total)
            trace.append(f"k{(rank + scans * drift) % keys}")
        trace.extend(f"scan{scans}:{i}" for i in range(scan_length))
        scans += 1
    return trace[:length]


def hit_ratio(cache: MutableMapping[str, Any], trace: list[str]) -> float:
    """Replay ``trace`` as a read-through cache: look up, and store on a miss."""
    hits = 0
    missing = object()
    get = cache.get
    for key in trace:
        if get(key, missing) is missing:
            cache[key] = key
        else:
            hits += 1
    return hits / len(trace)


def compare_hit_ratios(maxsize: int = 1_000, **trace_options: Any) -> dict[str, float]:
    """Hit ratio of each scalekit policy on one Zipf trace with scans."""
    import scalekit.cache as sk

    trace = zipf_trace(**trace_options)
    caches: dict[str, MutableMapping[str, Any]] = {
        "TinyLFU": sk.TinyLFUCache(maxsize),
        "LFU": sk.LFUCache(maxsize),
        "LRU": sk.LRUCache(maxsize),
        "FIFO": sk.FIFOCache(maxsize),
    }
    return {name: hit_ratio(cache, trace) for name, cache in caches.items()}


def sharding_quality(keys: int = 1_000_000, nodes: int = 10) -> list[tuple[str, float, float]]:
    """Per scheme: max/mean keys per node over ``keys`` random keys at ``nodes`` nodes,
    and the share of keys that move when one node is added, over the ideal."""
    import scalekit.sharding as sh

    names = [f"node-{i}" for i in range(nodes)]
    rng = random.Random(5)
    sample = [f"key:{rng.getrandbits(64)}" for _ in range(keys)]
    schemes: dict[str, Any] = {
        "SlotMap": sh.SlotMap(names),
        "JumpHash": sh.JumpHash(names),
        "RendezvousHash": sh.RendezvousHash(names),
        "MaglevHash": sh.MaglevHash(names),
        "HashRing": sh.HashRing(names),
        "KetamaRing": sh.KetamaRing(names),
    }
    rows = []
    for name, sharder in schemes.items():
        balance = sh.report(sharder, sample).max_over_mean
        plan = sharder.plan_add("node-new")
        moved = sum(plan.move_for(key) is not None for key in sample[:200_000]) / 200_000
        rows.append((name, balance, moved / plan.ideal_fraction))
    return rows


def lookup_pairs(nodes: int = 10) -> list[tuple[str, Callable[[str], Any], Callable[[str], Any]]]:
    """``(scheme, scalekit node_for, uhashring get_node)`` at ``nodes`` nodes:
    uhashring in ketama mode beside ``KetamaRing``, in its default mode beside the rest."""
    import uhashring  # type: ignore[import-untyped]

    import scalekit.sharding as sh

    names = [f"node-{i}" for i in range(nodes)]
    plain = uhashring.HashRing(nodes=names).get_node
    ketama = uhashring.HashRing(nodes=names, hash_fn="ketama").get_node
    return [
        ("HashRing", sh.HashRing(names).node_for, plain),
        ("KetamaRing", sh.KetamaRing(names).node_for, ketama),
        ("SlotMap", sh.SlotMap(names).node_for, plain),
        ("JumpHash", sh.JumpHash(names).node_for, plain),
        ("RendezvousHash", sh.RendezvousHash(names).node_for, plain),
        ("MaglevHash", sh.MaglevHash(names).node_for, plain),
    ]


LOOKUP_KEYS = [f"user:{i}:profile" for i in range(10_000)]


def compare_lookups(repeat: int = 5) -> list[tuple[str, float, float]]:
    """Seconds per ``node_for`` at 10 nodes: each scheme, and uhashring in the matching mode."""

    def timed(lookup: Callable[[str], Any]) -> float:
        keys = LOOKUP_KEYS
        return measure(lambda: [lookup(key) for key in keys], repeat=repeat, number=3) / len(keys)

    return [(name, timed(ours), timed(theirs)) for name, ours, theirs in lookup_pairs()]


BALANCER_SIZES = (10, 100, 1_000)
BALANCER_KINDS = (
    "RoundRobin",
    "RoundRobin weighted",
    "LeastConnections",
    "LeastConnections choices=2",
    "PeakEwma",
    "naive min()",
)


class NaiveLeastConnections:
    """What a balancer written in an afternoon does: scan for the least loaded."""

    def __init__(self, backends: list[str]) -> None:
        self.in_flight = dict.fromkeys(backends, 0)

    def lease_and_release(self) -> str:
        backend = min(self.in_flight, key=self.in_flight.__getitem__)
        self.in_flight[backend] += 1
        self.in_flight[backend] -= 1
        return backend


def make_balancer(kind: str, size: int) -> Any:
    """A balancer of ``kind`` (one of :data:`BALANCER_KINDS`) over ``size`` backends;
    weighted means weights 1, 2, 3 in turn."""
    from scalekit.balancing import LeastConnections, PeakEwma, RoundRobin

    backends = [f"10.0.{i // 250}.{i % 250}:8080" for i in range(size)]
    if kind == "RoundRobin":
        return RoundRobin(backends)
    if kind == "RoundRobin weighted":
        return RoundRobin(backends, weights={b: 1 + i % 3 for i, b in enumerate(backends)})
    if kind == "LeastConnections":
        return LeastConnections(backends)
    if kind == "LeastConnections choices=2":
        return LeastConnections(backends, choices=2)
    if kind == "PeakEwma":
        return PeakEwma(backends)
    if kind == "naive min()":
        return NaiveLeastConnections(backends)
    raise ValueError(f"unknown balancer kind {kind!r}")


def lease_workload(balancer: Any, rounds: int) -> Callable[[], list[Any]]:
    """``rounds`` leases, each picked, counted in flight and released."""
    if isinstance(balancer, NaiveLeastConnections):
        return lambda: [balancer.lease_and_release() for _ in range(rounds)]

    def run() -> list[Any]:
        chosen = []
        for _ in range(rounds):
            with balancer.lease() as backend:
                chosen.append(backend)
        return chosen

    return run


def balancer_costs(repeat: int = 5, rounds: int = 1_000) -> dict[str, list[float]]:
    """Seconds per lease for every kind at every size in :data:`BALANCER_SIZES`."""
    return {
        kind: [
            measure(lease_workload(make_balancer(kind, size), rounds), repeat=repeat, number=1)
            / rounds
            for size in BALANCER_SIZES
        ]
        for kind in BALANCER_KINDS
    }


MQ_BATCH = 1_000


def mq_memory_workload(messages: int = MQ_BATCH) -> Callable[[], int]:
    """``messages`` times put + get + ack on a memory queue, one thread."""
    from scalekit.mq import Broker

    queue = Broker().queue("bench")
    put, get = queue.put, queue.get

    def run() -> int:
        for _ in range(messages):
            put(b"payload")
            get().ack()  # type: ignore[union-attr]
        return messages

    return run


def queue_queue_workload(messages: int = MQ_BATCH) -> Callable[[], int]:
    """``messages`` times put + get on the standard library's ``queue.Queue`` (no acks)."""
    import queue

    rival: queue.Queue[bytes] = queue.Queue()
    put, get = rival.put, rival.get

    def run() -> int:
        for _ in range(messages):
            put(b"payload")
            get()
        return messages

    return run


MQ_JSON_BODY = {"user": 42, "action": "signup", "ok": True}
"""The small JSON body of the durable comparison with persist-queue."""


def mq_sqlite_workload(
    path: str,
    synchronous: str = "FULL",
    messages: int = 200,
    batch: int = 0,
    body: Any = b"payload",
) -> Callable[[], int]:
    """put + get + ack on a SqliteBackend queue: one message at a time (the body
    read back, as a consumer does), or with ``put_many``/``get_many`` in batches
    of ``batch``."""
    from scalekit.mq import Broker, SqliteBackend

    queue = Broker(SqliteBackend(path, synchronous=synchronous)).queue("bench")

    def one_by_one() -> int:
        for _ in range(messages):
            queue.put(body)
            delivery = queue.get(timeout=0)
            assert delivery is not None
            delivery.body  # noqa: B018 - a consumer reads the body
            delivery.ack()
        return messages

    def batched() -> int:
        for _ in range(messages // batch):
            queue.put_many([body] * batch)
            for delivery in queue.get_many(batch, timeout=0):
                delivery.ack()
        return messages

    return batched if batch else one_by_one


def persist_queue_workload(
    path: str, messages: int = 200, body: Any = b"payload"
) -> Callable[[], int]:
    """put + get + ack on persist-queue's ``SQLiteAckQueue``: WAL, SQLite's default
    ``synchronous=FULL`` and a commit per operation (the durability of our
    ``"FULL"``); ``multithreading=True``, as a queue shared by threads needs
    (scalekit's always is). JSON bodies are stored as JSON (its json serializer).

    Its ack marks a row acked and leaves it; its get then steps over the acked
    rows, so left alone it slows down as a run goes on (a measurement would
    depend on how many rounds ran before). Each run ends with
    ``clear_acked_data`` of every acked row, timed with it: its counterpart of
    our ack's delete, and it keeps each run alike."""
    import persistqueue
    import persistqueue.serializers.json

    options: dict[str, Any] = {}
    if not isinstance(body, bytes):
        options["serializer"] = persistqueue.serializers.json
    rival = persistqueue.SQLiteAckQueue(path, auto_commit=True, multithreading=True, **options)

    def run() -> int:
        for _ in range(messages):
            rival.put(body)
            item = rival.get(block=False)
            rival.ack(item)
        rival.clear_acked_data(max_delete=0, keep_latest=0)
        return messages

    return run


def interleaved_ratio(
    ours: Callable[[], object],
    theirs: Callable[[], object],
    rounds: int = 15,
    warmup: int = 3,
    seconds: float | None = None,
) -> tuple[float, float, float]:
    """Median seconds per run of ``ours`` and ``theirs``, timed in alternating
    rounds (each goes first in every other round), and the median of the
    per-round ratios theirs / ours (above 1: ours is faster). Alternating keeps
    both under the same load on a shared machine, where separate runs drift.

    ``warmup`` untimed runs of each come first: for the SQLite queues, enough for
    each write-ahead log to pass its first checkpoint. Until then a commit grows
    the log file, and an fdatasync that must also record a new file size cost
    ~1.6 x one that overwrites (measured here); a long-lived queue overwrites.

    With ``seconds``, rounds stop once that much time has passed since the first
    timed one, at an odd count of 3 at least (so the median is one round's)."""
    for _ in range(warmup):
        ours()
        theirs()
    our_times, their_times, ratios = [], [], []
    began = time.perf_counter()
    for i in range(rounds):
        late = seconds is not None and time.perf_counter() - began > seconds
        if late and i >= 3 and i % 2 == 1:
            break
        pair = [ours, theirs] if i % 2 == 0 else [theirs, ours]
        times = {}
        for run in pair:
            start = time.perf_counter()
            run()
            times[run is ours] = time.perf_counter() - start
        our_times.append(times[True])
        their_times.append(times[False])
        ratios.append(times[False] / times[True])
    return (
        statistics.median(our_times),
        statistics.median(their_times),
        statistics.median(ratios),
    )


def wakeup_latency(kind: str, samples: int = 300) -> tuple[float, float]:
    """p50 and p99 seconds from a put to a blocked consumer holding the message,
    for ``kind`` "scalekit" (memory backend) or "queue.Queue"."""
    import queue
    import threading

    from scalekit.mq import Broker

    stamps: list[float] = []
    received: list[float] = []
    if kind == "queue.Queue":
        rival: queue.Queue[int] = queue.Queue()
        put: Callable[[int], object] = rival.put

        def take() -> object:
            return rival.get()
    else:
        ours = Broker().queue("latency")
        put = ours.put

        def take() -> object:
            delivery = ours.get()
            assert delivery is not None
            delivery.ack()
            return delivery

    ready = threading.Event()

    def consumer() -> None:
        for _ in range(samples):
            ready.set()
            take()
            received.append(time.perf_counter())

    thread = threading.Thread(target=consumer)
    thread.start()
    for i in range(samples):
        ready.wait()
        ready.clear()
        time.sleep(0.0005)  # let the consumer block
        stamps.append(time.perf_counter())
        put(i)
    thread.join()
    delays = sorted(r - s for r, s in zip(received, stamps, strict=True))
    return delays[len(delays) // 2], delays[int(len(delays) * 0.99)]


def decision_router(mode: Any) -> Any:
    """A :class:`~scalekit.replication.ReplicaRouter` over two replicas that have
    replayed position 100, for timing its decisions alone: in ``"token"`` mode
    the context holds token 50, which both have, so reads go to replicas."""
    from scalekit.replication import ReplicaRouter

    positions = {"replica-a": 100, "replica-b": 100}
    router: Any = ReplicaRouter(
        "primary",
        list(positions),
        read_your_writes=mode,
        position_probe=positions.__getitem__ if mode == "token" else None,
        probe_interval=3600,
    )
    if mode == "token":
        router.note_write(50)
    return router
