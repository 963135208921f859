"""Model speed: LRN and the forward pass against the plain eager reference, same process, same run.

python -m bench.model_bench
"""

from __future__ import annotations

import json
import sys
from typing import Any

import torch
from torch import nn

from bench.common import machine, median, setup_threads, table, time_call
from bench.reference import from_towers
from model.alexnet import alexnet
from model.layers import LocalResponseNorm


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


def bench_forward(batches: tuple[int, ...] = (1, 16)) -> list[dict[str, Any]]:
    torch.manual_seed(0)
    net = alexnet(num_classes=1000).eval()
    ref = from_towers(net).eval()
    rows = []
    for b in batches:
        x = torch.randn(b, 3, 224, 224)
        with torch.inference_mode():
            torch.testing.assert_close(net(x), ref(x), rtol=1e-3, atol=1e-4)
            t_ref = median(time_call(lambda x=x: ref(x)))
            t_ours = median(time_call(lambda x=x: net(x)))
        rows.append(
            {
                "case": f"forward batch {b}",
                "ours_img_s": b / t_ours,
                "reference_img_s": b / t_ref,
                "ours_ms": t_ours * 1e3,
                "reference_ms": t_ref * 1e3,
                "speedup": t_ref / t_ours,
            }
        )
    return rows


def main() -> dict[str, Any]:
    setup_threads()
    lrn, fwd = bench_lrn(), bench_forward()
    print("# LRN: model.layers.LocalResponseNorm vs torch.nn.LocalResponseNorm")
    print(table(lrn, ["case", "ours_ms", "reference_ms", "speedup"]))
    print("\n# Forward pass, 224x224, fp32: two-tower AlexNet vs grouped nn reference")
    print(table(fwd, ["case", "ours_img_s", "reference_img_s", "ours_ms", "reference_ms", "speedup"]))
    return {"machine": machine(), "lrn": lrn, "forward": fwd}


if __name__ == "__main__":
    result = main()
    if "--json" in sys.argv:
        print(json.dumps(result, indent=2))
