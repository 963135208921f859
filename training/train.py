"""The training loop: reads top to bottom, ``Trainer`` (``train_one_epoch``, ``fit``), ``train``. Its parts live
beside it, one theme each: evaluation during training (``evaluate``), bf16 (``precision``), the weight average
(``averaging``), stopping on a signal (``signals``), checkpoints, schedule, metrics, parallelism.

Checkpoints are a dict with fixed keys, written atomically at the end of every epoch (and on
Ctrl-C) by rank 0; ``--resume`` continues from the exact step, with the same data order,
augmentation, dropout masks, optimiser state and learning-rate schedule.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.alexnet import AlexNet, AlexNetConfig, pool5_size
from model.console import progress as progress_bar
from model.preprocess import Preset
from training import parallel
from training.augment import augment_batch, pca_stats
from training.averaging import WeightAverage
from training.checkpoint import load_checkpoint, save_checkpoint
from training.data import Source, open_source
from training.evaluate import evaluate
from training.losses import FC7Tap, supcon_loss
from training.metrics import MetricsLog
from training.precision import autocast
from training.recipes import TrainConfig
from training.schedule import Schedule, make_optimizer, set_lr
from training.signals import StopOnSignal

log = logging.getLogger(__name__)

__all__ = ["Trainer", "train"]

CHECKPOINT = "checkpoint.pt"


def _batch_seed(seed: int, epoch: int, batch: int) -> int:
    return (seed * 1_000_003 + epoch * 10_007 + batch) % (2**63)


class Trainer:
    """Holds the model, optimiser, schedule and counters of one training run."""

    def __init__(self, cfg: TrainConfig, *, progress: bool = True) -> None:
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.dist = parallel.setup(cfg.devices)
        self.device = self.dist.device
        self.is_main = self.dist.rank == 0
        self.progress_bar = progress and self.is_main
        torch.manual_seed(cfg.seed)

        self.train_src = open_source(
            cfg.data, split="train", data_dir=cfg.data_dir, size=_resize_for(cfg), workers=cfg.workers, holdout=cfg.holdout
        )
        if cfg.max_train_images:
            self.train_src = self.train_src.subset(cfg.max_train_images).at_size(_resize_for(cfg))  # type: ignore[attr-defined]
        self.val_src = open_source(
            cfg.data,
            split="val",
            data_dir=cfg.data_dir,
            size=_resize_for(cfg),
            class_names=self.train_src.class_names,
            workers=cfg.workers,
        )
        self.class_names = self.train_src.class_names
        pixels = self.train_src.pixel_sample()  # one sample of the training set for all colour statistics
        eigval, eigvec = pca_stats(pixels)
        mean, std = _channel_stats(pixels)
        self.preset = Preset(
            crop_size=cfg.crop_size,
            resize_size=_resize_for(cfg),
            mean=mean,
            std=std,
            pca_eigval=tuple(eigval.tolist()),
            pca_eigvec=tuple(map(tuple, eigvec.tolist())),
        )

        self.model = AlexNet(AlexNetConfig(num_classes=len(self.class_names), dropout=cfg.dropout, bias_init=cfg.bias_init))
        self.model.place(self.dist.tower_devices)
        side = pool5_size(cfg.crop_size)
        if cfg.fold_fc6 and side < 6 and 6 % side == 0:
            self.model.fold_fc6((side, side))
        if cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.optimizer = make_optimizer(cfg, self.model)
        self.net: nn.Module = parallel.wrap(self.model, self.dist)
        self.ema = WeightAverage(self.model, cfg.ema) if cfg.ema else None
        self.fc7 = FC7Tap(self.model) if cfg.supcon else None
        # batch_size is per process; a step takes one global batch. Under DDP a last, smaller global batch is
        # left out, so that every process has a full share at every step.
        self.global_batch = cfg.batch_size * self.dist.world_size
        rounding = math.floor if self.dist.distributed else math.ceil
        steps_per_epoch = max(1, rounding(len(self.train_src) / self.global_batch))
        total = steps_per_epoch * cfg.epochs
        if cfg.max_steps:
            total = min(total, cfg.max_steps)
        self.steps_per_epoch, self.total_steps = steps_per_epoch, total
        self.schedule = Schedule(cfg, total)
        self.epoch, self.step, self.batch_in_epoch, self.elapsed = 0, 0, 0, 0.0
        self.history: list[dict[str, Any]] = []
        self.metrics = MetricsLog(self.out) if self.is_main else None
        self._interrupted = False
        self.stop_at_step: int | None = None  # behave as if Ctrl-C came after this step (tests, trials)

    # -- checkpoints -------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "fc6_folded": list(self.model.fc6_folded or ()),  # the model's fc6 shape (export unfolds it)
            **({"ema": self.ema.model.state_dict()} if self.ema else {}),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "batch_in_epoch": self.batch_in_epoch,
            "elapsed": self.elapsed,
            "config": asdict(self.cfg),
            "class_names": list(self.class_names),
            "preset": self.preset.to_dict(),
            "history": self.history,
            "rng": torch.get_rng_state(),
        }

    def save(self) -> None:
        if self.is_main:
            save_checkpoint(self.state(), self.out / CHECKPOINT)

    def report_rank(self) -> None:
        """``OUT/ranks/rank-R.json``: what this process did (steps, images it read, a checksum of its parameters),
        so that a data-parallel run can be checked: every rank's parameters must be identical."""
        digest = hashlib.sha256()
        for _, p in sorted(self.model.state_dict().items()):
            digest.update(p.detach().cpu().contiguous().numpy().tobytes())
        report = {
            "rank": self.dist.rank,
            "world_size": self.dist.world_size,
            "step": self.step,
            "epoch": self.epoch,
            "interrupted": self._interrupted,
            "images_loaded": self.train_src.loaded,
            "parameters_sha256": digest.hexdigest(),
        }
        path = self.out / "ranks" / f"rank-{self.dist.rank}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2))

    def resume(self, path: Path) -> None:
        ck = load_checkpoint(path)
        saved = TrainConfig.from_dict(ck["config"])
        for key in ("crop_size", "data", "batch_size", "seed"):
            if getattr(saved, key) != getattr(self.cfg, key):
                raise ValueError(
                    f"{path}: checkpoint was trained with {key}={getattr(saved, key)!r}, this run has {getattr(self.cfg, key)!r}"
                )
        if tuple(ck.get("fc6_folded") or ()) != (self.model.fc6_folded or ()):
            raise ValueError(
                f"{path}: checkpoint holds fc6 {'folded' if ck.get('fc6_folded') else 'unfolded'}, this run "
                f"{'folds' if self.model.fc6_folded else 'does not fold'} it; resume with the --fold-fc6 setting the run began with"
            )
        if tuple(ck["class_names"]) != self.class_names:
            raise ValueError(f"{path}: checkpoint classes {ck['class_names'][:5]}... differ from the data set's")
        self.model.load_state_dict(ck["model"])
        if self.ema is not None:
            self.ema.model.load_state_dict(ck.get("ema", ck["model"]))
        self.optimizer.load_state_dict(ck["optimizer"])
        self.schedule.load_state_dict(ck["schedule"])
        self.epoch, self.step, self.batch_in_epoch = ck["epoch"], ck["step"], ck["batch_in_epoch"]
        self.elapsed, self.history = ck["elapsed"], ck["history"]
        self.preset = Preset.from_dict(ck["preset"])
        torch.set_rng_state(ck["rng"])
        log.info("resumed from %s at epoch %d, step %d", path, self.epoch, self.step)

    # -- the loop --------------------------------------------------------------------------

    def _epoch_batches(self) -> Iterator[tuple[int, Tensor, Tensor]]:
        """This process's share of each global batch; the order is the same on every process, and resuming
        inside an epoch starts after the batches already done without reading them."""
        g = torch.Generator().manual_seed(_batch_seed(self.cfg.seed, self.epoch, -1))
        shares = self.train_src.batches(
            self.global_batch,
            shuffle=True,
            generator=g,
            shard=(self.dist.rank, self.dist.world_size),
            drop_last=self.dist.distributed,
            skip=self.batch_in_epoch,
        )
        for i, (images, labels) in enumerate(shares, start=self.batch_in_epoch):
            yield i, images, labels

    def train_one_epoch(self) -> dict[str, float]:
        cfg, model = self.cfg, self.net
        model.train()
        seen = loss_sum = correct = 0.0
        start = time.perf_counter()
        base_elapsed = self.elapsed
        bar = progress_bar(
            total=self.steps_per_epoch,
            initial=self.batch_in_epoch,
            desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
            unit="step",
            disable=not self.progress_bar,
        )
        for i, images, labels in self._epoch_batches():
            if self.stop_at_step is not None and self.step >= self.stop_at_step:
                self._interrupted = True
            # one decision for every process: rank 0's clock (the schedule and the time budget) and a stop
            # asked of any rank (Ctrl-C), so that all ranks take the same learning rate and stop at the same step
            self.elapsed, self._interrupted = parallel.agree(self.dist, base_elapsed + time.perf_counter() - start, self._interrupted)
            progress = self.schedule.progress(self.step, self.elapsed)
            if progress >= 1.0 or self._interrupted:
                break
            set_lr(self.optimizer, self.schedule.lr(self.step, progress))
            g = torch.Generator().manual_seed(_batch_seed(cfg.seed, self.epoch, i))
            x = augment_batch(images.to(self.device), self.preset, pca_std=cfg.pca_std, flip=cfg.flip, generator=g)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(cfg, self.device):
                logits = model(x).float()
            y = labels.to(logits.device)
            loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
            if self.fc7 is not None:
                loss = loss + cfg.supcon * supcon_loss(self.fc7.features(), y, cfg.supcon_temperature)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {float(loss)} at step {self.step}; lower the learning rate")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            if self.ema is not None:
                self.ema.update(self.model, self.step)
            self.step += 1
            self.batch_in_epoch = i + 1
            n = len(y)
            seen += n
            loss_sum += loss.item() * n
            correct += int((logits.argmax(1) == y).sum())
            bar.update(1)
            bar.set_postfix(
                loss=f"{loss_sum / seen:.3f}",
                img_s=f"{seen * self.dist.world_size / (time.perf_counter() - start):.0f}",
                lr=f"{self.optimizer.param_groups[0]['lr']:.2g}",
            )
        bar.close()
        wall = time.perf_counter() - start
        self.elapsed = parallel.agree(self.dist, base_elapsed + wall, self._interrupted)[0]
        return {
            "train_loss": loss_sum / max(seen, 1),
            "train_top1_err": 1 - correct / max(seen, 1),
            "images_per_s": seen * self.dist.world_size / max(wall, 1e-9),
            "train_images": seen,
        }

    def finished(self) -> bool:
        return self.schedule.progress(self.step, self.elapsed) >= 1.0 or self.epoch >= self.cfg.epochs

    def held_out_source(self) -> Source | None:
        """The training images the recipe kept out of training (``TrainConfig.holdout``), or None."""
        cfg = self.cfg
        if not cfg.holdout:
            return None
        return open_source(
            cfg.data, split="holdout", data_dir=cfg.data_dir, size=_resize_for(cfg), class_names=self.class_names,
            workers=cfg.workers, holdout=cfg.holdout,
        )  # fmt: skip

    def fit(self) -> list[dict[str, Any]]:
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            self.cfg.save(self.out / "config.json")
        if self.metrics:  # the files hold this run only: a new run's rows, or a resumed run's rows up to its checkpoint
            self.metrics.restart(self.history)
        with StopOnSignal(self):
            while not self.finished() and not self._interrupted:
                stats = self.train_one_epoch()
                epoch_done = self.batch_in_epoch >= self.steps_per_epoch
                if self._interrupted:
                    break
                val = evaluate(self.ema.model if self.ema else self.net, self.val_src, self.preset, self.cfg, self.device)
                self.schedule.epoch_end(val["top1_err"])
                row = {
                    "epoch": self.epoch + (1 if epoch_done else self.batch_in_epoch / self.steps_per_epoch),
                    "step": self.step,
                    "minutes": self.elapsed / 60,
                    "lr": self.optimizer.param_groups[0]["lr"],
                    **stats,
                    "val_loss": val["loss"],
                    "val_top1_err": val["top1_err"],
                    "val_top5_err": val["top5_err"],
                }
                self.history.append(row)
                if epoch_done:
                    self.epoch += 1
                    self.batch_in_epoch = 0
                if self.metrics:
                    self.metrics.append(row)
                    log.info(
                        "epoch %.2f: train loss %.4f, val top-1 error %.2f%%, top-5 %.2f%%, %.0f img/s, %.1f min",
                        row["epoch"],
                        row["train_loss"],
                        100 * row["val_top1_err"],
                        100 * row["val_top5_err"],
                        row["images_per_s"],
                        row["minutes"],
                    )
                self.save()
        if self._interrupted:
            self.save()
            log.warning("interrupted: checkpoint saved to %s; continue with --resume", self.out / CHECKPOINT)
        return self.history


def _resize_for(cfg: TrainConfig) -> int:
    return cfg.resize_size or Preset.for_crop(cfg.crop_size).resize_size


def _channel_stats(pixels: Tensor) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    mean = pixels.mean(0).tolist()
    std = pixels.std(0).clamp_min(1e-3).tolist()
    return (mean[0], mean[1], mean[2]), (std[0], std[1], std[2])


def train(cfg: TrainConfig, *, resume: bool = False, export: bool = True, progress: bool = True) -> Trainer:
    """Train with ``cfg``; with ``export``, write ``OUT/model.safetensors`` evaluated on the val/test split."""
    trainer = Trainer(cfg, progress=progress)
    ck = Path(cfg.out) / CHECKPOINT
    if resume:
        if not ck.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {ck}")
        trainer.resume(ck)
    trainer.fit()
    if trainer.dist.distributed:
        trainer.report_rank()
    if export and trainer.is_main and not trainer._interrupted:
        from training.export import export_checkpoint

        export_checkpoint(
            ck,
            Path(cfg.out) / "model.safetensors",
            evaluate_on=trainer.val_src,
            ten_crop=cfg.eval_ten_crop,
            calibrate_with=trainer.train_src,
            held_out=trainer.held_out_source(),
        )
        if trainer.metrics:
            trainer.metrics.plot()
    parallel.teardown(trainer.dist)
    return trainer
