"""Mixed precision in training: bf16 autocast where the device computes bf16 natively, fp32 elsewhere."""

from __future__ import annotations

from typing import Any

import torch

from training.recipes import TrainConfig

__all__ = ["autocast", "cpu_computes_bf16", "uses_bf16"]


def uses_bf16(cfg: TrainConfig, device: torch.device) -> bool:
    """Whether training on ``device`` runs under bf16 autocast: the recipe asks (``amp``) and the device computes
    in bf16 natively (a GPU, or a CPU with AVX-512 BF16 or AMX)."""
    return cfg.amp and (device.type == "cuda" or (device.type == "cpu" and cpu_computes_bf16()))


def autocast(cfg: TrainConfig, device: torch.device) -> Any:
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=uses_bf16(cfg, device))


def cpu_computes_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX-512 BF16 or AMX), so that autocast to bf16 is faster
    than fp32; elsewhere oneDNN emulates bf16 and it is slower."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # a PyTorch without these probes: stay in fp32
        return False
