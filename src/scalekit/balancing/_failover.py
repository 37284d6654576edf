"""Priority failover across groups of balancers (datacenters, zones), as in Envoy."""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from scalekit._validate import check_count, check_number, type_name
from scalekit.balancing._base import (
    Balancer,
    BalancerStats,
    Lease,
    _expect,
    check_backend,
    check_latency,
    check_ok,
    check_rng,
)
from scalekit.errors import (
    ArgumentTypeError,
    ConfigurationError,
    DuplicateNode,
    NoBackendAvailable,
    UnknownNode,
)

__all__ = ["FailoverGroups", "FailoverStats"]

B = TypeVar("B", bound=Hashable)
T = TypeVar("T")

_log = logging.getLogger("scalekit.balancing")


@dataclass(frozen=True)
class FailoverStats(Generic[B]):
    """A snapshot of a :class:`FailoverGroups`' counters."""

    groups: tuple[BalancerStats[B], ...]
    """Each group's own ``stats()``, in priority order."""
    picks: tuple[int, ...]
    """Picks and leases routed to each group through the :class:`FailoverGroups`."""
    failovers: int
    """Picks and leases routed to a group other than the first (spilled or failed over)."""
    no_backend: int
    """Picks and leases that found no group to route to."""


class FailoverGroups(Generic[B]):
    """Sends traffic to the first group of backends, spilling to the next as it fails.

    Envoy's priority levels: a group's health is the fraction of its backends
    that are healthy (0 for a group without backends), times ``overprovisioning``.
    The first group takes ``min(1, health)`` of the traffic, each next group
    ``min(what is left, its health)``. If the groups together are too unhealthy to
    take all of it, the shares are scaled up in proportion to what each got (as
    Envoy normalizes its priority loads). So with the default 1.4 the first group
    takes everything while at least 1/1.4 (71.4 %) of it is healthy, sheds
    traffic progressively below that, and all of it when it is down; traffic
    comes back as its backends do.

    Each pick draws a group by those shares with ``rng`` and delegates to it; a
    backend's marks, weight and reports go to the group that owns it. A backend
    may belong to one group only. The groups may be any :class:`Balancer`, and
    changed directly as well as through this object.

    Runtime complexity: ``pick``, ``lease`` and ``shares`` O(g + n) (the health of
    every group: g groups, n backends in all) plus the chosen group's pick;
    ``report``, marks and weights O(n) to find the owning group.

    >>> from scalekit.balancing import RoundRobin
    >>> east = RoundRobin([f"east-{i}" for i in range(10)])
    >>> west = RoundRobin(["west-0", "west-1"])
    >>> groups = FailoverGroups([east, west], rng=random.Random(1))
    >>> groups.shares()
    [1.0, 0.0]
    >>> for i in range(5):
    ...     groups.mark_down(f"east-{i}")
    >>> [round(share, 2) for share in groups.shares()]   # 5/10 healthy * 1.4 = 0.7
    [0.7, 0.3]
    >>> for i in range(5, 10):
    ...     groups.mark_down(f"east-{i}")
    >>> groups.shares(), groups.pick()
    ([0.0, 1.0], 'west-0')
    """

    def __init__(
        self,
        groups: Iterable[Balancer[B]],
        *,
        overprovisioning: float = 1.4,
        rng: random.Random | None = None,
    ) -> None:
        given: object = groups
        if isinstance(given, (str, bytes)) or not isinstance(given, Iterable):
            raise ArgumentTypeError(
                f"groups must be an iterable of balancers, got {type_name(given)}"
            )
        groups = tuple(groups)
        if not groups:
            raise ConfigurationError("FailoverGroups needs at least one group")
        for index, group in enumerate(groups):
            if not isinstance(group, Balancer):
                raise ArgumentTypeError(
                    f"group {index} is not a Balancer: {type(group).__name__} "
                    "(needs pick, lease, report, healthy, backends, ...)"
                )
        if len({id(group) for group in groups}) != len(groups):
            raise ConfigurationError("the same balancer is given as two groups")
        overprovisioning = check_number(
            overprovisioning, "overprovisioning", minimum=1, min_inclusive=False
        )
        rng = check_rng(rng)
        owners: dict[B, int] = {}
        for index, group in enumerate(groups):
            for backend in group.backends:
                if backend in owners:
                    raise DuplicateNode(
                        f"{backend!r} is a backend of both group {owners[backend]} "
                        f"and group {index}"
                    )
                owners[backend] = index
        self._groups = groups
        self._overprovisioning = overprovisioning
        self._rng = rng
        self._lock = threading.RLock()
        self._picks = [0] * len(groups)
        self._no_backend = 0
        shares = self._shares()  # the groups taking traffic, as last logged
        self._serving = () if shares is None else tuple(i for i, s in enumerate(shares) if s > 0)

    # -- shares ---------------------------------------------------------------

    @property
    def groups(self) -> tuple[Balancer[B], ...]:
        """The groups, in priority order."""
        return self._groups

    def shares(self) -> list[float]:
        """The share of the traffic each group receives now; they sum to 1.

        Raises :class:`~scalekit.errors.NoBackendAvailable` when no group has a
        healthy backend.
        """
        shares = self._shares()
        if shares is None:
            raise NoBackendAvailable(self._why())
        return shares

    def _shares(self) -> list[float] | None:
        """The shares, or None when every group's health is 0."""
        shares = []
        left = 1.0
        for group in self._groups:
            total = len(group.backends)
            health = len(group.healthy()) * self._overprovisioning / total if total else 0.0
            share = min(left, health)
            shares.append(share)
            left -= share
        if left > 0:  # too unhealthy to take it all: scale up in proportion
            assigned = sum(shares)
            if assigned == 0:
                return None
            shares = [share / assigned for share in shares]
        return shares

    def _why(self) -> str:
        total = sum(len(group.backends) for group in self._groups)
        if total == 0:
            return f"none of the {len(self._groups)} failover groups has backends"
        return (
            f"all {total} backends of the {len(self._groups)} failover groups are down or ejected"
        )

    # -- picking ----------------------------------------------------------------

    def _log_serving(self, shares: list[float] | None) -> None:
        """Under the lock: log when the set of groups taking traffic changes."""
        serving = () if shares is None else tuple(i for i, s in enumerate(shares) if s > 0)
        if serving == self._serving:
            return
        before, self._serving = self._serving, serving
        fields = {
            "groups": serving,
            "previous": before,
            "shares": None if shares is None else tuple(round(s, 3) for s in shares),
        }
        if not serving:
            _log.warning("failover: no group has a healthy backend", extra=fields)
            return
        # traffic moving down the priority list lost capacity; moving back up recovers
        away = bool(before) and (max(serving) > max(before) or min(serving) > min(before))
        _log.log(
            logging.WARNING if away else logging.INFO,
            "failover: traffic now on groups %s (was on %s)",
            serving,
            before,
            extra=fields,
        )

    def _route(self, attempt: Callable[[Balancer[B]], T]) -> T:
        with self._lock:
            shares = self._shares()
            self._log_serving(shares)
            if shares is not None:
                draw = self._rng.random()
                candidates = [i for i, share in enumerate(shares) if share > 0]
                chosen = candidates[-1]  # if rounding leaves the draw past the end
                cumulative = 0.0
                for index in candidates:
                    cumulative += shares[index]
                    if draw < cumulative:
                        chosen = index
                        break
                # The chosen group first; if it lost its last healthy backend in
                # the meantime (changed from another thread), every other in order.
                others = [i for i in range(len(self._groups)) if i != chosen]
                for index in (chosen, *others):
                    try:
                        result = attempt(self._groups[index])
                    except NoBackendAvailable:
                        continue
                    self._picks[index] += 1
                    return result
            self._no_backend += 1
            raise NoBackendAvailable(self._why())

    def pick(self, key: Any = None) -> B:
        """Choose a group by the :meth:`shares`, and a backend from it.

        Raises :class:`~scalekit.errors.NoBackendAvailable` when no group has a
        healthy backend.
        """
        return self._route(lambda group: group.pick(key))

    def lease(self, key: Any = None) -> Lease[B]:
        """Choose a group by the :meth:`shares` and return its lease
        (``with`` or ``async with``): the request counts in flight on that group."""
        return self._route(lambda group: group.lease(key))

    # -- backends ---------------------------------------------------------------

    def _owner(self, backend: B) -> Balancer[B]:
        check_backend(backend)
        for group in self._groups:
            if backend in group.backends:
                return group
        raise UnknownNode(f"{backend!r} is not a backend of any failover group")

    def report(self, backend: B, ok: bool, latency: float | None = None) -> None:
        """Record the outcome of a request sent to ``backend``, in its group."""
        check_ok(ok)
        latency = check_latency(latency)
        self._owner(backend).report(backend, ok, latency)

    def add(self, backend: B, weight: float = 1, *, group: int = 0) -> None:
        """Add ``backend`` with ``weight`` to the group at index ``group`` (the first)."""
        group = check_count(group, "group", maximum=len(self._groups) - 1)
        check_backend(backend)
        with self._lock:
            for index, other in enumerate(self._groups):
                if backend in other.backends:
                    raise DuplicateNode(f"{backend!r} is already a backend of group {index}")
            self._groups[group].add(backend, weight)

    def remove(self, backend: B) -> None:
        """Remove ``backend`` from its group."""
        self._owner(backend).remove(backend)

    def set_weight(self, backend: B, weight: float) -> None:
        """Change the weight of ``backend`` within its group."""
        self._owner(backend).set_weight(backend, weight)

    def mark_down(self, backend: B) -> None:
        """Take ``backend`` out of rotation in its group until :meth:`mark_up`."""
        self._owner(backend).mark_down(backend)

    def mark_up(self, backend: B) -> None:
        """Put ``backend`` back into rotation in its group."""
        self._owner(backend).mark_up(backend)

    @property
    def backends(self) -> tuple[B, ...]:
        """Every backend of every group, healthy or not, in group order."""
        return tuple(backend for group in self._groups for backend in group.backends)

    def healthy(self) -> tuple[B, ...]:
        """Every healthy backend of every group, in group order."""
        return tuple(backend for group in self._groups for backend in group.healthy())

    def stats(self) -> FailoverStats[B]:
        """A snapshot: each group's stats, picks per group, failovers."""
        with self._lock:
            return FailoverStats(
                groups=tuple(group.stats() for group in self._groups),
                picks=tuple(self._picks),
                failovers=sum(self._picks[1:]),
                no_backend=self._no_backend,
            )

    def _check(self) -> None:
        """Assert the internal invariants, and each group's (those that have
        ``_check()``). Raises :class:`AssertionError` when one is broken.

        Runtime complexity: O(n) for n backends in all, plus the groups' own checks.
        """
        with self._lock:
            _expect(len(self._picks) == len(self._groups), "one pick counter per group")
            _expect(min(self._picks) >= 0 and self._no_backend >= 0, "a negative counter")
            seen: set[Any] = set()
            for group in self._groups:
                for backend in group.backends:
                    _expect(backend not in seen, f"{backend!r} is in two groups")
                    seen.add(backend)
                check = getattr(group, "_check", None)
                if callable(check):
                    check()
            shares = self._shares()
            if shares is not None:
                _expect(all(0 <= share <= 1 for share in shares), f"shares {shares}")
                _expect(abs(sum(shares) - 1) <= 1e-9, f"shares {shares} do not sum to 1")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({list(self._groups)!r})"
