"""Per-epoch metrics as CSV and JSON lines, and a PNG plot of the curves."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

__all__ = ["MetricsLog", "plot_history"]

COLUMNS = [
    "epoch",
    "step",
    "minutes",
    "lr",
    "train_loss",
    "train_top1_err",
    "val_loss",
    "val_top1_err",
    "val_top5_err",
    "images_per_s",
    "train_images",
]


class MetricsLog:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.csv = out / "metrics.csv"
        self.jsonl = out / "metrics.jsonl"

    def restart(self, rows: list[dict[str, Any]]) -> None:
        """Start the files over with ``rows``: none for a new run (an earlier run's rows in the same directory
        go), the checkpoint's history for a resumed one (rows written after that checkpoint go)."""
        self.out.mkdir(parents=True, exist_ok=True)
        self.csv.unlink(missing_ok=True)
        self.jsonl.unlink(missing_ok=True)
        for row in rows:
            self.append(row)

    def append(self, row: dict[str, Any]) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        new = not self.csv.exists()
        with self.csv.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)
        with self.jsonl.open("a") as f:
            f.write(json.dumps(row) + "\n")

    def rows(self) -> list[dict[str, Any]]:
        if not self.jsonl.exists():
            return []
        return [json.loads(line) for line in self.jsonl.read_text().splitlines() if line.strip()]

    def plot(self) -> Path:
        return plot_history(self.rows(), self.out / "curves.png")


def plot_history(rows: list[dict[str, Any]], path: Path) -> Path:
    """Loss and top-1/top-5 error against training minutes and epochs, train and validation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(11, 4))
    epochs = [r["epoch"] for r in rows]
    ax_loss.plot(epochs, [r["train_loss"] for r in rows], "o-", label="train (running; dropout, label smoothing)")
    ax_loss.plot(epochs, [r["val_loss"] for r in rows], "s-", label="validation")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy loss")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    minutes = [r["minutes"] for r in rows]
    ax_err.plot(minutes, [100 * r["train_top1_err"] for r in rows], "o-", label="train top-1 (augmented)")
    ax_err.plot(minutes, [100 * r["val_top1_err"] for r in rows], "s-", label="validation top-1")
    ax_err.plot(minutes, [100 * r["val_top5_err"] for r in rows], "^-", label="validation top-5")
    ax_err.set_xlabel("training minutes")
    ax_err.set_ylabel("error (%)")
    ax_err.legend()
    ax_err.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
