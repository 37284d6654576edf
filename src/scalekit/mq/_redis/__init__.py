"""The Redis Streams backend: queues shared by every process that reaches one Redis.

A queue is a Redis stream per priority level in use, each with one consumer group
(``scalekit``). Producers ``XADD``; consumers read with ``XREADGROUP``, so a
delivery is an entry of the group's pending list (PEL) owned by the consumer
that read it. An entry left pending for the visibility timeout is taken again
with ``XAUTOCLAIM`` (min-idle = the visibility timeout), and its PEL delivery
count, plus the attempts it had before it was put back, is the attempt number.
Every change that touches several keys is one Lua script (EVALSHA), so it is
atomic: the scripts are ``scalekit/_resources/lua/mq_*.lua``, each run after
``mq_prelude.lua``. Every script that changes something carries an operation id
and is idempotent by it: redis-py retries a command after a lost connection, so
a script may run twice (a put would be stored twice, an ack that succeeded would
report the delivery expired); the second run returns the first one's reply.

Key layout, for a queue ``q`` under ``prefix`` (``{q}`` is a hash tag: one queue's
keys, and its dead letters', share a cluster slot)::

    prefix:{q}:s:<priority>   stream of one priority level, group "scalekit"; an
                              entry is a message: i id, k body kind (b/s/j),
                              d body bytes, h headers JSON, t put time (ms),
                              n attempts before this entry (after a delayed nack),
                              and in a dead-letter queue r reason, q queue, a attempts
    prefix:{q}:levels         sorted set of the priority levels in use
    prefix:{q}:delayed        sorted set of delayed messages by due time (ms); a
                              member is msgpack [level, field, value, ...]
    prefix:{q}:ext            hash level/entry-id -> "deadline count consumer", for
                              deliveries extended past the visibility timeout
    prefix:{q}:cur            hash level -> XAUTOCLAIM cursor
    prefix:{q}:signal         stream + group: one entry wakes one blocked getter
    prefix:{q}:room           stream: wakes blocked putters of a full queue (1 h TTL)
    prefix:{q}:stats          hash of counters (delivered, redelivered, acked,
                              dead_lettered), kept since the queue was created
    prefix:{q}:meta           hash of the queue's options, for handles opened
                              without options (a topic's publisher)
    prefix:{q}:ids            message id counter, shared with the dead letters
    prefix:{q}:d:<sha256>     a dedup key, with the dedup window as its TTL
    prefix:{q}:op:<id>        the reply of an operation that changed something,
                              kept 60 s: a script run again by the client's
                              retry after a lost reply returns it, changing nothing
    prefix:{q}:dlq:...        the dead-letter queue ``q.dlq``: the same keys
    prefix:topic:{t}          sorted set of topic t's subscribed groups, in order

How it differs from the memory backend, and why:

- Time is Redis's clock (``TIME``): deadlines, delays, dedup windows and
  ``enqueued_at`` follow it, not the broker's clock, so processes agree.
- Options are per handle. ``visibility_timeout`` and ``max_deliveries`` are
  applied by the handle that takes (or ``stats``) a message, ``maxsize`` by the
  handle that puts; a handle opened without options (a topic publishing to a
  group) uses the options last stored by an explicit open.
- ``close()`` closes this handle (puts refused, getters drain then stop); other
  handles and processes go on. Blocked getters of the handle are woken at once
  by a signal entry, at worst within ``block`` seconds.
- A timed-out or nacked delivery stays in the PEL and is found by
  ``XAUTOCLAIM``: each get scans from the oldest pending entry, then onwards
  from a kept cursor, at most 10 x n entries each. With more than that many
  messages in flight, one may wait a few gets before it is found (still before
  newer ready messages of its priority once found).
- Order of redeliveries: within a priority level, timed-out, nacked and given
  back messages come before new ones, oldest (first put) first; memory puts a
  nacked priority-0 message at the very front, the last nacked first.
- A blocked getter is woken at once by a put, nack or redrive from any
  process; it notices a delivery timing out or a delayed message falling due
  when it expects it (the oldest pending entry, the next delayed message) or
  otherwise within ``block`` seconds.
- ``extend(seconds)`` beyond the visibility timeout: ``XCLAIM ... TIME`` cannot
  set a delivery time in the future (Redis clamps it to now, so XCLAIM alone
  gives at most one visibility timeout). The deadline is kept in ``:ext``; a
  get that claims the entry earlier hands it straight back to its owner with
  its delivery count, in the same script, so nobody else sees it.
- Async gets run each take (one short script call) on a worker thread and wait
  on a future: one "pump" thread per handle blocks in Redis for all its waiting
  tasks and wakes one task per signal (a task that takes a full batch wakes the
  next), so waiting tasks hold no thread. A cancelled async get gives back, at
  once and with the same attempt number, a message its worker thread took after
  the cancel; only if the process dies in between is the message left in
  flight until its visibility timeout (at-least-once).
- A put with a ``dedup_key`` already seen returns the first id even when a
  bounded queue is full (memory checks for room first).
- ``redrive`` moves dead letters by priority level and in the order they were
  dead-lettered (memory: by message id), in scripts of 1,000 messages; each script
  counts a bounded queue's room (as a put counts it) and moves no more.
- ``oldest_age`` looks at the head of each stream and at the next delayed
  message (a message put back with a delay is counted from its put time once it
  heads a stream).
- Priorities must lie within +-2**53 (they are sorted-set scores).
- Message ids are decimal strings (``"1"``, ``"2"``...), unique per queue.

Needs Redis 6.2 or later (``XAUTOCLAIM``, ``XPENDING ... IDLE``); tested on 7.0.
"""

from __future__ import annotations

from scalekit.mq._redis._backend import RedisStreamsBackend
from scalekit.mq._redis._scripts import GROUP

__all__ = ["GROUP", "RedisStreamsBackend"]
