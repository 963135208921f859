"""The weights routes through the real app: stage an uploaded file (re-embedded by a process of its own), watch,
compare, activate (the service switches by itself), retire; and their refusals."""

from __future__ import annotations

import time
from pathlib import Path

from fastapi.testclient import TestClient

from app.main import create_app
from app.testing import SMALL_CLASSES, image_bytes
from model.weights import read_meta
from tests.app.conftest import AUTH, make_settings, upload


def until(cond, what: str, timeout: float = 60) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.1)


def test_stage_compare_activate_retire_over_http(tmp_path: Path, two_models: tuple[Path, Path]) -> None:
    w1, w2 = two_models
    h1, h2 = read_meta(w1).content_hash, read_meta(w2).content_hash
    with TestClient(create_app(make_settings(tmp_path, w1, follow_interval_s=0.1))) as c:
        for seed in range(12):
            files = [("files", (f"{seed}.png", image_bytes(seed), "image/png"))]
            assert c.post("/images", files=files, data={"label": SMALL_CLASSES[seed % 4]}, headers=AUTH).status_code == 201
        body = w2.read_bytes()
        assert c.post("/models", content=body).status_code in (401, 403)  # behind the key
        bad = c.post("/models", content=b"not a weights file", headers={**AUTH, "Content-Type": "application/octet-stream"})
        assert bad.status_code == 422 and "not a usable weights file" in bad.json()["detail"]
        r = c.post("/models", content=body, headers={**AUTH, "Content-Type": "application/octet-stream"})
        assert r.status_code == 202, r.text
        assert r.json()["hash"] == h2 and r.json()["state"] == "staged" and r.json()["reembedding_pid"] > 0

        def staged() -> dict[str, object]:
            return {w["hash"]: w for w in c.get("/models").json()["weights"]}[h2]  # type: ignore[no-any-return]

        until(lambda: staged()["vectors"] == 12, "the background re-embedding")
        until(lambda: h2 in c.get("/readyz").json().get("weights", {}).get("staged", {}), "the service loads the staged weights")
        gauge = 'alexnet_staged_weights_vectors{weights="' + h2[:12] + '"} 12.0'
        until(lambda: gauge in c.get("/metrics").text, "the progress in /metrics")
        # an add now carries vectors of both weights
        assert c.post("/images", files=[("files", ("n.png", image_bytes(77), "image/png"))], headers=AUTH).status_code == 201
        assert staged()["vectors"] == 13
        compared = c.get("/models?compare=true").json()["comparison"]
        assert compared["active"]["weights"] == h1 and compared["staged"]["weights"] == h2 and compared["sampled"] == 13
        assert c.post(f"/models/{h1[:12]}/activate", headers=AUTH).status_code == 409  # active already
        r = c.post(f"/models/{h2[:12]}/activate", headers=AUTH)
        assert r.status_code == 200 and r.json() == {"active": h2, "previous": h1}
        until(lambda: c.get("/readyz").json()["model"]["weights_hash"] == h2, "the switch")
        hits = c.post("/similar?k=3", files=upload("q.png", image_bytes(3))).json()
        assert hits["model"]["weights_hash"] == h2 and len(hits["results"]) == 3
        assert c.delete(f"/models/{h2[:12]}", headers=AUTH).status_code == 409  # the active ones cannot be retired
        r = c.delete(f"/models/{h1[:12]}", headers=AUTH)
        assert r.status_code == 200 and r.json()["vectors_dropped"] == 13
        assert [(w["hash"], w["state"]) for w in c.get("/models").json()["weights"]] == [(h2, "active")]
