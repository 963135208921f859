"""Training checkpoints: a dict with fixed keys, written atomically, read with ``weights_only=True``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from model.files import atomic_write

__all__ = ["REQUIRED_KEYS", "load_checkpoint", "save_checkpoint"]

REQUIRED_KEYS = ("model", "optimizer", "schedule", "epoch", "step", "config", "class_names", "preset", "history", "rng")


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Streamed into a temp file, fsynced and renamed, the directory fsynced (``model.files.atomic_write``): a crash
    leaves the old or the new file, never half of one."""
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Tensors and plain Python values only: no code in the file can run."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file
        raise ValueError(f"{path}: not a readable training checkpoint ({type(e).__name__}: {e})") from e
    missing = [k for k in REQUIRED_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise ValueError(f"{path}: not a training checkpoint of this project (missing {missing})")
    return dict(state)
