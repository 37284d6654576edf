"""``scalekit static build``: its summary, its files and its exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from scalekit.cli import main
from scalekit.web.static import MANIFEST_NAME, Manifest
from tests.web.test_static_core import CSS, JS, PNG


@pytest.fixture
def source(tmp_path: Path) -> Path:
    folder = tmp_path / "assets"
    (folder / "css").mkdir(parents=True)
    (folder / "css" / "app.css").write_bytes(CSS)
    (folder / "app.js").write_bytes(JS)
    (folder / "logo.png").write_bytes(PNG)
    return folder


def test_build_prints_a_summary_and_writes_the_manifest(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(["static", "build", str(source), str(out), "--prefix", "/assets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    total = len(CSS) + len(JS) + len(PNG)
    assert lines[0] == f"3 files, {total:,} bytes: {source} -> {out}"
    assert lines[1].startswith("  gzip: 2 files, ")
    assert lines[1].endswith("% smaller")
    assert lines[2].startswith("  br  : 2 files, ")
    assert lines[3] == f"  manifest: {out}/{MANIFEST_NAME}, URLs under /assets/"
    manifest = Manifest.load(out / MANIFEST_NAME)
    assert manifest.prefix == "/assets/"
    assert manifest.url("css/app.css").startswith("/assets/css/app.")
    assert (out / manifest["app.js"].encodings["br"].path).exists()


def test_no_brotli_no_gzip_and_hash_length(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    argv = ["static", "build", str(source), str(out), "--no-brotli", "--hash-length", "16"]
    assert main(argv) == 0
    assert "br  : 0 files, 0 bytes\n" in capsys.readouterr().out
    manifest = Manifest.load(out / MANIFEST_NAME)
    assert sorted(manifest["app.js"].encodings) == ["gzip"]
    assert len(manifest["app.js"].etag) == 16
    assert main(["static", "build", str(source), str(tmp_path / "o2"), "--no-gzip"]) == 0
    assert sorted(Manifest.load(tmp_path / "o2" / MANIFEST_NAME)["app.js"].encodings) == ["br"]


def test_no_rewrite(tmp_path: Path) -> None:
    source = tmp_path / "assets"
    source.mkdir()
    (source / "a.css").write_bytes(b"a { background: url(b.png) }")
    (source / "b.png").write_bytes(b"png")
    for flag, out in [([], tmp_path / "o1"), (["--no-rewrite"], tmp_path / "o2")]:
        assert main(["static", "build", str(source), str(out), *flag]) == 0
    rewritten = Manifest.load(tmp_path / "o1" / MANIFEST_NAME)
    kept = Manifest.load(tmp_path / "o2" / MANIFEST_NAME)
    assert (
        rewritten["b.png"].path.encode() in (tmp_path / "o1" / rewritten["a.css"].path).read_bytes()
    )
    assert (tmp_path / "o2" / kept["a.css"].path).read_bytes() == b"a { background: url(b.png) }"


@pytest.mark.parametrize(
    "argv",
    [
        ["static"],
        ["static", "build"],
        ["static", "build", "only-one"],
        ["static", "nothing", "a", "b"],
        ["static", "build", "a", "b", "--hash-length", "x"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "usage: scalekit static" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--hash-length", "4"], "hash_length must be in [8, 64]"),
        (["--prefix", "static"], "prefix must start with / or be an http(s) URL"),
        (["--prefix", "/st atic/"], "prefix must be a URL path"),
    ],
)
def test_bad_values_exit_2(
    source: Path, tmp_path: Path, extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["static", "build", str(source), str(tmp_path / "out"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("scalekit static build: error: ")
    assert message in err
    assert not (tmp_path / "out").exists()


def test_bad_folders_exit_2(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["static", "build", str(tmp_path / "missing"), str(tmp_path / "out")]) == 2
    assert "source_dir must be a folder" in capsys.readouterr().err
    assert main(["static", "build", str(source), str(source / "out")]) == 2
    assert "must not contain each other" in capsys.readouterr().err


def test_the_installed_command_runs(source: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "scalekit", "static", "build", str(source), str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("3 files, ")
