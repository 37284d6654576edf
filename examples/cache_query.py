"""A query cache in front of a slow database, with a TTL and stampede protection.

Run: python examples/cache_query.py
"""

from __future__ import annotations

import sqlite3
import threading
import time

from scalekit.cache import TTLCache, cached

# A small "database" with a deliberately slow query.
database = sqlite3.connect(":memory:", check_same_thread=False)
database.execute("CREATE TABLE products (id INTEGER PRIMARY KEY, name TEXT, price REAL)")
database.executemany(
    "INSERT INTO products VALUES (?, ?, ?)",
    [(i, f"product {i}", 9.99 + i) for i in range(1, 101)],
)
database_lock = threading.Lock()
queries = 0


@cached(TTLCache(maxsize=10_000, ttl=2.0))
def product(product_id: int) -> tuple[int, str, float] | None:
    """Return one product row; the database is asked at most once per 2 seconds."""
    global queries
    with database_lock:
        queries += 1
        time.sleep(0.02)  # the network round trip and the query plan
        cursor = database.execute(
            "SELECT id, name, price FROM products WHERE id = ?", (product_id,)
        )
        return cursor.fetchone()  # type: ignore[no-any-return]


def main() -> None:
    started = time.perf_counter()
    for _ in range(1_000):
        product(42)
    elapsed = time.perf_counter() - started
    print(f"1,000 reads of product 42: {queries} query, {elapsed * 1000:.0f} ms")

    # A burst of concurrent requests for a cold key: one query, not 100.
    threads = [threading.Thread(target=product, args=(7,)) for _ in range(100)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(f"100 concurrent requests for product 7: {queries - 1} query")

    # A write: invalidate the cached row, so the next read sees the new price
    # (a read already in flight for it would answer its callers but not be stored).
    with database_lock:
        database.execute("UPDATE products SET price = 1.0 WHERE id = 42")
    product.invalidate(42)  # type: ignore[attr-defined]
    print(f"after the update and invalidate(42): price {product(42)[2]}")  # type: ignore[index]

    time.sleep(2.0)  # the TTL passes: the next read asks the database again
    product(42)
    print(f"after the TTL: {queries} queries in all")
    print(product.cache_info())  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
