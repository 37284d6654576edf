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
    return handler(args)
