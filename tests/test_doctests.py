"""Run the examples in docstrings, README.md and docs/ as tests."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import scalekit

ROOT = Path(__file__).resolve().parent.parent
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE

MODULES = sorted(
    ["scalekit"]
    + [info.name for info in pkgutil.walk_packages(scalekit.__path__, prefix="scalekit.")]
)
DOCUMENTS = sorted(
    str(path.relative_to(ROOT)) for path in [ROOT / "README.md", *ROOT.glob("docs/**/*.md")]
)


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples(module_name: str) -> None:
    module = importlib.import_module(module_name)
    result = doctest.testmod(module, optionflags=FLAGS)
    assert result.failed == 0


PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


@pytest.mark.parametrize("document", DOCUMENTS)
def test_document_examples(document: str) -> None:
    """Each ```python block of a Markdown file is a doctest; blocks share names."""
    text = (ROOT / document).read_text()
    source = "\n".join(PYTHON_BLOCK.findall(text))
    test = doctest.DocTestParser().get_doctest(source, {}, document, document, 0)
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    runner.run(test)
    assert runner.summarize(verbose=False).failed == 0
