"""The paper's Figure 3 from a network's own weights: the 96 first-layer kernels, one tower's 48 beside the other's.

Each 11x11x3 kernel is shown as an RGB patch, scaled to [0, 255] by its own minimum and maximum (as
the paper's figure does, so that both the colour-agnostic and the colour-specific kernels show), and
enlarged ``SCALE`` times. Tower 0 (the paper's GPU 1) is on the left, tower 1 on the right.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

__all__ = ["GAP", "ROWS", "SCALE", "TOWER_GAP", "kernel_cell", "kernels_png"]

SCALE, GAP, TOWER_GAP, ROWS = 4, 2, 16, 6  # each tower's 48 kernels in 6 rows of 8


def _normalised(kernel: torch.Tensor) -> np.ndarray:
    """(3, h, w) weights -> (h, w, 3) uint8, stretched to the kernel's own range."""
    k = kernel.detach().float().cpu()
    lo, hi = float(k.min()), float(k.max())
    k = (k - lo) / (hi - lo) if hi > lo else torch.zeros_like(k)
    return (k.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def kernel_cell(tower: int, i: int, per_tower: int, size: int) -> tuple[int, int]:
    """Top-left pixel of kernel ``i`` of ``tower`` in the figure."""
    cols = -(-per_tower // ROWS)
    side = size * SCALE
    tower_width = GAP + cols * (side + GAP)
    return tower * (tower_width + TOWER_GAP) + GAP + (i % cols) * (side + GAP), GAP + (i // cols) * (side + GAP)


def kernels_png(towers: list[torch.Tensor]) -> bytes:
    """The figure as PNG bytes from each tower's conv1 weight, (48, 3, 11, 11) in the paper's network."""
    per_tower, _, size, _ = towers[0].shape
    cols = -(-per_tower // ROWS)
    side = size * SCALE
    tower_width = GAP + cols * (side + GAP)
    width = len(towers) * tower_width + (len(towers) - 1) * TOWER_GAP
    height = GAP + ROWS * (side + GAP)
    figure = Image.new("RGB", (width, height), (255, 255, 255))
    for t, weight in enumerate(towers):
        for i in range(per_tower):
            patch = Image.fromarray(_normalised(weight[i])).resize((side, side), Image.Resampling.NEAREST)
            figure.paste(patch, kernel_cell(t, i, per_tower, size))
    buf = io.BytesIO()
    figure.save(buf, format="PNG")
    return buf.getvalue()
