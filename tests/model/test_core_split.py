"""CoreSplit: the model leaves the decoders their cores only when decoding costs enough beside the forward pass, and
the process's thread count comes back after the block."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from model import predictor as pred
from model.predictor import CoreSplit


@pytest.fixture
def four_cores(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    monkeypatch.setattr(pred, "usable_cores", lambda: 4)
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    yield 4
    torch.set_num_threads(before)


def model(device: str = "cpu") -> Any:
    return SimpleNamespace(device=device)


def test_costly_decoding_gets_its_cores_back_after_the_block(four_cores: int) -> None:
    with CoreSplit(model(), busy=1) as split:
        split.decide(decode_core_s=0.001, forward_core_s=0.002)  # decoding half the forward's cost
        assert split.split and torch.get_num_threads() == 3
    assert torch.get_num_threads() == 4


def test_cheap_decoding_leaves_the_model_every_core(four_cores: int) -> None:
    with CoreSplit(model(), busy=1) as split:
        split.decide(decode_core_s=0.001, forward_core_s=0.02)  # a twentieth: it fits in the model's gaps
        assert not split.split and torch.get_num_threads() == 4


def test_at_least_one_thread_and_never_more_than_before(four_cores: int) -> None:
    torch.set_num_threads(2)
    with CoreSplit(model(), busy=8) as split:
        split.decide(1.0, 1.0)
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with CoreSplit(model(), busy=1) as split:
        split.decide(1.0, 1.0)
        assert torch.get_num_threads() == 2  # (4 - 1 cores, but the process asked for 2)


def test_a_gpu_model_keeps_the_cpu_threads(four_cores: int) -> None:
    with CoreSplit(model("cuda:0"), busy=1) as split:
        split.decide(1.0, 1.0)
        assert not split.split and torch.get_num_threads() == 4
