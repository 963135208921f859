"""The supervised contrastive term against its formula, and its place in a training run."""

import math
from pathlib import Path

import pytest
import torch

from training.losses import FC7Tap, supcon_loss
from training.recipes import recipe
from training.train import Trainer


def _literal(z: torch.Tensor, labels: list[int], t: float) -> float:
    """Khosla et al. 2020, equation 2, one anchor and one positive at a time."""
    z = torch.nn.functional.normalize(z.double(), dim=1)
    total, anchors = 0.0, 0
    for i in range(len(z)):
        others = [a for a in range(len(z)) if a != i]
        positives = [p for p in others if labels[p] == labels[i]]
        if not positives:
            continue
        denom = sum(math.exp(float(z[i] @ z[a]) / t) for a in others)
        total += -sum(math.log(math.exp(float(z[i] @ z[p]) / t) / denom) for p in positives) / len(positives)
        anchors += 1
    return total / anchors


def test_supcon_matches_the_formula_by_hand() -> None:
    # three 2-D vectors worked by hand: a and b share label 0, c is alone (it is no anchor, but it is in the denominators)
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    t = 0.5
    s = 1 / math.sqrt(2)  # cos(a, c) = cos(b, c)
    # anchor a: positive b (cos 0), others b and c; anchor b: the same by symmetry
    by_hand = -math.log(math.exp(0 / t) / (math.exp(0 / t) + math.exp(s / t)))
    assert supcon_loss(z, torch.tensor([0, 0, 1]), t).item() == pytest.approx(by_hand, rel=1e-6)


def test_supcon_matches_the_literal_formula_and_rewards_grouping() -> None:
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(12, 6, generator=gen)
    labels = [0, 1, 2, 0, 1, 2, 0, 1, 2, 3, 0, 1]  # label 3 has one image: not an anchor
    got = supcon_loss(z * 7.0, torch.tensor(labels), 0.2).item()  # the scale of the features does not matter
    assert got == pytest.approx(_literal(z, labels, 0.2), rel=1e-5)
    centres = torch.randn(4, 6, generator=gen) * 5
    grouped = centres[torch.tensor(labels)] + 0.1 * torch.randn(12, 6, generator=gen)
    assert supcon_loss(grouped, torch.tensor(labels), 0.2) < supcon_loss(z, torch.tensor(labels), 0.2)


def test_supcon_without_pairs_is_zero_and_bad_shapes_are_refused() -> None:
    z = torch.randn(3, 4, requires_grad=True)
    loss = supcon_loss(z, torch.tensor([0, 1, 2]))
    assert loss.item() == 0.0
    loss.backward()
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        supcon_loss(torch.randn(3, 4), torch.tensor([0, 1]))


def test_the_tap_reads_the_fc7_that_embed_returns_and_training_uses_the_term(tmp_path: Path) -> None:
    trainer = Trainer(recipe("tiny", out=str(tmp_path), supcon=0.5, max_steps=2), progress=False)
    assert isinstance(trainer.fc7, FC7Tap)
    model = trainer.model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model.embed(x)
        model(x)
        torch.testing.assert_close(trainer.fc7.features(), expected)
    trainer.fit()
    assert trainer.step == 2 and trainer.history[-1]["train_loss"] > 0
