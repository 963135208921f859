"""Hostile uploads (RELIABILITY.md 1-13): each gets its status code, in bounded time, and changes nothing."""

from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.testing import image_bytes
from tests.app.conftest import AUTH, upload


def unchanged(client: TestClient, before: int) -> None:
    """Nothing lost: same index size, and the next good request answers normally."""
    assert client.get("/readyz").json()["index"]["images"] == before
    assert client.post("/classify?k=2", files=upload()).status_code == 200


def png_bomb(width: int = 20000, height: int = 20000) -> bytes:
    """A tiny PNG whose header declares width x height grey pixels (the IDAT compresses to nothing)."""
    raw = zlib.compress(b"\x00" * (width + 1) * 64, 9)  # first rows only; the size check must fire before decoding

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", raw)
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("name", "data", "status", "fragment"),
    [
        ("text.jpg", b"hello, this is plain text pretending to be a jpeg", 415, "looks like text"),
        ("doc.jpg", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", 415, "PDF"),
        ("arch.jpg", b"PK\x03\x04" + b"\x00" * 40, 415, "ZIP"),
        ("eps.jpg", b"%!PS-Adobe-3.0 EPSF-3.0\n", 415, "EPS"),
        ("psd.jpg", b"8BPS\x00\x01" + b"\x00" * 30, 415, "Photoshop"),
        ("empty.png", b"", 400, "empty"),
        ("trunc.png", image_bytes(1)[:60], 400, "cannot decode PNG"),
        ("trunc.jpg", image_bytes(1, fmt="JPEG")[:200], 400, "cannot decode JPEG"),
        ("bomb.png", png_bomb(), 413, "pixels"),
        ("garbage.png", b"\x89PNG\r\n\x1a\n" + b"\xff" * 100, 400, "cannot decode PNG"),
        ("gif.gif", b"GIF89a" + b"\x00" * 5, 400, "cannot decode GIF"),
    ],
)
def test_bad_images_are_refused_with_the_right_status(client: TestClient, name: str, data: bytes, status: int, fragment: str) -> None:
    for route, headers in (("/classify", None), ("/similar", None), ("/images", AUTH)):
        start = time.monotonic()
        r = client.post(route, files=upload(name, data, "image/jpeg"), headers=headers)
        assert time.monotonic() - start < 5
        assert r.status_code == status, (route, r.text)
        assert fragment in r.json()["detail"] and name in r.json()["detail"]
    unchanged(client, 0)


def test_missing_or_misnamed_field_and_wrong_content_type(client: TestClient) -> None:
    r = client.post("/classify", files=upload(field="image"))
    assert r.status_code == 400 and "'file'" in r.json()["detail"] and "image" in r.json()["detail"]
    r = client.post("/classify", data={"file": "not a file"}, files={"x": ("x.txt", b"x", "text/plain")})
    assert r.status_code == 400 and "must be a file upload" in r.json()["detail"]
    assert client.post("/classify", data={"file": "not multipart"}).status_code == 415
    assert client.post("/classify", content=b"raw", headers={"content-type": "image/png"}).status_code == 415
    assert client.post("/classify").status_code == 400
    unchanged(client, 0)


def test_body_over_the_cap_is_413_before_decoding(client: TestClient) -> None:
    big = b"\xff\xd8\xff" + b"\x00" * (3 * 1024 * 1024)
    r = client.post("/classify", files=upload("big.jpg", big))
    assert r.status_code == 413 and "exceeds the limit" in r.json()["detail"]
    # a false, small Content-Length: the stream is cut off when it crosses the cap
    body = b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n\r\n' + big + b"\r\n--b--\r\n"

    def chunks():  # no Content-Length at all: chunked transfer
        for i in range(0, len(body), 65536):
            yield body[i : i + 65536]

    r = client.post("/classify", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413
    r = client.post("/classify", content=body, headers={"content-type": "multipart/form-data; boundary=b", "content-length": "100"})
    assert r.status_code in (400, 413)
    unchanged(client, 0)


def test_pathological_multipart_is_refused_fast(client: TestClient) -> None:
    cases = {
        "backslash boundary": (b"--" + b"\\" * 60 + b"\r\n" + b"\\" * 200_000, "multipart/form-data; boundary=" + "\\" * 60),
        "megabytes of CRLF": (b"\r\n" * 700_000 + b"--b\r\n", "multipart/form-data; boundary=b"),
        "thousands of headers": (
            b"--b\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(20000)) + b"\r\n\r\nx\r\n--b--\r\n",
            "multipart/form-data; boundary=b",
        ),
        "thousands of empty fields": (
            b"".join(b'--b\r\nContent-Disposition: form-data; name="f%d"\r\n\r\n\r\n' % i for i in range(5000)) + b"--b--\r\n",
            "multipart/form-data; boundary=b",
        ),
        "thousands of empty files": (
            b"".join(b'--b\r\nContent-Disposition: form-data; name="files"; filename="a"\r\n\r\n\r\n' for i in range(5000)) + b"--b--\r\n",
            "multipart/form-data; boundary=b",
        ),
        "no boundary": (b"whatever", "multipart/form-data"),
    }
    for name, (body, ctype) in cases.items():
        start = time.monotonic()
        r = client.post("/classify", content=body, headers={"content-type": ctype})
        took = time.monotonic() - start
        assert r.status_code in (400, 413), (name, r.status_code, r.text[:200])
        assert took < 5, (name, took)
    unchanged(client, 0)


def _classes(client: TestClient, data: bytes) -> list[int]:
    r = client.post("/classify?k=4", files=upload("x", data))
    assert r.status_code == 200, r.text
    return [p["index"] for p in r.json()["results"][0]["predictions"]]


def _probs(client: TestClient, data: bytes) -> list[float]:
    return [p["probability"] for p in client.post("/classify?k=4", files=upload("x", data)).json()["results"][0]["predictions"]]


def test_exif_orientation_gives_the_upright_answer(client: TestClient) -> None:
    rng = np.random.default_rng(0)
    upright = Image.fromarray(rng.integers(0, 256, (40, 64, 3), dtype=np.uint8))
    for orientation, transpose in ((6, Image.Transpose.ROTATE_90), (8, Image.Transpose.ROTATE_270)):
        stored = upright.transpose(transpose)  # what a camera writes; EXIF says how to turn it back
        exif = Image.Exif()
        exif[0x0112] = orientation
        buf = io.BytesIO()
        stored.save(buf, format="PNG", exif=exif)
        ref = io.BytesIO()
        upright.save(ref, format="PNG")
        assert _probs(client, buf.getvalue()) == pytest.approx(_probs(client, ref.getvalue()), abs=1e-5)


def test_unusual_modes_become_sensible_rgb(client: TestClient) -> None:
    rng = np.random.default_rng(1)
    rgb = Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))

    def enc(im: Image.Image, fmt: str = "PNG", **kw: object) -> bytes:
        buf = io.BytesIO()
        im.save(buf, format=fmt, **kw)
        return buf.getvalue()

    palette = rgb.convert("P")
    palette.info["transparency"] = 0
    cases = {
        "cmyk jpeg": enc(rgb.convert("CMYK"), "JPEG"),
        "16-bit png": enc(Image.fromarray((rng.integers(0, 65535, (40, 40))).astype(np.uint16))),
        "palette + tRNS": enc(palette, transparency=0),
        "LA": enc(rgb.convert("LA")),
        "RGBA": enc(rgb.convert("RGBA")),
        "1-bit": enc(rgb.convert("1")),
        "grey": enc(rgb.convert("L")),
        "webp": enc(rgb, "WEBP"),
        "bmp": enc(rgb, "BMP"),
        "tiff": enc(rgb, "TIFF"),
    }
    for name, data in cases.items():
        first = _probs(client, data)
        assert first == _probs(client, data), f"{name}: not deterministic"
        assert len(first) == 4, name


def test_animated_gif_with_many_frames_uses_the_first_in_bounded_time(client: TestClient) -> None:
    frames = [Image.new("P", (32, 32), i % 256) for i in range(3000)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=10)
    first = io.BytesIO()
    frames[0].save(first, format="GIF")
    start = time.monotonic()
    probs = _probs(client, buf.getvalue())
    assert time.monotonic() - start < 3
    assert probs == pytest.approx(_probs(client, first.getvalue()), abs=1e-5)


def test_huge_legal_dimensions_are_refused_by_the_pixel_limit(client: TestClient) -> None:
    im = Image.new("L", (2500, 2000), 0)  # 5 MP > the test limit of 4 MP, small when compressed
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    r = client.post("/classify", files=upload("wide.png", buf.getvalue()))
    assert r.status_code == 413 and "5,000,000 pixels" in r.json()["detail"]
