"""The GPU paths in one short run, for a machine that has GPUs (a few minutes; writes one JSON file).

    python -m training.gpu_check [--out gpu_check.json]
    python -m training.gpu_check --cpu-dry-run     # the one-GPU path on the CPU, small sizes (checks the script)

- Two or more GPUs: the paper's two towers on cuda:0,cuda:1 against both on cuda:0 (logits and
  one SGD step), and the bytes that cross between the towers per image.
- One or more: a bf16 (autocast) training step at 224 px, channels_last (images/s), the serving
  forward in fp32 (images/s at batch 1, 16 and 256), and top-5 agreement with the CPU on the same
  weights and inputs.
- None: writes {"gpus": 0} and says so.
Random weights: speed does not depend on their values; agreement is measured on the same ones.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from model.alexnet import AlexNet, alexnet
from model.predictor import serving_model


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn: Any, device: str, repeats: int) -> float:
    """Median seconds per call after two warm-up calls."""
    for _ in range(2):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def two_towers(crop: int) -> dict[str, Any]:
    """cuda:0,cuda:1 against cuda:0: the same logits and the same step."""
    torch.manual_seed(0)
    one = alexnet(num_classes=1000, bias_init=0.1, dropout=0.0).place("cuda:0")
    two = copy.deepcopy(one).place(["cuda:0", "cuda:1"])
    x = torch.randn(8, 3, crop, crop, device="cuda:0")
    y = torch.randint(0, 1000, (8,), device="cuda:0")
    out: dict[str, Any] = {}
    with torch.no_grad():
        out["logits_max_abs_diff"] = float((one(x) - two(x)).abs().max())
    for net in (one, two):
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        F.cross_entropy(net(x), y).backward()
        opt.step()
    out["params_after_step_max_abs_diff"] = max(
        float((a.detach() - b.detach().to(a.device)).abs().max()) for a, b in zip(one.parameters(), two.parameters(), strict=True)
    )
    two.transfers = []
    with torch.no_grad():
        two(x[:1])
    out["cross_tower_transfers"] = [list(t) for t in two.transfers]
    out["cross_tower_bytes_per_image"] = sum(4 * int(torch.tensor(t[3][1:]).prod()) for t in two.transfers)
    return out


def one_device(device: str, crop: int, batches: tuple[int, ...], train_batch: int, repeats: int) -> dict[str, Any]:
    torch.manual_seed(0)
    model: AlexNet = alexnet(num_classes=1000, bias_init=0.1).place(device).to(memory_format=torch.channels_last)
    out: dict[str, Any] = {"device": device, "crop": crop}
    if device.startswith("cuda"):
        out["name"] = torch.cuda.get_device_name(0)
    # a training step: bf16 autocast (on the GPU), channels_last, SGD with momentum
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(train_batch, 3, crop, crop, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (train_batch,), device=device)
    dev_type = "cuda" if device.startswith("cuda") else "cpu"

    def step() -> None:
        with torch.autocast(device_type=dev_type, dtype=torch.bfloat16, enabled=dev_type == "cuda"):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    model.train()
    t = _timed(step, device, repeats)
    out["train_step"] = {"batch": train_batch, "amp": "bf16" if dev_type == "cuda" else "off", "images_per_s": train_batch / t}
    # the serving forward (fp32), as the Predictor runs it
    cpu_copy = copy.deepcopy(model).place("cpu")
    served, _ = serving_model(model, device=device, input_size=crop)
    out["serving_fp32"] = []
    for b in batches:
        xb = torch.randn(b, 3, crop, crop, device=device).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            t = _timed(lambda xb=xb: served.forward_with_fc7(xb), device, repeats)  # type: ignore[misc,operator]
        out["serving_fp32"].append({"batch": b, "ms": 1000 * t, "images_per_s": b / t})
    # top-5 agreement with the CPU, same weights and inputs
    served_cpu, _ = serving_model(cpu_copy, device="cpu", input_size=crop)
    xs = torch.randn(32, 3, crop, crop)
    with torch.inference_mode():
        dev_top5 = served(xs.to(device).contiguous(memory_format=torch.channels_last)).float().cpu().topk(5).indices
        cpu_top5 = served_cpu(xs.contiguous(memory_format=torch.channels_last)).topk(5).indices
    out["top5_agreement_with_cpu"], out["top1_agreement_with_cpu"] = agreement(dev_top5, cpu_top5)
    return out


def agreement(top5: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """(share of rows with the same top-5 set, share with the same top-1) of two (n, 5) index tensors."""
    same5 = sum(set(a.tolist()) == set(b.tolist()) for a, b in zip(top5, reference, strict=True)) / len(top5)
    return same5, float((top5[:, 0] == reference[:, 0]).float().mean())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m training.gpu_check")
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    parser.add_argument("--cpu-dry-run", action="store_true", help="run the one-GPU path on the CPU at small sizes")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    result: dict[str, Any] = {"gpus": gpus, "torch": torch.__version__, "cuda": torch.version.cuda}
    start = time.perf_counter()
    if args.cpu_dry_run:
        result["one_device"] = one_device("cpu", 64, (1, 4), train_batch=8, repeats=2)
    elif gpus == 0:
        result["skipped"] = "no CUDA device: nothing to check"
    else:
        torch.backends.cudnn.benchmark = True
        result["one_device"] = one_device("cuda:0", 224, (1, 16, 256), train_batch=256, repeats=10)
        if gpus >= 2:
            result["two_towers"] = two_towers(224)
    result["seconds"] = time.perf_counter() - start
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
