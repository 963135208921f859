"""Layer families of the 2012 AlexNet: local response normalisation and the tower blocks.

References: Krizhevsky, Sutskever, Hinton, "ImageNet Classification with Deep
Convolutional Neural Networks", NIPS 2012, section 3.3 (LRN) and 3.5 / Figure 2
(the two towers).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LocalResponseNorm", "lrn_reference", "window_sum"]


def window_sum(t: Tensor, size: int) -> Tensor:
    """Sum of ``t`` over a window of ``size`` adjacent channels, zero-padded at the ends.

    Output channel ``i`` sums channels ``i - size//2 .. i + (size-1)//2`` of ``t``
    (``t`` is ``(B, C, H, W)``). For odd ``size`` the window is symmetric, which is
    what makes the LRN backward pass reuse this same function.
    """
    out = t.clone()
    before, after = size // 2, (size - 1) // 2
    channels = t.shape[1]
    for d in range(1, min(before, channels - 1) + 1):
        out[:, d:] += t[:, :-d]
    for d in range(1, min(after, channels - 1) + 1):
        out[:, :-d] += t[:, d:]
    return out


def lrn_reference(a: Tensor, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0) -> Tensor:
    """The paper's formula written out literally, one channel at a time (slow; for tests).

    b[i] = a[i] / (k + alpha * sum_{j=max(0, i-n/2)}^{min(N-1, i+n/2)} a[j]^2) ** beta
    """
    channels = a.shape[1]
    out = torch.empty_like(a)
    for i in range(channels):
        lo, hi = max(0, i - size // 2), min(channels - 1, i + (size - 1) // 2)
        s = (a[:, lo : hi + 1] ** 2).sum(dim=1)
        out[:, i] = a[:, i] / (k + alpha * s) ** beta
    return out


def _inverse_power(d: Tensor, beta: float) -> Tensor:
    """d ** -beta, in place. For the paper's beta = 0.75 as rsqrt(d) * sqrt(rsqrt(d)): the same
    value to float rounding, and faster than pow on the CPU at small batches (pow's exp/log is
    what costs; at large batches both are bound by memory; bench/RESULTS.md, "Design figures")."""
    if beta == 0.75:
        r = d.rsqrt_()
        return r.mul_(r.sqrt())
    return d.pow_(-beta)


class _LRNFunction(torch.autograd.Function):
    """Exact LRN with a hand-written backward pass.

    With D_i = k + alpha * S_i and S_i the window sum of a^2,
    db_i/da_j = [i == j] D_i^-beta - 2 alpha beta a_i a_j D_i^(-beta-1)  (j in window(i)),
    and because the window is symmetric the sum over i uses the same window:
    grad_a = g * D^-beta - 2 alpha beta * a * window_sum(g * a * D^(-beta-1)).
    Saves only the input and D^-beta, so training uses less memory than autograd's graph.
    """

    @staticmethod
    def forward(ctx, a: Tensor, size: int, alpha: float, beta: float, k: float) -> Tensor:  # type: ignore[override]
        d = window_sum(a * a, size).mul_(alpha).add_(k)  # D = k + alpha * S
        inv = _inverse_power(d, beta)  # D^-beta (in place: D itself is not needed again)
        ctx.save_for_backward(a, inv)
        ctx.params = (size, alpha, beta, k)
        return a * inv

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        a, inv = ctx.saved_tensors
        size, alpha, beta, _k = ctx.params
        # D^(-beta-1) = (D^-beta)^((beta+1)/beta)
        inv_next = inv.pow((beta + 1.0) / beta)
        t = window_sum(g * a * inv_next, size)
        grad = g * inv - (2.0 * alpha * beta) * a * t
        return grad, None, None, None, None


class LocalResponseNorm(nn.Module):
    """Local response normalisation across channels, exactly as the paper writes it.

    b[i] = a[i] / (k + alpha * sum_j a[j]^2) ** beta, the sum over ``size`` adjacent
    channels, with the paper's k=2, n=5, alpha=1e-4, beta=0.75.

    Convention: here ``alpha`` multiplies the plain sum, as in the paper.
    ``torch.nn.LocalResponseNorm`` (like Caffe and cuda-convnet2) multiplies the
    *mean* (alpha / n), so ``nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2)``
    computes the same function as ``LocalResponseNorm(5, alpha=1e-4)`` here.

    The implementation is exact (no approximation) but faster than
    ``nn.LocalResponseNorm`` on CPU: the channel window is summed by ``size``
    shifted adds instead of a padded 3-D average pool, and the backward pass is
    written out by hand (see ``_LRNFunction``).
    """

    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0) -> None:
        super().__init__()
        if size < 1 or size % 2 == 0:
            raise ValueError(f"LRN size must be a positive odd number, got {size}")
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"LRN expects a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
        if torch.is_grad_enabled() and x.requires_grad:
            out: Tensor = _LRNFunction.apply(x, self.size, self.alpha, self.beta, self.k)
            return out
        d = window_sum(x * x, self.size).mul_(self.alpha).add_(self.k)
        return x * _inverse_power(d, self.beta)

    def extra_repr(self) -> str:
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k} (paper convention: alpha * sum)"


class ConvBlock(nn.Sequential):
    """conv -> ReLU [-> LRN] [-> overlapping max-pool 3/2], one tower's half of a layer."""

    def __init__(
        self, cin: int, cout: int, kernel: int, *, stride: int = 1, padding: int = 0, lrn: bool = False, pool: bool = False
    ) -> None:
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding), nn.ReLU(inplace=True)]
        if lrn:
            layers.append(LocalResponseNorm())
        if pool:
            # Section 3.4: overlapping pooling, z=3, s=2.
            layers.append(nn.MaxPool2d(kernel_size=3, stride=2))
        super().__init__(*layers)

    @property
    def conv(self) -> nn.Conv2d:
        conv = self[0]
        assert isinstance(conv, nn.Conv2d)
        return conv


def relu_dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """ReLU then dropout (section 4.2: dropout on the outputs of fc6 and fc7)."""
    return F.dropout(F.relu(x), p=p, training=training)
