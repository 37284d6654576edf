"""Every public module lists exactly its public names in ``__all__``."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys
import types

import pytest

import scalekit


def _public_modules() -> list[str]:
    names = ["scalekit"]
    for info in pkgutil.walk_packages(scalekit.__path__, prefix="scalekit."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return sorted(names)


def _defined_here(module: types.ModuleType, name: str) -> bool:
    """Whether ``name`` is defined by ``module`` or one of its private submodules."""
    value = getattr(module, name)
    if isinstance(value, types.ModuleType):
        return False
    owner = getattr(value, "__module__", None)
    if owner is None or not isinstance(owner, str):
        # Constants have no __module__: they are public if not imported from elsewhere.
        return not any(
            getattr(sys.modules.get(other), name, object()) is value
            for other in list(sys.modules)
            if other != module.__name__ and not other.startswith(module.__name__ + ".")
        )
    prefix = module.__name__ + "."
    return owner == module.__name__ or (
        owner.startswith(prefix) and owner[len(prefix) :].startswith("_")
    )


PUBLIC_MODULES = _public_modules()


def test_the_walk_finds_the_foundation() -> None:
    for name in ("scalekit.errors", "scalekit.protocols", "scalekit.testing", "scalekit.cli"):
        assert name in PUBLIC_MODULES


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_all_lists_exactly_the_public_names(module_name: str) -> None:
    module = importlib.import_module(module_name)
    declared = getattr(module, "__all__", None)
    assert declared is not None, f"{module_name} has no __all__"
    assert len(declared) == len(set(declared)), f"{module_name}.__all__ has duplicates"
    missing = [name for name in declared if not hasattr(module, name)]
    assert not missing, f"{module_name}.__all__ names what does not exist: {missing}"
    public = {
        name
        for name in vars(module)
        if not name.startswith("_") and name != "annotations" and _defined_here(module, name)
    }
    unlisted = sorted(public - set(declared))
    assert not unlisted, f"{module_name} defines public names missing from __all__: {unlisted}"


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_every_public_callable_is_documented(module_name: str) -> None:
    module = importlib.import_module(module_name)
    assert module.__doc__, f"{module_name} has no docstring"
    for name in module.__all__:
        value = getattr(module, name)
        is_alias = getattr(value, "__origin__", None) is not None  # EvictionListener & co.
        if (inspect.isclass(value) or inspect.isfunction(value)) and not is_alias:
            assert inspect.getdoc(value), f"{module_name}.{name} has no docstring"


def test_importing_scalekit_imports_nothing_heavy() -> None:
    code = (
        "import sys, scalekit, scalekit.errors, scalekit.protocols, scalekit.testing, "
        "scalekit.hashing\n"
        "heavy = {'redis', 'sqlalchemy', 'psycopg', 'prometheus_client', 'asyncio'}\n"
        "loaded = sorted(heavy & set(sys.modules))\n"
        "blocks = sorted(m for m in sys.modules if m.startswith('scalekit.') and m not in "
        "{'scalekit.errors', 'scalekit.protocols', 'scalekit.testing', 'scalekit.hashing'} "
        "and not any(part.startswith('_') for part in m.split('.')))\n"
        "print(loaded, blocks)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[] []"


def test_importing_scalekit_metrics_imports_no_block() -> None:
    code = (
        "import sys, scalekit.metrics\n"
        "heavy = {'redis', 'sqlalchemy', 'prometheus_client', 'asyncio', 'sqlite3'}\n"
        "loaded = sorted(heavy & set(sys.modules))\n"
        "blocks = sorted(m for m in sys.modules if m.startswith('scalekit.') and not "
        "m.startswith(('scalekit.metrics', 'scalekit.errors', 'scalekit._validate')))\n"
        "print(loaded, blocks)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[] []"
