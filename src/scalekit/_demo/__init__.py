"""``scalekit demo``: a small large-traffic service made of scalekit's blocks, in
real processes on loopback, with failures injected at real boundaries.

The main process builds the service in a temporary folder (SQLite files only),
starts 3 app-server processes (:mod:`._app`) and 2 e-mail workers
(:mod:`._worker`), runs the replication thread (:mod:`._db`), and drives traffic
from client threads through a :class:`~scalekit.balancing.RoundRobin` with a
:class:`~scalekit.balancing.HealthChecker`. While traffic flows it kills an app
server, makes a replica lag past ``max_lag``, kills a worker holding a job,
restarts the app server, and adds a shard (keys move with
:class:`~scalekit.sharding.Migration`). Then it checks what the clients saw and
what the files hold, prints a report, and exits non-zero if an invariant broke.
"""

from __future__ import annotations

from scalekit._demo._run import run

__all__ = ["run"]
