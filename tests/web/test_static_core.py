"""The I/O-free core of scalekit.web.static: Range parsing against a slice model,
Accept-Encoding negotiation, the conditional-request matrix, paths and methods."""

from __future__ import annotations

import gzip
import os
import re
from email.utils import formatdate
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scalekit.web._static_http import parse_range, select_encoding
from scalekit.web.static import IMMUTABLE, StaticAssets, StaticResponse, build

CSS = b"body { color: #333; margin: 0 auto; }\n" * 200
JS = b"export const answer = 42;\n" * 300
PNG = bytes(range(256)) * 8
MTIME = 1_700_000_000


def make_site(root: Path, *, brotli: bool | None = None, **options: object) -> Path:
    """A built static folder: css/app.css, js/app.js, img/logo.png, robots.txt."""
    source, out = root / "src", root / "out"
    files = {
        "css/app.css": CSS,
        "js/app.js": JS,
        "img/logo.png": PNG,
        "robots.txt": b"User-agent: *\n",
    }
    for name, data in files.items():
        path = source / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.utime(path, (MTIME, MTIME))
    build(source, out, brotli=brotli, **options)  # type: ignore[arg-type]
    return out


def body_of(response: StaticResponse) -> bytes:
    if response.file is None:
        return response.body
    with open(response.file, "rb") as handle:
        handle.seek(response.offset)
        return handle.read(response.length)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> StaticAssets:
    return StaticAssets(make_site(tmp_path_factory.mktemp("site")))


def get(
    site: StaticAssets, logical: str = "css/app.css", method: str = "GET", **headers: str
) -> StaticResponse:
    response = site.respond(
        method, site.url_for(logical), {k.replace("_", "-"): v for k, v in headers.items()}
    )
    assert response is not None
    return response


# -- Range: a plain model with slice semantics ------------------------------------


def model_range(spec: str, data: bytes) -> bytes | bool | None:
    """What one range spec selects, by Python slices: bytes, False (unsatisfiable)
    or None (ignored)."""
    first, _, last = spec.partition("-")
    if not first:
        n = int(last)
        if n == 0:
            return False
        return data[-n:] if data else None
    a = int(first)
    if last:
        b = int(last)
        if b < a:
            return None
        return data[a : b + 1] or False
    return data[a:] or False


specs = st.one_of(
    st.builds(lambda a, b: f"{a}-{b}", st.integers(0, 300), st.integers(0, 300)),
    st.builds(lambda a: f"{a}-", st.integers(0, 300)),
    st.builds(lambda n: f"-{n}", st.integers(0, 300)),
)


@given(data=st.binary(max_size=200), spec=specs)
def test_range_matches_the_slice_model(data: bytes, spec: str) -> None:
    found = parse_range(f"bytes={spec}", len(data))
    expected = model_range(spec, data)
    if expected is None or expected is False:
        assert found is expected
    else:
        assert found not in (None, False)
        start, stop = found  # type: ignore[misc]
        assert data[start:stop] == expected


@given(header=st.text(max_size=40), length=st.integers(0, 10**6))
def test_any_range_header_gives_a_valid_answer(header: str, length: int) -> None:
    found = parse_range(header, length)
    if found not in (None, False):
        start, stop = found  # type: ignore[misc]
        assert 0 <= start < stop <= length


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-0", (0, 1)),
        ("BYTES = 5-9", (5, 10)),
        ("bytes=5-9, ", (5, 10)),
        ("bytes=990-2000", (990, 1000)),
        ("bytes=-5000", (0, 1000)),
        ("bytes=0-" + "9" * 5000, (0, 1000)),
        ("bytes=" + "9" * 5000 + "-", False),
        ("bytes=-0", False),
        ("bytes=1000-1000", False),
        ("bytes=9-5", None),
        ("bytes=0-1,3-4", None),
        ("bytes=a-b", None),
        ("bytes=-", None),
        ("bytes=1 - 2", None),
        ("items=0-5", None),
        ("bytes", None),
        ("", None),
    ],
)
def test_range_examples(header: str, expected: object) -> None:
    assert parse_range(header, 1000) == expected


# -- Accept-Encoding --------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "available", "expected"),
    [
        (None, ("br", "gzip"), "identity"),
        ("", ("br", "gzip"), "identity"),
        ("gzip, deflate, br, zstd", ("br", "gzip"), "br"),
        ("gzip, deflate, br", ("gzip",), "gzip"),
        ("gzip", ("br", "gzip"), "gzip"),
        ("x-gzip", ("gzip",), "gzip"),
        ("GZIP;Q=0.5, br;q=0.4", ("br", "gzip"), "gzip"),
        ("br;q=0, gzip;q=0.1", ("br", "gzip"), "gzip"),
        ("*", ("br", "gzip"), "br"),
        ("*;q=0.5, gzip;q=0", ("br", "gzip"), "br"),
        ("identity", ("br", "gzip"), "identity"),
        ("gzip;q=0.2, identity;q=0.5", ("gzip",), "identity"),
        ("gzip;q=0, identity;q=0", ("gzip",), None),
        ("*;q=0", ("br", "gzip"), None),
        ("*;q=0, identity", ("br", "gzip"), "identity"),
        ("br;q=2, gzip;q=abc", ("br", "gzip"), "identity"),
        ("deflate", ("br", "gzip"), "identity"),
        ("br", (), "identity"),
    ],
)
def test_encoding_selection(
    header: str | None, available: tuple[str, ...], expected: str | None
) -> None:
    assert select_encoding(header, available) == expected


def test_the_selected_representation_is_served_with_its_own_etag(site: StaticAssets) -> None:
    plain = get(site)
    gz = get(site, accept_encoding="gzip")
    h = dict(plain.headers)
    g = dict(gz.headers)
    etag = site.manifest["css/app.css"].etag
    assert h["etag"] == f'"{etag}"'
    assert "content-encoding" not in h
    assert body_of(plain) == CSS
    assert g["etag"] == f'"{etag}-gzip"'
    assert g["content-encoding"] == "gzip"
    assert gzip.decompress(body_of(gz)) == CSS
    assert int(g["content-length"]) == len(body_of(gz)) < len(CSS)
    assert h["vary"] == g["vary"] == "Accept-Encoding"


def test_all_headers_of_a_hashed_file(site: StaticAssets) -> None:
    response = get(site)
    assert response.status == 200
    assert response.status_line == "200 OK"
    headers = dict(response.headers)
    assert headers["cache-control"] == IMMUTABLE == "public, max-age=31536000, immutable"
    assert headers["content-type"] == "text/css; charset=utf-8"
    assert headers["content-length"] == str(len(CSS))
    assert headers["accept-ranges"] == "bytes"
    assert headers["last-modified"] == formatdate(MTIME, usegmt=True)
    assert headers["x-content-type-options"] == "nosniff"
    assert re.fullmatch(r'"[0-9a-f]{12}"', headers["etag"])


def test_incompressible_files_do_not_vary(site: StaticAssets) -> None:
    response = get(site, "img/logo.png", accept_encoding="gzip, br")
    headers = dict(response.headers)
    assert "vary" not in headers
    assert "content-encoding" not in headers
    assert headers["content-type"] == "image/png"
    assert body_of(response) == PNG


def test_406_when_every_coding_is_refused(site: StaticAssets) -> None:
    response = get(site, accept_encoding="identity;q=0, *;q=0")
    assert response.status == 406
    assert ("vary", "Accept-Encoding") in response.headers


# -- conditional requests ---------------------------------------------------------

LATER = formatdate(MTIME + 10, usegmt=True)
EARLIER = formatdate(MTIME - 10, usegmt=True)
EXACT = formatdate(MTIME, usegmt=True)


def test_conditional_matrix(site: StaticAssets) -> None:
    tag = f'"{site.manifest["css/app.css"].etag}"'
    other = '"000000000000"'
    cases: list[tuple[dict[str, str], int]] = [
        ({}, 200),
        ({"if-none-match": tag}, 304),
        ({"if-none-match": f"W/{tag}"}, 304),  # weak comparison for GET
        ({"if-none-match": f"{other}, {tag}"}, 304),
        ({"if-none-match": "*"}, 304),
        ({"if-none-match": other}, 200),
        ({"if-none-match": f'"{tag[1:-1]}-gzip"'}, 200),  # another representation's tag
        ({"if-none-match": "garbage"}, 200),
        ({"if-modified-since": EXACT}, 304),
        ({"if-modified-since": LATER}, 304),
        ({"if-modified-since": EARLIER}, 200),
        ({"if-modified-since": "not a date"}, 200),
        ({"if-none-match": other, "if-modified-since": LATER}, 200),  # IMS only without INM
        ({"if-match": tag}, 200),
        ({"if-match": "*"}, 200),
        ({"if-match": f"W/{tag}"}, 412),  # strong comparison for If-Match
        ({"if-match": other}, 412),
        ({"if-unmodified-since": EARLIER}, 412),
        ({"if-unmodified-since": EXACT}, 200),
        ({"if-match": tag, "if-unmodified-since": EARLIER}, 200),  # IUS only without IM
        ({"if-match": other, "if-none-match": tag}, 412),  # If-Match first
    ]
    for headers, status in cases:
        for method in ("GET", "HEAD"):
            response = site.respond(method, site.url_for("css/app.css"), headers)
            assert response is not None
            assert response.status == status, (method, headers)


def test_a_304_carries_the_validators_and_no_body(site: StaticAssets) -> None:
    etag = site.manifest["css/app.css"].etag
    response = get(site, accept_encoding="gzip", if_none_match=f'"{etag}-gzip"')
    assert response.status == 304
    assert response.file is None
    assert response.body == b""
    assert dict(response.headers) == {
        "etag": f'"{etag}-gzip"',
        "cache-control": IMMUTABLE,
        "last-modified": EXACT,
        "vary": "Accept-Encoding",
    }


# -- Range requests ---------------------------------------------------------------


def test_range_requests_serve_the_slice(site: StaticAssets) -> None:
    for header, start in [("bytes=0-99", 0), ("bytes=100-", 100), ("bytes=-10", len(CSS) - 10)]:
        part = CSS[start : start + 100] if header == "bytes=0-99" else CSS[start:]
        response = get(site, range=header)
        assert response.status == 206
        assert response.status_line == "206 Partial Content"
        assert body_of(response) == part
        headers = dict(response.headers)
        assert headers["content-range"] == f"bytes {start}-{start + len(part) - 1}/{len(CSS)}"
        assert headers["content-length"] == str(len(part))


def test_ranges_apply_to_the_selected_representation(site: StaticAssets) -> None:
    whole = body_of(get(site, accept_encoding="gzip"))
    response = get(site, accept_encoding="gzip", range="bytes=0-9")
    assert response.status == 206
    assert body_of(response) == whole[:10]
    assert dict(response.headers)["content-range"] == f"bytes 0-9/{len(whole)}"


def test_unsatisfiable_range_is_416(site: StaticAssets) -> None:
    response = get(site, range=f"bytes={len(CSS)}-")
    assert response.status == 416
    assert dict(response.headers)["content-range"] == f"bytes */{len(CSS)}"


def test_several_ranges_get_the_whole_file(site: StaticAssets) -> None:
    response = get(site, range="bytes=0-1,5-9")
    assert response.status == 200
    assert body_of(response) == CSS


def test_head_ignores_range_and_has_no_body(site: StaticAssets) -> None:
    response = get(site, method="HEAD", range="bytes=0-9")
    assert response.status == 200
    assert response.length == 0
    assert dict(response.headers)["content-length"] == str(len(CSS))


def test_if_range(site: StaticAssets) -> None:
    tag = f'"{site.manifest["css/app.css"].etag}"'
    assert get(site, range="bytes=0-9", if_range=tag).status == 206
    assert get(site, range="bytes=0-9", if_range=EXACT).status == 206
    assert get(site, range="bytes=0-9", if_range=f"W/{tag}").status == 200  # weak never
    assert get(site, range="bytes=0-9", if_range='"000000000000"').status == 200
    assert get(site, range="bytes=0-9", if_range=LATER).status == 200
    gz_tag = f'"{tag[1:-1]}-gzip"'
    assert get(site, range="bytes=0-9", if_range=gz_tag).status == 200  # not this one
    assert get(site, range="bytes=0-9", accept_encoding="gzip", if_range=gz_tag).status == 206


def test_a_304_wins_over_range(site: StaticAssets) -> None:
    tag = f'"{site.manifest["css/app.css"].etag}"'
    assert get(site, range="bytes=0-9", if_none_match=tag).status == 304


# -- paths and methods ------------------------------------------------------------


def test_other_methods_get_405(site: StaticAssets) -> None:
    for method in ("POST", "PUT", "DELETE", "OPTIONS", "PATCH", "get"):
        response = get(site, method=method)
        assert response.status == 405
        assert ("allow", "GET, HEAD") in response.headers


def test_logical_names_are_served_briefly(site: StaticAssets) -> None:
    response = site.respond("GET", "/static/css/app.css", {})
    assert response is not None
    assert response.status == 200
    headers = dict(response.headers)
    assert headers["cache-control"] == "public, max-age=60"
    assert headers["etag"] == f'"{site.manifest["css/app.css"].etag}"'
    assert body_of(response) == CSS


def test_logical_names_can_be_refused(tmp_path: Path) -> None:
    site = StaticAssets(make_site(tmp_path), unhashed_max_age=None)
    response = site.respond("GET", "/static/css/app.css", {})
    assert response is not None
    assert response.status == 404
    assert get(site).status == 200


def test_paths_outside_the_prefix_are_not_ours(site: StaticAssets) -> None:
    assert site.respond("GET", "/", {}) is None
    assert site.respond("GET", "/staticx/css/app.css", {}) is None
    assert site.respond("GET", "/static", {}) is None


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/static/../src/css/app.css", 400),
        ("/static/css/../../etc/passwd", 400),
        ("/static/./css/app.css", 400),
        ("/static/css/..", 400),
        ("/static/css\\..\\..\\etc\\passwd", 400),
        ("/static/css/app.css\x00.png", 400),
        ("/static//etc/passwd", 404),
        ("/static/%2e%2e/%2e%2e/etc/passwd", 404),  # not decoded twice: a literal name
        ("/static/manifest.json", 404),
        ("/static/css/", 404),
        ("/static/", 404),
        ("/static/css/app.css.gz", 404),
        ("/static/nothing.css", 404),
    ],
)
def test_hostile_paths(site: StaticAssets, path: str, status: int) -> None:
    response = site.respond("GET", path, {})
    assert response is not None
    assert response.status == status
    assert response.file is None


def test_a_hashed_copy_of_the_gz_is_reachable_only_through_negotiation(
    site: StaticAssets,
) -> None:
    entry = site.manifest["css/app.css"]
    response = site.respond("GET", "/static/" + entry.encodings["gzip"].path, {})
    assert response is not None
    assert response.status == 404


def test_a_cdn_prefix_serves_its_path_part(tmp_path: Path) -> None:
    out = make_site(tmp_path, prefix="https://cdn.example.com/assets/")
    site = StaticAssets(out)
    url = site.url_for("css/app.css")
    assert url.startswith("https://cdn.example.com/assets/css/app.")
    response = site.respond("GET", url[len("https://cdn.example.com") :], {})
    assert response is not None
    assert response.status == 200


def test_a_damaged_build_fails_at_start(tmp_path: Path) -> None:
    from scalekit.errors import ConfigurationError

    out = make_site(tmp_path)
    site = StaticAssets(out)
    victim = out / site.manifest["js/app.js"].path
    victim.write_bytes(b"truncated")
    with pytest.raises(ConfigurationError, match="bytes, the manifest says"):
        StaticAssets(out)
    victim.unlink()
    with pytest.raises(ConfigurationError, match="js/app"):
        StaticAssets(out)
