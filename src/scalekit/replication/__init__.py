"""Read/write splitting over database replicas, with read-your-writes.

:class:`ReplicaRouter` sends writes to the primary and reads to replicas spread
by a :mod:`scalekit.balancing` balancer, keeps replicas that lag too far out of
rotation, retries reads on another target when one is unreachable, and makes
sure a context reads its own writes: for a time window, or exactly, by a causal
token such as PostgreSQL's WAL position. :mod:`scalekit.replication.sqlalchemy`
(extra ``sql``) plugs it into SQLAlchemy sessions.
"""

from scalekit.replication._router import (
    ReadYourWrites,
    ReplicaRouter,
    RouterStats,
    is_connection_error,
)

__all__ = ["ReadYourWrites", "ReplicaRouter", "RouterStats", "is_connection_error"]
