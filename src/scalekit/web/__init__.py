"""scalekit.web: an RFC 9111 shared HTTP cache and static-asset serving for ASGI and WSGI."""

__all__: list[str] = []
