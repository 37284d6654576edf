"""One app server of the demo: a process running a WSGI app on a threading server.

The app, outside in: the web cache (pages and static assets), the static files,
the session middleware (sessions in a shared SQLite file), one read-your-writes
token middleware per shard, then the handlers. Data lives in the sharded
SQLite "database" of :mod:`._db`: writes go to a shard's primary, reads go
where that shard's :class:`~scalekit.replication.ReplicaRouter` says (its
replica unless it lags past ``max_lag`` or has not replayed the user's last
write), through a query cache for the catalogue (a near cache per process over
a shared tier: a SQLite file kept fresh by a polled invalidation log, or Redis
with ``--redis``). E-mails go on a durable
SQLite queue. The placement of keys (a hash ring, and a resharding plan while
one runs) is read from ``topology.json``, which the main process publishes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import parse_qsl
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

__all__ = ["MAX_LAG", "log_to_file", "open_queue", "serve", "serve_metrics"]

MAX_LAG = 1.0
"""Seconds a replica may lag before the routers send its reads elsewhere."""


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    request_queue_size = 128


class _Topology:
    """The placement this process routes by, reloaded when ``topology.json`` changes."""

    def __init__(self, folder: Path, stores: dict[str, Any]) -> None:
        self._path = folder / "topology.json"
        self._stores = stores
        self._lock = threading.Lock()
        self._stamp: float = -1.0
        self.epoch = 0
        self.ring: Any = None
        self.migration: Any = None
        self.reload()

    def reload(self) -> None:
        from scalekit.sharding import HashRing, Migration, ReshardPlan

        stamp = self._path.stat().st_mtime_ns
        if stamp == self._stamp:
            return
        with self._lock:
            data = json.loads(self._path.read_text())
            self.ring = HashRing(data["shards"])
            plan = data.get("plan")
            self.migration = (
                None if plan is None else Migration(ReshardPlan.from_json(plan), self._stores)
            )
            self.epoch = data["epoch"]
            self._stamp = stamp


def serve(folder: str, name: str, port: int, built: str, ready: Any) -> None:
    """Run app server ``name`` on 127.0.0.1:``port`` (0: any) until killed; put
    ``(name, port, pid)`` on ``ready`` once it listens."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process stops us
    root = Path(folder)
    log_to_file(root, name)
    app, poll, blocks = _build(root, name, built)
    server = make_server("127.0.0.1", port, app, server_class=_Server, handler_class=_Quiet)
    threading.Thread(target=poll, daemon=True).start()
    ready.put((name, server.server_address[1], os.getpid(), serve_metrics(blocks)))
    server.serve_forever(0.05)


def open_queue(root: Path, config: dict[str, Any]) -> Any:
    """The e-mail queue: in ``queue.db``, or on Redis when the demo runs with ``--redis``."""
    from scalekit.mq import Broker, RedisStreamsBackend, SqliteBackend

    backend: Any
    if config.get("redis"):
        import redis

        client = redis.Redis.from_url(config["redis"]["url"])
        backend = RedisStreamsBackend(client, prefix=f"{config['redis']['prefix']}mq")
    else:
        backend = SqliteBackend(root / "queue.db")
    return Broker(backend).queue("emails", visibility_timeout=1.0, max_deliveries=3)


def _probe(measure: Callable[[Path], Any], file: Path) -> Callable[[str], Any]:
    """A router's probe of the replica in ``file``."""
    return lambda _: measure(file)


def log_to_file(root: Path, name: str) -> None:
    """Send this process's ``scalekit.*`` events to ``<name>.log``, which the main
    process shows as they come."""
    handler = logging.FileHandler(root / f"{name}.log")
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    logger = logging.getLogger("scalekit")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def serve_metrics(blocks: dict[str, Any]) -> int | None:
    """Serve ``blocks`` (name -> a scalekit block) at ``/metrics`` on a port of this
    process's own; its number, or None without prometheus-client."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return None
    from scalekit.metrics import Registry
    from scalekit.metrics.prometheus import serve

    registry = Registry()
    for block_name, block in blocks.items():
        registry.register(block_name, block)
    return serve(registry)[1]


def _build(root: Path, name: str, built: str) -> tuple[Any, Callable[[], None], dict[str, Any]]:
    from scalekit._demo._db import ShardFile, replica_lag, replica_position, replica_read
    from scalekit.cache import (
        RedisCache,
        RedisInvalidation,
        SQLiteCache,
        SQLiteInvalidation,
        TieredCache,
        TTLCache,
        cached,
    )
    from scalekit.replication import ReplicaRouter, ReplicaRouterWSGIMiddleware
    from scalekit.sessions import (
        RedisSessionStore,
        SqlSessionStore,
        WsgiSessionMiddleware,
        rotate_id,
    )
    from scalekit.web import HttpCache, WSGICacheMiddleware
    from scalekit.web.static import WSGIStaticFiles

    config = json.loads((root / "config.json").read_text())
    names: list[str] = config["all_shards"]
    stores = {shard: ShardFile(root / f"{shard}.db") for shard in names}
    topology = _Topology(root, stores)
    routers: dict[str, Any] = {}
    for shard in names:
        replica_file = root / f"{shard}.replica.db"
        routers[shard] = ReplicaRouter(
            shard,
            [f"{shard}.replica"],
            read_your_writes="token",
            position_probe=_probe(replica_position, replica_file),
            lag_probe=_probe(replica_lag, replica_file),
            max_lag=MAX_LAG,
            probe_interval=0.02,
        )
    emails = open_queue(root, config)
    counters = {"requests": 0, "writes": 0, "replica_reads": 0, "primary_reads": 0}
    per_shard = {shard: {"reads": 0, "writes": 0} for shard in names}
    lock = threading.Lock()

    def count(shard: str, kind: str, path: str | None = None) -> None:
        with lock:
            per_shard[shard][kind] += 1
            if path is not None:
                counters[path] += 1

    def read(key: str) -> Any:
        migration = topology.migration
        if migration is not None:  # keys on the move: read the primaries, source first
            owner = migration.read_owners(key)[0]
            count(owner, "reads", "primary_reads")
            return migration.get(key)
        shard = topology.ring.node_for(key)
        target = routers[shard].for_read()
        if target == shard:
            count(shard, "reads", "primary_reads")
            return stores[shard].get(key)
        count(shard, "reads", "replica_reads")
        return replica_read(root / f"{shard}.replica.db", key)

    def write(key: str, value: Any) -> None:
        migration = topology.migration
        if migration is not None:
            migration.set(key, value)
            shard = migration.write_owner(key)
        else:
            shard = topology.ring.node_for(key)
            stores[shard].set(key, value)
        count(shard, "writes")
        routers[shard].note_write(stores[shard].last_write)

    def read_primary(key: str) -> Any:
        migration = topology.migration
        if migration is not None:
            return migration.get(key)
        return stores[topology.ring.node_for(key)].get(key)

    near: TTLCache[Any, Any] = TTLCache(maxsize=4096, ttl=5.0)
    if config.get("redis"):
        import redis

        client = redis.Redis.from_url(config["redis"]["url"])
        prefix = config["redis"]["prefix"]
        tier: Any = RedisCache(client, prefix=f"{prefix}cache:", ttl=30)
        invalidation: Any = RedisInvalidation(client, prefix=f"{prefix}cache:")
        sessions: Any = RedisSessionStore(client, prefix=f"{prefix}session:")
    else:
        tier = SQLiteCache(root / "cache.db", ttl=30)
        invalidation = SQLiteInvalidation(tier)
        sessions = SqlSessionStore(f"sqlite:///{root / 'sessions.db'}")
    shared: TieredCache[Any] = TieredCache(near, tier, invalidation=invalidation)
    query_cache = shared

    @cached(query_cache)
    def product(number: int) -> Any:
        return read(f"product:{number}")

    def stats() -> dict[str, Any]:
        info = product.cache_info()  # type: ignore[attr-defined]
        tiers = {"query": {"hits": info.hits, "misses": info.misses}}
        tiered = shared.stats()
        tiers["near"] = {"hits": tiered.l1_hits, "misses": tiered.l2_hits + tiered.misses}
        tiers["shared"] = {"hits": tiered.l2_hits, "misses": tiered.misses}
        shards = {}
        for shard, router in routers.items():
            snapshot = router.stats()
            shards[shard] = {
                **per_shard[shard],
                "lagging": bool(snapshot.lagging),
                "fallbacks": snapshot.fallbacks,
                "read_your_writes": snapshot.read_your_writes,
            }
        return {
            "name": name,
            "pid": os.getpid(),
            "epoch": topology.epoch,
            **counters,
            "web": asdict(web_cache.stats()),
            **tiers,
            "shards": shards,
        }

    def answer(
        start: Any, body: Any, cache: str = "no-store", kind: str = "application/json"
    ) -> list[bytes]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        start(
            "200 OK",
            [("Content-Type", kind), ("Cache-Control", cache), ("Content-Length", str(len(data)))],
        )
        return [data]

    def core(environ: dict[str, Any], start: Any) -> Iterable[bytes]:
        with lock:
            counters["requests"] += 1
        path = environ["PATH_INFO"]
        query = dict(parse_qsl(environ.get("QUERY_STRING", "")))
        if path == "/health":
            return answer(start, b"ok", kind="text/plain")
        if path == "/stats":
            return answer(start, stats())
        if path == "/":
            page = f"<link rel=stylesheet href={static.url_for('site.css')}> home, by {name}"
            return answer(start, page.encode(), "public, max-age=2", "text/html")
        if path.startswith("/product/"):
            number = int(path.rsplit("/", 1)[1])
            page = f"product {number}: {product(number)['title']}"
            return answer(start, page.encode(), "public, max-age=2", "text/html")
        session = environ["scalekit.session"]
        job = query.get("job")
        if path == "/login":
            session["user"] = query["user"]
            rotate_id(environ)
            if job:
                emails.put({"id": job, "to": query["user"]}, dedup_key=job)
            return answer(start, {"server": name, "user": session["user"]})
        user = session.get("user")
        if user is None:
            return answer(start, {"server": name, "user": None})
        key = f"user:{user}"
        if path == "/visit":
            profile = read_primary(key) or {"visits": 0}
            profile = {"visits": profile["visits"] + 1}
            write(key, profile)
            if job:
                emails.put(
                    {"id": job, "to": user, "poison": job.startswith("poison")}, dedup_key=job
                )
        else:
            profile = read(key) or {"visits": 0}
        return answer(start, {"server": name, "user": user, "visits": profile["visits"]})

    app: Any = core
    for shard in names:
        app = ReplicaRouterWSGIMiddleware(
            app, routers[shard], cookie_name=f"rw_{shard}", secure=False
        )
    app = WsgiSessionMiddleware(app, sessions, secure=False)
    static = WSGIStaticFiles(built, app=app)
    web_cache = HttpCache()
    app = WSGICacheMiddleware(static, web_cache)

    def poll() -> None:
        while True:
            with contextlib.suppress(OSError, ValueError):  # being replaced: look again
                topology.reload()
            threading.Event().wait(0.02)

    blocks = {"pages": web_cache, "products": product, "mail": emails, "sessions": sessions}
    blocks.update({shard.replace("-", "_"): router for shard, router in routers.items()})
    blocks["products_tiers"] = shared
    blocks["products_shared"] = tier
    return app, poll, blocks
