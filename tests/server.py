"""Start the real service as a subprocess on a free port (for browser, end-to-end and load tests)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    env: dict[str, str], *, timeout: float = 120, log: Path | None = None, args: tuple[str, ...] = (), port: int | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``alexnet serve`` on 127.0.0.1 and wait until it answers /healthz: (process, base URL)."""
    port = port or free_port()
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - the child holds it; closed here after the start
    proc = subprocess.Popen(
        [sys.executable, "-m", "model.console", "serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: stop_server reaches uvicorn's worker processes too
    )
    if log:
        out.close()  # type: ignore[union-attr]
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}" + (f"; log: {log.read_text()[-2000:]}" if log else ""))
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise TimeoutError(f"server on {base} did not start in {timeout} s")
        time.sleep(0.2)


def stop_server(proc: subprocess.Popen[bytes], *, kill: bool = False) -> None:
    """SIGTERM (or SIGKILL) to the server's whole process group, and wait for it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextmanager
def running_server(env: dict[str, str], *, timeout: float = 120, log: Path | None = None, args: tuple[str, ...] = ()) -> Iterator[str]:
    """Yield the base URL of ``alexnet serve`` on 127.0.0.1; stop it (SIGTERM) afterwards."""
    proc, base = start_server(env, timeout=timeout, log=log, args=args)
    try:
        yield base
    finally:
        stop_server(proc)
