"""Training checkpoints: a dict with fixed keys, written atomically, read with ``weights_only=True``."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["REQUIRED_KEYS", "load_checkpoint", "save_checkpoint"]

REQUIRED_KEYS = ("model", "optimizer", "schedule", "epoch", "step", "config", "class_names", "preset", "history", "rng")


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Temp file in the same directory, fsync, rename: a crash leaves the old or the new file, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
