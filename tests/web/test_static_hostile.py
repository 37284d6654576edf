"""Hostile values on every public parameter of scalekit.web.static: each is refused
with an error of scalekit.errors (also TypeError or ValueError) naming the parameter,
and nothing is written."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from scalekit import errors
from scalekit.web.static import (
    Encoded,
    Manifest,
    ManifestEntry,
    StaticAssets,
    StaticFiles,
    WSGIStaticFiles,
    build,
)
from tests.web.test_static_core import make_site

SURROGATE = "a\udcffb"
ETAG = "0123456789ab"
SHA = ETAG + "0" * 52

PATHS = [None, 1, 1.5, True, b"bytes", "", SURROGATE, "a\x00b", ["a"]]
PREFIXES = [1, True, b"/s/", "", "static", "//evil.example/", "/a?b", "/a#b", "/a b",
            "javascript:alert(1)", "ftp://x/", SURROGATE, "/a\\b"]  # fmt: skip
COUNTS = [True, 1.5, math.nan, math.inf, -1, 10**100, "12", None]


def refused(call: Callable[[], Any], name: str) -> None:
    with pytest.raises((errors.ConfigurationError, errors.ArgumentTypeError)) as info:
        call()
    assert isinstance(info.value, (TypeError, ValueError))
    assert name in str(info.value), (name, str(info.value))


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_site(tmp_path_factory.mktemp("site"))


@pytest.fixture
def source(tmp_path: Path) -> Path:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.css").write_bytes(b"a{}")
    return tmp_path / "src"


def test_build(source: Path, tmp_path: Path) -> None:
    target = tmp_path / "out"
    for value in PATHS:
        refused(lambda v=value: build(v, target), "source_dir")
        refused(lambda v=value: build(source, v), "output_dir")
    for value in PREFIXES:
        refused(lambda v=value: build(source, target, prefix=v), "prefix")
    for value in [1, "yes", 0, math.nan]:
        refused(lambda v=value: build(source, target, brotli=v), "brotli")
    for value in [None, 1, "yes"]:
        refused(lambda v=value: build(source, target, gzip_files=v), "gzip_files")
    for value in [None, 1, "yes"]:
        refused(lambda v=value: build(source, target, rewrite_references=v), "rewrite_references")
    for value in [*COUNTS, 7, 65]:
        refused(lambda v=value: build(source, target, hash_length=v), "hash_length")
    for value in [None, 1, "*.css", b"*.css"]:
        refused(lambda v=value: build(source, target, ignore=v), "ignore")
    for value in [[1], [""], [SURROGATE], [None]]:
        refused(lambda v=value: build(source, target, ignore=v), "ignore")
    assert not target.exists()


@pytest.mark.parametrize("kind", [StaticAssets, StaticFiles, WSGIStaticFiles])
def test_servers(out: Path, kind: Any) -> None:
    for value in PATHS:
        refused(lambda v=value: kind(v), "directory")
    refused(lambda: kind(out / "missing"), "directory")
    for value in [1, b"m.json", "", SURROGATE, True]:
        refused(lambda v=value: kind(out, manifest=v), "manifest")
    refused(lambda: kind(out, manifest=out / "missing.json"), "manifest")
    for value in PREFIXES:
        refused(lambda v=value: kind(out, prefix=v), "prefix")
    for value in [*[c for c in COUNTS if c is not None], 31536001]:
        refused(lambda v=value: kind(out, unhashed_max_age=v), "unhashed_max_age")
    site = kind(out)
    for value in [None, 1, b"css/app.css", "", SURROGATE]:
        refused(lambda v=value, s=site: s.url_for(v), "logical_path")


@pytest.mark.parametrize("kind", [StaticFiles, WSGIStaticFiles])
def test_server_shells(out: Path, kind: Any) -> None:
    for value in [1, "app", object()]:
        refused(lambda v=value: kind(out, app=v), "app")
    for value in COUNTS:
        refused(lambda v=value: kind(out, memory_limit=v), "memory_limit")


def test_manifest(out: Path) -> None:
    manifest = Manifest.load(out / "manifest.json")
    for value in [None, 1, b"css/app.css", "", SURROGATE]:
        refused(lambda v=value: manifest.url(v), "logical_path")
        refused(lambda v=value: manifest.integrity(v), "logical_path")
    for value in PREFIXES:
        refused(lambda v=value: manifest.url("css/app.css", prefix=v), "prefix")
    for value in PATHS:
        refused(lambda v=value: Manifest.load(v), "path")
    for value in [None, 1, ["{}"]]:
        refused(lambda v=value: Manifest.from_json(v), "text")
    refused(lambda: Manifest(["a"]), "entries")  # type: ignore[arg-type]
    refused(lambda: Manifest({"../a": manifest["css/app.css"]}), "entries")
    refused(lambda: Manifest({"a": "b"}), "entries")  # type: ignore[dict-item]
    for value in PREFIXES:
        refused(lambda v=value: Manifest({}, prefix=v), "prefix")


def test_entries() -> None:
    good: dict[str, Any] = {
        "path": "a.0123456789ab.css",
        "etag": ETAG,
        "sha256": SHA,
        "size": 3,
        "content_type": "text/css",
        "compressible": True,
    }
    ManifestEntry(**good)
    cases: dict[str, list[Any]] = {
        "path": [None, 1, "", "../a", "/a", "a\\b", SURROGATE],
        "etag": [None, 1, "", "XYZ", "0123"],
        "sha256": [None, 1, "", "ab" * 32],
        "size": COUNTS,
        "content_type": [None, 1, "", "text/css\r\nX: y", "tëxt/css"],
        "compressible": [None, 1, "yes"],
        "encodings": [None, [], {"deflate": Encoded("a.gz", 1)}, {"gzip": ("a.gz", 1)}],
    }
    for name, values in cases.items():
        for value in values:
            refused(lambda n=name, v=value: ManifestEntry(**{**good, n: v}), name)
    for value in [None, 1, "", "../a.gz", SURROGATE]:
        refused(lambda v=value: Encoded(v, 1), "path")
    for value in COUNTS:
        refused(lambda v=value: Encoded("a.gz", v), "size")


def test_respond(out: Path) -> None:
    site = StaticAssets(out)
    for value in [None, 1, b"GET"]:
        refused(lambda v=value: site.respond(v, "/static/x", {}), "method")
    for value in [None, 1, b"/static/x"]:
        refused(lambda v=value: site.respond("GET", v, {}), "path")
    for value in [None, [("range", "bytes=0-1")], "range"]:
        refused(lambda v=value: site.respond("GET", "/static/x", v), "headers")
