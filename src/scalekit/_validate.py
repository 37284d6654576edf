"""Argument checks shared by the building blocks (the errors come from scalekit.errors)."""

from __future__ import annotations

import math

from scalekit.errors import ConfigurationError

__all__ = ["check_weight"]


def check_weight(weight: float) -> float:
    """Return ``weight`` if it is a positive finite number; raise a clear error if not."""
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise TypeError(f"weight must be a number, got {type(weight).__name__}")
    if not (weight > 0 and math.isfinite(weight)):
        raise ConfigurationError(f"weight must be positive and finite, got {weight!r}")
    return weight
