"""Request ids, the access log (text and JSON), process metrics, the body cap's metrics, CORS."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.observe import JsonFormatter
from app.testing import running_server
from tests.app.conftest import AUTH, make_settings, upload


def test_request_ids_are_kept_or_made_and_sent_back(client: TestClient) -> None:
    r = client.get("/healthz", headers={"X-Request-ID": "trace-42.a/b"})
    assert r.headers["x-request-id"] == "trace-42.a/b"
    made = client.get("/healthz").headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", made) and made != client.get("/healthz").headers["x-request-id"]  # a fresh one each time
    bad = client.get("/healthz", headers={"X-Request-ID": "x" * 200}).headers["x-request-id"]  # too long: replaced
    assert bad != "x" * 200 and len(bad) == 32


def test_access_log_names_the_route_template_status_and_request_id(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        client.post("/images", files=upload(), headers=AUTH)
        r = client.get("/images/1/meta", headers={"X-Request-ID": "req-7"})
    assert r.status_code == 200
    (line,) = [rec for rec in caplog.records if rec.name == "app.access" and getattr(rec, "request_id", "") == "req-7"]
    assert line.getMessage().startswith("GET /images/{image_id}/meta 200 ")
    entry = json.loads(JsonFormatter().format(line))  # what ALEXNET_LOG_FORMAT=json writes
    assert entry["route"] == "/images/{image_id}/meta" and entry["status"] == 200 and entry["request_id"] == "req-7"
    assert 0 < entry["duration_ms"] < 60_000 and entry["logger"] == "app.access" and entry["time"].endswith("+00:00")


@pytest.mark.slow
def test_the_real_server_logs_one_json_object_per_line(tmp_path: Path, small_weights: Path) -> None:
    log = tmp_path / "server.log"
    env = {"ALEXNET_WEIGHTS": str(small_weights), "ALEXNET_INDEX_DIR": str(tmp_path / "idx"), "ALEXNET_LOG_FORMAT": "json"}
    with running_server(env, log=log, args=("--log-level", "info")) as base:
        assert httpx.get(f"{base}/readyz", headers={"X-Request-ID": "json-1"}).status_code == 200
    lines = [line for line in log.read_text().splitlines() if line.strip() and not line.startswith("serving on")]  # (stdout banner)
    entries = [json.loads(line) for line in lines]  # every log line, uvicorn's included, is JSON
    assert [e["route"] for e in entries if e["logger"] == "app.access" and e["request_id"] == "json-1"] == ["/readyz"]
    assert any(e["logger"] == "app" and e["message"].startswith("ready") for e in entries)


def test_metrics_carry_process_figures_and_count_the_body_cap_under_its_route(client: TestClient) -> None:
    big = b"\x00" * (3 * 1024 * 1024)  # over the 2 MiB cap of the test settings
    r = client.post("/classify", files=upload(data=big))
    assert r.status_code == 413 and "exceeds the limit" in r.json()["detail"]
    text = client.get("/metrics").text
    for name in ("process_resident_memory_bytes", "process_open_fds", "process_cpu_seconds_total"):
        assert name in text, name
    assert 'alexnet_http_requests_total{method="POST",route="/classify",status="413"} 1.0' in text
    assert 'alexnet_rejected_uploads_total{reason="413"} 1.0' in text
    assert 'route="unmatched"' not in text


def test_cors_is_off_by_default_and_follows_the_setting(tmp_path: Path, small_weights: Path) -> None:
    preflight = {"Origin": "https://a.example", "Access-Control-Request-Method": "POST"}
    with TestClient(create_app(make_settings(tmp_path / "off", small_weights))) as c:
        assert "access-control-allow-origin" not in c.options("/classify", headers=preflight).headers
    with TestClient(create_app(make_settings(tmp_path / "on", small_weights, cors_origins="https://a.example"))) as c:
        r = c.options("/classify", headers=preflight)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://a.example"
        assert "access-control-allow-origin" not in c.options("/classify", headers={**preflight, "Origin": "https://evil.example"}).headers
        r = c.get("/healthz", headers={"Origin": "https://a.example"})
        assert r.headers["access-control-allow-origin"] == "https://a.example"
        assert "x-request-id" in r.headers["access-control-expose-headers"].lower()
