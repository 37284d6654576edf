"""check_balancer: the contract every :class:`~scalekit.protocols.SupportsPick` meets.

Run it on your own balancer the way trio's ``check_two_way_stream`` runs on a stream::

    from scalekit.testing import check_balancer

    def test_my_balancer():
        check_balancer(MyBalancer)

It needs no test framework: each check raises :class:`AssertionError` with a message
on a broken promise. ``factory(backends)`` builds a balancer over a list of backend
names. The checks use only what :class:`~scalekit.protocols.SupportsPick` promises
(``pick``, ``mark_down``, ``mark_up``), which is what the replica router relies on;
a balancer with a ``_check()`` method has it called after every step. Each check
is also a public function of :data:`BALANCER_CHECKS`, so a pytest suite can report
them one by one (as scalekit's own ``tests/contracts/balancer_contract.py`` does).
"""

from __future__ import annotations

import functools
import math
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

from scalekit.errors import NoBackendAvailable
from scalekit.protocols import SupportsPick
from scalekit.testing._raising import raises

__all__ = ["BALANCER_CHECKS", "BalancerCheck", "check_balancer"]

BalancerCheck = Callable[..., None]

BACKENDS = ["a", "b", "c", "d"]
KEYS: tuple[object, ...] = (None, "user:42", 42, b"user:42")
HOSTILE_BACKENDS: tuple[Any, ...] = (None, math.nan, ["a"], {"a": 1})


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


_raises = functools.partial(raises, unexpected=Exception)


def _checked(balancer: Any) -> Any:
    """Call the balancer's ``_check()`` if it has one, and return the balancer."""
    check = getattr(balancer, "_check", None)
    if callable(check):
        check()
    return balancer


def _picks(balancer: Any, n: int) -> Counter[Any]:
    counts: Counter[Any] = Counter(balancer.pick() for _ in range(n))
    _checked(balancer)
    return counts


# -- the checks --------------------------------------------------------------------


def check_is_a_balancer(factory: Callable[..., Any], **_: Any) -> None:
    """The factory builds a :class:`~scalekit.protocols.SupportsPick`."""
    balancer = _checked(factory(BACKENDS))
    _expect(isinstance(balancer, SupportsPick), "not a SupportsPick (pick, mark_down, mark_up)")


def check_picks_only_its_backends(factory: Callable[..., Any], **_: Any) -> None:
    """Every pick, with or without a key, returns one of the backends."""
    balancer = _checked(factory(BACKENDS))
    counts = _picks(balancer, 200)
    _expect(set(counts) <= set(BACKENDS), f"picked what is no backend: {sorted(map(repr, counts))}")
    for key in KEYS:
        chosen = balancer.pick(key)
        _expect(chosen in BACKENDS, f"pick({key!r}) returned {chosen!r}, no backend")
    _checked(balancer)


def check_every_backend_gets_picks(factory: Callable[..., Any], *, spreads: bool, **_: Any) -> None:
    """Picks reach every healthy backend (with ``spreads``)."""
    if not spreads:
        return
    counts = _picks(_checked(factory(BACKENDS)), 100 * len(BACKENDS))
    missing = [backend for backend in BACKENDS if not counts[backend]]
    _expect(not missing, f"{missing} never picked in {100 * len(BACKENDS)} picks: {counts}")


def check_mark_down_and_up(factory: Callable[..., Any], *, spreads: bool, **_: Any) -> None:
    """A backend marked down is never picked until marked up; marking twice is
    harmless; a backend marked up is picked again (with ``spreads``)."""
    balancer = _checked(factory(BACKENDS))
    balancer.mark_down("b")
    balancer.mark_down("b")
    counts = _picks(balancer, 200)
    _expect("b" not in counts, f"'b' is down and was picked {counts['b']} times")
    _expect(set(counts) <= {"a", "c", "d"}, f"picked {counts}")
    balancer.mark_up("b")
    balancer.mark_up("b")
    counts = _picks(balancer, 400)
    if spreads:
        _expect(counts["b"] > 0, f"'b' is up again and never picked: {counts}")
    balancer.mark_up("c")  # already up: nothing changes
    _expect(set(_picks(balancer, 50)) <= set(BACKENDS), "picked what is no backend")


def check_all_down_raises(factory: Callable[..., Any], **_: Any) -> None:
    """With every backend down, a pick raises
    :class:`~scalekit.errors.NoBackendAvailable` (a ``LookupError``); one marked up
    takes every pick."""
    balancer = _checked(factory(BACKENDS))
    for backend in BACKENDS:
        balancer.mark_down(backend)
    _checked(balancer)
    for key in KEYS:
        _raises(NoBackendAvailable, functools.partial(balancer.pick, key), "pick with all down")
    balancer.mark_up("c")
    counts = _picks(balancer, 40)
    _expect(counts == Counter({"c": 40}), f"only 'c' is up, picked {counts}")


def check_no_backends(factory: Callable[..., Any], **_: Any) -> None:
    """A balancer over no backends raises NoBackendAvailable on pick (or refuses to
    be built with a ``ValueError``)."""
    try:
        balancer = _checked(factory([]))
    except ValueError:
        return
    _raises(NoBackendAvailable, balancer.pick, "pick with no backends")


def check_unknown_backends_are_refused(factory: Callable[..., Any], **_: Any) -> None:
    """Marking a backend that is not one raises a ``LookupError`` (scalekit's
    :class:`~scalekit.errors.UnknownNode`) and changes nothing."""
    balancer = _checked(factory(BACKENDS))
    for mark in (balancer.mark_down, balancer.mark_up):
        _raises(LookupError, functools.partial(mark, "zzz"), f"{mark.__name__}('zzz')")
    _checked(balancer)
    counts = _picks(balancer, 200)
    _expect(set(counts) <= set(BACKENDS) and "zzz" not in counts, f"picked {counts}")


def check_hostile_backends_are_refused(factory: Callable[..., Any], **_: Any) -> None:
    """None, NaN, unhashable and repeated backends are refused when the balancer is
    built, with a ``TypeError`` or ``ValueError`` (scalekit's errors are both)."""
    for hostile in HOSTILE_BACKENDS:
        _raises(
            (TypeError, ValueError),
            functools.partial(factory, ["a", hostile]),
            f"a balancer over ['a', {hostile!r}]",
        )
    _raises((TypeError, ValueError), lambda: factory(["a", "b", "a"]), "'a' listed twice")


def check_threads(factory: Callable[..., Any], **_: Any) -> None:
    """Four threads pick while another marks a backend down and up: every pick is a
    backend, nothing raises, and the invariants hold after."""
    balancer = _checked(factory(BACKENDS))
    errors: list[BaseException] = []
    chosen: list[Any] = []
    done = threading.Event()

    def picker() -> None:
        try:
            mine = [balancer.pick() for _ in range(300)]
            chosen.extend(mine)
        except BaseException as exc:  # reported below
            errors.append(exc)

    def marker() -> None:
        try:
            while not done.is_set():
                balancer.mark_down("a")
                balancer.mark_up("a")
        except BaseException as exc:  # reported below
            errors.append(exc)

    pickers = [threading.Thread(target=picker, daemon=True) for _ in range(4)]
    toggler = threading.Thread(target=marker, daemon=True)
    toggler.start()
    for thread in pickers:
        thread.start()
    for thread in pickers:
        thread.join(30)
    done.set()
    toggler.join(30)
    _expect(not any(t.is_alive() for t in (*pickers, toggler)), "a thread is stuck")
    _expect(not errors, f"raised under threads: {errors[:3]!r}")
    _expect(len(chosen) == 1200, f"{len(chosen)} picks of 1200")
    _expect(set(chosen) <= set(BACKENDS), "picked what is no backend under threads")
    _checked(balancer)


BALANCER_CHECKS: dict[str, BalancerCheck] = {
    check.__name__: check
    for check in (
        check_is_a_balancer,
        check_picks_only_its_backends,
        check_every_backend_gets_picks,
        check_mark_down_and_up,
        check_all_down_raises,
        check_no_backends,
        check_unknown_backends_are_refused,
        check_hostile_backends_are_refused,
        check_threads,
    )
}
"""Every check of :func:`check_balancer`, by name; each takes ``(factory, *, spreads)``."""


def check_balancer(factory: Callable[..., Any], *, spreads: bool = True) -> None:
    """Run every promise of the :class:`~scalekit.protocols.SupportsPick` contract on
    the balancers ``factory`` builds; raise :class:`AssertionError` on the first
    broken one, named.

    ``factory(backends)`` takes a list of backend names (``str``). ``spreads``:
    picks reach every healthy backend (false for a balancer that sends
    everything to one backend until it is marked down, such as a primary with
    standbys). A balancer with a ``_check()`` method has it called after every step.

    Runtime: well under a second for a balancer with O(log n) picks.

    >>> from scalekit.balancing import RoundRobin
    >>> check_balancer(RoundRobin)
    """
    for name, check in BALANCER_CHECKS.items():
        try:
            check(factory, spreads=spreads)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from exc
