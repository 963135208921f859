"""GET /model/kernels.png: the paper's Figure 3 drawn from the served weights."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from app.figures import SCALE, kernel_cell
from model.weights import load_weights


def test_kernels_figure_shows_each_towers_conv1_kernels(client: TestClient, small_weights: Path) -> None:
    r = client.get("/model/kernels.png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    figure = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"))
    net, _ = load_weights(small_weights)
    towers = [t.conv1.conv.weight.detach() for t in net.tower_pair]
    per_tower, _, size, _ = towers[0].shape
    assert per_tower == 48 and size == 11  # the paper's conv1: 2 x 48 kernels of 11 x 11 x 3
    for t, i in ((0, 0), (0, 47), (1, 5)):
        k = towers[t][i].permute(1, 2, 0).numpy()
        expected = np.round(255 * (k - k.min()) / (k.max() - k.min()))
        x, y = kernel_cell(t, i, per_tower, size)
        shown = figure[y : y + size * SCALE : SCALE, x : x + size * SCALE : SCALE].astype(float)  # one pixel per weight
        np.testing.assert_allclose(shown, expected, atol=1)
    assert client.get("/model/kernels.png").content == r.content  # drawn once per weights file
