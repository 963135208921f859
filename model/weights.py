"""Weights files: safetensors with metadata and a content hash. Never pickle.

A weights file holds the tensors and, as safetensors string metadata:
``format``, ``architecture``, ``class_names`` (JSON list), ``preset`` (JSON:
input size, resize, mean/std, PCA lighting statistics), ``recipe`` (JSON: the
training configuration), ``metrics`` (JSON: measured accuracy) and
``content_hash`` (SHA-256 over tensor names, dtypes, shapes and bytes) and, where measured,
``int8_calibration`` (JSON: activation ranges for int8 serving, ``model.quantize.calibrate``), ``temperature``
(JSON: the fitted softmax temperature and the calibration error it leaves) and ``familiarity`` (JSON: the fitted
familiarity score, ``model.familiarity``, whose reference sample is stored as ``familiarity.*`` tensors that the
content hash leaves out, so that adding them changes no gallery's weights). Loading recomputes the hash, so a
tampered or truncated file is refused with a message that names it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes
from torch import Tensor, nn

from model.alexnet import AlexNet, AlexNetConfig
from model.familiarity import TENSOR_PREFIX, Familiarity
from model.files import atomic_write
from model.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preset

__all__ = [
    "FORMAT",
    "Network",
    "WeightsError",
    "WeightsMeta",
    "build_model",
    "content_hash",
    "import_torchvision",
    "load_familiarity",
    "load_weights",
    "read_meta",
    "save_weights",
    "tensors_digest",
]

FORMAT = "alexnet-service-weights/1"
ARCHITECTURES = ("alexnet-2tower", "alexnet-torchvision")
Network = nn.Module  # AlexNet or TorchvisionAlexNet: forward, forward_with_fc7, embed, place


class WeightsError(ValueError):
    """A weights file that cannot be used; the message names the file and what is wrong."""


@dataclass(frozen=True)
class WeightsMeta:
    architecture: str
    class_names: tuple[str, ...]
    preset: Preset = field(default_factory=Preset)
    recipe: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    content_hash: str = ""
    calibration: dict[str, Any] = field(default_factory=dict)  # int8 activation ranges; {} when not calibrated
    temperature: dict[str, Any] = field(default_factory=dict)  # {"value": T, ...} (model.familiarity); {} when not fitted
    familiarity: str = ""  # model.familiarity.Familiarity.metadata(); "" when the file has none

    @property
    def softmax_temperature(self) -> float:
        return float(self.temperature.get("value", 1.0))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def short_hash(self) -> str:
        return self.content_hash[:12]

    def to_metadata(self) -> dict[str, str]:
        return {
            "format": FORMAT,
            "architecture": self.architecture,
            "class_names": json.dumps(list(self.class_names)),
            "preset": json.dumps(self.preset.to_dict()),
            "recipe": json.dumps(self.recipe, default=str),
            "metrics": json.dumps(self.metrics),
            "content_hash": self.content_hash,
            **({"int8_calibration": json.dumps(self.calibration)} if self.calibration else {}),
            **({"temperature": json.dumps(self.temperature)} if self.temperature else {}),
            **({"familiarity": self.familiarity} if self.familiarity else {}),
        }

    @classmethod
    def from_metadata(cls, md: dict[str, str], source: str) -> WeightsMeta:
        if md.get("format") != FORMAT:
            raise WeightsError(f"{source}: not a weights file of this project (format {md.get('format')!r}, want {FORMAT!r})")
        try:
            return cls(
                architecture=md["architecture"],
                class_names=tuple(json.loads(md["class_names"])),
                preset=Preset.from_dict(json.loads(md["preset"])),
                recipe=json.loads(md.get("recipe", "{}")),
                metrics=json.loads(md.get("metrics", "{}")),
                content_hash=md.get("content_hash", ""),
                calibration=json.loads(md.get("int8_calibration", "{}")),
                temperature=json.loads(md.get("temperature", "{}")),
                familiarity=md.get("familiarity", ""),
            )
        except (KeyError, ValueError, TypeError) as e:
            raise WeightsError(f"{source}: unreadable metadata ({type(e).__name__}: {e})") from e


def content_hash(tensors: dict[str, Tensor]) -> str:
    """The digest of the network's tensors (not the ``familiarity.*`` reference sample)."""
    return tensors_digest({k: v for k, v in tensors.items() if not k.startswith(TENSOR_PREFIX)})


def tensors_digest(tensors: dict[str, Tensor]) -> str:
    """SHA-256 over sorted tensor names, dtypes, shapes and raw bytes."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def build_model(meta: WeightsMeta, **config: Any) -> Network:
    """An untrained network of the architecture and class count that ``meta`` names."""
    if meta.architecture == "alexnet-2tower":
        return AlexNet(AlexNetConfig(num_classes=meta.num_classes, **config))
    if meta.architecture == "alexnet-torchvision":
        from model.torchvision_alexnet import TorchvisionAlexNet

        return TorchvisionAlexNet(num_classes=meta.num_classes)
    raise WeightsError(f"unknown architecture {meta.architecture!r}; known: {', '.join(ARCHITECTURES)}")


def save_weights(model: nn.Module, meta: WeightsMeta, path: str | os.PathLike[str], familiarity: Familiarity | None = None) -> WeightsMeta:
    """Write ``model``'s weights atomically (temp file, fsync, rename), with ``familiarity``'s reference sample when
    given; returns meta with its hash. ``meta.familiarity`` without ``familiarity`` is an error: the file would
    describe a reference sample it does not hold."""
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    meta = replace(meta, content_hash=content_hash(tensors))
    if familiarity is not None:
        meta = replace(meta, familiarity=familiarity.metadata())
        tensors.update(familiarity.tensors())
    elif meta.familiarity:
        raise WeightsError(f"{path}: the metadata describes a familiarity reference sample, but none was given to write")
    outputs = _num_outputs(tensors, meta.architecture)
    if len(meta.class_names) != outputs:
        raise WeightsError(f"{path}: {len(meta.class_names)} class names for a model with {outputs} outputs")
    atomic_write(path, safetensors_bytes(tensors, metadata=meta.to_metadata()))
    return meta


def _num_outputs(tensors: dict[str, Tensor], architecture: str) -> int:
    key = "fc8_bias" if architecture == "alexnet-2tower" else "classifier.6.bias"
    return int(tensors[key].shape[0]) if key in tensors else -1


def _check_not_pickle(path: Path) -> None:
    with open(path, "rb") as f:
        head = f.read(9)
    if head[8:9] == b"{":  # safetensors: the JSON header's length (8 bytes, little-endian), then the header
        return  # (its first byte can be 0x80 too: a header of 0x1180 bytes starts the file with 80 11)
    # zip (torch.save >= 1.6) or a raw pickle protocol marker
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        raise WeightsError(
            f"{path}: this is a pickle/PyTorch checkpoint, not safetensors; it is never unpickled here. "
            "For torchvision's alexnet-owt-*.pth run `alexnet import-torchvision FILE.pth OUT.safetensors`; "
            "for a training checkpoint run `alexnet export CHECKPOINT OUT.safetensors`."
        )


def read_meta(path: str | os.PathLike[str]) -> WeightsMeta:
    """The metadata of a weights file, without loading (or verifying) its tensors."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    _check_not_pickle(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            md = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"{path}: not a readable safetensors file ({e})") from e
    return WeightsMeta.from_metadata(md, str(path))


def load_weights(path: str | os.PathLike[str], device: str = "cpu") -> tuple[Network, WeightsMeta]:
    """Load, verify (hash, architecture, tensor names and shapes) and place a network, in eval mode."""
    path = Path(path)
    meta = read_meta(path)
    try:
        tensors: dict[str, Tensor] = {}
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                if not key.startswith(TENSOR_PREFIX):  # (the familiarity sample is load_familiarity's to read)
                    tensors[key] = f.get_tensor(key)
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"{path}: truncated or corrupt tensor data ({e})") from e
    actual = content_hash(tensors)
    if actual != meta.content_hash:
        raise WeightsError(
            f"{path}: content hash mismatch (file says {meta.content_hash[:12] or 'none'}, tensors hash to {actual[:12]}); "
            "the file was modified or damaged"
        )
    model = build_model(meta)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise WeightsError(
            f"{path}: tensors do not match architecture {meta.architecture!r} "
            f"(missing {missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''})"
        )
    wrong = [f"{k}: file {tuple(tensors[k].shape)} vs model {tuple(v.shape)}" for k, v in expected.items() if tensors[k].shape != v.shape]
    if wrong:
        raise WeightsError(f"{path}: tensor shapes do not match {meta.architecture!r} with {meta.num_classes} classes: {wrong[:3]}")
    model.load_state_dict(tensors, strict=True)
    model.eval()
    model.place(device)  # type: ignore[operator]
    return model, meta


def load_familiarity(path: str | os.PathLike[str], meta: WeightsMeta | None = None) -> Familiarity | None:
    """The familiarity score stored in a weights file, or None where it has none."""
    meta = meta or read_meta(path)
    if not meta.familiarity:
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys() if k.startswith(TENSOR_PREFIX)}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"{path}: truncated or corrupt tensor data ({e})") from e
    return Familiarity.from_file(meta.familiarity, tensors, str(path))


def import_torchvision(pth: str | os.PathLike[str], out: str | os.PathLike[str]) -> WeightsMeta:
    """Convert torchvision's ImageNet AlexNet (``alexnet-owt-*.pth``) into a weights file.

    The file is read with ``torch.load(weights_only=True)``: tensors only, no code
    runs. Class names come from the installed torchvision.
    """
    from torchvision.models import AlexNet_Weights

    from model.torchvision_alexnet import TorchvisionAlexNet

    pth = Path(pth)
    if not pth.is_file():
        raise WeightsError(f"{pth}: no such file")
    try:
        state = torch.load(pth, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad or unsafe file
        raise WeightsError(f"{pth}: cannot be read as a tensors-only PyTorch file ({type(e).__name__}: {e})") from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"{pth}: expected a state dict, got {type(state).__name__}")
    model = TorchvisionAlexNet(num_classes=1000)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise WeightsError(f"{pth}: not torchvision's AlexNet state dict ({e})") from e
    info = AlexNet_Weights.IMAGENET1K_V1.meta
    metrics = info.get("_metrics", {}).get("ImageNet-1K", {})
    meta = WeightsMeta(
        architecture="alexnet-torchvision",
        class_names=tuple(info["categories"]),
        preset=Preset(crop_size=224, resize_size=256, mean=IMAGENET_MEAN, std=IMAGENET_STD),
        recipe={"source": "torchvision", "file": pth.name, "recipe": info.get("recipe", "")},
        metrics={"dataset": "ImageNet-1K val (torchvision's figures)", "top1": metrics.get("acc@1"), "top5": metrics.get("acc@5")},
    )
    return save_weights(model, meta, out)
