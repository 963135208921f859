"""The steps of `make run` (docker/entrypoint.sh), on a tiny Fashion-MNIST look-alike and a few training steps."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from app.testing import ROOT, free_port, image_bytes
from tests.training.test_data import make_fmnist

pytestmark = pytest.mark.slow


def run_entrypoint(args: list[str], env: dict[str, str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "docker/entrypoint.sh", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, **kw)  # type: ignore[call-overload]


def serve(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        ["bash", "docker/entrypoint.sh", "serve", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, "server exited"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise TimeoutError("server not ready")


def test_prepare_then_serve_then_restart(tmp_path: Path) -> None:
    if not (ROOT / ".venv" / "bin" / "alexnet").exists():
        pytest.skip("needs the project's .venv (make test creates it)")
    make_fmnist(tmp_path / "fmnist", n_train=64, n_test=24)
    env = {
        **os.environ,
        "ALEXNET_DATA_DIR": str(tmp_path / "data"),
        "FASHION_MNIST_DIR": str(tmp_path / "fmnist"),
        "ALEXNET_TRAIN_ARGS": "--max-steps 2 --batch-size 16 --no-minutes --workers 0",
        "ALEXNET_API_KEY": "k",
    }
    env.pop("ALEXNET_WEIGHTS", None)
    env.pop("ALEXNET_INDEX_DIR", None)
    # a run that stops before it exports (as after SIGTERM): prepare says so and fails; the next prepare resumes it
    stopped = run_entrypoint(["prepare"], {**env, "ALEXNET_TRAIN_ARGS": env["ALEXNET_TRAIN_ARGS"] + " --no-export"})
    assert stopped.returncode == 1 and "run the same command again to resume it" in stopped.stderr
    assert (tmp_path / "data" / "runs" / "default" / "checkpoint.pt").is_file()
    first = run_entrypoint(["prepare"], env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "resuming the interrupted training run" in first.stdout and "resumed from" in first.stderr
    assert "phase train" in first.stdout and "phase index" in first.stdout
    assert " images/s: top-1 " in first.stdout  # how fast this machine trained and what that reached
    weights = tmp_path / "data" / "weights" / "fashion-mnist.safetensors"
    assert weights.is_file()
    second = run_entrypoint(["prepare"], env)  # everything cached: no training, no indexing
    assert second.returncode == 0 and "phase train" not in second.stdout and "phase index" not in second.stdout

    port = free_port()
    proc = serve(env, port)
    base = f"http://127.0.0.1:{port}"
    try:
        r = httpx.post(f"{base}/classify", files={"file": ("a.png", image_bytes(1), "image/png")}, timeout=30)
        assert r.status_code == 200 and r.json()["results"][0]["predictions"][0]["label"]
        r = httpx.post(f"{base}/similar?k=5", files={"file": ("a.png", image_bytes(1), "image/png")}, timeout=30)
        assert r.status_code == 200 and r.json()["count"] == 5
        first_hits = [h["id"] for h in r.json()["results"]]
        ready = httpx.get(f"{base}/readyz").json()
        assert ready["index"]["images"] == 24
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    proc = serve(env, port)
    try:
        assert httpx.get(f"{base}/readyz").json()["index"]["images"] == 24
        r = httpx.post(f"{base}/similar?k=5", files={"file": ("a.png", image_bytes(1), "image/png")}, timeout=30)
        assert [h["id"] for h in r.json()["results"]] == first_hits
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_compose_file_is_valid() -> None:
    import shutil

    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose (Debian package) is not installed")
    r = subprocess.run([exe, "-f", str(ROOT / "compose.yaml"), "config"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "service_completed_successfully" in r.stdout and "8000" in r.stdout
