"""Adding, serving and deleting stored images; API key rules; similarity round trips."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from app.testing import image_bytes
from tests.app.conftest import API_KEY, AUTH, make_settings, upload


def add(client: TestClient, seed: int, label: str | None = None) -> int:
    data = {"label": label} if label else None
    r = client.post("/images", files=upload(f"{seed}.png", image_bytes(seed)), data=data, headers=AUTH)
    assert r.status_code == 201, r.text
    return int(r.json()["images"][0]["id"])


def test_added_image_is_its_own_nearest_neighbour_until_deleted(client: TestClient) -> None:
    ids = [add(client, s, label=f"L{s}") for s in range(5)]
    r = client.post("/similar?k=3", files=upload("q.png", image_bytes(2)))
    assert r.status_code == 200, r.text
    top = r.json()["results"][0]
    assert top["id"] == ids[2] and top["score"] > 0.99 and top["label"] == "L2"
    assert top["image_url"] == f"/images/{ids[2]}"
    assert client.get(f"/similar/{ids[2]}?k=10").json()["count"] == 4  # itself left out
    assert client.delete(f"/images/{ids[2]}", headers=AUTH).status_code == 200
    after = client.post("/similar?k=10", files=upload("q.png", image_bytes(2))).json()["results"]
    assert ids[2] not in [h["id"] for h in after] and len(after) == 4
    assert client.delete(f"/images/{ids[2]}", headers=AUTH).status_code == 404
    assert client.get(f"/images/{ids[2]}").status_code == 404
    assert client.get(f"/similar/{ids[2]}").status_code == 404


def test_similar_on_empty_index_and_k_larger_than_index(client: TestClient) -> None:
    r = client.post("/similar?k=100", files=upload())
    assert r.status_code == 200 and r.json() == {**r.json(), "count": 0, "results": []}
    add(client, 1)
    r = client.post("/similar?k=100", files=upload())
    assert r.json()["count"] == 1 and r.json()["results"][0]["id"] > 0
    assert client.post("/similar?k=101", files=upload()).status_code == 422


def test_same_bytes_give_the_same_id(client: TestClient) -> None:
    a, b = add(client, 7), add(client, 7)
    assert a == b
    r = client.post("/images", files=upload("7.png", image_bytes(7)), headers=AUTH)
    assert r.json()["images"][0]["created"] is False


def test_api_key_rules(tmp_path, small_weights) -> None:  # type: ignore[no-untyped-def]
    from app.main import create_app
    from tests.app.conftest import make_settings

    with TestClient(create_app(make_settings(tmp_path, small_weights, api_key=None))) as open_client:
        r = open_client.post("/images", files=upload())
        assert r.status_code == 403 and "ALEXNET_API_KEY" in r.json()["detail"]
        assert open_client.delete("/images/1").status_code == 403
    with TestClient(create_app(make_settings(tmp_path / "2", small_weights))) as c:
        assert c.post("/images", files=upload()).status_code == 401
        assert c.post("/images", files=upload(), headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.post("/images", files=upload(), headers={"X-API-Key": API_KEY}).status_code == 201
        assert c.delete("/images/1", headers={"X-API-Key": "nope"}).status_code == 401
        assert c.get("/similar/1").status_code == 200  # reading needs no key


def test_stored_image_is_reencoded_pixels_never_the_upload(client: TestClient) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("evil.html", "<script>alert(1)</script>")
    polyglot = image_bytes(3) + buf.getvalue()
    r = client.post("/images", files=upload("poly.png", polyglot), headers=AUTH)
    assert r.status_code == 201, r.text
    image_id = r.json()["images"][0]["id"]
    got = client.get(f"/images/{image_id}")
    assert got.status_code == 200 and got.headers["content-type"] == "image/png"
    assert b"evil.html" not in got.content and b"<script>" not in got.content
    assert Image.open(io.BytesIO(got.content)).tobytes() == Image.open(io.BytesIO(image_bytes(3))).convert("RGB").tobytes()
    meta = client.get(f"/images/{image_id}/meta").json()
    assert meta["width"] == 48 and meta["height"] == 40 and meta["source"] == "upload:poly.png"


def test_ids_are_validated_and_paths_never_reach_the_filesystem(client: TestClient) -> None:
    assert client.get("/images/../../etc/passwd").status_code == 404
    assert client.get("/images/abc").status_code == 422
    assert client.get("/images/0").status_code == 422
    assert client.get("/images/999999").status_code == 404
    assert client.get("/images/1/meta").status_code == 404


def test_the_service_switches_to_the_compressed_index_when_the_gallery_grows(tmp_path: Path, small_weights: Path) -> None:
    settings = make_settings(tmp_path, small_weights, index_auto_threshold=40)
    with TestClient(create_app(settings)) as client:
        for start in range(0, 48, 16):
            files = [("files", (f"{i}.png", image_bytes(i, size=(40, 40)), "image/png")) for i in range(start, start + 16)]
            assert client.post("/images", files=files, headers=AUTH).status_code == 201
        index = client.app.state.service.index
        assert index.wait_rebuild(60)
        ready = client.get("/readyz").json()
        assert ready["index"]["factory"] == "PCA12,IVF1,Flat" and ready["index"]["configured_factory"] == "auto"
        r = client.post("/similar?k=3", files=upload("q.png", image_bytes(7, size=(40, 40))))
        best = r.json()["results"][0]
        assert best["id"] == 8 and best["score"] == pytest.approx(1.0, abs=1e-5)  # exact re-scored cosine


def test_an_all_black_image_gives_no_nan_anywhere(client: TestClient) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buf, format="PNG")
    black = buf.getvalue()
    r = client.post("/classify", files=upload("black.png", black))
    assert r.status_code == 200 and all(0.0 <= p["probability"] <= 1.0 for p in r.json()["results"][0]["predictions"])
    add(client, 1)
    r = client.post("/images", files=upload("black.png", black), headers=AUTH)
    assert r.status_code == 201
    black_id = r.json()["images"][0]["id"]
    for resp in (client.post("/similar?k=5", files=upload("black.png", black)), client.get(f"/similar/{black_id}?k=5")):
        assert resp.status_code == 200, resp.text  # JSON has no NaN: the response would not even serialise
        assert all(-1.0 <= h["score"] <= 1.0 for h in resp.json()["results"])


def test_jpeg_uploads_are_decoded_only_as_large_as_the_model_and_the_stored_copy_need(
    tmp_path: Path, small_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 2400x1600 JPEG: /classify decodes it at 1/8 (300x200 still covers the preset's 73 px resize), POST /images at
    1/4 (the stored copy is 512 px long), and with reduced decoding off, whole. The declared size is what /meta says."""
    import app.uploads
    from model.decode import decode_image

    decoded_sizes: list[tuple[int, int]] = []

    def spy(*args, **kw):  # type: ignore[no-untyped-def]
        d = decode_image(*args, **kw)
        decoded_sizes.append(d.image.size)
        return d

    monkeypatch.setattr(app.uploads, "decode_image", spy)
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 75, 3), dtype=np.uint8)).resize((2400, 1600)).save(buf, "JPEG")
    photo = buf.getvalue()
    with TestClient(create_app(make_settings(tmp_path / "a", small_weights))) as c:
        reduced = c.post("/classify", files=upload("p.jpg", photo, "image/jpeg"))
        r = c.post("/images", files=upload("p.jpg", photo, "image/jpeg"), headers=AUTH)
        assert r.status_code == 201, r.text
        image_id = r.json()["images"][0]["id"]
        assert Image.open(io.BytesIO(c.get(f"/images/{image_id}").content)).size == (512, 341)
        assert (lambda m: (m["width"], m["height"]))(c.get(f"/images/{image_id}/meta").json()) == (2400, 1600)
        top = c.post("/similar?k=1", files=upload("p.jpg", photo, "image/jpeg")).json()["results"][0]
        assert top["id"] == image_id and top["score"] > 0.99  # 1/8 against 1/4: nearly the same fc7
    with TestClient(create_app(make_settings(tmp_path / "b", small_weights, reduced_decoding=False))) as c:
        full = c.post("/classify", files=upload("p.jpg", photo, "image/jpeg"))
    assert decoded_sizes == [(300, 200), (600, 400), (300, 200), (2400, 1600)]
    a, b = reduced.json()["results"][0]["predictions"], full.json()["results"][0]["predictions"]
    assert a[0]["label"] == b[0]["label"] and abs(a[0]["probability"] - b[0]["probability"]) < 0.02
