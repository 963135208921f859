import pytest
import torch
from torch import nn

from model.layers import LocalResponseNorm, lrn_reference, window_sum


def test_window_sum_matches_explicit_window() -> None:
    t = torch.arange(1.0, 8.0).view(1, 7, 1, 1)
    s = window_sum(t, 5).flatten().tolist()
    # channel i sums channels i-2..i+2 that exist
    assert s == [1 + 2 + 3, 1 + 2 + 3 + 4, 15, 20, 25, 4 + 5 + 6 + 7, 5 + 6 + 7]


@pytest.mark.parametrize("channels", [1, 3, 48, 128])
def test_lrn_forward_is_the_paper_formula(channels: int) -> None:
    torch.manual_seed(channels)
    a = torch.randn(2, channels, 5, 5, dtype=torch.float64) * 30  # large values: the denominator matters
    got = LocalResponseNorm()(a)
    torch.testing.assert_close(got, lrn_reference(a), rtol=1e-12, atol=1e-12)


def test_lrn_differs_from_torch_by_the_alpha_over_n_convention() -> None:
    a = torch.randn(2, 16, 4, 4, dtype=torch.float64) * 50
    ours = LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)(a)
    # torch divides alpha by n: alpha=5e-4 there is the paper's 1e-4
    torch.testing.assert_close(ours, nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)(a))
    assert not torch.allclose(ours, nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)(a))


def test_lrn_backward_matches_autograd_of_the_formula() -> None:
    torch.manual_seed(0)
    a = (torch.randn(2, 12, 3, 3, dtype=torch.float64) * 20).requires_grad_()
    assert torch.autograd.gradcheck(LocalResponseNorm(), (a,))
    g = torch.randn(2, 12, 3, 3, dtype=torch.float64)
    (ours,) = torch.autograd.grad(LocalResponseNorm()(a), a, g)
    (ref,) = torch.autograd.grad(lrn_reference(a), a, g)
    torch.testing.assert_close(ours, ref)


def test_lrn_rejects_even_size_and_bad_rank() -> None:
    with pytest.raises(ValueError, match="odd"):
        LocalResponseNorm(4)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        LocalResponseNorm()(torch.zeros(3, 4))
