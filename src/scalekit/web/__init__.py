"""The web cache: an RFC 9111 shared HTTP cache in front of ASGI and WSGI apps.

:class:`HttpCache` decides what may be stored and reused and builds the keys,
without I/O; :class:`CacheMiddleware` (ASGI) and :class:`WSGICacheMiddleware`
(WSGI) drive it. The store is any :class:`~scalekit.protocols.Store` (an
in-process LRU by default, a :class:`~scalekit.cache.RedisCache` or a
:class:`~scalekit.cache.TieredCache` for many app servers)::

    from scalekit.web import CacheMiddleware, HttpCache

    app = CacheMiddleware(app, HttpCache())

Safer than the RFC by default: a response with ``Set-Cookie`` is never stored,
requests with ``Cookie`` or ``Authorization`` bypass the cache unless their path
is declared ``public``, and a response without explicit freshness is not stored
unless ``default_ttl`` or ``heuristic`` opts in.
"""

from scalekit.web._asgi import CacheMiddleware
from scalekit.web._cache import CacheStats, HttpCache
from scalekit.web._wsgi import WSGICacheMiddleware

__all__ = ["CacheMiddleware", "CacheStats", "HttpCache", "WSGICacheMiddleware"]
