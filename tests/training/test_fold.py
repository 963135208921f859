"""Training fc6 in folded form follows the same path as training the paper's fc6, and exports as the paper's fc6."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from model.alexnet import FoldedFc6, alexnet
from model.weights import load_weights
from training.checkpoint import load_checkpoint
from training.recipes import recipe
from training.schedule import make_optimizer, set_lr
from training.train import Trainer, train


def _folded_sum(net: torch.nn.Module, tower: int) -> torch.Tensor:
    """fc6's weights as the 64 px input sees them: the 36 copies of each pool5 value summed."""
    w = net.towers[tower].fc6.weight.detach()
    return w if w.shape[1] == 256 else w.view(2048, 256, 36).sum(-1)


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_folded_training_takes_the_same_steps_as_the_paper_fc6(optimizer: str) -> None:
    """Six optimiser steps of each model from the same start: the folded group's learning rate times 36 and weight
    decay over 36 (make_optimizer) must reproduce the sum of the 36 copies' updates, and so every output."""
    cfg = recipe("tiny", optimizer=optimizer, lr=2e-3 if optimizer == "adamw" else 0.05, weight_decay=0.05)
    torch.manual_seed(0)
    full = alexnet(num_classes=4, dropout=0.0, bias_init=0.1)
    folded = alexnet(num_classes=4, dropout=0.0, bias_init=0.1)
    folded.load_state_dict(full.state_dict())
    folded.fold_fc6((1, 1))
    assert isinstance(folded.towers[0].fc6, FoldedFc6) and folded.towers[0].fc6.weight.shape == (2048, 256)
    start = _folded_sum(full, 0).clone()
    opts = [make_optimizer(cfg, m) for m in (full, folded)]
    assert [g["lr_scale"] for g in opts[1].param_groups][-1] == 36.0
    gen = torch.Generator().manual_seed(1)
    for step in range(6):
        x, y = torch.randn(8, 3, 64, 64, generator=gen), torch.randint(0, 4, (8,), generator=gen)
        for model, opt in zip((full, folded), opts, strict=True):
            set_lr(opt, cfg.lr * (step + 1) / 6)
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    moved = (_folded_sum(full, 0) - start).abs().max()
    assert moved > 5e-3  # training moved fc6 by 50x the tolerance below (else the comparison says nothing)
    for t in (0, 1):
        torch.testing.assert_close(_folded_sum(folded, t), _folded_sum(full, t), rtol=1e-3, atol=1e-4)
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(folded.eval()(x), full.eval()(x), rtol=1e-3, atol=1e-4)


def test_fold_then_unfold_keeps_the_function_and_the_paper_shape() -> None:
    torch.manual_seed(0)
    net = alexnet(num_classes=5).eval()
    x64, x100 = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 100, 100)  # pool5 1x1 and 2x2
    with torch.no_grad():
        before64, before100 = net(x64), net(x100)
        net.fold_fc6((2, 2))
        torch.testing.assert_close(net(x100), before100, rtol=1e-4, atol=1e-5)
        with pytest.raises(ValueError, match="folded for a 2x2 pool5 map"):
            net(x64)
        net.unfold_fc6().fold_fc6((1, 1))
        assert net.fc6_folded == (1, 1) and net.towers[1].fc6.copies == 36
        torch.testing.assert_close(net(x64), before64, rtol=1e-4, atol=1e-5)
        net.unfold_fc6()
        assert net.fc6_folded is None and net.towers[0].fc6.weight.shape == (2048, 9216)
        torch.testing.assert_close(net(x64), before64, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="divide 6"):
        net.fold_fc6((4, 4))


def test_a_folded_run_exports_the_paper_fc6_and_refuses_a_mismatched_resume(tmp_path: Path) -> None:
    cfg = recipe("tiny", out=str(tmp_path), max_steps=3)
    trainer = train(cfg, progress=False)
    assert trainer.model.fc6_folded == (1, 1)
    ck = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ck["fc6_folded"] == [1, 1] and ck["model"]["towers.0.fc6.weight"].shape == (2048, 256)
    exported, _ = load_weights(tmp_path / "model.safetensors")
    assert exported.towers[0].fc6.weight.shape == (2048, 9216)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(exported.eval()(x), trainer.model.eval()(x), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="holds fc6 folded"):
        Trainer(recipe("tiny", out=str(tmp_path), fold_fc6=False), progress=False).resume(tmp_path / "checkpoint.pt")
