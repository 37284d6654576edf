"""A griffe extension for the API reference (mkdocs.yml loads it): the docstrings
are written for Sphinx, so their roles (:class:`~scalekit.cache.LRUCache`) become
links to the reference pages, and their ``>>>`` examples become code blocks.

A role links only when its target is an object that a reference page renders (a
name in the ``__all__`` of a documented module, found relative to the
docstring's own package first); a member (``Cache.stats``) links to its class.
Anything else (builtins, private names) is shown as code, so no link is broken.
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path
from typing import Any

import griffe

DOCUMENTED = [
    "scalekit.cache",
    "scalekit.sharding",
    "scalekit.balancing",
    "scalekit.replication",
    "scalekit.mq",
    "scalekit.sessions",
    "scalekit.web",
    "scalekit.web.static",
    "scalekit.testing",
    "scalekit.errors",
    "scalekit.protocols",
    "scalekit.hashing",
]
ROLE = re.compile(r":(?:py:)?(class|func|meth|exc|attr|mod|data|obj|doc):`([^`]+)`")


def _public() -> dict[str, set[str]]:
    """Each documented module's public names, from this tree's source (the one
    the reference is read from: mkdocs.yml's ``paths: [src]``)."""
    source = str(Path(__file__).resolve().parent.parent / "src")
    if source not in sys.path:
        sys.path.insert(0, source)
    return {name: set(getattr(importlib.import_module(name), "__all__", ())) for name in DOCUMENTED}


class SphinxRoles(griffe.Extension):
    def __init__(self) -> None:
        self.public = _public()

    def resolve(self, target: str, package: str) -> str | None:
        """The rendered path a role's target links to, or None."""
        if target in self.public:  # a module
            return target
        parts = target.split(".")
        # scalekit.cache.LRUCache(.get) or cache.LRUCache or LRUCache(.get)
        for split in range(len(parts) - 1, -1, -1):
            module = ".".join(parts[:split])
            candidates = [module, f"scalekit.{module}"] if module else []
            if not module:
                candidates = [package, *self.public]
            for candidate in candidates:
                if split < len(parts) and parts[split] in self.public.get(candidate, ()):
                    return f"{candidate}.{parts[split]}"
        return None

    def rewrite(self, text: str, package: str) -> str:
        def role(match: re.Match[str]) -> str:
            kind, body = match.groups()
            shown, _, explicit = body.partition(" <")
            target = explicit.rstrip(">") if explicit else body
            short = target.startswith("~")
            target = target.lstrip("~.")
            if not explicit:
                shown = target.rsplit(".", 1)[-1] if short else target
            if kind in {"func", "meth"} and not shown.endswith(")"):
                shown += "()"
            path = self.resolve(target, package)
            return f"[`{shown}`][{path}]" if path else f"`{shown}`"

        lines, out, in_example = ROLE.sub(role, text).split("\n"), [], False
        for line in lines:
            starts = line.startswith(">>>")
            if starts and not in_example:
                out.append("```pycon")
                in_example = True
            elif in_example and not line.strip():
                out.append("```")
                in_example = False
            out.append(line)
        if in_example:
            out.append("```")
        return "\n".join(out)

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is None:
            return
        module = obj.module.path
        package = next(
            (
                name
                for name in sorted(self.public, key=len, reverse=True)
                if module == name or module.startswith(name + ".")
            ),
            "scalekit",
        )
        obj.docstring.value = self.rewrite(obj.docstring.value, package)
