"""Every block's counters on one Prometheus endpoint, read at scrape time.

A small service: a user cache, a balancer over three app servers, an e-mail
queue and a replica router. One ``Registry`` names them; ``serve`` exposes them
on a loopback port with prometheus-client's HTTP server (a registry of its own,
no multiprocess directory). The program scrapes its own endpoint, as Prometheus
would, and checks every value against the blocks' ``stats()``.

Run: python examples/metrics_prometheus.py   (extra ``prometheus``; no server needed)
"""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from scalekit.balancing import RoundRobin
from scalekit.cache import LRUCache
from scalekit.metrics import Registry
from scalekit.metrics.prometheus import serve
from scalekit.mq import Broker
from scalekit.replication import ReplicaRouter


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def main() -> None:
    users: LRUCache[int, str] = LRUCache(maxsize=100, stats=True)
    web = RoundRobin(["app-1:8000", "app-2:8000", "app-3:8000"])
    broker = Broker()
    emails = broker.queue("emails")
    lag = {"replica-1": 0.2, "replica-2": 7.5}
    router = ReplicaRouter(
        "primary", ["replica-1", "replica-2"], max_lag=2.0, lag_probe=lag.__getitem__
    )

    registry = Registry()
    registry.register("users", users)
    registry.register("web", web)
    registry.register("mail", broker)
    registry.register("db", router)
    server, port = serve(registry)
    print(f"metrics at http://127.0.0.1:{port}/metrics")

    for request in range(30):  # the traffic
        with web.lease():
            user = request % 10
            if users.get(user) is None:
                router.for_read()  # the database read a miss costs
                users[user] = f"user {user}"
            if request % 3 == 0:
                emails.put({"to": f"user{user}@example.com"})
    slow = web.lease()
    slow.__enter__()  # one request still in flight while Prometheus scrapes

    scraped = scrape(port)
    expected = {(s.name, tuple(sorted(s.labels))): s.value for s in registry.collect()}
    ages = [key for key in expected if key[0] == "scalekit_mq_oldest_age_seconds"]
    for key in ages:  # the one value that grows between two reads: the clock runs
        assert 0 <= scraped.pop(key) <= expected.pop(key)
    stats = users.stats()
    print(
        f"cache users: {scraped[('scalekit_cache_hits_total', (('cache', 'users'),))]:.0f} hits, "
        f"{scraped[('scalekit_cache_misses_total', (('cache', 'users'),))]:.0f} misses "
        f"(stats: {stats.hits}, {stats.misses})"
    )
    in_flight = {
        dict(labels)["backend"]: value
        for (name, labels), value in scraped.items()
        if name == "scalekit_balancer_in_flight"
    }
    print(f"in flight per backend: {in_flight}")
    print(
        "e-mails waiting: "
        f"{scraped[('scalekit_mq_depth', (('broker', 'mail'), ('queue', 'emails')))]:.0f}"
    )
    lags = {
        dict(labels)["replica"]: value
        for (name, labels), value in scraped.items()
        if name == "scalekit_replica_lag_seconds"
    }
    print(f"replica lag (s): {lags}")
    slow.__exit__(None, None, None)
    server.shutdown()
    server.server_close()
    broker.close()
    print(f"every scraped value equals the blocks' stats: {scraped == expected}")


if __name__ == "__main__":
    main()
