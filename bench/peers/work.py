"""What every peer server runs per request, so that only the serving stack differs: the same weights file, the
same forward pass (``model.predictor.Predictor``, as this service runs it) and the same top-5 JSON answer.

Two ways to turn the JPEG into the model's input (``variant``):

- ``own``: the way the peers' docs and examples do it (TorchServe's image classifier handler): PIL decodes the
  whole file, torchvision's ``Resize``, ``CenterCrop``, ``ToTensor`` and ``Normalize`` make a float tensor;
- ``ours``: this service's decoder (``model.decode``: reduced JPEG decoding, limits) and preprocessing.

Imported by the peers' handlers in their own processes (``bench/peers/*_server.py``, ``torchserve_handler.py``)."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from torchvision import transforms

from model.decode import decode_image
from model.predictor import Predictor

VARIANTS = ("own", "ours")


class Work:
    def __init__(self, weights: str, variant: str, threads: int | None = None) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"variant {variant!r}: one of {VARIANTS}")
        torch.set_num_threads(threads or int(os.environ.get("PEER_THREADS", os.cpu_count() or 1)))
        self.predictor, self.variant = Predictor(weights), variant
        preset = self.predictor.meta.preset
        self.own = transforms.Compose(
            [
                transforms.Resize(preset.resize_size),
                transforms.CenterCrop(preset.crop_size),
                transforms.ToTensor(),
                transforms.Normalize(mean=preset.mean, std=preset.std),
            ]
        )

    def tensor(self, data: bytes) -> torch.Tensor:
        """One image's input: normalised float (``own``) or uint8 pixels (``ours``); ``forward`` takes either."""
        if self.variant == "own":
            return self.own(Image.open(io.BytesIO(data)).convert("RGB"))
        p = self.predictor
        return p.pixels([decode_image(data, min_side=p.meta.preset.resize_size).image])[0]

    def answers(self, inputs: Sequence[torch.Tensor]) -> list[dict[str, Any]]:
        """The top-5 answer of each input (what the peer sends as JSON), one forward pass for the batch."""
        p = self.predictor
        logits, _ = p.forward(torch.stack(list(inputs)))
        rows = p.top_k(logits.softmax(dim=1), min(5, p.meta.num_classes))
        return [{"predictions": [{"index": c.index, "label": c.label, "probability": c.probability} for c in r]} for r in rows]

    def __call__(self, datas: Sequence[bytes]) -> list[dict[str, Any]]:
        return self.answers([self.tensor(d) for d in datas])
