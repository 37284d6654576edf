"""Run the examples in docstrings, README.md and docs/ as tests.

Every ```python block of a Markdown page runs, in page order, in one namespace
per page (a block may use what an earlier block of its page defined), in a
temporary working directory: a block with ``>>>`` prompts is a doctest, any other
block is a script executed as written. A block preceded by an HTML comment
``<!-- needs: redis -->`` runs only when that service is reachable (its page is
skipped otherwise, and fails under ``SCALEKIT_REQUIRE_SERVICES=1``). Blocks that
need servers no test can start (a cluster at 10.0.0.1) are ```py and are checked
by tests/test_doc_snippets.py; ```console and ```text blocks are not code.
"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import pkgutil
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import scalekit
from tests.services import REDIS_URL, probe_redis, require_service

ROOT = Path(__file__).resolve().parent.parent
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE

MODULES = sorted(
    ["scalekit"]
    + [info.name for info in pkgutil.walk_packages(scalekit.__path__, prefix="scalekit.")]
)
DOCUMENTS = sorted(
    str(path.relative_to(ROOT)) for path in [ROOT / "README.md", *ROOT.glob("docs/**/*.md")]
)
SERVICES = {"redis": (REDIS_URL, probe_redis)}


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples(module_name: str) -> None:
    module = importlib.import_module(module_name)
    result = doctest.testmod(module, optionflags=FLAGS)
    assert result.failed == 0


# a fenced ```python block, with the <!-- needs: ... --> comment just above it if any
# (indented too, in a list item: the source is dedented)
PYTHON_BLOCK = re.compile(
    r"(?:^[ \t]*<!--\s*needs:\s*(?P<needs>[\w ,]+?)\s*-->\n)?"
    r"^(?P<indent>[ \t]*)```python\n(?P<source>.*?)^(?P=indent)```",
    re.MULTILINE | re.DOTALL,
)


@dataclass(frozen=True)
class Block:
    line: int  # of the block's first source line, 1-based
    source: str
    needs: tuple[str, ...]

    @property
    def is_doctest(self) -> bool:
        return any(line.lstrip().startswith(">>>") for line in self.source.splitlines())


def blocks(text: str) -> list[Block]:
    found = []
    for match in PYTHON_BLOCK.finditer(text):
        needs = tuple(name.strip() for name in (match["needs"] or "").split(",") if name.strip())
        unknown = set(needs) - SERVICES.keys()
        assert not unknown, f"unknown service in <!-- needs: -->: {sorted(unknown)}"
        line = text.count("\n", 0, match.start("source")) + 1
        found.append(Block(line, textwrap.dedent(match["source"]), needs))
    return found


ALL_BLOCKS = {document: blocks((ROOT / document).read_text()) for document in DOCUMENTS}


def test_every_kind_of_block_is_found() -> None:
    every = [block for page in ALL_BLOCKS.values() for block in page]
    assert sum(block.is_doctest for block in every) >= 50
    assert sum(not block.is_doctest for block in every) >= 5


def run_block(document: str, block: Block, namespace: dict[str, Any]) -> None:
    name = f"{document}:{block.line}"
    if block.is_doctest:
        # lineno makes a failure report the page's own line number
        test = doctest.DocTestParser().get_doctest(
            block.source, namespace, name, document, block.line - 1
        )
        runner = doctest.DocTestRunner(optionflags=FLAGS)
        runner.run(test, clear_globs=False)
        namespace.update(test.globs)
        assert runner.summarize(verbose=False).failed == 0, f"doctest failed at {name}"
    else:
        # blank lines first, so a traceback names the page's own line numbers
        code = compile("\n" * (block.line - 1) + block.source, document, "exec")
        exec(code, namespace)


@pytest.mark.parametrize("document", DOCUMENTS)
def test_document_examples(document: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each ```python block of the page runs, in page order, sharing names."""
    page = ALL_BLOCKS[document]
    for service in sorted({need for block in page for need in block.needs}):
        address, probe = SERVICES[service]
        require_service(service, address, probe)
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"__name__": f"doc:{document}"}
    for block in page:
        run_block(document, block, namespace)


def test_blocks_are_told_apart_and_keep_their_needs() -> None:
    text = (
        "# page\n\n```python\n>>> 1 + 1\n2\n```\n\n<!-- needs: redis -->\n"
        "```python\nx = 1\n```\n\n```py\nnot run\n```\n\n```text\nnot code\n```\n"
    )
    found = blocks(text)
    assert [(block.line, block.is_doctest, block.needs) for block in found] == [
        (4, True, ()),
        (10, False, ("redis",)),
    ]
    indented = blocks("1. a step:\n\n   ```python\n   >>> 2 * 3\n   6\n   ```\n")
    assert [(block.line, block.source) for block in indented] == [(4, ">>> 2 * 3\n6\n")]
    with pytest.raises(AssertionError, match="unknown service"):
        blocks("<!-- needs: mongodb -->\n```python\nx = 1\n```\n")


def test_a_script_block_that_fails_fails_its_page() -> None:
    namespace: dict[str, Any] = {"x": 1}
    run_block("page.md", Block(3, "y = x + 1\n", ()), namespace)
    assert namespace["y"] == 2  # the next block of the page sees it
    with pytest.raises(NameError) as failure:
        run_block("page.md", Block(7, "y = undefined_name\n", ()), namespace)
    assert failure.traceback[-1].lineno + 1 == 7  # the page's own line
    with pytest.raises(AssertionError, match=r"page\.md:2"):
        run_block("page.md", Block(2, ">>> 1 + 1\n3\n", ()), namespace)


def test_the_reference_turns_sphinx_roles_into_links_and_examples_into_code() -> None:
    """docs/sphinx_roles.py, the griffe extension behind the API reference."""
    pytest.importorskip("griffe")  # the dev extra
    spec = importlib.util.spec_from_file_location("sphinx_roles", ROOT / "docs/sphinx_roles.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    roles = module.SphinxRoles()
    text = (
        "See :class:`~scalekit.cache.LRUCache`, :meth:`TieredCache.get`,"
        " :func:`check_cache`, :class:`dict` and :mod:`scalekit.errors`.\n"
        ">>> 1 + 1\n2\n\nAfter."
    )
    assert roles.rewrite(text, "scalekit.cache").split("\n") == [
        "See [`LRUCache`][scalekit.cache.LRUCache],"
        " [`TieredCache.get()`][scalekit.cache.TieredCache.get],"
        " [`check_cache()`][scalekit.testing.check_cache], `dict`"
        " and [`scalekit.errors`][scalekit.errors].",
        "```pycon",
        ">>> 1 + 1",
        "2",
        "```",
        "",
        "After.",
    ]
    # a bare member links in its own class's docstring; a private one is code
    owner = "scalekit.balancing.HealthChecker"
    assert roles.rewrite(":meth:`stop`, :meth:`_run`", "scalekit.balancing", owner) == (
        "[`stop()`][scalekit.balancing.HealthChecker.stop], `_run()`"
    )


FENCE_KINDS = {"python", "py", "console", "text", "mermaid"}


@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_fenced_block_says_what_it_is(document: str) -> None:
    """So no Python hides in a block that nothing runs: ```python runs here,
    ```py is checked by tests/test_doc_snippets.py, the others are not code."""
    opened = None
    for number, line in enumerate((ROOT / document).read_text().splitlines(), 1):
        if not line.lstrip().startswith("```"):
            continue
        if opened is None:
            opened = line.lstrip()[3:].strip()
            assert opened in FENCE_KINDS, f"{document}:{number}: a ```{opened} block"
        else:
            opened = None


def test_the_readme_links_to_pages_that_exist() -> None:
    """mkdocs --strict checks the links between pages; nothing checks the README's."""
    targets = re.findall(
        r"\]\(((?:docs/)?[\w./-]+\.md)(?:#[\w-]+)?\)", (ROOT / "README.md").read_text()
    )
    assert "docs/getting-started.md" in targets
    assert [target for target in targets if not (ROOT / target).is_file()] == []
