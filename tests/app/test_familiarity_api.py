"""Every /classify and /similar answer says how familiar the picture is (model/familiarity.py), over real HTTP
against the real app; weights without a score say it is unavailable."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from app.testing import image_bytes
from model.predictor import Predictor
from tests.app.conftest import AUTH, make_settings, upload
from training.data import open_source


def _shape_png(weights: Path, i: int) -> bytes:
    """One of the generated shapes the score was fitted on (the reference half), as a PNG."""
    source = open_source("generated:96", split="train", size=Predictor(weights).meta.preset.resize_size)
    buf = io.BytesIO()
    source.pil_image(i).save(buf, format="PNG")
    return buf.getvalue()


def test_answers_carry_the_familiarity_the_model_computes(tmp_path: Path, familiar_weights: Path) -> None:
    shape, noise = _shape_png(familiar_weights, 0), image_bytes(3, size=(90, 70))
    with TestClient(create_app(make_settings(tmp_path, familiar_weights))) as client:
        predictor = client.app.state.service.predictor  # type: ignore[attr-defined]
        files = [("files", ("shape.png", shape, "image/png")), ("files", ("noise.png", noise, "image/png"))]
        classified = client.post("/classify", files=files)
        assert classified.status_code == 200, classified.text
        rows = classified.json()["results"]
        images = [Image.open(io.BytesIO(b)).convert("RGB") for b in (shape, noise)]
        _, _, expected = predictor.forward_scored(predictor.pixels(images))
        assert [r["familiarity"] for r in rows] == pytest.approx(expected.tolist(), abs=1e-4)
        # a picture the score was fitted on is familiar; random pixels, unlike any generated shape, are not
        assert [r["familiar"] for r in rows] == [True, False]
        assert rows[0]["familiarity"] > 0.05 > rows[1]["familiarity"]
        # the probabilities are the temperature's: softmax(logits / T), not softmax(logits)
        logits, _ = predictor.forward(predictor.pixels(images[:1]))
        calibrated = (logits / predictor.temperature).softmax(1)[0]
        assert {p["index"]: p["probability"] for p in rows[0]["predictions"]} == pytest.approx(
            {i: float(calibrated[i]) for i in range(4)}, abs=1e-5
        )
        assert predictor.temperature != 1.0
        # /similar says the same of each query, beside its neighbours; ten crops score the centre crop
        assert client.post("/images", files=upload("s.png", shape), headers=AUTH).status_code == 201
        similar = client.post("/similar", files=files).json()["queries"]
        assert [(q["familiarity"], q["familiar"]) for q in similar] == [(r["familiarity"], r["familiar"]) for r in rows]
        ten = client.post("/classify?ten_crop=true", files=files).json()["results"]
        assert [r["familiar"] for r in ten] == [True, False]
        metrics = client.get("/metrics").text  # 2 pictures in each of 3 answers: 3 familiar, 3 not
        assert 'alexnet_familiarity_answers_total{familiar="true"} 3.0' in metrics
        assert 'alexnet_familiarity_answers_total{familiar="false"} 3.0' in metrics
        schema = client.get("/openapi.json").json()["components"]["schemas"]
        assert "held-out training images" in schema["ClassifyResult"]["properties"]["familiarity"]["description"]


def test_weights_without_a_score_say_it_is_unavailable(client: TestClient) -> None:
    r = client.post("/classify", files=upload())
    assert r.status_code == 200, r.text
    row = r.json()["results"][0]
    assert row["familiarity"] is None and row["familiar"] is None
    probs = [p["probability"] for p in row["predictions"]]
    assert np.isclose(sum(probs), 1, atol=1e-4)
    q = client.post("/similar", files=upload()).json()["queries"][0]
    assert q["familiarity"] is None and q["familiar"] is None
    assert 'alexnet_familiarity_answers_total{familiar="unavailable"} 2.0' in client.get("/metrics").text
