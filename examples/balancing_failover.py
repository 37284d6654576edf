"""Three HTTP servers behind a balancer; one dies mid-run and no request is lost.

The client leases a backend per request. A request to a dead server fails to
connect: the lease records the failure and the client retries on another backend.
Outlier ejection takes the dead server out after 2 failures in a row, and a health
checker (probing /health every 50 ms) keeps it out until it answers again.

Run: python examples/balancing_failover.py
"""

from __future__ import annotations

import http.client
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from scalekit.balancing import HealthChecker, OutlierEjection, RoundRobin
from scalekit.errors import NoBackendAvailable


class Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"served by {self.server.server_address[1]}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet


def serve() -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def get(backend: str, path: str = "/") -> str:
    host, port = backend.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=2)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        if response.status != 200:
            raise ConnectionError(f"{backend} answered {response.status}")
        return response.read().decode()
    finally:
        connection.close()


def healthy(backend: str) -> bool:
    return get(backend, "/health").startswith("served")


def request(balancer: RoundRobin[str], attempts: int = 3) -> str:
    """One client request: retried on another backend if a backend fails it."""
    for attempt in range(attempts):
        try:
            with balancer.lease() as backend:
                return get(backend)
        except (OSError, NoBackendAvailable):
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


servers = [serve() for _ in range(3)]
backends = [f"127.0.0.1:{server.server_address[1]}" for server in servers]
balancer = RoundRobin(backends, ejection=OutlierEjection(consecutive_failures=2))
# A refused connection fails a check at once; the timeout only bounds a probe that
# hangs. It may exceed the interval: a round then lasts until its checks answer.
checker = HealthChecker(balancer, healthy, interval=0.05, timeout=1.0, rise=2, fall=1).start()

answers: Counter[str] = Counter()
for i in range(300):
    if i == 100:
        victim = servers.pop(1)
        victim.shutdown()
        victim.server_close()  # port closed: connections are refused from now on
        print(f"request {i}: killed {backends[1]}")
    answers[request(balancer)] += 1
checker.stop()

stats = balancer.stats()
print("answers per server:", {answer.split()[-1]: n for answer, n in sorted(answers.items())})
print(f"failed attempts on the dead server: {stats.backends[backends[1]].failures}")
print(f"healthy now: {list(balancer.healthy())}")
answered = sum(answers.values())
print(f"{answered} of 300 requests answered, {300 - answered} lost")
for server in servers:
    server.shutdown()
