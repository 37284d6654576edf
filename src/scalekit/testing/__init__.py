"""Tools for testing code built on scalekit, and for testing your own backends.

- :class:`FakeClock`: a :class:`~scalekit.protocols.Clock` that moves only when told
  to, so TTLs, ejection windows and redelivery timeouts are tested without sleeping.

Importing this module imports no test framework: everything here runs under any
runner, or none.
"""

from __future__ import annotations

from scalekit.testing._clock import FakeClock

__all__ = ["FakeClock"]
