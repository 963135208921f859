"""Data-parallel training with torchrun on 2 and 3 CPU processes (gloo), through the real `alexnet train`.

Each rank writes OUT/ranks/rank-R.json at the end (steps, images it read, a checksum of its
parameters): DDP keeps the copies identical only if every rank takes the same decisions.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.testing import ROOT

pytestmark = pytest.mark.slow


def torchrun(nproc: int, out: Path, *args: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           "-m", "model.console", "train", "--out", str(out), "--no-export", *args]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen[str], timeout: float = 600) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def reports(out: Path, n: int) -> list[dict[str, object]]:
    found = [json.loads((out / "ranks" / f"rank-{r}.json").read_text()) for r in range(n)]
    assert [r["rank"] for r in found] == list(range(n))
    return found


def test_a_budgeted_run_ends_cleanly_on_every_rank_with_identical_parameters(tmp_path: Path) -> None:
    """The reported crash: with a time budget each rank stopped on its own clock, and rank 0 died in backward."""
    out = tmp_path / "run"
    finish(torchrun(2, out, "--recipe", "tiny", "--minutes", "0.12", "--epochs", "100"))
    ranks = reports(out, 2)
    assert ranks[0]["step"] == ranks[1]["step"] and 0 < int(ranks[0]["step"]) < 100 * 2  # the budget stopped it
    assert ranks[0]["parameters_sha256"] == ranks[1]["parameters_sha256"]
    assert (out / "checkpoint.pt").is_file() and not (out / "ranks" / "rank-2.json").exists()


def make_folder(root: Path, per_class: int = 15) -> None:
    rng = np.random.default_rng(0)
    for c, colour in enumerate([(220, 30, 30), (30, 200, 40), (30, 40, 220), (235, 235, 235)]):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            arr = rng.integers(0, 60, (32, 32, 3), dtype=np.uint8)
            arr[8:24, 8:24] = colour
            Image.fromarray(arr).save(root / f"class{c}" / f"{i}.png")


def test_each_of_three_ranks_reads_only_its_share_of_a_folder(tmp_path: Path) -> None:
    make_folder(tmp_path / "images")
    out = tmp_path / "run"
    # 60 images, at most 48 used (--max-train-images); 4 per rank per step: 12 per global batch, 4 steps
    finish(torchrun(3, out, "--recipe", "tiny", "--data", str(tmp_path / "images"), "--batch-size", "4", "--epochs", "1",
                    "--max-train-images", "48", "--workers", "0"))  # fmt: skip
    ranks = reports(out, 3)
    assert [r["step"] for r in ranks] == [4, 4, 4]
    assert [r["images_loaded"] for r in ranks] == [16, 16, 16]  # a third each, not 48 each
    assert len({r["parameters_sha256"] for r in ranks}) == 1


def _rank_pid(torchrun_pid: int, rank: int) -> int | None:
    """The worker process of ``rank`` among torchrun's children (its environment says RANK=...)."""
    for child in Path("/proc").iterdir():
        if not child.name.isdigit():
            continue
        try:
            stat = (child / "stat").read_text().split()
            environ = (child / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat[3]) == torchrun_pid and f"RANK={rank}".encode() in environ:
            return int(child.name)
    return None


def test_killing_a_rank_and_resuming_gives_the_parameters_of_an_uninterrupted_run(tmp_path: Path) -> None:
    args = ("--recipe", "tiny", "--epochs", "3")  # 256 images, 2 x 32 per step: 4 steps an epoch
    finish(torchrun(2, tmp_path / "whole", *args))
    whole = reports(tmp_path / "whole", 2)

    out = tmp_path / "killed"
    proc = torchrun(2, out, *args)
    deadline = time.monotonic() + 300
    while not (out / "checkpoint.pt").is_file():  # the end of epoch 1
        assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint before the run ended"
        time.sleep(0.05)
    pid = _rank_pid(proc.pid, 1)
    assert pid is not None, "rank 1's process not found"
    os.kill(pid, signal.SIGKILL)
    proc.communicate(timeout=120)
    assert proc.returncode != 0, "the run went on without rank 1"
    assert not (out / "ranks").exists()

    finish(torchrun(2, out, *args, "--resume"))
    resumed = reports(out, 2)
    assert [r["step"] for r in resumed] == [r["step"] for r in whole] == [12, 12]
    assert resumed[0]["parameters_sha256"] == resumed[1]["parameters_sha256"] == whole[0]["parameters_sha256"]
