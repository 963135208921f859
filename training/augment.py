"""The paper's data augmentation, applied to whole uint8 batches on the training device.

References: Krizhevsky et al. 2012, section 4.1: random 224x224 patches of the 256x256
images and their horizontal reflections; and PCA colour augmentation, adding to each
RGB pixel [p1, p2, p3][a1 l1, a2 l2, a3 l3]^T with p_i, l_i the eigenvectors and
eigenvalues of the 3x3 covariance of RGB pixel values over the training set and
a_i ~ N(0, 0.1), drawn once per image per presentation.
"""

from __future__ import annotations

import torch
from torch import Tensor

from model.preprocess import Preset

__all__ = ["PCAStats", "augment_batch", "centre_batch", "pca_lighting", "pca_stats"]

PCAStats = tuple[Tensor, Tensor]  # eigenvalues (3,), eigenvectors as columns (3, 3)


def pca_stats(pixels: Tensor) -> PCAStats:
    """Eigen-decomposition of the RGB covariance of ``pixels`` ((N, 3) in [0, 1]), largest first."""
    if pixels.dim() != 2 or pixels.shape[1] != 3 or len(pixels) < 2:
        raise ValueError(f"pixels must be (N >= 2, 3), got {tuple(pixels.shape)}")
    x = pixels.double()
    cov = torch.cov(x.T)
    eigval, eigvec = torch.linalg.eigh(cov)  # ascending
    order = eigval.argsort(descending=True)
    return eigval[order].clamp_min(0).float(), eigvec[:, order].float()


def pca_lighting(x: Tensor, eigval: Tensor, eigvec: Tensor, std: float = 0.1, generator: torch.Generator | None = None) -> Tensor:
    """Add the PCA colour shift to a float batch (B, 3, H, W) in [0, 1]; one draw of alpha per image."""
    alpha = torch.randn(x.shape[0], 3, generator=generator, device="cpu").to(x.device) * std  # (B, 3)
    shift = (alpha * eigval.to(x.device)) @ eigvec.to(x.device).T  # (B, 3): sum_i p_i a_i l_i
    return x + shift.to(x.dtype)[:, :, None, None]


def _to_float_rgb(batch: Tensor) -> Tensor:
    x = batch.float().div_(255)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def _normalise(x: Tensor, preset: Preset) -> Tensor:
    mean = torch.tensor(preset.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(preset.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def augment_batch(
    batch: Tensor, preset: Preset, *, pca_std: float = 0.1, flip: bool = True, generator: torch.Generator | None = None
) -> Tensor:
    """uint8 (B, C, R, R) -> normalised float (B, 3, crop, crop): random crop, flip, PCA lighting."""
    b, _, h, w = batch.shape
    c = preset.crop_size
    if h < c or w < c:
        raise ValueError(f"batch of {h}x{w} images is smaller than the crop {c}")
    ys = torch.randint(0, h - c + 1, (b,), generator=generator).tolist()
    xs = torch.randint(0, w - c + 1, (b,), generator=generator).tolist()
    flips = (torch.rand(b, generator=generator) < 0.5).tolist() if flip else [False] * b
    crops = [batch[i, :, y : y + c, x : x + c] for i, (y, x) in enumerate(zip(ys, xs, strict=True))]
    crops = [cr.flip(-1) if f else cr for cr, f in zip(crops, flips, strict=True)]
    x = _to_float_rgb(torch.stack(crops))
    if pca_std > 0 and preset.pca_eigval:
        x = pca_lighting(x, torch.tensor(preset.pca_eigval), torch.tensor(preset.pca_eigvec), pca_std, generator)
    return _normalise(x, preset)


def centre_batch(batch: Tensor, preset: Preset) -> Tensor:
    """uint8 (B, C, R, R) -> normalised float (B, 3, crop, crop): the centre crop (validation)."""
    h, w = batch.shape[-2:]
    c = preset.crop_size
    top, left = round((h - c) / 2), round((w - c) / 2)  # as torchvision's CenterCrop rounds
    return _normalise(_to_float_rgb(batch[:, :, top : top + c, left : left + c]), preset)
