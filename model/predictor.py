"""``Predictor``: one weights file loaded once, batch classification and fc7 embedding."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from model.alexnet import AlexNet, pool5_size
from model.familiarity import Familiarity, LayerTaps, layers_of
from model.packed import pack_linears
from model.preprocess import eval_geometry, eval_transform, normalise_pixels, stack_pixels, ten_crop_geometry, ten_crop_transform
from model.quantize import PRECISIONS, quantize_fc, quantize_static
from model.vectors import l2_normalise
from model.weights import Network, WeightsMeta, load_familiarity, load_weights

__all__ = ["CoreSplit", "Prediction", "Predictor", "serving_model", "usable_cores"]

log = logging.getLogger(__name__)


def serving_model(
    model: Network,
    *,
    precision: str = "fp32",
    device: str = "cpu",
    input_size: int = 224,
    pack: bool = True,
    calibration: dict[str, object] | None = None,
) -> tuple[Network, int]:
    """A loaded network in eval mode as the Predictor serves it, and how many fc layers were packed:
    in int8 (CPU), static int8 convolutions where the weights carry a ``calibration`` and int8 fc layers
    (model/quantize.py); in fp32 on the CPU, oneDNN-packed fc layers (model/packed.py, faster than
    nn.Linear at small batches); channels_last, which oneDNN and cuDNN run faster. The benchmarks
    measure exactly this."""
    packed = 0
    if precision == "int8":
        if device != "cpu":
            raise ValueError("int8 precision runs on the CPU only (device must be 'cpu')")
        if calibration and isinstance(model, AlexNet):
            model = quantize_static(model, calibration, input_size)
        else:
            log.warning("int8: %s, so the convolutions stay fp32 and only the fc layers run in int8 (slower); "
                        "`alexnet calibrate WEIGHTS` adds the calibration",
                        "the weights carry no int8 calibration" if isinstance(model, AlexNet) else
                        f"{type(model).__name__} has no int8 convolutions")  # fmt: skip
            model = quantize_fc(model)
    elif precision != "fp32":
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    model = model.eval().to(memory_format=torch.channels_last)
    side = pool5_size(input_size)
    if precision == "fp32" and isinstance(model, AlexNet) and 0 < side < 6 and 6 % side == 0 and model.fc6_folded is None:
        # small inputs (1x1 pool5 at 64 px): fold the adaptive pool into fc6 once, instead of in every forward
        # pass, which read all 37.7M of fc6's weights to do it (the gain: bench/RESULTS.md)
        model.fold_fc6((side, side))
    if precision == "fp32" and device == "cpu" and pack and isinstance(model, AlexNet):
        packed = pack_linears(model, input_size)
    return model, packed


@dataclass(frozen=True)
class Prediction:
    index: int
    label: str
    probability: float


class Predictor:
    """Loads a weights file once; ``classify`` and ``embed`` take lists of PIL images.

    Thread-safe: calls from several threads are serialised around the forward
    pass (the network uses all the torch threads it is given; running two passes
    at once would only oversubscribe the cores). Batch several images into one
    call (the service's batcher does) to go faster.
    """

    def __init__(
        self, weights: str | os.PathLike[str], device: str = "cpu", max_batch: int = 64, precision: str = "fp32", pack: bool = True
    ) -> None:
        model, meta = load_weights(weights, device=device)
        self.precision = precision
        model, self.packed_layers = serving_model(
            model, precision=precision, device=device, input_size=meta.preset.crop_size, pack=pack, calibration=meta.calibration
        )
        self._setup(model, meta, device, max_batch, str(weights), load_familiarity(weights, meta))

    @classmethod
    def from_model(
        cls, model: Network, meta: WeightsMeta, device: str = "cpu", max_batch: int = 64, familiarity: Familiarity | None = None
    ) -> Predictor:
        """A Predictor over a network already in memory (e.g. to evaluate before export)."""
        self = cls.__new__(cls)
        self.precision, self.packed_layers = "fp32", 0  # the caller's layers stay as they are (no packing)
        self._setup(model.eval().to(memory_format=torch.channels_last), meta, device, max_batch, "<memory>", familiarity)
        return self

    def _setup(self, model: Network, meta: WeightsMeta, device: str, max_batch: int, path: str, familiarity: Familiarity | None) -> None:
        self.path, self.device, self.max_batch = path, device, max_batch
        self.model, self.meta = model, meta
        self.temperature = meta.softmax_temperature
        self.familiarity = familiarity
        self._taps = LayerTaps(model, familiarity.layers if familiarity else layers_of(model))
        self._input_device = torch.device(device.split(",")[0].strip())
        self._transform = eval_transform(self.meta.preset)
        self._ten_crop = ten_crop_transform(self.meta.preset)
        self._geometry = eval_geometry(self.meta.preset)
        self._ten_crop_geometry = ten_crop_geometry(self.meta.preset)
        self._lock = threading.RLock()

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.meta.class_names

    @property
    def weights_hash(self) -> str:
        return self.meta.content_hash

    # -- tensors in, tensors out ---------------------------------------------------

    def preprocess(self, images: Sequence[Image.Image], ten_crop: bool = False) -> Tensor:
        """(N, 3, S, S), or (N, 10, 3, S, S) with ``ten_crop``."""
        t = self._ten_crop if ten_crop else self._transform
        return torch.stack([t(im) for im in images])

    def pixels(self, images: Sequence[Image.Image], ten_crop: bool = False) -> Tensor:
        """Resized and cropped but not yet normalised: (N, 3, S, S) uint8 in channels_last, or
        (N, 10, 3, S, S) with ``ten_crop``. ``forward`` normalises a uint8 batch in one pass, which
        gives the same values as ``preprocess`` at a quarter of the memory and less work per image
        (the service decodes with this)."""
        per_image = self._ten_crop_geometry if ten_crop else lambda im: (self._geometry(im),)
        t = stack_pixels([c for im in images for c in per_image(im)], self.meta.preset.crop_size)
        return t.unflatten(0, (len(images), 10)) if ten_crop else t

    @torch.inference_mode()
    def forward(self, batch: Tensor) -> tuple[Tensor, Tensor]:
        """Logits (N, classes) and fc7 (N, 4096) for a batch, in chunks of ``max_batch``: normalised
        float (``preprocess``) or uint8 pixels (``pixels``)."""
        logits, fc7 = [], []
        with self._lock:
            for chunk in batch.split(self.max_batch):
                if chunk.dtype == torch.uint8:
                    x = normalise_pixels(chunk.to(self._input_device), self.meta.preset)
                else:
                    x = chunk.to(self._input_device).contiguous(memory_format=torch.channels_last)
                lo, f7 = self.model.forward_with_fc7(x)  # type: ignore[operator]
                logits.append(lo.float().cpu())
                fc7.append(f7.float().cpu())
        return torch.cat(logits), torch.cat(fc7)

    def features(self, batch: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Logits and the features familiarity uses (``model.familiarity.LAYERS``: conv1 and conv3 channel means
        where the network has them, and fc7) of a batch, as ``forward`` takes it."""
        with self._lock, self._taps.recording() as tapped:  # (the lock is re-entrant: forward takes it again)
            logits, fc7 = self.forward(batch)
        return logits, {**tapped, "fc7": fc7}

    def forward_scored(self, batch: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``forward``'s logits and fc7, and each row's familiarity (``model.familiarity``; NaN where the weights
        carry no familiarity score)."""
        if self.familiarity is None:
            logits, fc7 = self.forward(batch)
            return logits, fc7, torch.full((len(batch),), float("nan"))
        logits, features = self.features(batch)
        return logits, features["fc7"], torch.from_numpy(self.familiarity.score(features))

    def outputs(self, logits: Tensor, fc7: Tensor, *, ten_crop: bool = False) -> tuple[Tensor, Tensor]:
        """Per image: softmax probabilities (at the weights' fitted temperature, ``model.familiarity``) and fc7.
        With ``ten_crop`` the rows are each image's ten crops in ``ten_crop_geometry``'s order: the softmax is
        averaged over them (section 4.1 of the paper) and fc7 is the centre crop's, the one a plain forward sees."""
        probs = (logits / self.temperature).softmax(dim=1)
        if not ten_crop:
            return probs, fc7
        n = logits.shape[0] // 10
        return probs.view(n, 10, -1).mean(dim=1), fc7.view(n, 10, -1)[:, 4]

    def probabilities(self, batch: Tensor) -> Tensor:
        """Softmax over classes; for a (N, 10, ...) batch the ten crops' softmax is averaged."""
        ten_crop = batch.dim() == 5
        logits, fc7 = self.forward(batch.flatten(0, 1) if ten_crop else batch)
        return self.outputs(logits, fc7, ten_crop=ten_crop)[0]

    def top_k(self, probs: Tensor, k: int = 5) -> list[list[Prediction]]:
        if not 1 <= k <= self.meta.num_classes:
            raise ValueError(f"k must be between 1 and {self.meta.num_classes}, got {k}")
        values, indices = probs.topk(k, dim=1)
        return [
            [Prediction(int(i), self.class_names[int(i)], float(p)) for p, i in zip(vs, ix, strict=True)]
            for vs, ix in zip(values.tolist(), indices.tolist(), strict=True)
        ]

    # -- images in -----------------------------------------------------------------

    def classify(self, images: Sequence[Image.Image], k: int = 5, ten_crop: bool = False) -> list[list[Prediction]]:
        """For each image its top-k classes, most probable first."""
        if not images:
            return []
        return self.top_k(self.probabilities(self.preprocess(images, ten_crop=ten_crop)), k)

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """L2-normalised fc7 vectors, (N, 4096) float32; an all-zero fc7 stays zero, never NaN."""
        if not images:
            return np.zeros((0, 4096), dtype=np.float32)
        _, fc7 = self.forward(self.preprocess(images))
        return l2_normalise(fc7.numpy())


def describe(meta: WeightsMeta) -> dict[str, object]:
    """A JSON-friendly summary of a weights file's metadata."""
    return {
        "architecture": meta.architecture,
        "num_classes": meta.num_classes,
        "class_names": list(meta.class_names),
        "preset": meta.preset.to_dict(),
        "recipe": meta.recipe,
        "metrics": meta.metrics,
        "int8_calibrated": bool(meta.calibration),
        "temperature": meta.temperature or None,
        "familiarity": _familiarity_summary(meta.familiarity),
        "content_hash": meta.content_hash,
    }


def _familiarity_summary(text: str) -> dict[str, object] | None:
    """The familiarity metadata without its percentile table, or None where the file has none."""
    if not text:
        return None
    return {k: v for k, v in json.loads(text).items() if k != "quantiles"}


def usable_cores() -> int:
    """The cores this process may run on (its affinity, where the platform tells)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class CoreSplit:
    """Decoding beside the model on the CPU (``busy`` threads or processes): after ``decide``, the model's threads
    are limited to the cores the decoders leave (at least one), if decoding costs at least ``SPLIT_AT`` of the
    forward pass's core time per image. Then a parallel region sharing its cores with busy decoders would wait for
    its slowest thread; below that the decoders fit in the model's gaps and it keeps every core. Process-wide
    (``torch.set_num_threads``), until the block ends: for batch jobs, not for a serving process."""

    SPLIT_AT = 0.25

    def __init__(self, predictor: Predictor, busy: int) -> None:
        self.cpu, self.busy, self.previous = predictor.device.startswith("cpu"), busy, torch.get_num_threads()
        self.split = False

    def decide(self, decode_core_s: float, forward_core_s: float) -> None:
        """From one batch's costs per image: core-seconds of decoding and of the forward pass."""
        self.split = self.cpu and self.busy > 0 and decode_core_s >= self.SPLIT_AT * forward_core_s
        if self.split:
            torch.set_num_threads(min(self.previous, max(1, usable_cores() - self.busy)))

    def __enter__(self) -> CoreSplit:
        return self

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.previous)
