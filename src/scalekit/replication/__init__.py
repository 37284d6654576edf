"""Read/write splitting over database replicas, with read-your-writes.

:class:`ReplicaRouter` sends writes to the primary and reads to replicas spread
by a :mod:`scalekit.balancing` balancer, keeps replicas that lag too far out of
rotation, retries reads on another target when one is unreachable, and makes
sure a context reads its own writes: for a time window, or exactly, by a causal
token such as PostgreSQL's WAL position. :mod:`scalekit.replication.sqlalchemy`
(extra ``sql``) plugs it into SQLAlchemy sessions, and
:class:`ReplicaRouterMiddleware` (ASGI) and :class:`ReplicaRouterWSGIMiddleware`
carry each user's read-your-writes token from one request to the next, on any
app server.
"""

from scalekit.replication._middleware import (
    ReplicaRouterMiddleware,
    ReplicaRouterWSGIMiddleware,
)
from scalekit.replication._router import (
    ReadYourWrites,
    ReplicaRouter,
    RouterStats,
    is_connection_error,
)

__all__ = [
    "ReadYourWrites",
    "ReplicaRouter",
    "ReplicaRouterMiddleware",
    "ReplicaRouterWSGIMiddleware",
    "RouterStats",
    "is_connection_error",
]
