"""A sharded key-value store grows from 4 to 5 shards while reads continue.

Run: python examples/sharding_resharding.py
"""

from __future__ import annotations

import random
import threading

from scalekit.sharding import HashRing, Migration, MigrationProgress

shards = [f"shard-{i}" for i in range(4)]
ring: HashRing[str] = HashRing(shards)
stores: dict[str, dict[str, str]] = {name: {} for name in [*shards, "shard-4"]}
for i in range(20_000):
    key = f"user:{i}"
    stores[ring.node_for(key)][key] = f"profile of user {i}"

plan = ring.plan_add("shard-4")
print(plan.summary())


def show(progress: MigrationProgress) -> None:
    bar = "#" * int(30 * progress.fraction)
    print(f"\r[{bar:<30}] {progress.fraction:4.0%}  {progress.moved:,} keys moved", end="")


migration = Migration(plan, stores, batch_size=2_000, progress=show)

# A reader keeps serving requests, through the migration, the whole time.
stop = threading.Event()
reads = misses = 0


def serve() -> None:
    global reads, misses
    rng = random.Random(1)
    while not stop.is_set():
        i = rng.randrange(20_000)
        if migration.get(f"user:{i}") != f"profile of user {i}":
            misses += 1
        reads += 1


reader = threading.Thread(target=serve)
reader.start()
migration.run()
stop.set()
reader.join()
ring.add("shard-4")  # the new placement goes live once the data is there
print()
print(f"served {reads:,} reads during the move, {misses} missed")
sizes = {name: len(store) for name, store in stores.items()}
print(f"keys per shard now: {sizes}")
assert all(ring.node_for(key) == name for name, store in stores.items() for key in store)
print("every key sits at its new owner")
