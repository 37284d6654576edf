"""The ```py blocks of the docs, which need servers that the doctests cannot
assume (a Redis, a cluster at 10.0.0.1), are checked without running them: each
compiles, each name it imports from scalekit exists, and each call of an
imported scalekit class or function binds to its signature, so a renamed
parameter or class breaks the build instead of the reader's first try.
(The ```python blocks run: tests/test_doctests.py.)"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SNIPPET = re.compile(r"^(?P<indent>[ \t]*)```py\n(?P<source>.*?)^(?P=indent)```", re.M | re.S)
DOCUMENTS = sorted(path for path in [ROOT / "README.md", *ROOT.glob("docs/**/*.md")])
SNIPPETS = [
    pytest.param(source, id=f"{path.relative_to(ROOT)}#{number}")
    for path in DOCUMENTS
    for number, source in enumerate(
        (textwrap.dedent(match["source"]) for match in SNIPPET.finditer(path.read_text())), 1
    )
]
# names a snippet uses without defining: stand-ins for the reader's own objects
CONTEXT = "users = client = db = None\n"


PUBLIC = {
    name: getattr(module, name)
    for module in map(
        importlib.import_module,
        [
            "scalekit.cache",
            "scalekit.sharding",
            "scalekit.balancing",
            "scalekit.mq",
            "scalekit.sessions",
            "scalekit.replication",
            "scalekit.testing",
        ],
    )
    for name in module.__all__
}


def scalekit_names(tree: ast.Module) -> dict[str, Any]:
    names: dict[str, Any] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("scalekit"):
            module = importlib.import_module(node.module or "")
            for alias in node.names:
                assert hasattr(module, alias.name), f"{node.module} has no {alias.name}"
                names[alias.asname or alias.name] = getattr(module, alias.name)
    return names


def test_there_are_snippets_to_check() -> None:
    assert len(SNIPPETS) >= 5


@pytest.mark.parametrize("source", SNIPPETS)
def test_doc_snippet_compiles_and_binds(source: str) -> None:
    tree = ast.parse(CONTEXT + source)
    compile(tree, "<snippet>", "exec")
    # a name the snippet does not import was imported elsewhere on the page
    names = {**PUBLIC, **scalekit_names(tree)}
    # a name the snippet binds itself (Session = routing_sessionmaker(...)) is its own
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.pop(node.id, None)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.pop(node.name, None)
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
            continue
        target = names.get(node.func.id)
        if target is None or any(isinstance(arg, ast.Starred) for arg in node.args):
            continue
        signature = inspect.signature(target)
        keywords = {keyword.arg: None for keyword in node.keywords if keyword.arg is not None}
        signature.bind(*[None] * len(node.args), **keywords)  # raises TypeError if not
