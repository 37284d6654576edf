"""One process of the cross-process migration test (tests/sharding/test_migration.py).

    python -m tests.sharding.migration_worker ROLE REDIS_URL PLAN_FILE

ROLE ``mover`` runs the migration; ROLE ``writer`` writes ``"new"`` to every
moving key through its own Migration of the same plan, while the mover runs.
Both start when the key ``go`` appears, and print a line of JSON when done.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from scalekit.sharding import Migration, ReshardPlan
from tests.sharding.redis_store import RedisStore


def main(role: str, url: str, plan_file: str) -> None:
    plan = ReshardPlan.from_json(Path(plan_file).read_text())
    nodes = plan.before.nodes + tuple(n for n in plan.after.nodes if n not in plan.before.nodes)
    delay = 0.002 if role == "mover" else 0.0
    stores = {node: RedisStore(url, f"node-{node}", delay=delay) for node in nodes}
    migration = Migration(plan, stores, batch_size=20)
    control = RedisStore(url, "control")
    while control.get("go") is None:
        time.sleep(0.005)
    if role == "mover":
        report = migration.run()
        print(json.dumps({"moved": report.moved, "done": report.done, "epoch": migration.epoch}))
        return
    keys = json.loads(Path(plan_file + ".keys").read_text())
    written = []
    for key in keys:
        migration.set(key, "new")
        written.append(key)
        time.sleep(0.001)
    print(json.dumps({"written": len(written)}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
