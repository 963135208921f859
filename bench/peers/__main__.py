"""This service against the servers a team would put the same weights behind instead: TorchServe, NVIDIA Triton
(PyTriton) and LitServe, one run, one client, one machine (``make bench-peers``).

    python -m bench.peers [--peer-python .venv-peers/bin/python] [--seconds 4] [--overload-seconds 30]
                          [--peers torchserve,triton,litserve] [--variants own,ours] [--weights W]

Every server loads the same weights file (the default model's, else a random one of its shape) and runs the same
forward pass (``bench/peers/work.py``); each answers POST requests carrying one JPEG with the same top-5 JSON.
The peers decode and preprocess as their own docs do (``own``: PIL and torchvision) and, in a second variant, with
this service's decoder and preprocessing (``ours``), so that the serving stacks alone are compared. Each peer batches
as its docs say (settings printed with the table). Per server:

- cold start: from the process's start until its first 200 to a real request;
- req/s, p50 and p99 at 1 and 16 clients (closed loop, keep-alive), for 0.3 MP and 12 MP JPEGs (scikit-image's
  photographs with the `bench` extra, else smooth random pictures);
- open loop at twice its own 16-client capacity for ``--overload-seconds``: status codes, accepted p50/p99 and its
  resident memory (the process tree's, from /proc);
- resident memory at rest (after the cold start) and the most under load.

A peer that cannot start here is reported in one line and the others still run. The peers live in their own
virtual environment (``.venv-peers``, made by ``make bench-peers``), never in the service's dependencies.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.testing import ROOT, free_port
from bench.common import machine, table
from bench.photo_bench import _raise_open_files_limit, open_loop
from bench.service_bench import exchange, load, multipart_request

PEERS_DIR = Path(__file__).resolve().parent
SIZES = (0.3, 12)
SETTINGS = {
    "this service": "its defaults: dynamic batching up to ALEXNET_MAX_BATCH, bounded queue answering 503",
    "torchserve": "1 worker, batchSize 16, maxBatchDelay 5 ms, job_queue_size 100 (default)",
    "triton": "PyTriton, 1 instance, max_batch_size 16, max_queue_delay_microseconds 5000, default queue policy",
    "litserve": "1 worker, max_batch_size 16, batch_timeout 5 ms",
}


# -- requests each server takes -------------------------------------------------------------------------------


def triton_request(image: bytes, host: str) -> bytes:
    """KServe v2 with Triton's binary data extension: the JPEG as one BYTES element, the answer as JSON."""
    data = struct.pack("<I", len(image)) + image
    head = json.dumps(
        {
            "inputs": [{"name": "image", "shape": [1, 1], "datatype": "BYTES", "parameters": {"binary_data_size": len(data)}}],
            "outputs": [{"name": "top5", "parameters": {"binary_data": False}}],
        }
    ).encode()
    return (
        (
            f"POST /v2/models/alexnet/infer HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/octet-stream\r\n"
            f"Inference-Header-Content-Length: {len(head)}\r\nContent-Length: {len(head) + len(data)}\r\n\r\n"
        ).encode()
        + head
        + data
    )


def raw_body_request(route: str, image: bytes, host: str) -> bytes:
    """The JPEG as the whole body (TorchServe's examples: ``curl -T image.jpg``)."""
    return f"POST {route} HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(image)}\r\n\r\n".encode() + image


@dataclass
class Server:
    name: str
    variant: str  # own, ours (this service: always its own decoder)
    command: list[str]
    port: int
    request: Callable[[bytes, str], bytes]
    env: dict[str, str]
    cwd: Path = ROOT
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None  # its stdout and stderr

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def requests(self, images: list[bytes]) -> list[bytes]:
        return [self.request(im, f"127.0.0.1:{self.port}") for im in images]


def servers(names: list[str], variants: list[str], weights: Path, peer_python: str, tmp: Path) -> list[Server]:
    env = {**os.environ, "PATH": f"{Path(peer_python).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    out = []
    port = free_port()
    out.append(
        Server(
            "this service", "ours", [sys.executable, "-m", "model.console", "serve", "--host", "127.0.0.1", "--port", str(port),
                                     "--log-level", "warning"],
            port, lambda im, host: multipart_request("/classify", im, host),
            {**os.environ, "ALEXNET_WEIGHTS": str(weights), "ALEXNET_INDEX_DIR": str(tmp / "index")},
        )
    )  # fmt: skip
    for variant in variants:
        for name in names:
            port = free_port()
            if name == "torchserve":
                store = tmp / f"ts-{variant}"
                store.mkdir()
                (store / "peer.json").write_text(json.dumps({"weights": str(weights), "variant": variant, "repo": str(ROOT)}))
                subprocess.run(
                    [str(Path(peer_python).parent / "torch-model-archiver"), "--model-name", "alexnet", "--version", "1.0",
                     "--handler", str(PEERS_DIR / "torchserve_handler.py"), "--extra-files", str(store / "peer.json"),
                     "--export-path", str(store), "-f"],
                    check=True, env=env, capture_output=True,
                )  # fmt: skip
                models = {"alexnet": {"1.0": {"defaultVersion": True, "marName": "alexnet.mar", "minWorkers": 1, "maxWorkers": 1,
                                              "batchSize": 16, "maxBatchDelay": 5, "responseTimeout": 120}}}  # fmt: skip
                (store / "config.properties").write_text(
                    f"inference_address=http://127.0.0.1:{port}\nmanagement_address=http://127.0.0.1:{free_port()}\n"
                    f"metrics_address=http://127.0.0.1:{free_port()}\ndisable_token_authorization=true\n"
                    f"install_py_dep_per_model=false\nmodel_store={store}\nload_models=alexnet.mar\nmodels={json.dumps(models)}\n"
                )
                command = [str(Path(peer_python).parent / "torchserve"), "--start", "--foreground", "--ncs",
                           "--ts-config", str(store / "config.properties"), "--model-store", str(store)]  # fmt: skip
                out.append(
                    Server(name, variant, command, port, lambda im, host: raw_body_request("/predictions/alexnet", im, host), env, store)
                )
            elif name == "triton":
                command = [peer_python, str(PEERS_DIR / "triton_server.py"), str(weights), variant, str(port)]
                out.append(Server(name, variant, command, port, triton_request, env))
            elif name == "litserve":
                command = [peer_python, str(PEERS_DIR / "litserve_server.py"), str(weights), variant, str(port)]
                out.append(Server(name, variant, command, port, lambda im, host: multipart_request("/predict", im, host), env))
            else:
                raise SystemExit(f"unknown peer {name!r}: torchserve, triton, litserve")
    return out


# -- measuring ----------------------------------------------------------------------------------------------------


def tree_rss_mib(pid: int) -> float | None:
    """Resident memory of ``pid`` and every process under it (MiB; shared pages count once per process)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(d.name))
            rss[int(d.name)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    if pid not in rss:
        return None
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo.extend(children.get(p, []))
    return total / 2**20


async def _one(server: Server, request: bytes) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        status, _ = await exchange(reader, writer, request)
        return status
    finally:
        writer.close()


def start(server: Server, probe: bytes, timeout: float = 300) -> float:
    """Start the server; seconds until it first answers a real request with 200."""
    server.log = Path(tempfile.mkstemp(prefix=f"peer-{server.name.replace(' ', '-')}-{server.variant}-", suffix=".log")[1])
    t = time.perf_counter()
    with server.log.open("wb") as log:  # (a pipe nobody reads would stall a server that logs much, as TorchServe does)
        server.proc = subprocess.Popen(server.command, cwd=server.cwd, env=server.env, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)  # fmt: skip
    while time.perf_counter() - t < timeout:
        if server.proc.poll() is not None:
            last = server.log.read_text(errors="replace").strip().splitlines()[-1:]
            raise RuntimeError(f"exited with {server.proc.returncode} ({server.log}): {last[0] if last else ''}")
        try:
            if asyncio.run(_one(server, probe)) == 200:
                return time.perf_counter() - t
        except (OSError, asyncio.IncompleteReadError, ValueError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"no 200 within {timeout:.0f} s")


def stop(server: Server) -> None:
    if server.proc is None:
        return
    try:
        os.killpg(server.proc.pid, signal.SIGTERM)
        server.proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(server.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        server.proc.wait()
    server.proc = None
    if server.log is not None:
        server.log.unlink(missing_ok=True)


def measure(server: Server, jpegs: dict[float, list[bytes]], args: argparse.Namespace) -> dict[str, Any]:
    reqs = {mp: server.requests(ims) for mp, ims in jpegs.items()}
    row: dict[str, Any] = {"server": server.name, "variant": server.variant}
    row["cold_start_s"] = start(server, reqs[SIZES[0]][0])
    assert server.proc is not None
    time.sleep(1.0)
    row["rss_rest_mib"] = tree_rss_mib(server.proc.pid)
    for mp in SIZES:
        for clients in (1, 16):
            asyncio.run(load(server.base, "", clients, args.warmup, [], requests=reqs[mp]))
            r = asyncio.run(load(server.base, "", clients, args.seconds, [], requests=reqs[mp]))
            row |= {f"{mp}MP c{clients} rps": r["rps"], f"{mp}MP c{clients} p50": r["p50_ms"], f"{mp}MP c{clients} p99": r["p99_ms"]}
            row[f"{mp}MP c{clients} errors"] = r["errors"]
    if args.overload_seconds > 0:
        mp = args.overload_megapixels
        pid = server.proc.pid
        over = asyncio.run(
            open_loop(server.base, "", 2 * row[f"{mp}MP c16 rps"], args.overload_seconds, [], requests=reqs[mp],
                      memory=lambda: tree_rss_mib(pid))
        )  # fmt: skip
        row |= {
            "overload_rate": over["rate"],
            "overload_statuses": over["statuses"],
            "overload_accepted_rps": over["accepted_rps"],
            "overload_p50": over["accepted_p50_ms"],
            "overload_p99": over["accepted_p99_ms"],
            "rss_load_mib": over["rss_max_mb"],
        }
    return row


def jpeg_inputs() -> dict[float, list[bytes]]:
    from bench.decode_bench import encode, resampled

    try:
        from bench.decode_bench import photographs

        photos = list(photographs().values())[:8]
    except Exception:  # no scikit-image: smooth random pictures
        import numpy as np
        from PIL import Image

        rng = np.random.default_rng(0)
        photos = [Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).resize((4000, 3000)) for _ in range(4)]
    return {mp: [encode(resampled(im, mp), "JPEG") for im in photos] for mp in SIZES}


def default_weights(tmp: Path) -> Path:
    trained = ROOT / "data" / "weights" / "fashion-mnist.safetensors"
    if trained.exists():
        return trained
    from bench.photo_bench import make_default_shaped_weights

    path = tmp / "default-shaped.safetensors"
    make_default_shaped_weights(path)
    return path


def report(rows: list[dict[str, Any]], failed: dict[str, str], args: argparse.Namespace) -> None:
    ours = next((r for r in rows if r["server"] == "this service"), None)
    print(f"\n# This service against its peers, one run: {machine()}, {time.strftime('%Y-%m-%d')}")
    for name, why in failed.items():
        print(f"# {name}: not measured: {why}")
    cols = ["server", "variant", "cold_start_s", "rss_rest_mib"]
    for mp in SIZES:
        cols += [f"{mp}MP c1 p50", f"{mp}MP c1 rps", f"{mp}MP c16 rps", f"{mp}MP c16 p99"]
    print(table(rows, cols))
    if ours:
        ratios = []
        for r in rows:
            if r is ours:
                continue
            cell = {"server": r["server"], "variant": r["variant"]}
            for mp in SIZES:
                cell[f"{mp}MP c16 rps: ours/peer"] = ours[f"{mp}MP c16 rps"] / max(r[f"{mp}MP c16 rps"], 1e-9)
                cell[f"{mp}MP c1 p50: peer/ours"] = r[f"{mp}MP c1 p50"] / max(ours[f"{mp}MP c1 p50"], 1e-9)
            ratios.append(cell)
        if ratios:
            print("\n# Targets: every ratio above 1 (this service more req/s at 16 clients, a lower p50 at 1 client)")
            print(table(ratios, list(ratios[0])))
    if args.overload_seconds > 0:
        print(
            f"\n# Open loop at 2x each server's own 16-client capacity, {args.overload_seconds:.0f} s, {args.overload_megapixels} MP JPEGs"
        )
        print(table(rows, ["server", "variant", "overload_rate", "overload_statuses", "overload_accepted_rps", "overload_p50",
                           "overload_p99", "rss_load_mib"]))  # fmt: skip
    print("\n# Settings")
    for name, s in SETTINGS.items():
        print(f"#   {name}: {s}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peer-python", default=str(ROOT / ".venv-peers" / "bin" / "python"))
    ap.add_argument("--peers", default="torchserve,triton,litserve")
    ap.add_argument("--variants", default="own,ours")
    ap.add_argument("--weights", type=Path)
    ap.add_argument("--seconds", type=float, default=4)
    ap.add_argument("--warmup", type=float, default=1)
    ap.add_argument("--overload-seconds", type=float, default=30)
    ap.add_argument("--overload-megapixels", type=float, default=0.3, choices=SIZES)
    ap.add_argument("--json", type=Path, help="write the rows here too")
    args = ap.parse_args(argv)
    _raise_open_files_limit()
    jpegs = jpeg_inputs()
    rows: list[dict[str, Any]] = []
    failed: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        weights = args.weights or default_weights(tmp)
        if not Path(args.peer_python).exists():
            failed["peers"] = f"no {args.peer_python}: make bench-peers makes it"
            names: list[str] = []
        else:
            names = [n for n in args.peers.split(",") if n]
        if "torchserve" in names and subprocess.run(["java", "-version"], capture_output=True).returncode != 0:
            failed["torchserve"] = "no Java: apt-get install openjdk-17-jre-headless"
            names.remove("torchserve")
        for server in servers(names, [v for v in args.variants.split(",") if v], weights, args.peer_python, tmp):
            label = f"{server.name} ({server.variant})"
            print(f"[peers] {label} ...", flush=True)
            try:
                rows.append(measure(server, jpegs, args))
            except Exception as e:  # a peer that cannot run here: one line, and the others still run
                failed[label] = f"{type(e).__name__}: {e}"
            finally:
                stop(server)
    report(rows, failed, args)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "rows": rows, "failed": failed}, indent=1))
    return {"rows": rows, "failed": failed}


if __name__ == "__main__":
    main()
