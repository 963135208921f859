"""What the tests and the benchmarks share: the one place both import (neither imports the other).

- ``start_server``/``stop_server``/``running_server``: the real ``alexnet serve`` as a subprocess on a free port
  on 127.0.0.1, started through the dispatcher as a user starts it.
- ``PostgresServer``: a throwaway PostgreSQL cluster (``initdb`` in a temporary directory, on a free port on
  127.0.0.1). PostgreSQL refuses to run as root, so under root the server runs as the ``postgres`` user that
  Debian's package creates; ``Unavailable`` says why where it cannot run (the tests skip, the benches say so).
- ``make_weights``: a randomly initialised full AlexNet at a small input size, saved as a weights file (nothing
  is ever downloaded); ``image_bytes``: a random image, encoded.

It lives in ``app`` because ``app`` may import every package it needs here (``model``; the others run as
processes) and nothing in the service imports it.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from model.weights import WeightsMeta

__all__ = [
    "ROOT",
    "SMALL_CLASSES",
    "PostgresServer",
    "Unavailable",
    "free_port",
    "image_bytes",
    "make_weights",
    "pg_bindir",
    "running_server",
    "start_server",
    "stop_server",
]

ROOT = Path(__file__).resolve().parents[1]  # the source tree the servers run from
SMALL_CLASSES = ("red", "green", "blue", "white")


class Unavailable(RuntimeError):
    """Something a test or a bench needs is not installed on this machine; the message says what."""


def make_weights(
    path: Path,
    *,
    num_classes: int = 4,
    crop: int = 64,
    seed: int = 0,
    class_names: tuple[str, ...] | None = None,
    familiar_with: int = 0,
) -> WeightsMeta:
    """A randomly initialised full AlexNet at a small input size (``crop``), saved as a weights file; with
    ``familiar_with``, a familiarity score and a temperature (``model.familiarity``) fitted on that many generated
    shapes (``model.datasets.generated_shapes``, seed 0: half the reference, half held out)."""
    import torch

    from model.alexnet import alexnet
    from model.preprocess import Preset
    from model.weights import save_weights

    if class_names is not None:
        num_classes = len(class_names)
    torch.manual_seed(seed)
    model = alexnet(num_classes=num_classes, bias_init=0.1)
    names = class_names or (SMALL_CLASSES if num_classes == len(SMALL_CLASSES) else tuple(f"class-{i}" for i in range(num_classes)))
    meta = WeightsMeta(
        architecture="alexnet-2tower",
        class_names=names,
        preset=Preset.for_crop(crop, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)),
        recipe={"name": "test-random", "seed": seed},
    )
    if not familiar_with:
        return save_weights(model, meta, path)
    from dataclasses import replace

    from model.datasets import generated_shapes
    from model.familiarity import familiarise

    familiarity, temperature = familiarise(model.eval(), meta, generated_shapes(n=familiar_with, seed=0), None)
    return save_weights(model, replace(meta, temperature=temperature), path, familiarity)


def image_bytes(seed: int = 0, size: tuple[int, int] = (48, 40), fmt: str = "PNG", mode: str = "RGB") -> bytes:
    """A ``size`` (width, height) image of random pixels, encoded as ``fmt``; the same seed gives the same bytes."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    im = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    if mode != "RGB":
        im = im.convert(mode)
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


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
    import httpx

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


def pg_bindir() -> Path | None:
    """The newest PostgreSQL's bin directory (Debian keeps initdb out of PATH), or None."""
    from index.errors import ImageIndexError
    from index.pg_backup import pg_tool

    try:
        return pg_tool("initdb").parent
    except ImageIndexError:
        return None


class PostgresServer:
    """One throwaway cluster (``Unavailable`` where PostgreSQL is not installed); ``url(db)`` for a database in it,
    ``stop()``/``start()`` to take it down and back."""

    def __init__(self) -> None:
        bindir = pg_bindir()
        if bindir is None:
            raise Unavailable("PostgreSQL is not installed (apt-get install postgresql)")
        self.bin = bindir
        self.as_user: list[str] = []
        self.dir = Path(tempfile.mkdtemp(prefix="alexnet-pg-"))
        if os.geteuid() == 0:
            try:
                import pwd

                pw = pwd.getpwnam("postgres")
            except KeyError:
                raise Unavailable("running as root and there is no postgres user to run the server as") from None
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.data = self.dir / "data"
        self.port = free_port()
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "alexnet", "-E", "UTF8", "--no-sync")
        self.start()

    def _run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.as_user, str(self.bin / cmd[0]), *cmd[1:]], capture_output=True, text=True, check=check, timeout=120)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        r = self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.dir / "log"), "-w", "-t", "60", "start", check=False)
        if r.returncode != 0:
            log = (self.dir / "log").read_text() if (self.dir / "log").exists() else ""
            raise RuntimeError(f"PostgreSQL did not start: {r.stderr} {log[-2000:]}")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://alexnet@127.0.0.1:{self.port}/{db}"

    def create_database(self, name: str) -> str:
        import psycopg

        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(self.url(), autocommit=True) as conn:
                    conn.execute(f'CREATE DATABASE "{name}"')
                return self.url(name)
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def close(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)
