"""Preprocessing, defined once and carried with the weights.

Training, evaluation, indexing and serving all build their transforms here from
the ``Preset`` stored in the weights file, so the sizes and mean/std can never
drift between them.

References: Krizhevsky et al. 2012, section 2 (rescale the shorter side to 256,
crop the central 256x256 patch; 224x224 inputs) and section 4.1 (test time:
ten 224x224 patches, four corners and centre, and their horizontal reflections).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms import v2

__all__ = [
    "FORMAT_INFO",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "REDUCED_INFO",
    "Preset",
    "eval_geometry",
    "eval_transform",
    "normalise_pixels",
    "pixels_transform",
    "resize_shorter",
    "stack_pixels",
    "ten_crop_geometry",
    "ten_crop_transform",
    "to_rgb",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
REDUCED_INFO = "alexnet.reduced"  # Image.info key of a JPEG decoded at a reduced DCT scale (model.decode)
FORMAT_INFO = "alexnet.format"  # Image.info key: the format the pixels were decoded from (model.decode)


@dataclass(frozen=True)
class Preset:
    """Input geometry and normalisation of one weights file."""

    crop_size: int = 224  # the paper's input
    resize_size: int = 256  # shorter side before the crop; 256/224 as in the paper
    mean: tuple[float, float, float] = IMAGENET_MEAN
    # (the paper subtracts the mean only; dividing by the std as well is a documented departure: model/alexnet.py)
    std: tuple[float, float, float] = IMAGENET_STD
    # PCA lighting statistics of the training set (section 4.1): eigenvalues (3,)
    # and eigenvectors as columns (3, 3), over RGB in [0, 1]. Empty when unknown.
    pca_eigval: tuple[float, ...] = field(default=())
    pca_eigvec: tuple[tuple[float, ...], ...] = field(default=())

    def __post_init__(self) -> None:
        if not 1 <= self.crop_size <= 4096 or self.resize_size < self.crop_size:
            raise ValueError(f"bad preset: crop {self.crop_size}, resize {self.resize_size} (need 1 <= crop <= resize)")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"bad preset: mean {self.mean} and std {self.std} must be three values, std > 0")

    @classmethod
    def for_crop(cls, crop_size: int, **kwargs: Any) -> Preset:
        """A preset that keeps the paper's 256:224 ratio between resize and crop."""
        return cls(crop_size=crop_size, resize_size=round(crop_size * 256 / 224), **kwargs)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preset:
        return cls(
            crop_size=int(d["crop_size"]),
            resize_size=int(d["resize_size"]),
            mean=tuple(float(v) for v in d["mean"]),  # type: ignore[arg-type]
            std=tuple(float(v) for v in d["std"]),  # type: ignore[arg-type]
            pca_eigval=tuple(float(v) for v in d.get("pca_eigval", ())),
            pca_eigvec=tuple(tuple(float(v) for v in row) for row in d.get("pca_eigvec", ())),
        )


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB; alpha is composited on white, 16-bit is scaled down."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit / 32-bit integer grey: scale the full range to 0..255
        arr = np.asarray(image, dtype=np.float64)
        hi = 65535.0 if image.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        grey = np.rint(np.clip(arr, 0, hi) * (255.0 / hi)).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _normalise(preset: Preset) -> list[v2.Transform]:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(preset.mean), list(preset.std))]


def _geometry(preset: Preset) -> list[v2.Transform]:
    return [v2.Lambda(to_rgb), v2.Lambda(partial(resize_shorter, size=preset.resize_size))]


def resize_shorter(image: Any, size: int) -> Any:
    """torchvision's ``Resize(size, antialias=True)``: the shorter side to ``size``, the longer in proportion.

    A JPEG that ``decode_image`` decoded at a reduced DCT scale is resized as its full decode would be: to
    the output size of the declared size, sampling the region of its pixels that the full image covers
    (a partial last block makes the decoded image slightly larger than declared / scale). Without this, the
    output size could differ by a pixel and the sampling grid by a fraction of one, which on fine texture
    changed pixels by 6 grey levels (rms) and the default model's top-1 on 6.5% of 2 MP photographs
    (bench/RESULTS.md)."""
    reduced = image.info.get(REDUCED_INFO) if isinstance(image, Image.Image) else None
    if reduced is None:
        return v2.functional.resize(image, [size], antialias=True)
    (w, h), box = reduced
    long = int(size * max(w, h) / min(w, h))  # torchvision's rounding
    out = image.resize((size, long) if w <= h else (long, size), Image.Resampling.BILINEAR, box=box)
    out.info.pop(REDUCED_INFO, None)  # the result is an ordinary image
    return out


def eval_geometry(preset: Preset) -> v2.Compose:
    """PIL image -> RGB PIL image of (crop, crop): resize the shorter side, centre crop."""
    return v2.Compose([*_geometry(preset), v2.CenterCrop(preset.crop_size)])


def _central_square(preset: Preset) -> v2.Compose:
    """Section 2: the shorter side to ``resize_size``, then the central square of that size; training's random
    crops and the ten test crops are all taken inside it (for a 600x400 photo at 256/224: x 64..320)."""
    return v2.Compose([*_geometry(preset), v2.CenterCrop(preset.resize_size)])


def ten_crop_geometry(preset: Preset) -> Callable[[Image.Image], tuple[Image.Image, ...]]:
    """PIL image -> ten RGB PIL crops: the central square's four corners and centre, then their mirrors (section 4.1)."""
    square, crop = _central_square(preset), v2.TenCrop(preset.crop_size)
    return lambda image: tuple(crop(square(image)))


def eval_transform(preset: Preset) -> v2.Compose:
    """PIL image -> (3, crop, crop) float tensor: resize shorter side, centre crop, normalise."""
    return v2.Compose([*eval_geometry(preset).transforms, *_normalise(preset)])


def stack_pixels(crops: Sequence[Image.Image], size: int = 0) -> Tensor:
    """RGB PIL crops of one size -> (M, 3, H, W) uint8 viewing (M, H, W, 3) memory: channels_last,
    in one copy. ``size`` gives the shape of an empty result."""
    arr = np.stack([np.asarray(c, dtype=np.uint8) for c in crops]) if crops else np.zeros((0, size, size, 3), np.uint8)
    return torch.from_numpy(arr).permute(0, 3, 1, 2)


def _to_pixels(image: Image.Image) -> Tensor:
    return stack_pixels([image])[0]


def pixels_transform(preset: Preset) -> v2.Compose:
    """PIL image -> (3, crop, crop) uint8, for ``normalise_pixels`` on the batch (``Predictor.forward``)."""
    return v2.Compose([*eval_geometry(preset).transforms, v2.Lambda(_to_pixels)])


def normalise_pixels(pixels: Tensor, preset: Preset) -> Tensor:
    """(N, 3, S, S) uint8 -> float32 in channels_last, normalised as ``eval_transform`` does.

    The same operations in the same order as ToDtype(scale=True) and Normalize (x / 255, then
    minus mean, divided by std), so the values are identical to the last bit; done once for a
    whole batch instead of per image.
    """
    if pixels.dtype != torch.uint8 or pixels.dim() != 4 or pixels.shape[1] != 3:
        raise ValueError(f"expected a (N, 3, H, W) uint8 tensor, got {tuple(pixels.shape)} {pixels.dtype}")
    mean = torch.tensor(preset.mean, dtype=torch.float32, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(preset.std, dtype=torch.float32, device=pixels.device).view(1, 3, 1, 1)
    x = pixels.to(torch.float32, memory_format=torch.channels_last)
    return x.mul_(1.0 / 255).sub_(mean).div_(std)


def ten_crop_transform(preset: Preset) -> Callable[[Image.Image], Tensor]:
    """PIL image -> (10, 3, crop, crop): the central square's four corners and centre, then their mirrors (section 4.1)."""
    crops = ten_crop_geometry(preset)
    norm = v2.Compose(_normalise(preset))

    def transform(image: Image.Image) -> Tensor:
        # (v2 transforms map over tuples leaf by leaf, so the stacking stays outside a Compose)
        return torch.stack([norm(c) for c in crops(image)])

    return transform
