"""A cache tier sharded over Redis, grown from 3 shards to 4 while it serves.

Three shards hold 20,000 user profiles, placed by a ketama ring (twemproxy's
points and hash, so a nutcracker in front of the same servers would agree). A
writer thread keeps updating profiles while a fourth shard joins: only the keys
the new shard takes over move, each copied with its remaining TTL, and no write
is lost. The shards are RedisCaches with their own key prefixes on the Redis at
127.0.0.1:6379 (database 15): on real servers, give each its own client.

Run: python examples/sharded_redis.py
"""

from __future__ import annotations

import threading

import redis

from scalekit.cache import RedisCache
from scalekit.sharding import KetamaRing, ShardedStore


def main() -> None:
    client = redis.Redis(host="127.0.0.1", port=6379, db=15)
    shards = {f"cache-{i}": RedisCache(client, prefix=f"example-shard-{i}:") for i in range(1, 5)}
    try:
        first_three = {name: shards[name] for name in ("cache-1", "cache-2", "cache-3")}
        store = ShardedStore(KetamaRing(list(first_three), points="twemproxy"), first_three)
        users = {f"user:{i}": {"id": i, "visits": 0} for i in range(20_000)}
        store.set_many(users, ttl=3600)
        print(f"{len(users):,} profiles on {len(first_three)} shards")

        stop, written = threading.Event(), {}

        def writer() -> None:  # the service keeps writing while keys move
            visits = 0
            while not stop.is_set():
                visits += 1
                for i in range(visits % 97, 20_000, 997):
                    store.set(f"user:{i}", {"id": i, "visits": visits}, ttl=3600)
                    written[f"user:{i}"] = visits

        thread = threading.Thread(target=writer)
        thread.start()
        plan = store.sharder.plan_add("cache-4")
        report = store.reshard(plan, {"cache-4": shards["cache-4"]}, batch_size=2000)
        stop.set()
        thread.join()

        print(f"moved {report.moved:,} of {len(users):,} keys ({report.moved / len(users):.1%});")
        print(f"the ideal for a 4th shard is {plan.ideal_fraction:.0%}")
        expected = {k: {"id": v["id"], "visits": written.get(k, 0)} for k, v in users.items()}
        found = store.get_many(list(users))
        print(f"every key read back after resharding: {found == expected}")
        print(f"keys the writer updated meanwhile: {len(written):,}")
        ttl = store.ttl_of("user:7")
        print(f"user:7 has {ttl:.0f} s to live on {store.sharder.node_for('user:7')}")
    finally:
        for name in shards:
            keys = client.keys(f"example-shard-{name[-1]}:*")
            if keys:
                client.delete(*keys)
        client.close()


if __name__ == "__main__":
    main()
