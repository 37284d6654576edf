"""cachetools' own tests of its cache classes, run against scalekit.cache.

scalekit.cache promises to be a drop-in for cachetools' cache classes. The proof
is cachetools' own test modules for them (``tests/test_lru.py``, ``test_lfu.py``,
``test_fifo.py``, ``test_ttl.py`` and the mixin in ``tests/__init__.py``), taken
from its source distribution on the package index and run with only their
imports changed: ``from cachetools import`` becomes ``from scalekit.cache import``,
and the mixin's ``import cachetools`` (used for one annotation) becomes
``import scalekit.cache as cachetools``.

cachetools' files are not copied into this repository (they are cachetools'
code): the sdist is downloaded with ``pip download`` at test time into a cache
directory (``SCALEKIT_TEST_CACHE``, default ``~/.cache/scalekit-tests``) and
reused by later runs. Without network access the test skips, unless
``SCALEKIT_REQUIRE_SERVICES=1`` (CI), where it fails.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.services import services_required

VERSION = "8.0.2"
MODULES = ["__init__", "test_lru", "test_lfu", "test_fifo", "test_ttl"]
EXPECTED_TESTS = 148  # what cachetools 8.0.2's five files hold
SRC = Path(__file__).resolve().parents[2] / "src"


def _cache_dir() -> Path:
    default = Path.home() / ".cache" / "scalekit-tests"
    return Path(os.environ.get("SCALEKIT_TEST_CACHE", default))


def _unavailable(reason: str) -> None:
    if services_required():
        pytest.fail(f"{reason} (SCALEKIT_REQUIRE_SERVICES=1)", pytrace=False)
    pytest.skip(reason)


def _sdist() -> Path:
    """The cachetools sdist, downloaded once into the cache directory."""
    directory = _cache_dir() / f"cachetools-{VERSION}"
    archive = directory / f"cachetools-{VERSION}.tar.gz"
    if archive.exists():
        return archive
    directory.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        f"cachetools=={VERSION}",
        "--no-deps",
        "--no-binary",
        ":all:",
        "--disable-pip-version-check",
        "-d",
        str(directory),
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        _unavailable(f"could not run pip download: {exc}")
    if done.returncode != 0 or not archive.exists():
        _unavailable(f"pip download cachetools=={VERSION} failed: {done.stderr.strip()[-500:]}")
    return archive


def rewrite(source: str) -> str:
    """Only the imports change: cachetools becomes scalekit.cache."""
    source = source.replace("from cachetools import", "from scalekit.cache import")
    return re.sub(r"^import cachetools$", "import scalekit.cache as cachetools", source, flags=re.M)


def test_rewrite_changes_only_the_imports() -> None:
    before = "import cachetools\nfrom cachetools import LRUCache\nx = cachetools.Cache\n"
    assert rewrite(before) == (
        "import scalekit.cache as cachetools\nfrom scalekit.cache import LRUCache\n"
        "x = cachetools.Cache\n"
    )


def test_cachetools_own_suite_passes_on_scalekit_cache(tmp_path: Path) -> None:
    archive = _sdist()
    package = tmp_path / "cachetools_tests"
    package.mkdir()
    with tarfile.open(archive) as tar:
        for module in MODULES:
            member = tar.extractfile(f"cachetools-{VERSION}/tests/{module}.py")
            assert member is not None
            (package / f"{module}.py").write_text(rewrite(member.read().decode()))
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(tmp_path)])}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "cachetools_tests"],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert re.fullmatch(rf"{EXPECTED_TESTS} passed in [\d.]+s( \(.*\))?", summary), summary
