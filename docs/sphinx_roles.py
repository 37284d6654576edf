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

    def member(self, owner: str, name: str) -> str | None:
        """``owner.name`` when the page renders it: a public attribute that a
        scalekit class of ``owner``'s MRO defines (inherited members are shown)."""
        module, _, attribute = owner.rpartition(".")
        cls = getattr(importlib.import_module(module), attribute, None)
        if name.startswith("_") or not isinstance(cls, type):
            return None
        for base in cls.__mro__:
            if base.__module__.startswith("scalekit") and name in vars(base):
                return f"{owner}.{name}"
        return None

    def resolve(self, target: str, package: str, owner: str | None = None) -> str | None:
        """The rendered path a role's target links to, or None; ``owner`` is the
        public path of the class whose docstring holds the role."""
        if target in self.public:  # a module
            return target
        parts = target.split(".")
        # scalekit.cache.LRUCache(.get) or cache.LRUCache or LRUCache(.get)
        for split in range(len(parts) - 1, -1, -1):
            module = ".".join(parts[:split])
            candidates = [module, f"scalekit.{module}"] if module else [package, *self.public]
            for candidate in candidates:
                if parts[split] in self.public.get(candidate, ()):
                    found = f"{candidate}.{parts[split]}"
                    rest = parts[split + 1 :]
                    if len(rest) == 1:  # a member: its own anchor, else its class's
                        return self.member(found, rest[0]) or found
                    return found
        if owner is not None and len(parts) == 1:  # :meth:`stop` in HealthChecker
            return self.member(owner, parts[0])
        return None

    def rewrite(self, text: str, package: str, owner: str | None = None) -> str:
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
            path = self.resolve(target, package, owner)
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
        holder = obj if obj.is_class else obj.parent
        owner = None
        if holder is not None and holder.is_class and holder.name in self.public.get(package, ()):
            owner = f"{package}.{holder.name}"
        obj.docstring.value = self.rewrite(obj.docstring.value, package, owner)
