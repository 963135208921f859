"""Model speed: LRN and the forward pass against the plain eager reference, same process, same run.

python -m bench.model_bench
"""

from __future__ import annotations

import copy
import json
import sys
from typing import Any

import torch
from torch import nn

from bench.common import machine, median, setup_threads, table, time_call
from bench.reference import from_towers
from model.alexnet import alexnet
from model.layers import LocalResponseNorm
from model.quantize import quantize_fc


def bench_lrn() -> list[dict[str, Any]]:
    """conv1's LRN input at batch 16: (16, 96, 55, 55)."""
    ours, ref = LocalResponseNorm(), nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)
    a = torch.randn(16, 96, 55, 55).relu() * 10
    rows = []
    with torch.no_grad():
        torch.testing.assert_close(ours(a), ref(a), rtol=1e-5, atol=1e-6)
        t_ref, t_ours = median(time_call(lambda: ref(a))), median(time_call(lambda: ours(a)))
    rows.append({"case": "LRN forward (16,96,55,55)", "ours_ms": t_ours * 1e3, "reference_ms": t_ref * 1e3, "speedup": t_ref / t_ours})
    g = torch.randn_like(a)

    def fwd_bwd(m: nn.Module) -> None:
        x = a.detach().requires_grad_()
        m(x).backward(g)

    t_ref, t_ours = median(time_call(lambda: fwd_bwd(ref))), median(time_call(lambda: fwd_bwd(ours)))
    rows.append({"case": "LRN forward+backward", "ours_ms": t_ours * 1e3, "reference_ms": t_ref * 1e3, "speedup": t_ref / t_ours})
    return rows


def _agreement(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """Top-1 agreement and mean top-5 overlap of two logit batches."""
    ta, tb = a.topk(5, dim=1).indices, b.topk(5, dim=1).indices
    top1 = float((ta[:, 0] == tb[:, 0]).float().mean())
    overlap = sum(len(set(x.tolist()) & set(y.tolist())) for x, y in zip(ta, tb, strict=True)) / (5 * len(a))
    return top1, overlap


def bench_forward(batches: tuple[int, ...] = (1, 16, 64)) -> list[dict[str, Any]]:
    """The serving path (Predictor's model: channels_last, fp32 and int8 fc) against the reference."""
    torch.manual_seed(0)
    net = alexnet(num_classes=1000).eval()
    ref = from_towers(net).eval()
    serving = copy.deepcopy(net).to(memory_format=torch.channels_last)
    int8 = quantize_fc(copy.deepcopy(net)).to(memory_format=torch.channels_last)
    rows = []
    for b in batches:
        x = torch.randn(b, 3, 224, 224)
        xc = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            expected = ref(x)
            got = serving(xc)
            torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-4)
            t_ref = time_call(lambda x=x: ref(x))
            t_ours = time_call(lambda x=xc: serving(x))
            t_int8 = time_call(lambda x=xc: int8(x))
            top1, overlap = _agreement(int8(xc), expected)
        rows.append(
            {
                "batch": b,
                "reference_img_s": b / median(t_ref),
                "fp32_img_s": b / median(t_ours),
                "int8_img_s": b / median(t_int8),
                "fp32_speedup": median(t_ref) / median(t_ours),
                "int8_speedup": median(t_ref) / median(t_int8),
                "reference_p50_ms": 1e3 * median(t_ref),
                "fp32_p50_ms": 1e3 * median(t_ours),
                "int8_p50_ms": 1e3 * median(t_int8),
                "int8_top1_agree": top1,
                "int8_top5_overlap": overlap,
            }
        )
    return rows


def bench_train_step(crop: int = 64, batch: int = 128) -> dict[str, Any]:
    """One training step at the default recipe's size: the training path vs the eager reference with foreach AdamW."""
    torch.manual_seed(0)
    net = alexnet(num_classes=10, bias_init=0.1).train().to(memory_format=torch.channels_last)
    ref = from_towers(net).train()
    x, y = torch.randn(batch, 3, crop, crop), torch.randint(0, 10, (batch,))
    xc = x.contiguous(memory_format=torch.channels_last)
    opt_ours = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=True)
    opt_ref = torch.optim.AdamW(ref.parameters(), lr=1e-4)

    def step(model: nn.Module, opt: torch.optim.Optimizer, inp: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(inp), y).backward()
        opt.step()

    t_ref = median(time_call(lambda: step(ref, opt_ref, x), warmup=2, min_repeats=3, min_seconds=3))
    t_ours = median(time_call(lambda: step(net, opt_ours, xc), warmup=2, min_repeats=3, min_seconds=3))
    return {
        "case": f"train step {crop}px batch {batch}",
        "ours_img_s": batch / t_ours,
        "reference_img_s": batch / t_ref,
        "speedup": t_ref / t_ours,
    }


def main() -> dict[str, Any]:
    setup_threads()
    lrn, fwd, train = bench_lrn(), bench_forward(), bench_train_step()
    print("# LRN: model.layers.LocalResponseNorm vs torch.nn.LocalResponseNorm")
    print(table(lrn, ["case", "ours_ms", "reference_ms", "speedup"]))
    print("\n# Forward pass, 224x224, 1000 classes: serving path (fp32; int8 fc) vs the grouped torch.nn reference")
    print(
        table(
            fwd,
            [
                "batch",
                "reference_img_s",
                "fp32_img_s",
                "int8_img_s",
                "fp32_speedup",
                "int8_speedup",
                "reference_p50_ms",
                "fp32_p50_ms",
                "int8_p50_ms",
                "int8_top1_agree",
                "int8_top5_overlap",
            ],
        )
    )
    print("\n# Training step (fused AdamW, channels_last, folded fc6) vs eager reference (foreach AdamW)")
    print(table([train], ["case", "ours_img_s", "reference_img_s", "speedup"]))
    return {"machine": machine(), "lrn": lrn, "forward": fwd, "train": train}


if __name__ == "__main__":
    result = main()
    if "--json" in sys.argv:
        print(json.dumps(result, indent=2))
