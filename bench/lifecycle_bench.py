"""New weights on a live gallery (``index.lifecycle``, ``app.switching``): what re-embedding costs and what serving
sees meanwhile, each figure beside its baseline from the same run.

    python -m bench.lifecycle_bench [--images 2048] [--seconds 8]

1. Throughput at batch 64 of the network at the default model's input size, 64 px (``--crop 224``: the paper's;
   random weights: speed does not depend on their values): the model alone on preprocessed batches; plain
   extraction, ``alexnet index build`` over a folder of 224 px JPEG files (decoding, the stored copy, the store's
   writes); re-embedding the gallery it built with second weights from the stored copies (``alexnet model
   stage``'s work). Both as a fraction of the model alone. Extraction writes one file per image (its stored copy):
   the microseconds one file's creation costs there are printed beside it, and where /dev/shm is a tmpfs,
   extraction runs again with the gallery there.
2. ``POST /similar`` (a 224 px JPEG: decoding, the forward pass, the search) p50/p99 from one client against a
   running server, without and then while a re-embedding process (third weights) runs beside it.
3. Two servers on the gallery: the seconds from ``alexnet model activate`` returning until both answer with the
   new hash (each server looks every ``ALEXNET_FOLLOW_INTERVAL_S``, 0.5 s here).
4. With the ``bench`` extra (scikit-image's photographs): the cosine between fc7 from the stored copy and fc7 from
   the upload, at 0.04, 2 and 12 MP (``fidelity``), for the default model (``--weights``; skipped until `make run` trained it).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch

from app.testing import ROOT, make_weights, start_server, stop_server
from bench.common import machine, percentile, table

FOLLOW_INTERVAL_S = 0.5
DEFAULT_WEIGHTS = ROOT / "data" / "weights" / "fashion-mnist.safetensors"  # what `make run` trains


def fidelity(weights: list[Path], megapixels: tuple[float, ...] = (0.04, 2, 12)) -> list[dict[str, Any]]:
    """What re-embedding from the stored copy costs: the 12 skimage photographs, each Lanczos-resampled to each size
    and sent as a JPEG (q90). The vector the service stores on an add comes from the upload; re-embedding computes
    it from the stored copy (at most ``STORE_MAX_SIDE`` px, JPEG q90; at 0.04 MP, about 200 px, a second JPEG of the
    same size). Cosine of the two and top-1 agreement."""
    from bench.decode_bench import PHOTOS, encode, photographs, resampled
    from index.encoding import STORE_MAX_SIDE, encode_for_store
    from index.lifecycle import stored_pixels
    from model.decode import decode_image
    from model.predictor import Predictor

    photos = photographs()
    rows = []
    for path in weights:
        p = Predictor(path)
        for mp in megapixels:
            cosines, agree, uploads = [], [], []
            for im in photos.values():
                upload = encode(resampled(im, mp), "JPEG")
                decoded = decode_image(upload, min_side=p.meta.preset.resize_size, min_long_side=STORE_MAX_SIDE).image
                logits, fc7 = p.forward(torch.cat([p.pixels([decoded]), stored_pixels(p, encode_for_store(decoded))]))  # type: ignore[list-item]
                v = torch.nn.functional.normalize(fc7, dim=1)
                cosines.append(float(v[0] @ v[1]))
                agree.append(int(logits[0].argmax()) == int(logits[1].argmax()))
                uploads.append(v[0])
            u = torch.stack(uploads)
            others = (u @ u.T)[~torch.eye(len(u), dtype=torch.bool)]  # the scale: two different photographs
            rows.append({"model": f"{path.stem} ({p.meta.preset.crop_size} px)", "MP": mp, "photos": len(PHOTOS),
                         "cosine mean": f"{np.mean(cosines):.5f}", "cosine min": f"{np.min(cosines):.5f}",
                         "top-1 agree": float(np.mean(agree)), "other photos' cosine, mean": f"{float(others.mean()):.3f}"})  # fmt: skip
    return rows


def write_gallery(folder: Path, n: int, side: int = 224) -> str:
    """``n`` JPEG files of ``side`` px: the Fashion-MNIST test images where installed, else smooth random pictures."""
    from PIL import Image

    folder.mkdir(parents=True)
    try:
        from model.datasets import fashion_mnist

        src = fashion_mnist(split="test")
        picture = lambda i: src.pil_image(i).convert("RGB")  # noqa: E731
        what = "Fashion-MNIST test images"
    except Exception:  # not installed, or unreadable: random pictures serve as well for speed
        rng = np.random.default_rng(0)
        picture = lambda i: Image.fromarray(rng.integers(0, 256, (side // 8, side // 8, 3), dtype=np.uint8))  # noqa: E731
        what = "random pictures"
    for i in range(n):
        picture(i).resize((side, side), Image.Resampling.BICUBIC).save(folder / f"{i:05d}.jpg", quality=90)
    return what


def alexnet(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([sys.executable, "-m", "model.console", *args], cwd=ROOT, env={**os.environ, **(env or {})},
                       capture_output=True, text=True, timeout=3600)  # fmt: skip
    if r.returncode != 0:
        raise RuntimeError(f"alexnet {' '.join(args)}: {r.stdout}{r.stderr}")
    return r


def model_alone(weights: Path, folder: Path, n: int) -> float:
    """Images/s of the forward pass alone on the gallery's preprocessed batches of 64."""
    from PIL import Image

    from model.predictor import Predictor

    p = Predictor(weights)
    files = sorted(folder.iterdir())[:n]
    batches = [p.pixels([Image.open(f).convert("RGB") for f in files[a : a + 64]]) for a in range(0, len(files), 64)]
    p.forward(batches[0])
    start = time.perf_counter()
    for b in batches:
        p.forward(b)
    return len(files) / (time.perf_counter() - start)


def file_creation_us(directory: Path, n: int = 300) -> float:
    """Microseconds to create (and close) one empty file in ``directory``: what each image's stored copy costs the
    file system before a byte of it is written (``index.sqlite_store`` writes one file per image)."""
    d = Path(tempfile.mkdtemp(dir=directory, prefix="creation-"))
    try:
        t = time.perf_counter()
        for i in range(n):
            os.close(os.open(d / f"{i}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        return 1e6 * (time.perf_counter() - t) / n
    finally:
        shutil.rmtree(d, ignore_errors=True)


def tmpfs() -> Path | None:
    """/dev/shm where it is a writable tmpfs with room for a small gallery, else None."""
    shm = Path("/dev/shm")
    try:
        ok = shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 2**30
    except OSError:
        return None
    return shm if ok else None


def extraction(weights: Path, folder: Path, index_dir: Path, n: int) -> float:
    """Images/s of ``build_index`` over the folder into a new gallery at ``index_dir`` (workers started inside the timing)."""
    from index.extract import build_index
    from index.index import ImageIndex
    from model.predictor import Predictor

    active = Predictor(weights)
    with ImageIndex(index_dir, weights_hash=active.weights_hash) as ix:
        t = time.perf_counter()
        build_index(ix, active, str(folder), progress=False)
        return n / (time.perf_counter() - t)


def throughput(w: list[Path], folder: Path, index_dir: Path, n: int) -> list[dict[str, Any]]:
    """The model alone, extraction (building the gallery) and re-embedding it with ``w[1]``, timed in this process
    (DataLoader workers and threads started inside the timing); then the two commands end to end on a copy, their
    start (imports, loading the model) included."""
    from index import registry
    from index.index import ImageIndex
    from index.lifecycle import reembed
    from model.predictor import Predictor
    from model.weights import read_meta

    alone = model_alone(w[0], folder, n)
    built = extraction(w[0], folder, index_dir, n)
    staged = Predictor(w[1])
    with ImageIndex(index_dir, weights_hash=read_meta(w[0]).content_hash) as ix:
        registry.register(ix.store, staged.weights_hash, 4096, w[1], {})
        report = reembed(ix.store, staged, progress=False)
    rate = report.computed / report.seconds
    creation = file_creation_us(index_dir.parent)
    rows_tmpfs: list[dict[str, Any]] = []
    if (shm := tmpfs()) is not None:  # the same extraction where creating a file costs what it costs in memory
        on_shm = Path(tempfile.mkdtemp(dir=shm, prefix="lifecycle-bench-"))
        try:
            fast = extraction(w[0], folder, on_shm / "index", n)
            rows_tmpfs = [{"case": f"extraction, the gallery on the tmpfs {shm} (a file created in {file_creation_us(shm):.0f} us)",
                           "img/s": fast, "of the model": fast / alone}]  # fmt: skip
        finally:
            shutil.rmtree(on_shm, ignore_errors=True)
    t = time.perf_counter()
    alexnet("index", "build", str(folder), "--weights", str(w[0]), "--index", str(index_dir.with_name("index-cli")))
    build_cli = n / (time.perf_counter() - t)
    t = time.perf_counter()
    alexnet("model", "stage", str(w[1]), "--index", str(index_dir.with_name("index-cli")), "--active-weights", str(w[0]), "--quiet")
    stage_cli = n / (time.perf_counter() - t)
    return [
        {"case": "the model alone (preprocessed batches of 64)", "img/s": alone, "of the model": 1.0},
        {
            "case": f"extraction: build_index over the folder of JPEG files (a file created in {creation:.0f} us)",
            "img/s": built,
            "of the model": built / alone,
        },
        *rows_tmpfs,
        {"case": "re-embedding from the stored copies", "img/s": rate, "of the model": rate / alone},
        {"case": "`alexnet index build`, end to end", "img/s": build_cli, "of the model": build_cli / alone},
        {"case": "`alexnet model stage` (store the file, re-embed), end to end", "img/s": stage_cli, "of the model": stage_cli / alone},
    ]


def latencies(base: str, queries: list[bytes], until: threading.Event | float) -> list[float]:
    """Seconds of each ``POST /similar`` (an upload: a forward pass and a search) from one client, until the event is
    set or for that many seconds."""
    out: list[float] = []
    end = time.monotonic() + until if isinstance(until, float) else None
    rng = np.random.default_rng(0)
    with httpx.Client(timeout=60) as client:
        while not (until.is_set() if isinstance(until, threading.Event) else time.monotonic() >= end):  # type: ignore[operator]
            t = time.perf_counter()
            r = client.post(f"{base}/similar?k=10", files={"file": ("q.jpg", queries[int(rng.integers(len(queries)))], "image/jpeg")})
            out.append(time.perf_counter() - t)
            if r.status_code != 200:
                raise RuntimeError(f"/similar answered {r.status_code}: {r.text[:200]}")
    return out


def serving(base: str) -> str:
    return str(httpx.get(f"{base}/readyz", timeout=10).json().get("model", {}).get("weights_hash", ""))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2048)
    ap.add_argument("--seconds", type=float, default=8.0, help="the idle latency window")
    ap.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help="trained weights for the fidelity part")
    ap.add_argument("--crop", type=int, default=64, help="the network's input side (64: the default model's; 224: the paper's)")
    args = ap.parse_args(argv)
    out: dict[str, Any] = {"machine": machine()}
    with tempfile.TemporaryDirectory(prefix="lifecycle-bench-") as tmp:
        d = Path(tmp)
        names = tuple(f"class-{i}" for i in range(10))
        w = [d / f"w{k}.safetensors" for k in (1, 2, 3)]
        hashes = [make_weights(p, crop=args.crop, seed=k, class_names=names).content_hash for k, p in enumerate(w)]
        what = write_gallery(d / "images", args.images)
        index = d / "index"
        print(f"# {args.images} {what} as 224 px JPEG files; the network at {args.crop} px input, random weights", flush=True)

        # 1. throughput
        rows = throughput(w, d / "images", index, args.images)
        print(table(rows, list(rows[0])), flush=True)
        out["throughput"] = rows

        # 2. /similar while re-embedding runs
        env = {"ALEXNET_WEIGHTS": str(w[0]), "ALEXNET_INDEX_DIR": str(index), "ALEXNET_FOLLOW_INTERVAL_S": str(FOLLOW_INTERVAL_S)}
        proc, base = start_server(env, log=d / "server-a.log")
        proc2 = None
        try:
            queries = [f.read_bytes() for f in sorted((d / "images").iterdir())[:100]]
            latencies(base, queries, 1.0)
            idle = latencies(base, queries, float(args.seconds))
            done = threading.Event()
            job = subprocess.Popen([sys.executable, "-m", "model.console", "model", "stage", str(w[2]), "--index", str(index), "--quiet"],
                                   cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
            waiter = threading.Thread(target=lambda: (job.wait(), done.set()), daemon=True)
            waiter.start()
            busy = latencies(base, queries, done)
            job_out = job.stdout.read() if job.stdout else ""
            if job.returncode != 0:
                raise RuntimeError(f"the re-embedding beside the server failed: {job_out}")
            rows2 = [
                {"case": "POST /similar, k=10, 1 client, idle", "requests": len(idle), "p50 ms": 1e3 * percentile(idle, 50),
                 "p99 ms": 1e3 * percentile(idle, 99), "ratio p99": 1.0},
                {"case": "... while re-embedding runs beside it", "requests": len(busy), "p50 ms": 1e3 * percentile(busy, 50),
                 "p99 ms": 1e3 * percentile(busy, 99), "ratio p99": percentile(busy, 99) / percentile(idle, 99)},
            ]  # fmt: skip
            print(table(rows2, list(rows2[0])), flush=True)
            print(job_out.strip().splitlines()[-1], flush=True)
            out["similar_latency"] = rows2

            # 3. activate -> every server answers with the new hash
            proc2, base2 = start_server(env, log=d / "server-b.log")
            t = time.perf_counter()
            alexnet("model", "activate", hashes[1][:12], "--index", str(index))
            returned = time.perf_counter()
            seen: dict[str, float] = {}
            while len(seen) < 2 and time.perf_counter() - returned < 60:
                for b in (base, base2):
                    if b not in seen and serving(b) == hashes[1]:
                        seen[b] = time.perf_counter() - returned
                time.sleep(0.01)
            if len(seen) < 2:
                raise RuntimeError("a server did not switch within 60 s")
            last = max(seen.values())
            out["switch"] = {"activate_command_s": returned - t, "last_server_s": last, "follow_interval_s": FOLLOW_INTERVAL_S}
            print(f"\nactivate took {returned - t:.2f} s (the command's start included); the last of 2 servers answered with "
                  f"{hashes[1][:12]} {last:.2f} s after it returned (each looks every {FOLLOW_INTERVAL_S} s)")  # fmt: skip
        finally:
            stop_server(proc)
            if proc2 is not None:
                stop_server(proc2)
        try:
            import skimage  # noqa: F401 - the photographs (the `bench` extra)
        except ImportError:
            print("\n(scikit-image is missing: the fidelity of the stored copy is measured with the `bench` extra)")
            return out
        if not args.weights.is_file():  # (a network of random weights maps every photograph to nearly one vector)
            print(f"\n({args.weights} not found: `make run` trains it; the fidelity of the stored copy is measured on it)")
            return out
        rows3 = fidelity([args.weights])
        print("\n# fc7 from the stored copy (re-embedding) against fc7 from the upload (an add)")
        print(table(rows3, list(rows3[0])), flush=True)
        out["fidelity"] = rows3
    return out


if __name__ == "__main__":
    main()
