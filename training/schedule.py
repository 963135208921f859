"""The optimiser and the learning-rate schedule of a training run."""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import nn

from model.alexnet import FoldedFc6
from training.recipes import TrainConfig

log = logging.getLogger(__name__)

__all__ = ["Schedule", "make_optimizer", "set_lr"]


class Schedule:
    """Learning rate: linear warm-up, then cosine/linear decay to zero, or the paper's /10 on plateau.

    ``progress`` in [0, 1] is the larger of steps done / steps planned and, with a time
    budget, minutes spent / minutes allowed; training stops when it reaches 1.
    """

    def __init__(self, cfg: TrainConfig, total_steps: int) -> None:
        self.cfg, self.total_steps = cfg, max(1, total_steps)
        self.plateau_scale = 1.0
        self.best_err = math.inf
        self.bad_epochs = 0

    def progress(self, step: int, elapsed_s: float) -> float:
        p = step / self.total_steps
        if self.cfg.minutes:
            p = max(p, elapsed_s / (self.cfg.minutes * 60))
        return min(1.0, p)

    def lr(self, step: int, progress: float) -> float:
        c = self.cfg
        if c.warmup_steps and step < c.warmup_steps:
            return c.lr * (step + 1) / c.warmup_steps
        if c.schedule == "plateau":
            return c.lr * self.plateau_scale
        if c.schedule == "cosine":
            return c.lr * 0.5 * (1 + math.cos(math.pi * progress))
        if c.schedule == "linear":
            return c.lr * (1 - progress)
        raise ValueError(f"unknown schedule {c.schedule!r} (plateau, cosine, linear)")

    def epoch_end(self, val_err: float) -> None:
        """The paper's rule: divide by 10 when validation error stops improving."""
        if val_err < self.best_err - 1e-4:
            self.best_err, self.bad_epochs = val_err, 0
            return
        self.bad_epochs += 1
        if self.cfg.schedule == "plateau" and self.bad_epochs >= self.cfg.plateau_patience:
            self.plateau_scale /= 10
            self.bad_epochs = 0
            log.info("validation error stopped improving: learning rate now %.2g", self.cfg.lr * self.plateau_scale)

    def state_dict(self) -> dict[str, float]:
        return {"plateau_scale": self.plateau_scale, "best_err": self.best_err, "bad_epochs": float(self.bad_epochs)}

    def load_state_dict(self, d: dict[str, float]) -> None:
        self.plateau_scale, self.best_err, self.bad_epochs = d["plateau_scale"], d["best_err"], int(d["bad_epochs"])


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The recipe's optimiser. Each parameter group has an ``lr_scale``: the training loop sets a group's
    learning rate to the schedule's times that. A folded fc6 (``AlexNet.fold_fc6``) stands for ``copies``
    weights that would each take the same update, so its group moves ``copies`` times as far, with the weight
    decay divided by ``copies`` so that the decay's own step (learning rate x decay) stays the same."""
    folded = {id(m.weight): m.copies for m in model.modules() if isinstance(m, FoldedFc6)}
    groups: list[dict[str, Any]] = []
    for copies in sorted(set(folded.values())):
        params = [p for p in model.parameters() if folded.get(id(p)) == copies]
        groups.append({"params": params, "weight_decay": cfg.weight_decay / copies, "lr_scale": float(copies)})
    # SGD decays every parameter (section 5); AdamW decays weights only (decaying the constant bias
    # initialisation only slows the start)
    decay = [p for p in model.parameters() if id(p) not in folded and (p.dim() > 1 or cfg.optimizer == "sgd")]
    no_decay = [p for p in model.parameters() if id(p) not in folded and p.dim() <= 1 and cfg.optimizer != "sgd"]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay, "lr_scale": 1.0},
        *([{"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0}] if no_decay else []),
        *groups,
    ]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    if cfg.optimizer == "adamw":
        # fused: one kernel for all parameters; the foreach version spends a third of a CPU training step in the optimiser
        return torch.optim.AdamW(groups, lr=cfg.lr, fused=True)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r} (sgd, adamw)")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """The schedule's learning rate, times each group's ``lr_scale``."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
