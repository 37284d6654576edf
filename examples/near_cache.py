"""A near cache on two app servers, kept fresh by Redis.

Two app servers (here, two objects with connections of their own, as two
processes would have) each keep an in-process LRU cache in front of the shared
Redis tier. Redis tracks the key prefix and tells both whenever a key changes,
whoever changed it, so a server never goes on serving what another server
overwrote. The product catalogue is read from l1 after the first read; a price
change on app-1 reaches app-2's l1 within a millisecond or so.

Run: python examples/near_cache.py   (needs Redis at 127.0.0.1:6379)
"""

from __future__ import annotations

import time

import redis

from scalekit.cache import LRUCache, RedisCache, RedisInvalidation, TieredCache


def app_server() -> tuple[TieredCache[dict[str, object]], RedisInvalidation]:
    client = redis.Redis(host="127.0.0.1", port=6379, db=15)
    invalidation = RedisInvalidation(client, prefix="example-catalogue:")
    shared = RedisCache(client, prefix="example-catalogue:", ttl=600)
    near = TieredCache(LRUCache(1000), shared, invalidation=invalidation, l1_ttl=60)
    invalidation.wait_ready(5)
    return near, invalidation


def main() -> None:
    (app1, inv1), (app2, inv2) = app_server(), app_server()
    try:
        app1.set_many({f"sku-{i}": {"sku": i, "price": 10 + i} for i in range(100)})
        for _ in range(10):  # both servers serve the catalogue
            for i in range(100):
                app1.get(f"sku-{i}")
                app2.get(f"sku-{i}")
        stats = app2.stats()
        print(f"app-2: {stats.l1_hits} reads from l1, {stats.l2_hits} from Redis")

        before = app2.get("sku-7")
        app1.set("sku-7", {"sku": 7, "price": 99})  # a price change on app-1
        started = time.perf_counter()
        while "sku-7" in app2.l1:  # until app-2 hears of it
            time.sleep(0.0001)
        waited = time.perf_counter() - started
        after = app2.get("sku-7")
        print(f"app-2 read price {before['price']} before, {after['price']} after")
        print(f"app-2 had dropped its copy {waited * 1e6:.0f} µs after the write returned")
        print(f"app-2 serves the new price: {after == {'sku': 7, 'price': 99}}")
    finally:
        inv1.close()
        inv2.close()
        client = redis.Redis(host="127.0.0.1", port=6379, db=15)
        keys = client.keys("example-catalogue:*")
        if keys:
            client.delete(*keys)


if __name__ == "__main__":
    main()
