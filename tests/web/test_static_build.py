"""scalekit.web.static.build and the manifest: hashed copies, precompression,
determinism, symlinks, and manifests that lie."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
from pathlib import Path

import brotli
import pytest

from scalekit.errors import ConfigurationError
from scalekit.web.static import MANIFEST_NAME, Manifest, StaticAssets, build
from tests.web.test_static_core import CSS, JS, PNG, make_site


def tree(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_layout_of_a_build(tmp_path: Path) -> None:
    out = make_site(tmp_path)
    manifest = Manifest.load(out / MANIFEST_NAME)
    assert sorted(manifest) == ["css/app.css", "img/logo.png", "js/app.js", "robots.txt"]
    css = manifest["css/app.css"]
    sha = hashlib.sha256(CSS).hexdigest()
    assert css.path == f"css/app.{sha[:12]}.css"
    assert css.etag == sha[:12]
    assert css.sha256 == sha
    assert css.size == len(CSS)
    assert css.integrity == "sha256-" + base64.b64encode(hashlib.sha256(CSS).digest()).decode()
    assert manifest.integrity("css/app.css") == css.integrity
    assert (out / css.path).read_bytes() == CSS
    assert sorted(css.encodings) == ["br", "gzip"]
    gz = (out / css.encodings["gzip"].path).read_bytes()
    assert css.encodings["gzip"].path == css.path + ".gz"
    assert gzip.decompress(gz) == CSS
    assert gz[4:8] == b"\0\0\0\0"  # mtime 0
    assert len(gz) == css.encodings["gzip"].size
    br = (out / css.encodings["br"].path).read_bytes()
    assert brotli.decompress(br) == CSS
    assert manifest["img/logo.png"].encodings == {}  # already compressed: never tried
    assert not manifest["img/logo.png"].compressible
    robots = manifest["robots.txt"]
    assert robots.compressible
    assert robots.encodings == {}  # 14 bytes: gzip would be larger
    assert robots.path.startswith("robots.")
    assert robots.path.endswith(".txt")
    assert not (out / "css" / "app.css").exists()  # only hashed names are written


def test_two_builds_of_one_tree_are_byte_identical(tmp_path: Path) -> None:
    make_site(tmp_path / "a")
    make_site(tmp_path / "b")
    first, second = tree(tmp_path / "a" / "out"), tree(tmp_path / "b" / "out")
    assert first == second
    assert len(first) == 4 + 2 * 2 + 1  # 4 copies, br+gz of css and js, the manifest


def test_the_manifest_text_is_stable_and_round_trips(tmp_path: Path) -> None:
    out = make_site(tmp_path)
    text = (out / MANIFEST_NAME).read_text()
    manifest = Manifest.from_json(text)
    assert manifest.to_json() == text
    assert text.endswith("}\n")
    assert json.loads(text)["version"] == 1
    assert manifest.prefix == "/static/"


def test_without_brotli(tmp_path: Path) -> None:
    out = make_site(tmp_path, brotli=False)
    manifest = Manifest.load(out / MANIFEST_NAME)
    assert sorted(manifest["js/app.js"].encodings) == ["gzip"]
    assert not list(out.rglob("*.br"))


def test_brotli_required_but_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    real = importlib.import_module

    def no_brotli(name: str, *args: object) -> object:
        if name == "brotli":
            raise ImportError("no brotli here")
        return real(name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib, "import_module", no_brotli)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.css").write_bytes(CSS)
    with pytest.raises(ConfigurationError, match=r"scalekit\[brotli\]"):
        build(tmp_path / "src", tmp_path / "out", brotli=True)
    manifest = build(tmp_path / "src", tmp_path / "out")  # None: without, silently
    assert sorted(manifest["a.css"].encodings) == ["gzip"]


def test_no_gzip_and_hash_length(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.js").write_bytes(JS)
    manifest = build(tmp_path / "src", tmp_path / "out", gzip_files=False, hash_length=20)
    assert sorted(manifest["a.js"].encodings) == ["br"]
    assert manifest["a.js"].path == f"a.{hashlib.sha256(JS).hexdigest()[:20]}.js"


def test_names_without_or_with_several_extensions(tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "vendor").mkdir(parents=True)
    for name in ("LICENSE", "vendor/jquery.min.js", "my file.css"):
        (source / name).write_bytes(b"x")
    manifest = build(source, tmp_path / "out")
    digest = hashlib.sha256(b"x").hexdigest()[:12]
    assert manifest["LICENSE"].path == f"LICENSE.{digest}"
    assert manifest["vendor/jquery.min.js"].path == f"vendor/jquery.min.{digest}.js"
    assert manifest.url("my file.css") == f"/static/my%20file.{digest}.css"
    assert manifest.url("/my file.css", prefix="https://cdn.example.com/s") == (
        f"https://cdn.example.com/s/my%20file.{digest}.css"
    )
    site = StaticAssets(tmp_path / "out")
    response = site.respond("GET", f"/static/my file.{digest}.css", {})
    assert response is not None
    assert response.status == 200
    with pytest.raises(KeyError, match=r"nothing\.css"):
        manifest.url("nothing.css")


def test_ignored_names(tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / ".git").mkdir(parents=True)
    (source / ".git" / "HEAD").write_bytes(b"ref")
    (source / ".env").write_bytes(b"SECRET=1")
    (source / "app.css~").write_bytes(b"backup")
    (source / "app.css").write_bytes(CSS)
    (source / "notes.md").write_bytes(b"# notes")
    manifest = build(source, tmp_path / "out")
    assert sorted(manifest) == ["app.css", "notes.md"]
    manifest = build(source, tmp_path / "out2", ignore=["*.md"])
    assert sorted(manifest) == [".env", ".git/HEAD", "app.css", "app.css~"]


def test_a_new_build_keeps_the_old_hashed_files(tmp_path: Path) -> None:
    source, out = tmp_path / "src", tmp_path / "out"
    source.mkdir()
    (source / "app.css").write_bytes(b"a { color: red }")
    old = build(source, out)["app.css"].path
    (source / "app.css").write_bytes(b"a { color: blue }")
    new = build(source, out)["app.css"].path
    assert old != new
    assert (out / old).read_bytes() == b"a { color: red }"
    assert (out / new).read_bytes() == b"a { color: blue }"
    assert Manifest.load(out / MANIFEST_NAME)["app.css"].path == new


def test_symlinks_inside_the_source_are_followed(tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "real").mkdir(parents=True)
    (source / "real" / "a.css").write_bytes(CSS)
    (source / "alias.css").symlink_to(source / "real" / "a.css")
    (source / "linked").symlink_to(source / "real", target_is_directory=True)
    manifest = build(source, tmp_path / "out")
    assert sorted(manifest) == ["alias.css", "linked/a.css", "real/a.css"]
    assert manifest["alias.css"].sha256 == manifest["real/a.css"].sha256


@pytest.mark.parametrize("kind", ["file", "folder", "loop"])
def test_symlinks_leading_out_or_looping_are_refused(tmp_path: Path, kind: str) -> None:
    source, out = tmp_path / "src", tmp_path / "out"
    (source / "sub").mkdir(parents=True)
    (source / "a.css").write_bytes(CSS)
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "passwd").write_bytes(b"root:x:0:0")
    if kind == "file":
        (source / "sub" / "passwd").symlink_to(secret / "passwd")
    elif kind == "folder":
        (source / "etc").symlink_to(secret, target_is_directory=True)
    else:
        (source / "sub" / "up").symlink_to(source, target_is_directory=True)
    with pytest.raises(ConfigurationError, match="symlink"):
        build(source, out)
    assert not out.exists()  # refused before anything was written


def test_output_and_source_must_not_nest(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.css").write_bytes(CSS)
    for source, out in [
        (tmp_path / "src", tmp_path / "src" / "out"),
        (tmp_path / "src", tmp_path / "src"),
        (tmp_path / "src", tmp_path),
    ]:
        with pytest.raises(ConfigurationError, match="must not contain each other"):
            build(source, out)


def test_missing_source_and_file_as_output(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="source_dir must be a folder"):
        build(tmp_path / "nowhere", tmp_path / "out")
    (tmp_path / "src").mkdir()
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(ConfigurationError, match="output_dir must be a folder"):
        build(tmp_path / "src", tmp_path / "file")


@pytest.mark.parametrize("name", ["back\\slash.css", "new\nline.css"])
def test_names_that_are_not_clean_url_paths_are_refused(tmp_path: Path, name: str) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / name).write_bytes(b"x")
    with pytest.raises(ConfigurationError, match="not a clean URL path"):
        build(tmp_path / "src", tmp_path / "out")


def test_empty_files_and_empty_trees(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    assert len(build(tmp_path / "src", tmp_path / "out")) == 0
    assert Manifest.load(tmp_path / "out" / MANIFEST_NAME) == {}
    (tmp_path / "src" / "empty.js").write_bytes(b"")
    entry = build(tmp_path / "src", tmp_path / "out")["empty.js"]
    assert entry.size == 0
    assert entry.encodings == {}
    site = StaticAssets(tmp_path / "out")
    response = site.respond("GET", "/static/" + entry.path, {"range": "bytes=-5"})
    assert response is not None
    assert response.status == 200
    response = site.respond("GET", "/static/" + entry.path, {"range": "bytes=0-"})
    assert response is not None
    assert response.status == 416


# -- manifests that lie -----------------------------------------------------------

GOOD = {
    "path": "a.0123456789ab.css",
    "etag": "0123456789ab",
    "sha256": "0123456789ab" + "0" * 52,
    "size": 3,
    "content_type": "text/css",
    "compressible": True,
    "encodings": {},
}


def document(**changes: object) -> str:
    entry = {**GOOD, **changes}
    return json.dumps({"version": 1, "prefix": "/static/", "files": {"a.css": entry}})


def test_a_good_manifest_parses() -> None:
    assert Manifest.from_json(document())["a.css"].path == GOOD["path"]


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '{"version": 2, "files": {}}',
        '{"version": 1, "files": []}',
        '{"version": 1, "files": {"../a.css": {}}}',
        '{"version": 1, "files": {}, "prefix": "javascript:alert(1)"}',
        document(path="../../etc/passwd"),
        document(path="/etc/passwd"),
        document(path="a\\..\\..\\b"),
        document(path="a/\x00b"),
        document(path="a//b"),
        document(path=7),
        document(etag="zzzz"),
        document(etag="fedcba987654"),  # not the start of the sha256
        document(size=-1),
        document(size=True),
        document(content_type="text/css\r\nSet-Cookie: a=b"),
        document(compressible="yes"),
        document(encodings={"deflate": {"path": "a.gz", "size": 1}}),
        document(encodings={"gzip": {"path": "../a.gz", "size": 1}}),
        document(encodings={"gzip": {"path": "a.gz", "size": -1}}),
        document(encodings={"gzip": "a.gz"}),
        "[" * 100_000,
    ],
)
def test_a_hostile_manifest_is_refused(text: str) -> None:
    with pytest.raises(ConfigurationError):
        Manifest.from_json(text)


def test_a_server_never_opens_what_a_manifest_points_outside(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "secret").write_bytes(b"abc")
    (out / MANIFEST_NAME).write_text(document(path="../secret"))
    with pytest.raises(ConfigurationError, match="inside the root"):
        StaticAssets(out)


def test_served_files_match_their_manifest_sizes(tmp_path: Path) -> None:
    out = make_site(tmp_path)
    site = StaticAssets(out)
    for logical, entry in site.manifest.items():
        assert os.path.getsize(out / entry.path) == entry.size, logical
    assert (out / site.manifest["img/logo.png"].path).read_bytes() == PNG


# -- references inside CSS and JavaScript -----------------------------------------


def test_css_and_js_references_point_at_hashed_copies(tmp_path: Path) -> None:
    source = tmp_path / "src"
    for folder in ("css", "img", "js", "fonts"):
        (source / folder).mkdir(parents=True)
    (source / "img" / "logo.png").write_bytes(PNG)
    (source / "img" / "my bg.png").write_bytes(PNG + b"2")
    (source / "fonts" / "f.woff2").write_bytes(b"font")
    (source / "css" / "base.css").write_bytes(b"p { color: red }\n")
    (source / "css" / "app.css").write_bytes(
        b'@import "base.css";\n'
        b"a { background: url(../img/logo.png) }\n"
        b"b { background: url( '../img/my%20bg.png?v=2#x' ) }\n"
        b'@font-face { src: url("/static/fonts/f.woff2") format("woff2") }\n'
        b"i { background: url(data:image/png;base64,AAAA) }\n"
        b"u { background: url(https://example.com/x.png) }\n"
        b"m { background: url(../img/missing.png) }\n"
        b"e { background: url(../../etc/passwd) }\n"
        b"/*# sourceMappingURL=app.css.map */\n"
    )
    (source / "css" / "app.css.map").write_bytes(b"{}")
    (source / "js" / "app.js").write_bytes(b"run();\n//# sourceMappingURL=app.js.map\n")
    (source / "js" / "app.js.map").write_bytes(b'{"version": 3}')
    manifest = build(source, tmp_path / "out")
    out = tmp_path / "out"
    css = (out / manifest["css/app.css"].path).read_bytes()
    name = {logical: Path(entry.path).name for logical, entry in manifest.items()}
    assert f'@import "{name["css/base.css"]}";'.encode() in css
    assert f"url(../img/{name['img/logo.png']})".encode() in css
    assert f"url( '../img/{name['img/my bg.png'].replace(' ', '%20')}?v=2#x' )".encode() in css
    assert f'url("/static/fonts/{name["fonts/f.woff2"]}")'.encode() in css
    for untouched in (
        b"url(data:image/png;base64,AAAA)",
        b"url(https://example.com/x.png)",
        b"url(../img/missing.png)",
        b"url(../../etc/passwd)",
    ):
        assert untouched in css
    assert f"/*# sourceMappingURL={name['css/app.css.map']} */".encode() in css
    js = (out / manifest["js/app.js"].path).read_bytes()
    assert js == f"run();\n//# sourceMappingURL={name['js/app.js.map']}\n".encode()
    # the stylesheet is hashed after the rewrite: its name follows what it serves
    assert manifest["css/app.css"].sha256 == hashlib.sha256(css).hexdigest()


def test_an_image_change_renames_the_stylesheet_that_uses_it(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "a.css").write_bytes(b"a { background: url(b.png) }")
    (source / "b.png").write_bytes(b"one")
    first = build(source, tmp_path / "o1")["a.css"].path
    (source / "b.png").write_bytes(b"two")
    assert build(source, tmp_path / "o2")["a.css"].path != first
    plain = build(source, tmp_path / "o3", rewrite_references=False)["a.css"]
    assert (tmp_path / "o3" / plain.path).read_bytes() == b"a { background: url(b.png) }"


def test_import_cycles_keep_the_logical_name(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "a.css").write_bytes(b'@import "b.css";')
    (source / "b.css").write_bytes(b'@import "a.css";')
    manifest = build(source, tmp_path / "out")
    a = (tmp_path / "out" / manifest["a.css"].path).read_bytes()
    b = (tmp_path / "out" / manifest["b.css"].path).read_bytes()
    assert b == b'@import "a.css";'  # visited inside a's visit: a has no hash yet
    assert a == f'@import "{manifest["b.css"].path}";'.encode()
