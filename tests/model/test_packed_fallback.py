"""model/packed.py on a PyTorch whose private oneDNN ops are missing or changed: nn.Linear, a warning, the same outputs."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

import model.packed
from model.predictor import Predictor


def _same_outputs(a: Predictor, b: Predictor) -> None:
    size = a.meta.preset.crop_size
    x = torch.randint(0, 256, (3, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for out_a, out_b in zip(a.forward(x), b.forward(x), strict=True):
        torch.testing.assert_close(out_a, out_b, rtol=1e-4, atol=1e-5)


def test_missing_kernels_leave_nn_linear_and_say_so(
    small_weights: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(model.packed, "packing_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger="model.packed"):
        fallback = Predictor(small_weights)
    assert fallback.packed_layers == 0 and "lacks oneDNN's packed linear kernels" in caplog.text
    _same_outputs(fallback, Predictor(small_weights, pack=False))


def test_kernels_that_fail_or_disagree_leave_nn_linear(
    small_weights: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def changed_signature(self: object, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("_linear_pointwise() expected 5 arguments")  # as a newer release might

    monkeypatch.setattr(model.packed.PackedLinear, "forward", changed_signature)
    with caplog.at_level(logging.WARNING, logger="model.packed"):
        failing = Predictor(small_weights)
    assert failing.packed_layers == 0 and "expected 5 arguments" in caplog.text
    _same_outputs(failing, Predictor(small_weights, pack=False))

    monkeypatch.setattr(model.packed.PackedLinear, "forward", lambda self, x: torch.zeros(x.shape[0], self.out_features))
    assert Predictor(small_weights).packed_layers == 0  # runs, but wrong: not used
