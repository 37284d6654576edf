"""A web handler enqueues e-mails; a pool of worker processes sends them.

One worker crashes in the middle of a message (the process dies before it acks).
The queue lives in a SQLite file, so the message is not lost: after its visibility
timeout another worker gets it, as attempt 2. Every e-mail is sent.

Run: python examples/mq_email_worker.py
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

from scalekit.mq import Broker, Queue, SqliteBackend

USERS = [f"user{i}@example.com" for i in range(60)]


def open_queue(folder: Path) -> tuple[Broker, Queue]:
    broker = Broker(SqliteBackend(folder / "queue.db"))
    return broker, broker.queue("emails", visibility_timeout=1.0, max_deliveries=5)


def signup(folder: Path, email: str) -> None:
    """The web handler: answer at once, leave the sending to the workers."""
    _, emails = open_queue(folder)
    emails.put({"to": email, "template": "welcome"}, dedup_key=f"welcome:{email}")


def worker(folder: Path, number: int, crash_after: int | None) -> None:
    """Send e-mails until the queue stays empty for 2 s."""
    broker, emails = open_queue(folder)
    outbox = folder / "outbox.log"
    handled = 0
    while (delivery := emails.get(timeout=2)) is not None:
        if handled == crash_after:
            print(f"worker {number}: crashing while holding the mail to {delivery.body['to']}")
            sys.stdout.flush()
            os._exit(1)  # dies mid-message: no ack, no cleanup
        with outbox.open("a") as log:  # "send" the mail
            log.write(f"{delivery.body['to']} attempt={delivery.attempt} worker={number}\n")
        delivery.ack()
        handled += 1
    broker.close()


def main() -> None:
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        for email in USERS:
            signup(folder, email)
        signup(folder, USERS[0])  # a double click: deduplicated
        _, emails = open_queue(folder)
        print(f"queued {emails.stats().ready} e-mails")

        spawn = multiprocessing.get_context("spawn")
        workers = [
            spawn.Process(target=worker, args=(folder, n, 5 if n == 2 else None))
            for n in range(1, 4)
        ]
        started = time.monotonic()
        for process in workers:
            process.start()
        for process in workers:
            process.join(60)
        print(f"workers done in {time.monotonic() - started:.1f} s")
        print(f"worker 2 exit code: {workers[1].exitcode} (crashed)")

        lines = (folder / "outbox.log").read_text().splitlines()
        sent = {line.split()[0] for line in lines}
        retried = [line for line in lines if "attempt=2" in line]
        print(f"redelivered after the crash: {retried}")
        stats = emails.stats()
        print(f"queue: {stats.total} left, {stats.dead_letters} dead letters")
        print(f"{len(sent)} of {len(USERS)} e-mails sent, {len(set(USERS) - sent)} lost")


if __name__ == "__main__":
    main()
