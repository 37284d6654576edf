"""One e-mail worker of the demo: a process consuming the durable SQLite queue.

It "sends" a mail by appending ``<job id> <attempt>`` to its outbox file, then
acks. Once ``stall`` is set, the worker holds its next job until the main process
kills it, and sets ``holding`` to say so: a kill mid-job in every run, not only
when it happens to land in the few milliseconds a job takes. A job marked poison
is refused until the queue dead-letters it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

__all__ = ["work"]


def work(folder: str, number: int, holding: Any, stall: Any, stop: Any, ready: Any) -> None:
    """Consume e-mails until ``stop`` is set and the queue stays empty."""
    from scalekit._demo._app import log_to_file, open_queue, serve_metrics
    from scalekit.errors import DeliveryExpired

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process stops us
    root = Path(folder)
    log_to_file(root, f"worker-{number}")
    emails = open_queue(root, json.loads((root / "config.json").read_text()))
    ready.put((f"worker-{number}", None, os.getpid(), serve_metrics({"mail": emails})))
    with (root / f"outbox-{number}.log").open("a") as outbox:
        while True:
            delivery = emails.get(timeout=0.1)
            if delivery is None:
                if stop.is_set():
                    break
                continue
            if delivery.body.get("poison"):
                delivery.nack(reason="template error")
                continue
            while stall.is_set():  # an SMTP server that never answers: killed mid-job
                holding.set()
                time.sleep(0.05)
            time.sleep(0.002)  # the SMTP round trip
            outbox.write(f"{delivery.body['id']} {delivery.attempt}\n")
            outbox.flush()
            with contextlib.suppress(DeliveryExpired):  # timed out: sent again, at least once
                delivery.ack()
    emails.close()
