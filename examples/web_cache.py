"""The web cache in front of a WSGI app, on a real HTTP server on loopback.

A product page takes 200 ms to render. Behind ``WSGICacheMiddleware``:

- 50 visitors who ask for it at the same moment cost one render (the others
  wait for it and get its response: request coalescing);
- later visitors get it from the cache, with ``Age`` and ``Cache-Status``;
- a logged-in visitor (a ``Cookie``) goes to the app: their page is their own;
- when the catalogue changes, ``cache.purge("catalogue")`` drops every page
  tagged ``Surrogate-Key: catalogue``;
- the stylesheet is served from a content-hashed URL that browsers keep a year.

Run: python examples/web_cache.py   (standard library only; no server needed)
"""

from __future__ import annotations

import http.client
import pathlib
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from email.message import Message
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from scalekit.web import HttpCache, WSGICacheMiddleware
from scalekit.web.static import WSGIStaticFiles, build

renders = 0
price = {"value": 10}
lock = threading.Lock()


def shop(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    global renders
    with lock:
        renders += 1
    time.sleep(0.2)  # the database and the template
    if "HTTP_COOKIE" in environ:
        body = f"hello {environ['HTTP_COOKIE']}, your basket".encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Cache-Control", "private")])
        return [body]
    start_response(
        "200 OK",
        [
            ("Content-Type", "text/plain"),
            ("Cache-Control", "public, max-age=300"),
            ("Surrogate-Key", "catalogue"),
        ],
    )
    return [f"product 7 costs {price['value']} EUR".encode()]


class Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def get(port: int, path: str, **headers: str) -> tuple[int, Message, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", path, headers=headers)
    response = connection.getresponse()
    answer = response.status, response.headers, response.read()  # names in any case
    connection.close()
    return answer


def main() -> None:
    assets, built = pathlib.Path(tempfile.mkdtemp()), pathlib.Path(tempfile.mkdtemp())
    (assets / "shop.css").write_text("body { font-family: sans-serif }\n" * 50)
    build(assets, built, brotli=False)

    cache = HttpCache()
    site = WSGIStaticFiles(built, app=WSGICacheMiddleware(shop, cache))
    server = make_server("127.0.0.1", 0, site, server_class=ThreadingServer, handler_class=Quiet)
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with ThreadPoolExecutor(50) as pool:
            answers = list(pool.map(lambda _: get(port, "/product/7"), range(50)))
        assert all(body == b"product 7 costs 10 EUR" for _, _, body in answers)
        print(f"50 concurrent requests for /product/7: {renders} render")

        _, headers, body = get(port, "/product/7")
        status = headers["Cache-Status"]
        print(f"a later visitor: {body.decode()!r}, Age {headers['Age']}, {status}")

        _, headers, body = get(port, "/product/7", Cookie="user=ada")
        print(f"a logged-in visitor: {body.decode()!r}, {headers['Cache-Status']}")

        price["value"] = 12
        cache.purge("catalogue")
        _, headers, body = get(port, "/product/7")
        print(f"after purge('catalogue'): {body.decode()!r}, {headers['Cache-Status']}")
        print(f"the new price is served: {body == b'product 7 costs 12 EUR'}")

        css = site.url_for("shop.css")
        _, headers, _ = get(port, css, **{"Accept-Encoding": "gzip"})
        print(f"{css}: {headers['Cache-Control']}, {headers['Content-Encoding']}")
        print(f"cache: {cache.stats()}")
    finally:
        server.shutdown()
        server.server_close()


if __name__ == "__main__":
    main()
