"""How familiar a picture is to the model, and probabilities that mean what they say.

**Familiarity** is deep nearest neighbours (Sun et al., ICML 2022, "Out-of-Distribution Detection with Deep
Nearest Neighbors") over three layers of the served network: for each of ``LAYERS`` the feature vector of the
picture is normalised to unit length, and its cosine similarity to the ``k``-th most similar of a reference
sample of training images is taken. fc7 (Sun et al.'s penultimate layer) knows what the picture shows; the
channel means of conv1 and conv3 know its texture and contrast, which is where a photograph or a digit
differs most from what the network was trained on. Each layer's similarity is put on a common scale (its mean
and spread over held-out training images) and the three are summed. The answer a user reads is that sum as a
percentile of the held-out training images' sums: 0.5 is as familiar as a typical training image, 0.01 is less
familiar than 99% of them. A picture is ``familiar`` when its percentile is at least the threshold level: the
stated false-alarm rate (5%) less the sampling error of estimating it from n held-out images (a one-sided 95%
bound, 1.645 standard errors: 4.5% for 5,000 images; never under one held-out image's share), so that new pictures
of the training distribution are flagged at no more than the stated rate, not at about it. No evaluation set is used to choose anything.

**Temperature** (Guo et al., ICML 2017, "On Calibration of Modern Neural Networks"): one scalar T fitted on the
held-out training images by minimising the negative log-likelihood of softmax(logits / T). It changes no
ranking, only how confident the probabilities are.

Both are made at export (``training.export``) or added to a weights file later (``alexnet familiarity``), and
live in the weights file: the fitted numbers as metadata, the reference sample as extra tensors
(``familiarity.<layer>``, float16) that the content hash does not cover, so adding them leaves the hash, and
every gallery built with it, as they were. A file without them serves no score, and says so.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

if TYPE_CHECKING:
    from model.predictor import Predictor
    from model.weights import WeightsMeta

log = logging.getLogger(__name__)

__all__ = [
    "FALSE_ALARM",
    "LAYERS",
    "REFERENCE_IMAGES",
    "TENSOR_PREFIX",
    "Familiarity",
    "LayerTaps",
    "expected_calibration_error",
    "familiarise",
    "fit_temperature",
    "layers_of",
]

LAYERS = ("conv1", "conv3", "fc7")  # fc7 comes with every forward pass; the others are tapped (LayerTaps)
REFERENCE_IMAGES = 2000  # training images whose features are kept in the weights file (as float16); bench/RESULTS.md: why 2,000
K = 5
FALSE_ALARM = 0.05  # the most new in-distribution pictures that may be called unfamiliar
CONFIDENCE_Z = 1.645  # one-sided 95%: the threshold level is the false-alarm rate less this many standard errors
QUANTILES = 1001  # held-out percentiles kept, to turn a score into a percentile
TENSOR_PREFIX = "familiarity."


def _unit(x: Tensor) -> Tensor:
    x = x.float()
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _tap_modules(model: nn.Module) -> dict[str, list[nn.Module]]:
    """Where each tapped layer's output is, per architecture: the two towers' blocks (two-tower AlexNet,
    concatenated in tower order) or torchvision's ``features`` after conv1's pooling and conv3's ReLU."""
    towers = getattr(model, "towers", None)
    if towers is not None:
        return {name: [getattr(t, name) for t in towers] for name in ("conv1", "conv3")}
    features = getattr(model, "features", None)
    if isinstance(features, nn.Sequential) and len(features) > 7:
        return {"conv1": [features[2]], "conv3": [features[7]]}
    return {}


def layers_of(model: nn.Module) -> tuple[str, ...]:
    """The layers familiarity can use on this network: ``LAYERS``, or fc7 alone where the others cannot be tapped."""
    taps = _tap_modules(model)
    return tuple(name for name in LAYERS if name == "fc7" or name in taps)


class LayerTaps:
    """The channel means of the tapped layers, from forward hooks that exist only inside ``recording()`` (so a
    network outside it runs exactly as before, and a Predictor made again and again over one network leaves
    nothing behind). Not thread-safe on its own: the Predictor holds its lock around a recording."""

    def __init__(self, model: nn.Module, layers: Sequence[str]) -> None:
        modules = _tap_modules(model)
        self.layers = tuple(name for name in layers if name != "fc7")
        for name in self.layers:
            if name not in modules:
                raise ValueError(f"{type(model).__name__} has no layer {name!r} to tap")
        self._modules = {name: modules[name] for name in self.layers}

    @contextmanager
    def recording(self) -> Iterator[dict[str, Tensor]]:
        """Inside: record. After the block, the dict holds each layer's (N, channels) means for every pass made in it
        (the parts of a layer, one per tower, side by side)."""
        parts: dict[str, list[list[Tensor]]] = {name: [[] for _ in mods] for name, mods in self._modules.items()}

        def keep(into: list[Tensor]) -> Callable[..., None]:
            def hook(module: nn.Module, inputs: object, output: Tensor) -> None:
                out = output.dequantize() if output.is_quantized else output
                into.append(out.float().mean(dim=(2, 3)).cpu())

            return hook

        handles = [m.register_forward_hook(keep(parts[name][i])) for name, mods in self._modules.items() for i, m in enumerate(mods)]
        out: dict[str, Tensor] = {}
        try:
            yield out
        finally:
            for h in handles:
                h.remove()
        for name, per_part in parts.items():
            if per_part and per_part[0]:
                out[name] = torch.cat([torch.cat(p) for p in per_part], dim=1)


@dataclass(frozen=True)
class Familiarity:
    """The fitted score: unit reference features per layer, each layer's held-out mean and spread, and the held-out
    percentiles of the summed score."""

    references: dict[str, Tensor]  # layer -> (R, D) float32 unit rows
    centre: dict[str, float]
    spread: dict[str, float]
    quantiles: np.ndarray  # (QUANTILES,) held-out summed scores at levels 0, 0.001, ..., 1
    k: int = K
    false_alarm: float = FALSE_ALARM
    level: float = FALSE_ALARM  # the percentile below which a picture is unfamiliar (``fit``: under false_alarm)
    info: dict[str, Any] = field(default_factory=dict)  # what it was made from (data, images, held-out images)

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(self.references)

    def raw(self, features: dict[str, Tensor]) -> Tensor:
        """(N,) summed, standardised k-th neighbour similarities (larger: more familiar)."""
        total: Tensor | None = None
        for name in self.references:
            z = (self._kth(name, features[name]) - self.centre[name]) / self.spread[name]
            total = z if total is None else total + z
        assert total is not None
        return total

    def percentile(self, raw: Tensor | np.ndarray) -> np.ndarray:
        """The share of held-out training images less familiar than each score, in [0, 1]."""
        levels = np.linspace(0, 1, len(self.quantiles))
        return np.interp(np.asarray(raw, dtype=np.float64), self.quantiles, levels).astype(np.float32)

    def score(self, features: dict[str, Tensor]) -> np.ndarray:
        return self.percentile(self.raw(features))

    def familiar(self, percentile: np.ndarray) -> np.ndarray:
        return np.asarray(percentile) >= self.level

    @property
    def threshold(self) -> float:
        """The summed score at the threshold level (``raw`` below it: unfamiliar)."""
        return float(np.interp(self.level, np.linspace(0, 1, len(self.quantiles)), self.quantiles))

    @classmethod
    def fit(
        cls,
        reference: dict[str, Tensor],
        held_out: dict[str, Tensor],
        *,
        k: int = K,
        false_alarm: float = FALSE_ALARM,
        info: dict[str, Any] | None = None,
    ) -> Familiarity:
        """From the features (``LayerTaps`` means, fc7) of the reference sample and of held-out training images
        (never the same images: a reference image is its own nearest neighbour)."""
        if not 0 < false_alarm < 1:
            raise ValueError(f"the false-alarm rate must lie between 0 and 1, got {false_alarm}")
        refs = {name: _unit(t).half().float() for name, t in reference.items()}  # as stored: float16
        if min(len(r) for r in refs.values()) < k or min(len(h) for h in held_out.values()) < 2:
            raise ValueError(f"familiarity needs at least {k} reference images and 2 held-out images")
        probe = cls(refs, dict.fromkeys(refs, 0.0), dict.fromkeys(refs, 1.0), np.zeros(2), k, false_alarm)
        centre, spread = {}, {}
        for name in refs:
            kth = probe._kth(name, held_out[name])
            centre[name], spread[name] = float(kth.mean()), max(float(kth.std()), 1e-6)
        fitted = cls(refs, centre, spread, np.zeros(2), k, false_alarm)
        raw = fitted.raw(held_out).double().numpy()
        quantiles = np.quantile(raw, np.linspace(0, 1, QUANTILES))
        quantiles = np.maximum.accumulate(quantiles)  # (np.interp needs them non-decreasing)
        facts = {"reference_images": len(next(iter(refs.values()))), "held_out_images": len(raw), **(info or {})}
        # (with few held-out images the bound falls to nothing: the level stays at least one image's share)
        level = max(1 / (len(raw) + 1), false_alarm - CONFIDENCE_Z * float(np.sqrt(false_alarm * (1 - false_alarm) / len(raw))))
        return cls(refs, centre, spread, quantiles, k, false_alarm, level, facts)

    def _kth(self, name: str, features: Tensor) -> Tensor:
        ref = self.references[name]
        return (_unit(features) @ ref.T).topk(min(self.k, ref.shape[0]), dim=1).values[:, -1]

    # -- in the weights file -----------------------------------------------------------------

    def tensors(self) -> dict[str, Tensor]:
        return {TENSOR_PREFIX + name: ref.half().contiguous() for name, ref in self.references.items()}

    def metadata(self) -> str:
        from model.weights import tensors_digest

        return json.dumps(
            {
                "method": "deep nearest neighbours (Sun et al. 2022) over conv1 and conv3 channel means and fc7",
                "layers": list(self.layers),
                "k": self.k,
                "false_alarm": self.false_alarm,
                "threshold_level": self.level,
                "centre": self.centre,
                "spread": self.spread,
                "quantiles": [float(q) for q in self.quantiles],
                "reference_sha256": tensors_digest(self.tensors()),
                **self.info,
            }
        )

    @classmethod
    def from_file(cls, text: str, tensors: dict[str, Tensor], source: str) -> Familiarity:
        """From the weights file's ``familiarity`` metadata and its ``familiarity.*`` tensors; a mismatch is an error
        that names the file."""
        from model.weights import WeightsError, tensors_digest

        try:
            md = json.loads(text)
            layers = list(md["layers"])
            stored = {TENSOR_PREFIX + name: tensors[TENSOR_PREFIX + name] for name in layers}
            if tensors_digest(stored) != md["reference_sha256"]:
                raise WeightsError(f"{source}: the familiarity reference tensors do not match their recorded digest")
            keep = {"method", "layers", "k", "false_alarm", "threshold_level", "centre", "spread", "quantiles", "reference_sha256"}
            return cls(
                references={name: stored[TENSOR_PREFIX + name].float() for name in layers},
                centre={name: float(md["centre"][name]) for name in layers},
                spread={name: float(md["spread"][name]) for name in layers},
                quantiles=np.asarray(md["quantiles"], dtype=np.float64),
                k=int(md["k"]),
                false_alarm=float(md["false_alarm"]),
                level=float(md["threshold_level"]),
                info={key: v for key, v in md.items() if key not in keep},
            )
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, WeightsError):
                raise
            raise WeightsError(f"{source}: unreadable familiarity metadata ({type(e).__name__}: {e})") from e


# -- fitting both on a network -------------------------------------------------------------


class Labelled(Protocol):
    """A labelled image collection (``model.datasets.ImageSet``, ``training.data.Source``)."""

    def __len__(self) -> int: ...
    def pil_image(self, i: int) -> Image.Image: ...
    def label(self, i: int) -> int: ...


def _features(predictor: Predictor, source: Labelled, idx: list[int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits and familiarity features (``Predictor.features``) of ``source``'s images ``idx``, decoded and resized as
    serving does."""
    logits, parts = [], []
    for a in range(0, len(idx), 256):
        lo, feats = predictor.features(predictor.pixels([source.pil_image(i) for i in idx[a : a + 256]]))
        logits.append(lo)
        parts.append(feats)
    return torch.cat(logits), {name: torch.cat([p[name] for p in parts]) for name in parts[0]}


def familiarise(
    model: nn.Module, meta: WeightsMeta, train: Labelled, held_out: Labelled | None, *, references: int = REFERENCE_IMAGES
) -> tuple[Familiarity, dict[str, Any]]:
    """The familiarity score and the softmax temperature (``model.familiarity``) of a network: the reference sample is
    ``references`` images of ``train`` (a fixed random choice); the temperature and the score's scale and threshold are
    fitted on ``held_out``, training images kept out of training. Without them (a recipe that held none out) a
    second, disjoint sample of ``train`` stands in, and the metadata says so: images the network was trained on are
    more familiar to it than new ones, so more new images than the stated rate will be flagged."""
    from model.predictor import Predictor

    predictor = Predictor.from_model(model, meta)
    if held_out is not None and len(held_out) < 2:  # (a data set too small to hold any out)
        held_out = None
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0)).tolist()
    ref_idx = order[: min(references, len(train) // 2 if held_out is None else len(train))]
    if held_out is None:
        held_src, held_idx = train, order[len(ref_idx) : 2 * len(ref_idx)]
        log.warning("the recipe held no training images out: fitting on %d other training images instead", len(held_idx))
    else:
        held_src, held_idx = held_out, list(range(len(held_out)))
    _, ref = _features(predictor, train, ref_idx)
    logits, held = _features(predictor, held_src, held_idx)
    labels = torch.tensor([held_src.label(i) for i in held_idx])
    t = fit_temperature(logits, labels)
    nll = [float(torch.nn.functional.cross_entropy(logits / v, labels)) for v in (1.0, t)]
    ece = [expected_calibration_error((logits / v).softmax(1), labels) for v in (1.0, t)]
    trained_on = held_out is None
    facts = {"held_out_trained_on": trained_on, "data": str(meta.recipe.get("data", "")) or None}
    temperature = {"value": t, "images": len(held_idx), "nll_before": nll[0], "nll_after": nll[1], "ece_before": ece[0],
                   "ece_after": ece[1], **facts}  # fmt: skip
    log.info(
        "softmax temperature %.3f: held-out calibration error %.2f%% -> %.2f%% (%d images)", t, 100 * ece[0], 100 * ece[1], len(labels)
    )
    familiarity = Familiarity.fit({n: ref[n] for n in layers_of(model)}, {n: held[n] for n in layers_of(model)}, info=facts)
    return familiarity, temperature


# -- temperature ---------------------------------------------------------------------------


def fit_temperature(logits: Tensor, labels: Tensor) -> float:
    """The T > 0 that minimises the negative log-likelihood of softmax(logits / T) (Guo et al. 2017), by a golden
    section search on log T over [1/20, 20] (the NLL is unimodal in T)."""
    logits, labels = logits.double(), labels.long()

    def nll(log_t: float) -> float:
        return float(torch.nn.functional.cross_entropy(logits / np.exp(log_t), labels))

    lo, hi = np.log(1 / 20), np.log(20)
    ratio = (np.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(a), nll(b)
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(b)
    return float(np.exp((lo + hi) / 2))


def expected_calibration_error(probs: Tensor, labels: Tensor, bins: int = 15) -> float:
    """ECE over ``bins`` equal-width bins of the top-1 probability (Guo et al. 2017, section 2): the weighted mean
    of |accuracy - confidence| per bin."""
    conf, pred = probs.float().max(dim=1)
    correct = (pred == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    ece = torch.zeros(())
    for lo, hi in itertools.pairwise(edges.tolist()):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            ece += inside.float().mean() * (correct[inside].mean() - conf[inside].mean()).abs()
    return float(ece)
