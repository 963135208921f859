"""Moving a gallery to new weights without losing an image: re-embedding and comparing (``index.registry`` keeps
the states and does the switch).

- ``reembed``: the vectors of staged weights for every stored image, computed from the gallery's stored copy (the
  re-encoded image, at most ``index.encoding.STORE_MAX_SIDE`` on its longer side), a batch per transaction. Only
  images without a vector of those weights are read, so a run killed at any point is resumed by running it again,
  and no image whose vector was stored is computed twice. One run per weights at a time (``Store.exclusive``).
- ``compare``: what switching would change, from the stored vectors and copies: top-1 agreement, accuracy where
  labels exist, precision@10 and mAP by label, the overlap of the 10 nearest neighbours, and the forward latency.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from index import registry
from index.quality import label_metrics
from index.registry import RegistryError
from index.store import Store
from model.console import progress as progress_bar
from model.decode import DecodeError, decode_image
from model.predictor import CoreSplit, Predictor, usable_cores
from model.vectors import l2_normalise

log = logging.getLogger(__name__)

__all__ = ["ReembedReport", "compare", "embed_stored", "reembed", "stored_pixels"]


@dataclass
class ReembedReport:
    weights: str
    computed: int = 0  # forward passes run
    stored: int = 0  # vectors written (an image deleted meanwhile is computed but not stored)
    unreadable: list[int] = field(default_factory=list)  # stored copies that could not be decoded
    seconds: float = 0.0
    remaining: int = 0  # images still without a vector when it stopped

    def rate(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 else 0.0


def stored_pixels(predictor: Predictor, data: tuple[bytes, str] | None) -> torch.Tensor | None:
    """The model's pixels of a stored copy, decoded the way the service decodes an upload; None if gone or unreadable."""
    if data is None:
        return None
    try:
        image = decode_image(data[0], min_side=predictor.meta.preset.resize_size).image
    except DecodeError:
        return None
    return predictor.pixels([image])


def embed_stored(predictor: Predictor, copies: list[tuple[bytes, str] | None]) -> list[np.ndarray | None]:
    """Unit fc7 vectors of stored copies (None where a copy is gone or cannot be decoded), one batch, no pipeline:
    what ``reembed`` stores for them."""
    return _unit_fc7(predictor, [stored_pixels(predictor, c) for c in copies])


def _unit_fc7(predictor: Predictor, pixels: list[torch.Tensor | None]) -> list[np.ndarray | None]:
    present = [p for p in pixels if p is not None]
    if not present:
        return [None] * len(pixels)
    _, fc7 = predictor.forward(torch.cat(present))
    vectors = iter(l2_normalise(fc7.numpy().astype(np.float32)))
    return [None if p is None else next(vectors) for p in pixels]


def reembed(
    store: Store, predictor: Predictor, *, batch: int = 64, progress: bool = True, stop: Callable[[], bool] = lambda: False,
    threads: int | None = None, on_batch: Callable[[ReembedReport], None] | None = None,
) -> ReembedReport:  # fmt: skip
    """Compute and store the vectors of ``predictor``'s weights (registered: staged or retired) for every stored image
    that has none, until none is left or ``stop()``. Adds made meanwhile by processes that embed with the staged
    weights too (the service) need nothing; any other add is found by a last pass from the start.

    The next batch is read and decoded (``threads`` threads; default a third of the cores, at least one) while the
    model runs on the one before; from the second batch's costs, the model may leave the decoders their cores
    (``CoreSplit``)."""
    threads = threads or max(1, usable_cores() // 3)
    with CoreSplit(predictor, threads) as split:
        return _reembed(store, predictor, batch, progress, stop, threads, on_batch, split)


def _reembed(
    store: Store, predictor: Predictor, batch: int, progress: bool, stop: Callable[[], bool], threads: int,
    on_batch: Callable[[ReembedReport], None] | None, split: CoreSplit,
) -> ReembedReport:  # fmt: skip
    weights = predictor.weights_hash
    found = registry.entry(store, weights)
    if found is None:
        raise RegistryError(f"weights {weights[:12]} are not registered in {store.location}; `alexnet model stage` them first")
    report = ReembedReport(weights)
    started = time.perf_counter()
    with store.exclusive(f"reembed-{weights[:16]}") as mine:
        if not mine:
            raise RegistryError(f"another process is re-embedding {weights[:12]} already; its progress: `alexnet model list`")
        total, missing = store.count(), registry.missing_count(store, weights)
        bad: set[int] = set()
        desc = f"re-embedding {weights[:12]}"

        def load(after: int) -> tuple[list[int], list[torch.Tensor | None], float]:
            # the next batch's ids, copies and pixels, read and decoded while the model runs on the one before
            ids = [i for i in registry.missing_ids(store, weights, after, batch) if i not in bad]
            t = time.perf_counter()
            pixels = list(pool.map(lambda i: stored_pixels(predictor, store.image_data(i)), ids))
            return ids, pixels, (time.perf_counter() - t) * min(threads, len(ids) or 1)  # core-seconds

        with ThreadPoolExecutor(max(1, threads), thread_name_prefix="reembed-decode") as pool, \
                ThreadPoolExecutor(1, thread_name_prefix="reembed-read") as reader, \
                progress_bar(total=total, initial=total - missing, desc=desc, unit="img", disable=not progress) as bar:  # fmt: skip
            from_start, passed_end, batches = True, False, 0
            upcoming = reader.submit(load, 0)
            while not stop():
                ids, pixels, decoding = upcoming.result()
                if not ids:
                    if from_start or passed_end:
                        break
                    from_start = passed_end = True  # one pass more from the start, for adds made without these weights
                    upcoming = reader.submit(load, 0)
                    continue
                from_start = False
                upcoming = reader.submit(load, ids[-1])
                t = time.perf_counter()
                vectors = _unit_fc7(predictor, pixels)
                batches += 1
                if batches == 2:  # whether the model leaves the decoders their cores (the first pass warms the model up)
                    split.decide(decoding / len(ids), (time.perf_counter() - t) * torch.get_num_threads() / len(ids))
                done = [(i, v) for i, v in zip(ids, vectors, strict=True) if v is not None]
                for i, v in zip(ids, vectors, strict=True):
                    if v is None and store.get(i) is not None:
                        bad.add(i)
                        report.unreadable.append(i)
                        log.warning("image %d: its stored copy cannot be decoded; it gets no vector of %s", i, weights[:12])
                report.computed += len(done)
                if done:
                    report.stored += registry.put_vectors(store, weights, [i for i, _ in done], np.stack([v for _, v in done]))
                bar.update(len(ids))
                report.seconds = time.perf_counter() - started
                if on_batch is not None:
                    on_batch(report)
            upcoming.cancel()
        report.remaining = registry.missing_count(store, weights)
    report.seconds = time.perf_counter() - started
    return report


def _classify(predictor: Predictor, copies: list[tuple[bytes, str] | None]) -> np.ndarray:
    pixels = [stored_pixels(predictor, c) for c in copies]
    present = [p for p in pixels if p is not None]
    logits = torch.cat([predictor.forward(torch.cat(present[a : a + 64]))[0] for a in range(0, len(present), 64)]) if present else None
    top = iter(logits.argmax(dim=1).tolist()) if logits is not None else iter(())
    return np.array([-1 if p is None else next(top) for p in pixels])


def _latency_ms(predictor: Predictor, repeats: int = 10) -> float:
    side = predictor.meta.preset.crop_size
    x = torch.zeros(1, 3, side, side, dtype=torch.uint8)
    predictor.forward(x)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        predictor.forward(x)
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1000)


def compare(store: Store, active: Predictor, staged: Predictor, *, sample: int = 500, queries: int = 100, seed: int = 0) -> dict[str, Any]:
    """Active against staged on this gallery: top-1 agreement and accuracy (on up to ``sample`` stored images, from
    their stored copies), precision@10 and mAP by label and the overlap of the 10 nearest neighbours of ``queries``
    images (from the stored vectors of each), and each one's forward latency at batch 1."""
    ids = store.all_ids()
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(ids, size=min(sample, len(ids)), replace=False)) if len(ids) else ids
    records = store.get_many([int(i) for i in picked])
    copies = [store.image_data(int(i)) for i in picked]
    out: dict[str, Any] = {"images": len(ids), "sampled": len(picked)}
    tops = {name: _classify(p, copies) for name, p in (("active", active), ("staged", staged))}
    ok = (tops["active"] >= 0) & (tops["staged"] >= 0)
    out["top1_agreement"] = float(np.mean(tops["active"][ok] == tops["staged"][ok])) if ok.any() else None
    vectors: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, p in (("active", active), ("staged", staged)):
        names = p.class_names
        labels = [records[int(i)].label if int(i) in records else None for i in picked]
        known = [(t, lab) for t, lab in zip(tops[name], labels, strict=True) if lab is not None and lab in names and t >= 0]
        accuracy = float(np.mean([names[t] == lab for t, lab in known])) if known else None
        chunks = list(store.iter_vectors(weights=p.weights_hash))
        vec_ids = np.concatenate([c[0] for c in chunks]) if chunks else np.zeros(0, dtype=np.int64)
        vecs = np.concatenate([c[1] for c in chunks]) if chunks else np.zeros((0, 1), dtype=np.float32)
        vectors[name] = (vec_ids, vecs)
        all_records = store.get_many(vec_ids.tolist())
        lab = np.array([all_records[int(i)].label if int(i) in all_records else None for i in vec_ids], dtype=object)
        has = np.array([x is not None for x in lab], dtype=bool)
        quality = label_metrics(vecs[has], lab[has].astype(str), (10,)) if has.sum() > 10 else {}
        out[name] = {"weights": p.weights_hash, "classes": len(names), "accuracy": accuracy, "labelled": len(known),
                     "p@10": quality.get("p@10"), "map": quality.get("map"), "forward_ms_batch1": round(_latency_ms(p), 2)}  # fmt: skip
    common = np.intersect1d(vectors["active"][0], vectors["staged"][0])
    if len(common) > 10:
        q = np.sort(rng.choice(common, size=min(queries, len(common)), replace=False))
        overlaps = []
        for name in ("active", "staged"):
            vid, v = vectors[name]
            keep = np.isin(vid, common)
            vid, v = vid[keep], v[keep]
            sims = v[np.searchsorted(vid, q)] @ v.T
            sims[np.arange(len(q)), np.searchsorted(vid, q)] = -np.inf
            overlaps.append(vid[np.argsort(-sims, axis=1)[:, :10]])
        out["neighbour_overlap@10"] = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(*overlaps, strict=True)]))
        out["queries"] = len(q)
    else:
        out["neighbour_overlap@10"] = None
    return out
