"""bench/gpu_check.py, the script for a machine with GPUs, runs its one-device path on the CPU here."""

import json
from pathlib import Path

from bench.gpu_check import main


def test_gpu_check_dry_run_on_the_cpu_writes_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    result = main(["--cpu-dry-run", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    one = result["one_device"]
    assert one["train_step"]["images_per_s"] > 0 and [r["batch"] for r in one["serving_fp32"]] == [1, 4]
    assert one["top5_agreement_with_cpu"] == 1.0  # the same weights on the same device
