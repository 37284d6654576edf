"""The ``scalekit`` command (also ``python -m scalekit``).

Subcommands are registered in :data:`COMMANDS`; each building block that has
something to show adds one (``scalekit demo``, ``scalekit bench``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

import scalekit

__all__ = ["COMMANDS", "build_parser", "main"]

Handler = Callable[[argparse.Namespace], int]

COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], Handler]]] = {}
"""name -> (one-line help, function that adds its arguments and returns its handler)."""


def _demo(parser: argparse.ArgumentParser) -> Handler:
    parser.add_argument(
        "--duration", type=float, default=30.0, help="seconds of traffic (default 30)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulated users")
    parser.add_argument("--json", metavar="PATH", help="write the final report there as JSON")
    parser.add_argument(
        "--redis", metavar="URL", help="sessions, a shared cache tier and the queue on Redis"
    )

    def handle(args: argparse.Namespace) -> int:
        from scalekit._demo import run

        if not 3 <= args.duration <= 600:
            print("scalekit demo: --duration must be between 3 and 600 seconds", file=sys.stderr)
            return 2
        problem = None if args.json is None else _json_path_error(args.json)
        if problem is not None:
            print(f"scalekit demo: --json: {problem}", file=sys.stderr)
            return 2
        return run(args.duration, args.seed, args.json, args.redis)

    return handle


def _json_path_error(json_path: str) -> str | None:
    """Why the report cannot be written to ``json_path``, or None if it can
    (checked before a run, not after it)."""
    import os
    from pathlib import Path

    path = Path(json_path)
    folder = path.absolute().parent
    if not folder.is_dir():
        return f"no folder for {json_path!r}"
    if path.is_dir():
        return f"{json_path!r} is a folder"
    if path.exists() and not os.access(path, os.W_OK):
        return f"{json_path!r} is not writable"
    if not path.exists() and not os.access(folder, os.W_OK | os.X_OK):
        return f"the folder of {json_path!r} is not writable"
    return None


def _tour(parser: argparse.ArgumentParser) -> Handler:
    def handle(args: argparse.Namespace) -> int:
        from scalekit._tour import run

        return run()

    return handle


def _bench(parser: argparse.ArgumentParser) -> Handler:
    parser.description = (
        "Time every block's headline comparison against the library you would otherwise "
        "use, in the same run, and print one table of ratios: scalekit time / rival time "
        "per operation (below 1: scalekit is faster), beside the ratio the docs claim."
    )
    parser.add_argument(
        "module",
        nargs="?",
        default=None,
        choices=_BENCH_BLOCKS,
        help="one block only (default: all of them)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer rounds: about 15 s for all blocks"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the rows to PATH as JSON")
    parser.add_argument(
        "--redis",
        metavar="URL",
        help="run the comparisons that need a Redis server on this one (skipped without)",
    )
    parser.add_argument(
        "--details",
        action="store_true",
        help="after the table, the module's own detailed figures (cache, sharding, "
        "balancing, replication, mq)",
    )
    parser.add_argument(
        "--repeat", type=int, default=7, help="timing rounds of --details (the best counts)"
    )

    def handle(args: argparse.Namespace) -> int:
        if args.redis is not None and not args.redis.startswith(_REDIS_SCHEMES):
            parser.error(f"--redis: a URL starting with {' or '.join(_REDIS_SCHEMES)}")
        if args.details and args.module not in _BENCH_DETAILS:
            parser.error(f"--details: name one of {', '.join(_BENCH_DETAILS)}")
        if args.repeat < 1:
            parser.error("--repeat: at least 1")
        problem = None if args.json is None else _json_path_error(args.json)
        if problem is not None:
            parser.error(f"--json: {problem}")
        return _bench_table(args)

    return handle


_BENCH_BLOCKS = ("cache", "sharding", "balancing", "replication", "mq", "web", "sessions")
"""The blocks of ``scalekit._bench_suite.BLOCKS``, named here so that building the
parser does not import the benchmarks."""


_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def _bench_table(args: argparse.Namespace) -> int:
    import json
    import time

    from scalekit._bench_suite import HEADER, Settings, format_table, run_blocks

    blocks = [args.module] if args.module else list(_BENCH_BLOCKS)
    settings = Settings(
        rounds=25 if args.quick else 201, seconds=0.6 if args.quick else 4.0, redis_url=args.redis
    )
    print(HEADER)
    print(f"blocks: {', '.join(blocks)}{' (--quick)' if args.quick else ''}", flush=True)
    start = time.perf_counter()

    def progress(row: object) -> None:
        print(".", end="", file=sys.stderr, flush=True)

    rows = run_blocks(blocks, settings, progress)
    elapsed = time.perf_counter() - start
    print(file=sys.stderr)
    print(format_table(rows))
    print(f"elapsed {elapsed:.1f} s")
    if args.json:
        report = {
            "ratio": "scalekit time / rival time (below 1: scalekit is faster)",
            "quick": args.quick,
            "elapsed_seconds": round(elapsed, 2),
            "rows": [row.as_dict() for row in rows],
        }
        try:
            with open(args.json, "w", encoding="utf-8") as file:
                json.dump(report, file, indent=2)
                file.write("\n")
        except OSError as exc:
            print(f"scalekit bench: cannot write {args.json}: {exc}", file=sys.stderr)
            return 1
    failed = [row for row in rows if row.note.startswith("error:")]
    if args.details:
        print()
        status = _BENCH_DETAILS[args.module](args.repeat)
        if status:
            return status
    return 1 if failed else 0


def _bench_cache(repeat: int) -> int:
    from scalekit._bench import BATCH, CACHE_SIZE, compare_caches

    try:
        rows = compare_caches(repeat=repeat)
    except ImportError as exc:
        print(f"scalekit bench needs the rival library installed: {exc}", file=sys.stderr)
        print("install it with: pip install '.[test]' from a clone of scalekit", file=sys.stderr)
        return 1
    print(f"{CACHE_SIZE:,}-entry caches, string keys, best of {repeat} x {BATCH:,} ops")
    print(f"{'policy':6} {'operation':20} {'scalekit':>10} {'cachetools':>11} {'ratio':>6}")
    for policy, workload, ours, theirs in rows:
        print(
            f"{policy:6} {workload:20} {ours * 1e9:8.0f}ns {theirs * 1e9:9.0f}ns "
            f"{ours / theirs:6.2f}"
        )
    return 0


def _bench_mq(repeat: int) -> int:
    import tempfile

    from scalekit import _bench as b

    ours = b.measure(b.mq_memory_workload(), repeat=repeat, number=3) / b.MQ_BATCH
    rival = b.measure(b.queue_queue_workload(), repeat=repeat, number=3) / b.MQ_BATCH
    print("memory backend, one thread: put + get + ack, against queue.Queue put + get")
    print(
        f"  scalekit {ours * 1e9:6.0f} ns  queue.Queue {rival * 1e9:6.0f} ns  "
        f"ratio {ours / rival:.2f}"
    )
    for kind in ("scalekit", "queue.Queue"):
        p50, p99 = b.wakeup_latency(kind)
        print(
            f"  wake-up of a blocked consumer, {kind:11}: "
            f"p50 {p50 * 1e6:5.1f} us, p99 {p99 * 1e6:5.1f} us"
        )
    with tempfile.TemporaryDirectory() as folder:
        full = b.mq_sqlite_workload(f"{folder}/full.db", "FULL")
        ours = b.measure(full, repeat=repeat, number=1) / 200
        print("SQLite backend, synchronous=FULL: put + get + ack, one message at a time")
        line = f"  scalekit {1 / ours:8,.0f} msg/s"
        try:
            theirs = b.measure(b.persist_queue_workload(f"{folder}/pq"), repeat=repeat, number=1)
        except ImportError:
            line += "  (pip install persist-queue to compare)"
        else:
            line += f"  persist-queue {200 / theirs:8,.0f} msg/s  x{theirs / 200 / ours:.1f}"
        print(line)
        batched = b.mq_sqlite_workload(f"{folder}/normal.db", "NORMAL", messages=2_000, batch=100)
        seconds = b.measure(batched, repeat=repeat, number=1)
        print("SQLite backend, synchronous=NORMAL: put_many + get_many + ack, batches of 100")
        print(f"  scalekit {2_000 / seconds:8,.0f} msg/s")
    return 0


def _bench_replication(repeat: int) -> int:
    from scalekit._bench import decision_router, measure

    cases = {
        "for_read(), window mode": decision_router("window").for_read,
        "for_read(), token mode": decision_router("token").for_read,
        "for_write(), no stickiness": decision_router(None).for_write,
    }
    print("the router's decision per statement, pure Python (no I/O), best of", repeat)
    for name, call in cases.items():

        def run(call: Callable[[], object] = call) -> None:
            for _ in range(10_000):
                call()

        seconds = measure(run, repeat=repeat, number=1) / 10_000
        print(f"  {name:26} {seconds * 1e9:6.0f} ns")
    print("next to it, a SELECT 1 round trip on loopback: see benchmarks/bench_replication.py")
    return 0


def _bench_balancing(repeat: int) -> int:
    from scalekit._bench import BALANCER_SIZES, balancer_costs

    print("one lease (pick, count in flight, release), by pool size; last column: 1,000 / 10")
    print(f"{'balancer':28}" + "".join(f"{size:>10,}" for size in BALANCER_SIZES) + "   ratio")
    for kind, costs in balancer_costs(repeat=repeat).items():
        cells = "".join(f"{cost * 1e9:8.0f}ns" for cost in costs)
        print(f"{kind:28}{cells}  {costs[-1] / costs[0]:6.2f}")
    return 0


def _bench_sharding(repeat: int) -> int:
    from scalekit._bench import compare_lookups, sharding_quality

    try:
        lookups = compare_lookups(repeat=repeat)
    except ImportError as exc:
        print(f"scalekit bench needs the rival library installed: {exc}", file=sys.stderr)
        return 1
    print("node_for at 10 nodes, 10,000 keys (uhashring: ketama mode against KetamaRing)")
    print(f"{'scheme':15} {'scalekit':>9} {'uhashring':>10} {'ratio':>6}")
    for name, ours, theirs in lookups:
        print(f"{name:15} {ours * 1e9:7.0f}ns {theirs * 1e9:8.0f}ns {ours / theirs:6.2f}")
    print()
    print("1,000,000 keys at 10 nodes: max/mean keys per node; one node added: moved / ideal")
    for name, balance, moved in sharding_quality():
        print(f"{name:15} balance {balance:.3f}  moved {moved:.3f} x ideal")
    return 0


_BENCH_DETAILS: dict[str, Callable[[int], int]] = {
    "cache": _bench_cache,
    "sharding": _bench_sharding,
    "balancing": _bench_balancing,
    "mq": _bench_mq,
    "replication": _bench_replication,
}


def _static(parser: argparse.ArgumentParser) -> Handler:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    build = actions.add_parser(
        "build",
        help="copy SOURCE to content-hashed names in OUTPUT, precompress, write manifest.json",
        description="Copy every file of SOURCE to OUTPUT under a content-hashed name, write "
        ".gz (and .br with the brotli package) copies where they save at least 5%%, and "
        "write OUTPUT/manifest.json for scalekit.web.static.",
    )
    build.add_argument("source", metavar="SOURCE", help="the folder of assets")
    build.add_argument("output", metavar="OUTPUT", help="the folder to write (added to)")
    build.add_argument(
        "--prefix", default="/static/", help="URL the files are served under (default /static/)"
    )
    build.add_argument("--no-brotli", action="store_true", help="write no .br copies")
    build.add_argument("--no-gzip", action="store_true", help="write no .gz copies")
    build.add_argument(
        "--no-rewrite",
        action="store_true",
        help="leave url(), @import and sourceMappingURL references in CSS/JS as they are",
    )
    build.add_argument(
        "--hash-length", type=int, default=12, help="hex digits of SHA-256 in names (8-64)"
    )

    def handle(args: argparse.Namespace) -> int:
        from scalekit.errors import ScalekitError
        from scalekit.web.static import MANIFEST_NAME, build

        try:
            manifest = build(
                args.source,
                args.output,
                prefix=args.prefix,
                brotli=False if args.no_brotli else None,
                gzip_files=not args.no_gzip,
                hash_length=args.hash_length,
                rewrite_references=not args.no_rewrite,
            )
        except (ScalekitError, FileNotFoundError, NotADirectoryError) as exc:
            print(f"scalekit static build: error: {exc}", file=sys.stderr)
            return 2
        except OSError as exc:
            print(f"scalekit static build: {exc}", file=sys.stderr)
            return 1
        total = sum(entry.size for entry in manifest.values())
        print(f"{_files(len(manifest))}, {total:,} bytes: {args.source} -> {args.output}")
        for coding in ("gzip", "br"):
            kept = [e for e in manifest.values() if coding in e.encodings]
            before = sum(e.size for e in kept)
            after = sum(e.encodings[coding].size for e in kept)
            saved = f", {1 - after / before:.0%} smaller" if before else ""
            print(f"  {coding:4}: {_files(len(kept))}, {after:,} bytes{saved}")
        print(f"  manifest: {args.output}/{MANIFEST_NAME}, URLs under {manifest.prefix}")
        return 0

    return handle


def _files(count: int) -> str:
    return f"{count:,} file" if count == 1 else f"{count:,} files"


COMMANDS["demo"] = ("run a small service of the blocks in processes, with failures", _demo)
COMMANDS["tour"] = ("show the building blocks one at a time, in one process", _tour)
COMMANDS["bench"] = ("time scalekit against the library you would otherwise use", _bench)
COMMANDS["static"] = (
    "build static assets with content-hashed names (scalekit.web.static)",
    _static,
)


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``scalekit`` command."""
    parser = argparse.ArgumentParser(
        prog="scalekit",
        description="Building blocks for large-traffic systems.",
    )
    parser.add_argument("--version", action="version", version=f"scalekit {scalekit.__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, configure) in COMMANDS.items():
        subparser = subparsers.add_parser(name, help=help_text, description=help_text)
        subparser.set_defaults(handler=configure(subparser))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``scalekit`` command with ``argv`` (default: ``sys.argv[1:]``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stdout)
        return 0
    try:
        return handler(args)
    except KeyboardInterrupt:  # Ctrl-C before a command set up its own handling
        print(f"scalekit {args.command}: interrupted", file=sys.stderr)
        return 130
