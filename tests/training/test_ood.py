"""The evaluation sets of the familiarity score (training/ood.py) and its table, on a small network whose score was
fitted on generated shapes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.testing import make_weights
from model.predictor import Predictor
from training.data import open_source
from training.ood import digits, evaluate_familiarity, format_table, generated, photo_crops


def test_the_sets_are_fixed_and_what_they_say() -> None:
    crops = photo_crops(n=20)
    assert len(crops) == 20 and all(im.mode == "RGB" and im.width == im.height and 28 <= im.width <= 300 for im in crops)
    assert [np.asarray(a).tobytes() for a in photo_crops(n=3)] == [np.asarray(a).tobytes() for a in crops[:3]]  # seeded
    d = digits()
    assert len(d) == 1797 and d[0].size == (28, 28) and d[0].mode == "L"
    made = generated(n=5)
    assert len(made) == 20  # noise, Gaussian noise, a pattern and a page of text, five times
    assert [np.asarray(a).tobytes() for a in generated(n=5)] == [np.asarray(a).tobytes() for a in made]


@pytest.mark.slow
def test_the_table_measures_the_score_against_every_set(tmp_path: Path) -> None:
    weights = tmp_path / "w.safetensors"
    make_weights(weights, familiar_with=256)
    predictor = Predictor(weights)
    shapes = open_source("generated:256", split="test", size=predictor.meta.preset.resize_size)  # other shapes, same kind
    result = evaluate_familiarity(predictor, shapes, progress=False)
    rows = {r["set"]: r for r in result["rows"]}
    assert list(rows) == ["in distribution (test split)", "photo crops", "digits", "textures, text and noise", "upside down (near case)"]
    assert rows["in distribution (test split)"]["images"] == 64 and rows["in distribution (test split)"]["auroc"] is None
    # photographs, digits and noise are nothing like noisy coloured squares, even to a random network's conv1
    assert rows["photo crops"]["auroc"] > 0.9 and rows["textures, text and noise"]["auroc"] > 0.9
    assert rows["in distribution (test split)"]["flagged"] < 0.25
    assert result["temperature"] > 0 and 0 <= result["ece_after"] <= 1
    assert "photo crops" in format_table(result)
