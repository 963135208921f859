"""POST /classify over real HTTP against the real app."""

from __future__ import annotations

import io

from fastapi.testclient import TestClient
from PIL import Image

from app.testing import image_bytes
from tests.app.conftest import upload


def test_classify_returns_top_k_sorted_with_model_info(client: TestClient) -> None:
    r = client.post("/classify", files=upload())
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"]["architecture"] == "alexnet-2tower" and len(body["model"]["weights_hash"]) == 64
    preds = body["results"][0]["predictions"]
    assert len(preds) == 4
    probs = [p["probability"] for p in preds]
    assert probs == sorted(probs, reverse=True)


def test_k_is_validated_against_the_class_count(client: TestClient) -> None:
    assert client.post("/classify?k=2", files=upload()).status_code == 200
    r = client.post("/classify?k=5", files=upload())
    assert r.status_code == 422 and "between 1 and 4" in r.json()["detail"]
    assert client.post("/classify?k=0", files=upload()).status_code == 422


def test_several_files_and_ten_crop(client: TestClient) -> None:
    files = [("files", (f"{i}.png", image_bytes(i), "image/png")) for i in range(3)]
    r = client.post("/classify?k=3", files=files)
    assert r.status_code == 200, r.text
    assert [res["filename"] for res in r.json()["results"]] == ["0.png", "1.png", "2.png"]
    one = client.post("/classify?k=3", files=upload("1.png", image_bytes(1))).json()["results"][0]["predictions"]
    assert [p["index"] for p in one] == [p["index"] for p in r.json()["results"][1]["predictions"]]
    tc = client.post("/classify?k=4&ten_crop=true", files=upload())
    assert tc.status_code == 200 and tc.json()["ten_crop"] is True
    got = {p["index"]: p["probability"] for p in tc.json()["results"][0]["predictions"]}
    assert abs(sum(got.values()) - 1) < 1e-4
    # the same average as the model's own ten-crop path, and not the single crop's answer
    predictor = client.app.state.service.predictor  # type: ignore[attr-defined]
    expected = predictor.classify([Image.open(io.BytesIO(image_bytes())).convert("RGB")], k=4, ten_crop=True)[0]
    assert all(abs(got[p.index] - p.probability) < 1e-5 for p in expected)
    single = {p["index"]: p["probability"] for p in client.post("/classify?k=4", files=upload()).json()["results"][0]["predictions"]}
    assert max(abs(got[i] - single[i]) for i in got) > 1e-6
