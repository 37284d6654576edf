"""The SQLite backend: durable queues in one file, shared by threads and processes.

Layout of a store (``PRAGMA application_id`` = :data:`APPLICATION_ID`,
``PRAGMA user_version`` = :data:`SCHEMA_VERSION`, and the same two facts in
``scalekit_meta``)::

    mq_queues         one row per queue (and per dead-letter queue): its id, name,
                      size, counters, and ``head``, the next place at the front
                      of its line
    mq_sequence       the last message id handed out (ids are never reused)
    mq_messages       one row per message; (state, rank, seq) says where it is:
                        0 ready      rank = -priority   seq = place in line
                        1 delayed    rank = due time    seq = id
                        2 in flight  rank = deadline    seq = receipt
                      one index, (queue, state, rank, seq), serves every lookup;
                      ``turn`` orders extended deliveries (see _SELECT_DUE)
    mq_dedup          dedup keys and when they expire
    mq_subscriptions  topic groups, in the order they subscribed

Every time is a value of the broker's clock (wall time by default), so deadlines
and delays survive a restart. A delivery's receipt is the queue's ``delivered``
counter at the time it was delivered: unique in that queue, so a stale
delivery (timed out, redelivered to someone else) can never settle the new one.
"""

from __future__ import annotations

from scalekit.mq._sqlite._backend import SqliteBackend
from scalekit.mq._sqlite._schema import APPLICATION_ID, SCHEMA_VERSION

__all__ = ["APPLICATION_ID", "SCHEMA_VERSION", "SqliteBackend"]
