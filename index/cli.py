"""``alexnet index build|add|remove|stats|search|eval``: manage a similarity index from the shell."""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from index.errors import ImageIndexError
from index.factory import DEFAULT_AUTO_THRESHOLD
from index.store import StoreError
from model.console import CommandSettings, read_settings
from model.datasets import fetch_fashion_mnist
from model.decode import DecodeError
from model.weights import WeightsError

__all__ = ["ERRORS", "main"]

ERRORS = (ImageIndexError, StoreError, WeightsError, DecodeError)  # printed by the dispatcher (model/console.py)


def _open(args: argparse.Namespace) -> tuple[Any, Any]:
    """The model of ``--weights`` and the index it made (or a new one)."""
    from index.index import ImageIndex
    from model.predictor import Predictor

    predictor = Predictor(args.weights)
    index = ImageIndex(args.index, weights_hash=predictor.weights_hash, factory=getattr(args, "factory", None), store_url=args.store_url)
    return predictor, index


def _build(args: argparse.Namespace) -> int:
    from index.extract import build_index

    predictor, index = _open(args)
    with index:
        report = build_index(
            index,
            predictor,
            args.source,
            batch_size=args.batch_size,
            workers=args.workers,
            data_dir=args.data_dir,
            labels_from_folders=args.labels_from_folders,
            limit=args.limit,
        )
        stats = index.stats()
    print(
        f"added {report.added}, exact duplicates {report.duplicates}, skipped {len(report.skipped)}; index holds {stats['images']} images"
    )
    for src, reason in report.skipped[:20]:
        print(f"  skipped {src}: {reason}")
    if len(report.skipped) > 20:
        print(f"  ... and {len(report.skipped) - 20} more")
    return 0


def _add(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from index.extract import Item, images_from_source

    predictor, index = _open(args)
    failed = 0
    with index:
        for name in args.images:  # a file, or a folder: every image in it (by content; other files are reported)
            ds = images_from_source(name, predictor)
            batch: list[Item] = []
            for i in range(len(ds)):  # type: ignore[arg-type]
                item = ds[i]
                if isinstance(item, tuple):
                    print(f"{item[0]}: skipped ({item[1]})", file=sys.stderr)
                    failed += 1
                    continue
                batch.append(Item(item.tensor, replace(item.image, label=args.label)) if args.label else item)
                if len(batch) == 32:
                    _add_batch(index, predictor, batch, args.near_duplicate)
                    batch = []
            if batch:
                _add_batch(index, predictor, batch, args.near_duplicate)
    return 1 if failed else 0


def _add_batch(index: Any, predictor: Any, items: list[Any], near_duplicate: float | None) -> None:
    from index.extract import add_images

    for item, r in zip(items, add_images(index, predictor, items, near_duplicate_threshold=near_duplicate), strict=True):
        note = "" if r.created else " (exact duplicate: already stored)"
        if r.near_duplicate_of is not None:
            note += f" (near duplicate of {r.near_duplicate_of}, cosine {r.near_duplicate_score:.3f})"
        print(f"{item.source}: id {r.id}{note}")


def _remove(args: argparse.Namespace) -> int:
    from index.index import ImageIndex

    with ImageIndex(args.index, weights_hash=_stored_hash(args), store_url=args.store_url) as index:
        rec = index.delete(args.id)
    if rec is None:
        print(f"no image with id {args.id}", file=sys.stderr)
        return 1
    print(f"removed {args.id} ({rec.source})")
    return 0


def _stats(args: argparse.Namespace) -> int:
    from index.index import ImageIndex

    with ImageIndex(args.index, weights_hash=_stored_hash(args), readonly=True, store_url=args.store_url) as index:
        stats = index.stats()
        stats["problems"] = index.check()
    print(json.dumps(stats, indent=2))
    return 0 if not stats["problems"] else 1


def _stored_hash(args: argparse.Namespace) -> str:
    from index.store import open_store

    """The weights hash an existing index was built with: commands that need no model open it with that."""
    store = open_store(args.index, args.store_url, readonly=True)
    try:
        stored = store.get_meta("weights_hash")
    finally:
        store.close()
    if not stored:
        raise ImageIndexError(f"{store.location}: no index there yet (build one with `alexnet index build`)")
    return stored


def _search(args: argparse.Namespace) -> int:
    from model.decode import decode_image

    predictor, index = _open(args)
    with index:
        image = decode_image(Path(args.image).read_bytes()).image
        hits = index.search(predictor.embed([image]), k=args.k)[0]
    if args.json:
        rows = [{"id": h.id, "score": h.score, "label": h.record and h.record.label, "source": h.record and h.record.source} for h in hits]
        print(json.dumps(rows, indent=2))
    else:
        for h in hits:
            label, source = (h.record.label, h.record.source) if h.record else (None, None)
            print(f"{h.score:7.4f}  id {h.id:<8} {label or '-':<14} {source}")
    return 0


def _pixels(encoded: bytes, side: int = 32) -> np.ndarray:
    """The raw-pixel baseline's vector of an image: RGB at side x side, flattened."""
    from PIL import Image

    with Image.open(io.BytesIO(encoded)) as im:
        return np.asarray(im.convert("RGB").resize((side, side), Image.Resampling.BILINEAR), dtype=np.float32).ravel()


def _gallery_for_eval(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """(fc7 vectors, raw-pixel vectors, labels, what was measured) of the stored gallery or of a labelled folder."""
    if args.folder:
        import torch

        from index.extract import images_from_source
        from model.predictor import Predictor

        if args.weights is None:
            raise ValueError("--folder needs --weights: the model whose fc7 vectors are measured")
        predictor = Predictor(args.weights)
        ds = images_from_source(str(args.folder), predictor, labels_from_folders=True)
        items = [it for i in range(len(ds)) if not isinstance(it := ds[i], tuple) and it.image.label]  # type: ignore[arg-type]
        vecs = [predictor.forward(torch.stack([it.tensor for it in items[a : a + 64]]))[1].numpy() for a in range(0, len(items), 64)]
        labels = np.array([it.image.label for it in items])
        pixels = np.stack([_pixels(it.image.encoded) for it in items]) if items else np.zeros((0, 1))
        return (np.concatenate(vecs) if vecs else np.zeros((0, 1))), pixels, labels, f"folder {args.folder}"
    from index.store import open_store

    store = open_store(args.index, args.store_url, readonly=True)
    try:
        active = store.get_meta("weights_hash")
        id_chunks, vec_chunks = zip(*store.iter_vectors(weights=active), strict=True) if store.count() else ((), ())
        all_ids = [int(i) for chunk in id_chunks for i in chunk]
        records = store.get_many(all_ids)
        keep = [i for i in all_ids if records[i].label]
        pixels = np.stack([_pixels(store.image_data(i)[0]) for i in keep]) if keep else np.zeros((0, 1))  # type: ignore[index]
        labelled = np.isin(np.array(all_ids), keep)
        vectors = np.concatenate(vec_chunks)[labelled] if keep else np.zeros((0, 1))
    finally:
        store.close()
    return vectors, pixels, np.array([records[i].label for i in keep]), f"index {args.index}"


def _eval(args: argparse.Namespace) -> int:
    from index.quality import label_metrics

    vectors, pixels, labels, what = _gallery_for_eval(args)
    if len(labels) < 2:
        print(f"{what}: fewer than two labelled images to measure", file=sys.stderr)
        return 1
    ks = tuple(sorted({1, 10, 100, args.k}))
    fc7, raw = label_metrics(vectors, labels, ks), label_metrics(pixels, labels, ks)
    if args.json:
        print(json.dumps({"images": len(labels), "labels": len(set(labels.tolist())), "fc7": fc7, "raw_pixels": raw}, indent=2))
        return 0
    print(f"{what}: {len(labels)} labelled images, {len(set(labels.tolist()))} labels; each image against all others, itself excluded")
    print(f"{'metric':<8} {'fc7':>8} {'raw pixels':>11}")
    for name in fc7:
        print(f"{'mAP' if name == 'map' else name:<8} {100 * fc7[name]:7.2f}% {100 * raw[name]:10.2f}%")
    return 0


def _backup(args: argparse.Namespace) -> int:
    from index.backup import backup
    from index.pg_backup import backup_postgres

    if not args.store_url and args.index is None:
        raise ImageIndexError("--index (a SQLite gallery's directory) or --store-url (a PostgreSQL gallery) is required")
    r = backup_postgres(args.store_url, args.dest) if args.store_url else backup(args.index, args.dest)
    left = f"; {r.left_out} deleted while it ran left out" if r.left_out else ""
    print(f"backed up {r.images} images (up to change {r.last_change}) to {args.dest} in {r.seconds:.1f} s{left}")
    return 0


def _restore(args: argparse.Namespace) -> int:
    from index.backup import DB, restore
    from index.pg_backup import DUMP, restore_postgres

    if (args.src / DUMP).is_file() != bool(args.store_url):
        raise ImageIndexError(
            f"{args.src} is a PostgreSQL backup: restore it with --store-url naming a new, empty database"
            if (args.src / DUMP).is_file()
            else f"{args.src} is a SQLite backup ({DB}): restore it into a new index directory, without --store-url"
        )
    if not args.store_url and args.index is None:
        raise ImageIndexError("--index is required: the new directory to restore the SQLite gallery into")
    n = restore_postgres(args.src, args.store_url) if args.store_url else restore(args.src, args.index)
    where = "the database" if args.store_url else str(args.index)
    print(f"restored {n} images into {where}; the FAISS index is rebuilt when it is first opened")
    return 0


def build_parser(store_url: str | None = None) -> argparse.ArgumentParser:
    """``store_url``: the default of ``--store-url`` (the process's ``ALEXNET_STORE_URL``)."""
    parser = argparse.ArgumentParser(prog="alexnet index")
    sub = parser.add_subparsers(dest="action", required=True)

    def common(p: argparse.ArgumentParser, weights: bool = True) -> None:
        if weights:
            p.add_argument("--weights", type=Path, required=True, help="weights file whose fc7 vectors the index holds")
        p.add_argument(
            "--index",
            type=Path,
            required=weights,
            help="index directory (the SQLite store and the FAISS snapshot)" + ("" if weights else "; not needed with --store-url"),
        )
        p.add_argument(
            "--store-url",
            default=store_url,
            help="postgresql://USER:PASSWORD@HOST:PORT/DB when the gallery lives in PostgreSQL (default: ALEXNET_STORE_URL; unset: SQLite)",
        )

    p = sub.add_parser("build", help="embed a folder tree or data set (fashion-mnist:test) into the index")
    p.add_argument("source")
    common(p)
    p.add_argument(
        "--factory",
        default=None,
        help=f"auto (a new index's default: exact below {DEFAULT_AUTO_THRESHOLD:,} vectors, PCA256,IVF<nlist>,Flat above), "
        "flat (always exact), or a FAISS factory string such as PCA256,IVF1024,Flat or HNSW32; an existing index keeps "
        "its own unless given",
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int)
    p.add_argument("--data-dir", help="Fashion-MNIST's directory, when not the Debian package's")
    p.add_argument("--download", action="store_true", help="download Fashion-MNIST if it is missing (or ALEXNET_DOWNLOAD=1)")
    p.add_argument("--labels-from-folders", action="store_true", help="label each image by its parent folder's name")
    p.add_argument("--limit", type=int)
    p.set_defaults(func=_build)
    p = sub.add_parser("add", help="add image files, or every image in a folder")
    p.add_argument("images", nargs="+")
    common(p)
    p.add_argument("--label")
    p.add_argument("--near-duplicate", type=float, metavar="COSINE", help="flag near duplicates at or above this cosine")
    p.set_defaults(func=_add)
    p = sub.add_parser("remove", help="remove an image by id")
    p.add_argument("id", type=int)
    common(p, weights=False)
    p.set_defaults(func=_remove)
    p = sub.add_parser("stats", help="counts, weights hash, consistency")
    common(p, weights=False)
    p.set_defaults(func=_stats)
    p = sub.add_parser("search", help="the k most similar stored images")
    p.add_argument("image")
    common(p)
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_search)
    p = sub.add_parser("backup", help="a consistent copy of the gallery (SQLite or PostgreSQL), while the server keeps adding")
    p.add_argument("dest", type=Path, help="a new directory for the backup")
    common(p, weights=False)
    p.set_defaults(func=_backup)
    p = sub.add_parser("restore", help="put a backup in place as a new index directory, or in a new, empty database (--store-url)")
    p.add_argument("src", type=Path, help="a directory written by `alexnet index backup`")
    common(p, weights=False)
    p.set_defaults(func=_restore)
    p = sub.add_parser(
        "eval", help="precision@1/10/100 and mAP by label of fc7 cosine, beside raw pixels: the stored gallery, or a labelled folder"
    )
    p.add_argument("--folder", type=Path, help="measure a folder instead: DIR/<label>/<images>, embedded with --weights")
    p.add_argument("--weights", type=Path, help="with --folder: the weights file whose fc7 vectors are measured")
    p.add_argument("--index", type=Path, help="the index directory to measure (its labelled images)")
    p.add_argument("--store-url", default=store_url, help="the gallery's PostgreSQL URL, if there")
    p.add_argument("-k", type=int, default=10, help="one more precision@k besides 1, 10 and 100")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_eval)
    return parser


def main(argv: list[str], settings: CommandSettings | None = None) -> int:
    settings = settings or read_settings()
    store_url = settings.store_url.get_secret_value() if settings.store_url else None
    args = build_parser(store_url).parse_args(argv[1:])
    if (getattr(args, "download", False) or settings.download) and str(getattr(args, "source", "")).startswith("fashion-mnist"):
        args.data_dir = str(fetch_fashion_mnist(args.data_dir, mirror=settings.fashion_mnist_mirror or None))
    return int(args.func(args))
