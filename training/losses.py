"""A metric-learning term on fc7, trained beside the cross-entropy: the supervised contrastive loss.

Reference: Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020, equation 2 (the
"L_out" form). With z_i the L2-normalised fc7 vector of image i in the batch, A(i) every other
image of the batch and P(i) those of them with i's label,

    L = mean over anchors i with P(i) non-empty of
        -1/|P(i)| * sum_{p in P(i)} log( exp(z_i . z_p / t) / sum_{a in A(i)} exp(z_i . z_a / t) )

It pulls an image's fc7 towards those of its class and pushes it from the others, which is what
``/similar`` ranks by (cosine similarity of fc7 vectors).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FC7Tap", "supcon_loss"]


def supcon_loss(features: Tensor, labels: Tensor, temperature: float = 0.1) -> Tensor:
    """The loss above for (B, D) ``features`` (any scale: they are normalised here) and (B,) ``labels``.
    Zero (with a gradient path) when no image of the batch shares its label with another."""
    if features.dim() != 2 or labels.shape != features.shape[:1]:
        raise ValueError(f"features must be (B, D) and labels (B,), got {tuple(features.shape)} and {tuple(labels.shape)}")
    z = F.normalize(features.float(), dim=1)
    logits = z @ z.T / temperature
    self_mask = torch.eye(len(z), dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))  # A(i): every image but i
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    count = positives.sum(1)
    anchors = count > 0
    if not bool(anchors.any()):
        return features.sum() * 0.0
    per_anchor = -(log_prob.masked_fill(~positives, 0.0).sum(1)[anchors] / count[anchors])
    return per_anchor.mean()


class FC7Tap:
    """Keeps the fc7 vectors of the last forward pass (after ReLU, before dropout: what ``embed`` returns in
    eval mode), through forward hooks on both towers' fc7, so that it works through DistributedDataParallel."""

    def __init__(self, model: nn.Module) -> None:
        self.halves: dict[int, Tensor] = {}
        self.handles = [tower.fc7.register_forward_hook(self._keep(i)) for i, tower in enumerate(model.towers)]  # type: ignore[union-attr, arg-type]

    def _keep(self, i: int):  # type: ignore[no-untyped-def]
        def hook(module: nn.Module, inputs: object, output: Tensor) -> None:
            self.halves[i] = output

        return hook

    def features(self) -> Tensor:
        """(B, 4096) fc7 after ReLU of the last forward pass, on tower 0's device."""
        h0, h1 = self.halves[0], self.halves[1]
        return torch.cat([h0, h1.to(h0.device)], 1).relu()

    def close(self) -> None:
        for h in self.handles:
            h.remove()
