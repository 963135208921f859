"""Retrieval metrics against cases worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from index.quality import label_metrics, precision_at_k


def test_label_metrics_match_a_hand_computed_case() -> None:
    # four items on a circle at 0, 10, 100 and 110 degrees: 0's ranking of the others is 10, 100, 110
    angles = np.radians([0, 10, 100, 110])
    x = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    labels = np.array(["a", "b", "a", "b"])
    m = label_metrics(x, labels, ks=(1, 2, 3, 4))
    # rankings by angle: 0 -> [1, 2, 3]: (b, a, b); 1 -> [0, 2, 3]: (a, a, b); 2 -> [3, 1, 0]: (b, b, a); 3 -> [2, 1, 0]: (a, b, a)
    assert m["p@1"] == pytest.approx(0 / 4)
    assert m["p@2"] == pytest.approx((1 + 0 + 0 + 1) / 8)
    assert m["p@3"] == pytest.approx(4 / 12)
    assert "p@4" not in m  # only three others
    # one relevant item each, found at ranks 2, 3, 3 and 2: AP = 1/2, 1/3, 1/3, 1/2
    assert m["map"] == pytest.approx((1 / 2 + 1 / 3 + 1 / 3 + 1 / 2) / 4)
    assert m["p@1"] == precision_at_k(x, labels, k=1)


def test_map_averages_precision_over_every_relevant_rank_and_skips_lone_labels() -> None:
    x = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.8, 0.25], [-1.0, 0.1]])
    labels = np.array(["a", "b", "a", "a", "z"])  # "z" has no other member: left out of mAP
    m = label_metrics(x, labels, ks=(1,))
    # 0 -> [1, 3, 2, 4]: relevant at ranks 2, 3: (1/2 + 2/3) / 2; 2 -> [3, 1, 4, 0]: ranks 1, 4: (1 + 2/4) / 2
    # 3 -> [1, 0, 2, 4]: ranks 2, 3: (1/2 + 2/3) / 2; 1 ("b") has no other "b": left out too
    expected = ((1 / 2 + 2 / 3) / 2 + (1 + 2 / 4) / 2 + (1 / 2 + 2 / 3) / 2) / 3
    assert m["map"] == pytest.approx(expected)
    assert m["p@1"] == pytest.approx((0 + 0 + 1 + 0 + 0) / 5)


def test_chunks_do_not_change_the_answer() -> None:
    rng = np.random.default_rng(0)
    x, labels = rng.normal(size=(300, 8)), rng.integers(0, 4, 300)
    assert label_metrics(x, labels, chunk=7) == pytest.approx(label_metrics(x, labels, chunk=1000))
