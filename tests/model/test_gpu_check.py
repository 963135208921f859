"""training/gpu_check.py, the script for a machine with GPUs, runs its one-device path on the CPU here."""

import json
from pathlib import Path

import pytest
import torch

from training.gpu_check import agreement, main


def test_gpu_check_dry_run_on_the_cpu_writes_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    result = main(["--cpu-dry-run", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    one = result["one_device"]
    assert [r["batch"] for r in one["serving_fp32"]] == [1, 4]
    for row in one["serving_fp32"]:  # the rate is the batch over the time measured for it
        assert row["images_per_s"] == pytest.approx(row["batch"] / (row["ms"] / 1000), rel=1e-6)
    assert 1 < one["train_step"]["images_per_s"] < 1e5
    assert one["top5_agreement_with_cpu"] == 1.0  # (the same weights on the same device: the CPU dry run)


def test_agreement_counts_rows_whose_top5_sets_and_top1_match() -> None:
    """What the GPU run reports as agreement: a reordered top-5 still agrees as a set; another top-1 does not."""
    reference = torch.tensor([[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [1, 2, 3, 4, 5], [9, 8, 7, 6, 5]])
    other = torch.tensor([[0, 1, 2, 3, 4], [5, 7, 6, 8, 9], [2, 1, 3, 4, 5], [9, 8, 7, 6, 0]])
    assert agreement(reference, reference) == (1.0, 1.0)
    assert agreement(other, reference) == (0.75, 0.75)
