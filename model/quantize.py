"""Reduced precision for serving: int8 weights for the fully connected layers.

fc6, fc7 and fc8 hold 96% of AlexNet's weights (58.6M of 61M); at batch 1 the forward pass
is bound by reading them (233 MB in fp32). Dynamic int8 quantisation (int8 weights, one
scale per tensor, activations quantised on the fly, fbgemm kernels) reads a quarter of that.
Per-channel scales agreed no better with fp32 and ran slower; dynamic int8 convolutions were
faster but agreed too little with fp32, so the convolutions stay fp32 (bench/RESULTS.md,
"Design figures"). Agreement with fp32 is measured by ``bench/model_bench.py``.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

__all__ = ["PRECISIONS", "quantize_fc"]

PRECISIONS = ("fp32", "int8")


def quantize_fc(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (on the CPU, eval mode) whose ``nn.Linear`` layers run with int8 weights."""
    if "fbgemm" in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = "fbgemm"
    with warnings.catch_warnings():
        # torch.ao's eager quantisation is deprecated in favour of torchao, but is what this torch ships
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        return torch.ao.quantization.quantize_dynamic(model.cpu().eval(), {nn.Linear}, dtype=torch.qint8, inplace=False)
