"""One e-mail worker of the demo: a process consuming the durable SQLite queue.

It "sends" a mail by appending ``<job id> <attempt>`` to its outbox file, then
acks. ``holding`` is set while it holds a delivery, so the main process can kill
it mid-job; a job marked poison is refused until the queue dead-letters it.
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


def work(folder: str, number: int, holding: Any, stop: Any, ready: Any) -> None:
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
            holding.set()
            if delivery.body.get("poison"):
                delivery.nack(reason="template error")
                holding.clear()
                continue
            time.sleep(0.002)  # the SMTP round trip
            outbox.write(f"{delivery.body['id']} {delivery.attempt}\n")
            outbox.flush()
            with contextlib.suppress(DeliveryExpired):  # timed out: sent again, at least once
                delivery.ack()
            holding.clear()
    emails.close()
