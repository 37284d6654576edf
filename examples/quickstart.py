"""The foundation every scalekit building block stands on, in a few lines.

Run: python examples/quickstart.py
"""

from scalekit.errors import ConfigurationError, ScalekitError
from scalekit.hashing import default_hash
from scalekit.testing import FakeClock

# Keys are placed by a stable hash: the same number in every process and machine.
for key in ("user:1", "user:2", "user:3"):
    print(f"{key} -> shard {default_hash(key) % 4}")

# Time is injected, so anything timed can be tested without sleeping.
clock = FakeClock()
clock.advance(30)
print(f"fake time: {clock()} s")

# Errors are ScalekitErrors and also the builtin you would catch anyway.
try:
    clock.advance(-1)
except ConfigurationError as exc:
    print(
        f"refused: {exc} (a ValueError: {isinstance(exc, ValueError)}, "
        f"a ScalekitError: {isinstance(exc, ScalekitError)})"
    )
