"""``alexnet model``: move a gallery to new weights without downtime (``index.registry``, ``index.lifecycle``).

    alexnet model stage NEW.safetensors     register the weights, store the file, re-embed every image
    alexnet model list                      every weights, its state and how many images have its vectors
    alexnet model compare                   active against staged, before switching
    alexnet model activate HASH             every replica switches (one transaction); again to roll back
    alexnet model retire HASH               drop a staged or retired weights' vectors and file

Each works on the SQLite gallery in ``--index`` or on PostgreSQL (``--store-url``, default ``ALEXNET_STORE_URL``);
running services follow the switch by themselves.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from index.errors import ImageIndexError, StoreError
from model.console import CommandSettings, read_settings
from model.decode import DecodeError
from model.weights import WeightsError

__all__ = ["ERRORS", "main"]

T = TypeVar("T")

ERRORS = (ImageIndexError, StoreError, WeightsError, DecodeError)


def _store(args: argparse.Namespace) -> Any:
    from index.store import open_store

    return open_store(args.index, args.store_url)


def _predictor(store: Any, weights_hash: str, index_dir: Path) -> Any:
    """The registered weights' model, its file fetched from the store into ``INDEX/weights/``."""
    from index.registry import download
    from model.predictor import Predictor

    return Predictor(download(store, weights_hash, index_dir / "weights"))


def _list(args: argparse.Namespace) -> int:
    from index import registry

    store = _store(args)
    try:
        total = store.count()
        rows = [{**e.public(), "vectors": registry.vector_count(store, e.hash), "images": total} for e in registry.listing(store)]
    finally:
        store.close()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'weights':<14} {'state':<8} {'vectors':^17} {'file':>9}  changed")
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["changed"]))
        size = f"{r['file_bytes'] / 1e6:.1f} MB" if r["file_stored"] else "not stored"
        print(f"{r['hash'][:12]:<14} {r['state']:<8} {r['vectors']:>8}/{r['images']:<8} {size:>9}  {when}")
    return 0


def _reembed_now(store: Any, predictor: Any, args: argparse.Namespace) -> int:
    from index.lifecycle import reembed

    report = reembed(store, predictor, batch=args.batch_size, progress=not args.quiet)
    print(f"re-embedded {report.computed} images with {predictor.weights_hash[:12]} in {report.seconds:.1f} s "
          f"({report.rate():.1f} img/s); {report.remaining} left")  # fmt: skip
    if report.unreadable:
        print(f"{len(report.unreadable)} stored copies could not be decoded (ids {report.unreadable[:10]}): "
              "they have no vector of these weights, which cannot be activated until they are removed", file=sys.stderr)  # fmt: skip
    return 0 if report.remaining == 0 else 1


def _stage(args: argparse.Namespace) -> int:
    from index import registry
    from model.predictor import Predictor

    predictor = Predictor(args.weights)
    store = _store(args)
    try:
        entry = registry.register(store, predictor.weights_hash, 4096, args.weights, {"classes": len(predictor.class_names),
                                  "architecture": predictor.meta.architecture, "name": args.weights.name})  # fmt: skip
        print(f"staged {entry.hash[:12]} ({entry.size / 1e6:.1f} MB stored for every replica)")
        _store_active_file(store, args.active_weights)
        if args.no_reembed:
            print(f"re-embed it with `alexnet model reembed {entry.hash[:12]}`")
            return 0
        return _reembed_now(store, predictor, args)
    finally:
        store.close()


def _store_active_file(store: Any, path: Path) -> None:
    """The active weights' file, stored beside the staged one when it is not yet (a gallery made by `index build`), so
    that compare, a roll back and replicas elsewhere can load it: from ``path`` if it holds them."""
    from index import registry
    from model.weights import read_meta

    active = store.get_meta("weights_hash")
    found = registry.entry(store, active) if active else None
    if found is None or found.file_sha256 is not None:
        return
    if path.is_file() and read_meta(path).content_hash == active:
        if registry.ensure_file(store, active, path):
            print(f"stored the active weights {active[:12]} from {path} too")
    else:
        print(f"the active weights {active[:12]} have no file in the store and {path} holds others: give --active-weights FILE "
              "(compare and a roll back need it)", file=sys.stderr)  # fmt: skip


def _reembed(args: argparse.Namespace) -> int:
    from index import registry

    store = _store(args)
    try:
        return _reembed_now(store, _predictor(store, registry.resolve(store, args.hash).hash, args.index), args)
    finally:
        store.close()


def _compare(args: argparse.Namespace) -> int:
    from index import registry
    from index.lifecycle import compare

    store = _store(args)
    try:
        entries = registry.listing(store)
        active = next((e for e in entries if e.state == "active"), None)
        if args.hash:
            other = registry.resolve(store, args.hash)
        else:
            staged = [e for e in entries if e.state == "staged"]
            if len(staged) != 1:
                raise registry.RegistryError(f"{len(staged)} weights are staged; name the one to compare")
            other = staged[0]
        if active is None:
            raise registry.RegistryError("the gallery has no active weights yet")
        result = compare(store, _predictor(store, active.hash, args.index), _predictor(store, other.hash, args.index), sample=args.sample)
    finally:
        store.close()
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(format_comparison(result))
    return 0


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def format_comparison(r: dict[str, Any]) -> str:
    """The comparison as a table (``alexnet model compare``, and the README)."""
    a, s = r["active"], r["staged"]
    lines = [f"{r['images']} images; top-1 on {r['sampled']} of them, neighbours of {r.get('queries', 0)}",
             f"{'':<24} {'active ' + a['weights'][:12]:>20} {'staged ' + s['weights'][:12]:>20}"]  # fmt: skip
    for name, key in (("accuracy (labelled)", "accuracy"), ("precision@10 by label", "p@10"), ("mAP by label", "map")):
        lines.append(f"{name:<24} {_pct(a[key]):>20} {_pct(s[key]):>20}")
    lines.append(f"{'forward, batch 1':<24} {a['forward_ms_batch1']:>17} ms {s['forward_ms_batch1']:>17} ms")
    lines.append(f"top-1 agreement: {_pct(r['top1_agreement'])}; 10 nearest neighbours in common: {_pct(r['neighbour_overlap@10'])}")
    return "\n".join(lines)


def _step(args: argparse.Namespace, step: Callable[[Any, str], T]) -> tuple[str, T]:
    """(the full hash, what ``step`` returned) of a registry step on the weights ``args.hash`` names."""
    from index import registry

    store = _store(args)
    try:
        target = registry.resolve(store, args.hash)
        return target.hash, step(store, target.hash)
    finally:
        store.close()


def _activate(args: argparse.Namespace) -> int:
    from index import registry

    active, previous = _step(args, registry.activate)
    print(f"active: {active[:12]} (was {previous[:12]}); running services switch within their follow interval. "
          f"Roll back with `alexnet model activate {previous[:12]}`")  # fmt: skip
    return 0


def _retire(args: argparse.Namespace) -> int:
    from index import registry

    retired, dropped = _step(args, registry.retire)
    for leftover in (args.index / f"index-{retired[:16]}.faiss", args.index / "weights" / f"{retired}.safetensors",
                     args.index / f".reembed-{retired[:16]}.lock", args.index / f".upload-{retired[:16]}.lock"):  # fmt: skip
        leftover.unlink(missing_ok=True)  # this machine's snapshot and copy of the file (other replicas keep theirs)
    print(f"retired {retired[:12]}: {dropped} vectors and its file dropped")
    return 0


def build_parser(index_dir: Path, store_url: str | None, active_weights: Path) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alexnet model", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--index", type=Path, default=index_dir, help=f"the gallery's index directory (default: {index_dir})")
        p.add_argument("--store-url", default=store_url, help="postgresql://... for a gallery in PostgreSQL (default: ALEXNET_STORE_URL)")

    def reembedding(p: argparse.ArgumentParser) -> None:
        p.add_argument("--batch-size", type=int, default=64, help="images per forward pass and per transaction")
        p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("list", help="every weights of the gallery, its state and its vectors")
    common(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_list)
    p = sub.add_parser("stage", help="register new weights, store the file for every replica, and re-embed the gallery")
    p.add_argument("weights", type=Path)
    common(p)
    reembedding(p)
    p.add_argument("--no-reembed", action="store_true", help="only register; `alexnet model reembed` later")
    p.add_argument("--active-weights", type=Path, default=active_weights,
                   help=f"the active weights' file, stored if the store has none (default: {active_weights})")  # fmt: skip
    p.set_defaults(func=_stage)
    p = sub.add_parser("reembed", help="compute the missing vectors of staged weights (resumes where a killed run stopped)")
    p.add_argument("hash", help="the weights' hash, or its first 6+ characters")
    common(p)
    reembedding(p)
    p.set_defaults(func=_reembed)
    p = sub.add_parser("compare", help="active against staged: agreement, accuracy, precision@10, mAP, neighbours, latency")
    p.add_argument("hash", nargs="?", help="the staged weights (default: the only staged ones)")
    common(p)
    p.add_argument("--sample", type=int, default=500, help="images classified by both")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_compare)
    p = sub.add_parser("activate", help="switch every replica to these weights (or back to retired ones)")
    p.add_argument("hash")
    common(p)
    p.set_defaults(func=_activate)
    p = sub.add_parser("retire", help="drop staged or retired weights: their vectors and file")
    p.add_argument("hash")
    common(p)
    p.set_defaults(func=_retire)
    return parser


def main(argv: list[str], settings: CommandSettings | None = None) -> int:
    settings = settings or read_settings()
    store_url = settings.store_url.get_secret_value() if settings.store_url else None
    args = build_parser(Path(settings.index_dir), store_url, Path(settings.weights)).parse_args(argv[1:])
    return int(args.func(args))
