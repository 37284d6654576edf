"""scalekit: pure-Python building blocks for large-traffic systems.

Each building block is its own subpackage and is imported on its own::

    from scalekit.cache import LRUCache

Importing :mod:`scalekit` itself stays cheap: it imports no building block and no
optional dependency.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
