"""Health, readiness (with damaged files), metrics, the page."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from app.main import create_app
from app.testing import make_weights
from tests.app.conftest import make_settings, upload


def test_health_ready_metrics(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready" and ready.json()["index"]["images"] == 0
    client.post("/classify", files=upload())
    text = client.get("/metrics").text
    assert 'alexnet_http_requests_total{method="POST",route="/classify",status="200"} 1.0' in text
    assert "alexnet_batch_size_count 1.0" in text and "alexnet_index_images 0.0" in text
    assert "alexnet_http_request_seconds_bucket" in text and "alexnet_batch_queue_depth" in text
    assert client.get("/docs").status_code == 200 and "/classify" in client.get("/openapi.json").json()["paths"]
    page = client.get("/")
    assert page.status_code == 200 and '<input id="file"' in page.text


def test_tampered_weights_mean_not_ready_naming_the_file(tmp_path: Path) -> None:
    weights = tmp_path / "w.safetensors"
    make_weights(weights)
    data = bytearray(weights.read_bytes())
    data[-50] ^= 0xFF
    weights.write_bytes(bytes(data))
    with TestClient(create_app(make_settings(tmp_path, weights))) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and "w.safetensors" in r.json()["detail"] and "hash mismatch" in r.json()["detail"]
        assert c.get("/healthz").status_code == 200
        r = c.post("/classify", files=upload())
        assert r.status_code == 503 and "w.safetensors" in r.json()["detail"]


def test_index_from_other_weights_is_refused(tmp_path: Path, small_weights: Path) -> None:
    with TestClient(create_app(make_settings(tmp_path, small_weights))) as c:
        c.post("/images", files=upload(), headers={"X-API-Key": "test-key-123"})
    other = tmp_path / "other.safetensors"
    make_weights(other, seed=5)
    with TestClient(create_app(make_settings(tmp_path, other))) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and "serves weights" in r.json()["detail"] and "alexnet model stage" in r.json()["detail"]
        assert c.post("/classify", files=upload()).status_code == 200  # the model itself is fine
        assert c.post("/similar", files=upload()).status_code == 503
